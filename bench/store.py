"""Checkpoint store throughput: the local store and a moto S3 server, same data, same code path.

For each backend: (1) write `--parts` parts of `--records` checkpoint records of `--params` float32
params (our policy size: 5,573) with `write_part` (records built per part, checksum included, as
a population does); (2) scan them all with `read_records()` (every column, checksums verified).
Throughput is records/s and MB/s of params (4 bytes each; params are random normal, about as
incompressible as trained weights).

Memory: each phase runs in a fresh child process; `rss_peak_mb` is that process's peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, so Python, numpy, pyarrow and boto3 together) and
`rss_delta_mb` the rise of that peak during the phase over its level just before the phase (after
imports and a one-part warm-up on a separate store). `arrow_peak_mb` is pyarrow's own allocator high-water mark. The moto server
is a separate process (started here via tests/s3server.py, no persistence), so `server_rss_mb`
is its resident size after the scan.

Streaming cost on training (`--streaming-rounds`, 0 to skip): one population member
(`PopulationWorker`, default populate config: simple_spread MAPPO, checkpoint every 10 updates)
in this process, in three variants built alike: "off" (train + the checkpoint evaluation, nothing
written: `stream=False`), "local" and "s3" (the same plus the record part, the trainer state and
the pointer written each checkpoint). Rounds alternate the variants, one checkpoint interval each,
so machine noise hits all alike; the cost of streaming is 1 - on/off env steps/s. As that ratio is
noisy on a shared machine, the worker also times its store calls: `store_fraction` is the share of
each interval's wall time spent writing (params flattening and evaluation excluded).

Baseline code (`--baseline-rev REV`): the write and scan phases also run with the `pgen` package of
git revision REV (extracted with `git archive` into a temp folder and put first on the child's
`sys.path`), alternating with this tree's phase by phase, so a change to the store is measured
side by side with what it replaces on the same server in the same run.

Writes `bench/results/store.json` and prints the tables.

    python bench/store.py --parts 100 --records 32 --streaming-rounds 4
    python bench/store.py --backends s3 --streaming-rounds 0 --baseline-rev 32ce725
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_phase(phase: str, uri: str, endpoint_url: str | None, parts: int, records: int, num_params: int,
              code: str | None = None) -> dict:
    """One phase in this (fresh) process: 'write' or 'scan'; returns its timings and memory.
    `code`: a folder whose `pgen` package to use instead of this tree's."""
    import sys
    from datetime import datetime, timezone

    if code is not None:
        sys.path.insert(0, code)

    import pyarrow as pa

    from pgen.store import CheckpointStore, params_checksum

    base = np.random.default_rng(0).standard_normal((records, num_params)).astype(np.float32)

    def write(store: CheckpointStore, n_parts: int) -> int:
        for seq in range(n_parts):
            rows = []
            for i, p in enumerate(base + np.float32(seq)):
                rows.append({"run_id": "bench", "member": i, "env_id": "mpe2.simple_spread_v3", "env_key": "spread",
                             "group": "agent", "arch": "mlp-bench", "step": seq * 1000, "update": seq,
                             "return_mean": -float(seq), "return_std": 1.0, "episodes": 8, "num_params": num_params,
                             "params": p, "checksum": params_checksum(p), "created_at": datetime.now(timezone.utc),
                             "seed": i, "origin": "trained"})
            assert store.write_part(rows, "spread", "agent", "mlp-bench", "bench", seq)
        return n_parts * records

    def scan(store: CheckpointStore) -> int:
        result = store.read_records()
        assert result.bad_rows == 0 and not result.bad_parts
        return result.rows

    # warm-up on a separate store (libraries' code pages, codecs, connections), then measure
    warmup = CheckpointStore(uri + "-warmup", endpoint_url=endpoint_url)
    if phase == "write":
        write(warmup, 1)
    else:
        scan(warmup)
    store = CheckpointStore(uri, endpoint_url=endpoint_url)
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    n = write(store, parts) if phase == "write" else scan(store)
    seconds = time.perf_counter() - t0
    return {"phase": phase, "records": n, "seconds": seconds, "records_per_s": n / seconds,
            "params_mb_per_s": n * num_params * 4 / 1e6 / seconds, "rss_peak_mb": _rss_mb(),
            "rss_delta_mb": _rss_mb() - rss0, "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20}


def streaming_cost(uris: dict[str, str], endpoint_url: str | None, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Env steps/s per checkpoint interval of one member, store off vs on, interleaved."""
    import torch

    from pgen.config import compose_config, to_dict
    from pgen.population.worker import PopulationWorker

    torch.set_num_threads(1)
    workers = {}
    for name, uri in {"off": None, **uris}.items():
        overrides = [f"store.uri={uri or '/unused'}", "population.max_env_steps=null"]
        if endpoint_url:
            overrides.append(f"store.endpoint_url={endpoint_url}")
        plain = to_dict(compose_config("populate", overrides))
        workers[name] = PopulationWorker(plain, 0, f"bench-{name}-{time.time_ns()}", stream=uri is not None)
    rates: dict[str, dict[str, list[float]]] = {name: {"steps_per_s": [], "store_fraction": []} for name in workers}
    for _ in range(rounds):
        for name, worker in workers.items():
            status = worker.train_interval()
            rates[name]["steps_per_s"].append(status["steps_per_s"])
            rates[name]["store_fraction"].append(status["store_s"] / status["interval_s"])
    for worker in workers.values():
        worker.learner.close()
    return rates


def in_child(*args) -> dict:
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(run_phase, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", type=int, default=100)
    parser.add_argument("--records", type=int, default=32, help="records per part")
    parser.add_argument("--params", type=int, default=5573, help="float32 params per record")
    parser.add_argument("--backends", default="local,s3")
    parser.add_argument("--streaming-rounds", type=int, default=4, help="checkpoint intervals per variant")
    parser.add_argument("--baseline-rev", default=None, help="also run write/scan with pgen of this git revision")
    parser.add_argument("--repeats", type=int, default=1,
                        help="write+scan rounds per code version, their order alternating (ratios: medians)")
    parser.add_argument("--out", default=str(RESULTS / "store.json"))
    args = parser.parse_args()

    spec = importlib.util.spec_from_file_location("s3server", ROOT / "tests" / "s3server.py")
    s3server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(s3server)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_PROFILE", None)

    tmp = Path(tempfile.mkdtemp(prefix="pgen-bench-store-"))
    codes: dict[str, str | None] = {"this tree": None}
    if args.baseline_rev:
        import subprocess

        baseline = tmp / "baseline"
        baseline.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_rev, "pgen"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        codes[f"baseline {args.baseline_rev}"] = str(baseline)
    results = []
    streaming_uris: dict[str, str] = {}
    streaming: dict[str, list[float]] = {}
    try:
        for backend in args.backends.split(","):
            server, endpoint = None, None
            if backend == "s3":
                import boto3

                server = s3server.S3Server(persist=False, state_dir=tmp / "moto").start()
                endpoint = server.endpoint_url
                boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="pgen-bench")
                uri = "s3://pgen-bench/pgen"
            else:
                uri = str(tmp / "local-store")
            try:
                if args.streaming_rounds > 0:
                    streaming_uris[backend] = "s3://pgen-bench/streaming" if backend == "s3" else str(tmp / "streaming")
                for rep in range(args.repeats):
                    order = list(codes.items()) if rep % 2 == 0 else list(codes.items())[::-1]  # ABBA...
                    for phase in ("write", "scan"):
                        for code, folder in order:
                            where = f"{uri}-{list(codes).index(code)}-{rep}" if len(codes) > 1 or args.repeats > 1 else uri
                            row = {"backend": backend, "code": code, "repeat": rep,
                                   **in_child(phase, where, endpoint, args.parts, args.records, args.params, folder)}
                            if server is not None and phase == "scan":
                                status = Path(f"/proc/{server.proc.pid}/status").read_text()
                                row["server_rss_mb"] = int(status.split("VmRSS:")[1].split()[0]) / 1024
                            results.append(row)
                if backend == "s3" and args.streaming_rounds > 0:
                    # the S3 variant needs this server: measure all variants now, interleaved
                    streaming = streaming_cost(streaming_uris, endpoint, args.streaming_rounds)
            finally:
                if server is not None:
                    server.stop()
        if args.streaming_rounds > 0 and not streaming:
            streaming = streaming_cost(streaming_uris, None, args.streaming_rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    out = {"config": vars(args) | {"part_mb": args.records * args.params * 4 / 1e6},
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "results": results,
           "streaming": {name: {**r, "mean": float(np.mean(r["steps_per_s"])),
                                "store_fraction_mean": float(np.mean(r["store_fraction"]))}
                         for name, r in streaming.items()}}
    if streaming:
        off = out["streaming"]["off"]["mean"]
        for name in streaming:
            out["streaming"][name]["cost"] = 1.0 - out["streaming"][name]["mean"] / off
    print(f"{args.parts} parts x {args.records} records x {args.params} float32 params "
          f"({args.parts * args.records * args.params * 4 / 1e6:.0f} MB of params)")
    print(f"{'backend':8} {'code':18} {'phase':6} {'seconds':>8} {'records/s':>10} {'MB/s':>7} {'RSS peak MB':>12} "
          f"{'RSS +MB':>8} {'arrow MB':>9} {'server MB':>10}")
    for r in results:
        server_mb = f"{r['server_rss_mb']:.0f}" if "server_rss_mb" in r else "-"
        print(f"{r['backend']:8} {r['code']:18} {r['phase']:6} {r['seconds']:8.2f} {r['records_per_s']:10.0f} "
              f"{r['params_mb_per_s']:7.1f} {r['rss_peak_mb']:12.0f} {r['rss_delta_mb']:8.0f} "
              f"{r['arrow_peak_mb']:9.0f} {server_mb:>10}")
    if args.baseline_rev:
        for backend in args.backends.split(","):
            for phase in ("write", "scan"):
                rate = {code: float(np.median([r["records_per_s"] for r in results
                                               if (r["backend"], r["phase"], r["code"]) == (backend, phase, code)]))
                        for code in codes}
                ratio = rate["this tree"] / rate[f"baseline {args.baseline_rev}"]
                out.setdefault("ratios", {})[f"{backend} {phase}"] = ratio
                print(f"{backend} {phase}: median records/s of this tree / baseline {args.baseline_rev} = {ratio:.2f}"
                      f" over {args.repeats} rounds")
    if streaming:
        print(f"\nstreaming cost on training (one member, {args.streaming_rounds} interleaved checkpoint intervals each)")
        print(f"{'store':8} {'env steps/s':>12} {'1-on/off':>9} {'time in store':>14}  env steps/s per interval")
        for name, r in out["streaming"].items():
            print(f"{name:8} {r['mean']:12.0f} {r['cost']:9.1%} {r['store_fraction_mean']:14.2%}  "
                  + " ".join(f"{x:.0f}" for x in r["steps_per_s"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
