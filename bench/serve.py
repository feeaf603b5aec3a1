"""Serve latency and throughput: the generator endpoint with `@serve.batch` on and off, same run.

Deploys two copies of the Serve application of `serve/app.py` on one local Ray (same store, same
generator, one generator replica and one ingress replica each, so both get the same resources):
"batched" (`serve.batching=true`, route /batched) and "unbatched" (`serve.batching=false`, route
/unbatched). For each concurrency level C, C closed-loop HTTP clients (aiohttp, keep-alive) each
send `POST /v1/generate` for one policy (`num=1`, a random seed, `--format`) back to back for
`--seconds`, first against one application then the other (the order alternates per level, so
machine noise hits both alike). Per level and mode: requests, throughput (requests/s), p50 / p99
latency (ms), and errors (any non-200 or failed connection). The client only reads the response
bytes, so its own cost stays small; it still shares the machine's cores with Serve.

A third application, "floor" (route /floor), is Ray Serve's own cost on this machine: the same
two hops (a FastAPI ingress calling a second deployment through a handle, same resources) with no
model and no validation: the inner deployment returns a stored policy-sized float32 vector, which
the ingress writes as JSON. No configuration of our app can be faster than it.

Writes `bench/results/serve.json` and prints the table with the batched/unbatched throughput ratio.

    python bench/serve.py --store bench/results/runs/gen-store --model bench-simple_spread-s0
"""

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
from fastapi import Request
from fastapi.responses import Response

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # serve/ lives at the repository root
RESULTS = ROOT / "bench" / "results"


def floor_app(num_params: int):
    """The Serve floor: ingress → inner deployment → a fixed vector, as JSON."""
    import orjson
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="FloorInner", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
    class Inner:
        def __init__(self):
            self.params = np.random.default_rng(0).standard_normal((1, num_params)).astype(np.float32)

        async def generate(self, request: dict) -> dict:
            return {"params": self.params, "seed": request["seed"]}

    @serve.deployment(name="FloorIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=128)
    @serve.ingress(api)
    class Ingress:
        def __init__(self, inner):
            self.inner = inner

        @api.post("/v1/generate")
        async def generate(self, request: Request) -> Response:
            out = await self.inner.generate.remote(await request.json())
            return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    return Ingress.bind(Inner.bind())


async def closed_loop(url: str, body_of, concurrency: int, seconds: float) -> dict:
    import aiohttp

    latencies, errors = [], 0
    stop = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, json=body_of()) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors, "seconds": elapsed,
            "throughput": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None}


def ms(value: float | None) -> str:
    """A latency for the table; '–' when a level had no successful request."""
    return "–" if value is None else f"{value:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=str(RESULTS / "runs" / "gen-store"))
    ap.add_argument("--model", default="bench-simple_spread-s0")
    ap.add_argument("--target", type=float, default=-50.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--format", choices=["json", "safetensors"], default="json")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--out", default=str(RESULTS / "serve.json"))
    args = ap.parse_args()

    import ray
    from ray import serve

    from pgen.config import compose_config
    from serve.app import build

    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    store = str(Path(args.store).resolve())
    fixed = [f"store.uri={store}", "serve.min_replicas=1", "serve.max_replicas=1"]
    for mode in ("batched", "unbatched"):
        cfg = compose_config("serve", fixed + [f"serve.batching={mode == 'batched'}"])
        serve.run(build(cfg), name=mode, route_prefix=f"/{mode}", blocking=False)
    from pgen.generator.sample import load_generator
    from pgen.store import CheckpointStore

    num_params = load_generator(CheckpointStore(store), args.model, device="cpu").layout.num_params
    serve.run(floor_app(num_params), name="floor", route_prefix="/floor", blocking=False)

    def body() -> dict:
        return {"model": args.model, "target_return": args.target, "num": 1, "seed": random.randrange(2**31),
                "format": args.format}

    rows = []
    base = f"http://127.0.0.1:{args.port}"
    for i, c in enumerate(args.concurrency):
        for mode in (("batched", "unbatched", "floor") if i % 2 == 0 else ("floor", "unbatched", "batched")):
            url = f"{base}/{mode}/v1/generate"
            asyncio.run(closed_loop(url, body, min(c, 4), 1.0))  # warm-up: connections, model loaded
            row = {"mode": mode, **asyncio.run(closed_loop(url, body, c, args.seconds))}
            rows.append(row)
            print(f"{mode:>9} c={c:<3} {row['throughput']:7.1f} req/s  p50 {ms(row['p50_ms'])} ms"
                  f"  p99 {ms(row['p99_ms'])} ms  errors {row['errors']}", flush=True)
    serve.shutdown()
    ray.shutdown()

    by = {(r["mode"], r["concurrency"]): r for r in rows}
    table = []
    for c in args.concurrency:
        b, u = by[("batched", c)], by[("unbatched", c)]
        table.append({"concurrency": c, "batched": b, "unbatched": u, "floor": by[("floor", c)],
                      "throughput_ratio": b["throughput"] / max(u["throughput"], 1e-9)})
    result = {"bench": "serve", "model": args.model, "format": args.format, "seconds": args.seconds,
              "num": 1, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "command": "python bench/serve.py " + " ".join(sys.argv[1:]), "levels": table}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\n| clients | batched req/s | p50 ms | p99 ms | errors | unbatched req/s | p50 ms | p99 ms | errors"
          f" | batched / unbatched | floor req/s | floor p99 ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in table:
        b, u = t["batched"], t["unbatched"]
        print(f"| {t['concurrency']} | {b['throughput']:.0f} | {ms(b['p50_ms'])} | {ms(b['p99_ms'])} | {b['errors']}"
              f" | {u['throughput']:.0f} | {ms(u['p50_ms'])} | {ms(u['p99_ms'])} | {u['errors']}"
              f" | {t['throughput_ratio']:.2f}× | {t['floor']['throughput']:.0f} | {ms(t['floor']['p99_ms'])} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
