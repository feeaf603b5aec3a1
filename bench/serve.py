"""Serve latency and throughput: every lever of Ray Serve's own cost, the floor and our app under each.

A **lever** is how Serve runs (environment variables read when its processes start, so each lever
gets its own Ray instance, a subprocess of this script) and how the app is laid out:

| lever | Serve's proxy | RAY_SERVE_THROUGHPUT_OPTIMIZED | deployments |
|---|---|---|---|
| `default` | Python proxy actor (Ray's default) | 0 | Ingress → PolicyGenerator (`serve.layout=split`) |
| `to` | Python proxy | 1 | split |
| `ha` | HAProxy (`RAY_SERVE_ENABLE_HA_PROXY=1`) | 0 | split |
| `ha+to` | HAProxy | 1 | split |
| `single` … `ha+to+single` | as above | | one deployment (`serve.layout=single`) |

`<lever>@key=value,...` also sets serve.* of the app (`ha+to+single@torch_threads=2`: two decode
threads per replica; `@max_concurrent_batches=2`: two batches at once).

Each Ray instance serves two applications with one replica each: **app**, `serve/app.py` with the
lever's layout (generator `bench-quick`, 5,701 parameters), and **floor**, the same hops with no
model and no validation (split: a FastAPI ingress calling a second deployment through a handle,
which returns a stored policy-sized float32 vector that the ingress writes as JSON; single: one
FastAPI deployment writing it): what Serve itself costs under that lever, so no app under it can be
faster. Over gRPC (`--grpc-levers`), app is `pgen.v1.PolicyGenerator/Generate` (serve/pgen.proto)
and floor a servicer of the same service answering a stored reply.

Load: C closed-loop clients (aiohttp keep-alive, or grpc.aio on one channel) in a separate
process, each sending `POST /v1/generate` (`num=1`, a random seed, JSON) back to back for
`--seconds` after a 1 s warm-up; per point: requests/s, p50 / p99 latency, errors (any non-200,
failed connection or gRPC error), and the CPU (cores) of the client process, of the Ray
instance's process tree and of everything else on the machine (/proc/stat minus both) over the
interval. Levers run one after another, `--rounds` times, the order reversed every round, and
within a lever floor and app alternate per concurrency level; the table is the median over rounds.
On a shared machine a point waits (up to `--max-wait` s) until other processes use at most
`--max-other-cpu` cores, and its `other_cpu` records what they took meanwhile.

Then, in the adopted default (`--default-lever`), side by side in one Ray instance:

- **batching**: `@serve.batch` on ("batched") and off ("unbatched") for each `--batch-cases`
  generator × `num` at `--batch-concurrency` clients, alternating, `--rounds` each; and in this
  process, the generators' decode time per policy against the number of policies in one forward
  pass (one thread): the most batching can gain on this CPU.
- **version swap**: app at 32 clients while a new version of `bench-quick` is registered halfway
  through; the failed requests and the versions seen.

`--profile` adds, per lever, floor and app at 32 clients with every Serve / Ray process's CPU over
the interval and a py-spy profile of the Python ones (raw stacks in bench/results/runs/
serve-profiles/), summarised by what the sampled frames belong to (model, our endpoint, HTTP,
Serve's proxy / router / replica, Ray core, gRPC, ...).

The store (`--store`, default bench/results/runs/serve-store) is made when missing: a synthetic
simple_spread slice (mlp 18x64x64x5) and generators trained for one epoch (their quality does not
change serving cost): `bench-quick` (d_model 64, 2 layers: the default generator), `bench-full`
(d_model 128, 3 layers: the `full` profile's largest) and `bench-wide` (d_model 256, 3 layers).

Writes `bench/results/serve.json` and prints every table.

    python bench/serve.py --profile                         # everything: about 80 minutes on 2 cores
    python bench/serve.py --rounds 1 --seconds 4 --levers default ha+to+single --skip-batching
"""

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from fastapi import Request  # module level: FastAPI resolves the floor's route annotations here
from fastapi.responses import Response

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # serve/ and tests/ live at the repository root
from tests.s3server import free_ports  # noqa: E402  (after the path; ports outside the ephemeral range)
RESULTS = ROOT / "bench" / "results"
LEVERS = ["default", "to", "ha", "ha+to", "single", "to+single", "ha+single", "ha+to+single",
          "ha+to+single@torch_threads=2", "ha+to+single@max_concurrent_batches=2"]
GENERATORS = {"bench-quick": (64, 2), "bench-full": (128, 3), "bench-wide": (256, 3)}  # d_model, n_layers
MODEL = "bench-quick"
TARGET = -50.0


def lever_settings(lever: str) -> dict[str, str]:
    """serve.* overrides of a lever (`ray_serve_env` turns proxy / throughput_optimized into env);
    `<lever>@key=value,...` adds serve.* settings of the app (e.g. `ha+to+single@torch_threads=2`)."""
    lever, _, knobs = lever.partition("@")
    parts = set(lever.split("+")) - {"default"}
    unknown = parts - {"to", "ha", "single"}
    if unknown:
        raise SystemExit(f"unknown lever part(s) {sorted(unknown)} in {lever!r}")
    out = {"serve.proxy": "haproxy" if "ha" in parts else "python",
           "serve.throughput_optimized": str("to" in parts).lower(),
           "serve.layout": "single" if "single" in parts else "split"}
    for knob in filter(None, knobs.split(",")):
        key, _, value = knob.partition("=")
        out[f"serve.{key}"] = value
    return out


# --- the server: one Ray instance per lever --------------------------------------------------------


def floor_app(num_params: int, single: bool):
    """Serve's own cost under a lever: the app's hops, a stored vector, no model, no validation."""
    import orjson
    from fastapi import FastAPI
    from ray import serve

    from serve import pgen_pb2 as pb

    api = FastAPI()
    params = np.random.default_rng(0).standard_normal((1, num_params)).astype(np.float32)

    def reply(seed: int) -> pb.GenerateReply:
        out = pb.GenerateReply(model=MODEL, version="v0001", seed=seed, num=1, num_params=num_params)
        out.params.extend(params.ravel())
        return out

    @serve.deployment(name="FloorInner", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
    class Inner:
        async def generate(self, request: dict) -> dict:
            return {"params": params, "seed": request["seed"]}

    @serve.deployment(name="FloorIngress", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=128)
    @serve.ingress(api)
    class Ingress:
        def __init__(self, inner=None):
            self.inner = inner

        @api.post("/v1/generate")
        async def generate(self, request: Request) -> Response:
            body = await request.json()
            out = await self.inner.generate.remote(body) if self.inner else {"params": params, "seed": body["seed"]}
            return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

        async def Generate(self, request: pb.GenerateRequest) -> pb.GenerateReply:
            if self.inner:
                await self.inner.generate.remote({"seed": request.seed})
            return reply(request.seed)

    return Ingress.bind() if single else Ingress.bind(Inner.bind())


def serve_main(args) -> None:
    """`--serve LEVER`: a Ray instance in the lever's mode with its apps; READY on stdout, stops at EOF."""
    from pgen.config import compose_config
    from serve.app import build
    from serve.launcher import GRPC_SERVICER, ray_serve_env

    lever = lever_settings(args.serve)
    base = compose_config("serve", [f"{k}={v}" for k, v in lever.items()])
    # before Ray starts: its processes inherit these; HAProxy's side ports picked free, so that
    # instances (and other people's) on one machine do not collide
    os.environ.update(ray_serve_env(base.serve))
    stats, metrics, http, grpc = free_ports(4)
    os.environ.update({"RAY_SERVE_HAPROXY_STATS_PORT": str(stats), "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
                       "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(http), "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(grpc),
                       "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"})
    import ray
    from ray import serve

    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port},
                grpc_options={"port": args.grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]})
    # one replica per app unless the lever says otherwise (`@min_replicas=2,max_replicas=2`)
    fixed = [f"store.uri={args.store}"] + [f"{k}={v}" for k, v in
                                           {"serve.min_replicas": 1, "serve.max_replicas": 1, **lever}.items()]
    apps = json.loads(args.apps)
    for name, overrides in apps.items():
        if name == "floor":
            continue
        serve.run(build(compose_config("serve", fixed + overrides)), name=name, route_prefix=f"/{name}", blocking=False)
    if "floor" in apps:
        from pgen.generator.versions import load_generator
        from pgen.store import CheckpointStore

        num_params = load_generator(CheckpointStore(args.store), MODEL, device="cpu").layout.num_params
        serve.run(floor_app(num_params, lever["serve.layout"] == "single"), name="floor", route_prefix="/floor",
                  blocking=False)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    sys.stdin.read()  # until the bench closes our stdin
    serve.shutdown()
    ray.shutdown()


class Server:
    """A `--serve` subprocess: its ports, and the CPU its process tree has used. A start that fails
    or hangs (Ray's own start-up times out on an overloaded machine) is retried."""

    def __init__(self, lever: str, store: str, apps: dict[str, list[str]], attempts: int = 3, timeout: float = 300):
        self.lever = lever
        self.log = RESULTS / "runs" / f"serve-{lever.replace('@', '-').replace(',', '-')}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):
            self.port, self.grpc_port = free_ports(2)
            cmd = [sys.executable, __file__, "--serve", lever, "--port", str(self.port), "--grpc-port",
                   str(self.grpc_port), "--store", store, "--apps", json.dumps(apps)]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log.open("w"),
                                         text=True, start_new_session=True,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)})
            line = []
            reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
            reader.start()
            reader.join(timeout)
            if line and line[0].startswith("{"):
                self.url = f"http://127.0.0.1:{self.port}"
                if self.routes_answer(list(apps)):
                    return
            self.stop()
            print(f"lever {lever}: the server did not start (attempt {attempt + 1}; {self.log})", flush=True)
        raise RuntimeError(f"lever {lever}: the server did not start; see {self.log}")

    def routes_answer(self, apps: list[str], timeout: float = 120) -> bool:
        """Every application answers one request through the ingress before any point is measured:
        `serve.run` returning is not proof that the proxy already routes to the app (on a loaded
        machine an earlier run's second app failed every request of its first point, fast)."""
        import requests

        body = {"model": MODEL, "target_return": TARGET, "num": 1, "format": "json", "seed": 1}
        deadline = time.time() + timeout
        for app in apps:
            while True:
                try:
                    if requests.post(f"{self.url}/{app}/v1/generate", json=body, timeout=30).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.time() > deadline:
                    print(f"lever {self.lever}: /{app} does not answer after {timeout:.0f} s", flush=True)
                    return False
                time.sleep(0.5)
        return True

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=90)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # what is left of its Ray (its own session)
        except ProcessLookupError:
            pass


TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and its live descendants (from /proc)."""
    parent, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / TICK
    keep, total = {root}, 0.0
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in keep and pid not in keep:
                keep.add(pid)
                changed = True
    return sum(cpu.get(p, 0.0) for p in keep)


def machine_busy_seconds() -> float:
    """CPU seconds all cores have been busy since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICK


# --- the client: a separate process per measurement ------------------------------------------------


async def http_loop(url: str, body: dict, concurrency: int, seconds: float, versions: bool) -> dict:
    import aiohttp

    latencies, errors, seen, why = [], 0, {}, {}
    stop = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, json={**body, "seed": random.randrange(2**31)}) as resp:
                        data = await resp.read()
                        ok = resp.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    ok, data = False, repr(e).encode()
                if ok:
                    latencies.append(time.perf_counter() - t0)
                    if versions:
                        at = data.find(b'"version":"') + 11
                        v = data[at:data.find(b'"', at)].decode()
                        seen[v] = seen.get(v, 0) + 1
                else:
                    errors += 1
                    note_error(why, data[:160].decode(errors="replace"))

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return summary(latencies, errors, elapsed, seen, why)


async def grpc_loop(target: str, app: str, body: dict, concurrency: int, seconds: float) -> dict:
    import grpc

    from serve import pgen_pb2 as pb
    from serve import pgen_pb2_grpc

    latencies, errors, why = [], 0, {}
    stop = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pgen_pb2_grpc.PolicyGeneratorStub(channel)
        metadata = (("application", app),)

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    await stub.Generate(pb.GenerateRequest(model=body["model"], target_return=body["target_return"],
                                                           num=body["num"], seed=random.randrange(2**31)),
                                        metadata=metadata, timeout=60)
                    latencies.append(time.perf_counter() - t0)
                except grpc.RpcError as e:
                    errors += 1
                    note_error(why, f"{e.code()}: {e.details()}"[:160])

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return summary(latencies, errors, elapsed, {}, why)


def note_error(why: dict[str, int], text: str) -> None:
    """Count an error by what it said (the first few kinds only), so a table's errors can be explained."""
    if text in why or len(why) < 4:
        why[text] = why.get(text, 0) + 1


def summary(latencies: list[float], errors: int, elapsed: float, seen: dict, why: dict[str, int]) -> dict:
    lat = np.asarray(latencies) * 1000
    out = {"requests": len(latencies), "errors": errors, "seconds": elapsed, "throughput": len(latencies) / elapsed,
           "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
           "p99_ms": float(np.percentile(lat, 99)) if lat.size else None}
    if seen:
        out["versions"] = seen
    if why:
        out["error_kinds"] = why
    return out


def client_main(args) -> None:
    """`--client`: one measurement (after a warm-up), as a JSON line with this process's CPU."""
    spec = json.loads(args.client)
    run = (lambda c, s: grpc_loop(spec["grpc"], spec["app"], spec["body"], c, s)) if "grpc" in spec else \
        (lambda c, s: http_loop(spec["url"], spec["body"], c, s, spec.get("versions", False)))
    asyncio.run(run(min(spec["concurrency"], 4), 1.0))  # connections up, model loaded
    print(json.dumps({"warm": True}), flush=True)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = asyncio.run(run(spec["concurrency"], spec["seconds"]))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out["client_cpu"] = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / (time.perf_counter() - t0)
    print(json.dumps(out), flush=True)


QUIET = {"max_other_cpu": 0.5, "max_wait_s": 240.0}  # set from the command line


def wait_for_quiet(server: Server) -> float:
    """Seconds waited until the CPU used by everything but `server` (over 2 s) is at most
    QUIET["max_other_cpu"] cores, or QUIET["max_wait_s"] have passed: on a shared machine, a point
    is not measured while someone else's job holds the cores (its `other_cpu` says what was left)."""
    t_start = time.perf_counter()
    while time.perf_counter() - t_start < QUIET["max_wait_s"]:
        s0, m0, t0 = server.cpu_seconds(), machine_busy_seconds(), time.perf_counter()
        time.sleep(2)
        other = (machine_busy_seconds() - m0 - server.cpu_seconds() + s0) / (time.perf_counter() - t0)
        if other <= QUIET["max_other_cpu"]:
            break
    return time.perf_counter() - t_start


def measure(server: Server, spec: dict, during=None) -> dict:
    """One point: the client subprocess's result, with the server's and the machine's CPU (cores)."""
    waited = wait_for_quiet(server)
    proc = subprocess.Popen([sys.executable, __file__, "--client", json.dumps(spec)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc.stdout.readline()  # its warm-up is over
    s0, m0, t0 = server.cpu_seconds(), machine_busy_seconds(), time.perf_counter()
    if during:
        during()
    try:
        out, _ = proc.communicate(timeout=spec["seconds"] + 180)
    except subprocess.TimeoutExpired:  # a client that hangs counts as one that failed every request
        proc.kill()
        out = json.dumps({"requests": 0, "errors": 1, "seconds": spec["seconds"], "throughput": 0.0, "p50_ms": None,
                          "p99_ms": None, "client_cpu": 0.0, "timeout": True})
    s1, m1, t1 = server.cpu_seconds(), machine_busy_seconds(), time.perf_counter()
    row = json.loads(out.strip().splitlines()[-1])
    row["server_cpu"] = (s1 - s0) / (t1 - t0)
    row["other_cpu"] = max(0.0, (m1 - m0) / (t1 - t0) - row["server_cpu"] - row["client_cpu"])
    row["loadavg"] = float(Path("/proc/loadavg").read_text().split()[0])
    row["waited_s"] = waited
    return row


# --- the bench -------------------------------------------------------------------------------------


def make_store(store: Path) -> None:
    """A synthetic simple_spread slice and the three bench generators, one epoch each."""
    from pgen.commands.train_generator import train_generator
    from pgen.config import compose_config
    from pgen.policies.spec import PolicySpec
    from pgen.store import CheckpointStore
    from tests.test_generator import fill_store

    print(f"making the bench store {store} (synthetic slice, generators trained one epoch)", flush=True)
    fill_store(CheckpointStore(str(store)), PolicySpec("mlp", 18, (64, 64), 5, True), runs=3, per_run=8)
    for name, (d_model, n_layers) in GENERATORS.items():
        train_generator(compose_config("train-generator", [
            f"store.uri={store}", f"out_dir={store.parent / 'serve-generators'}", f"generator.name={name}",
            f"generator.d_model={d_model}", f"generator.n_layers={n_layers}", "generator.epochs=1",
            "generator.batch_size=8"]))


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def median_row(rows: list[dict]) -> dict:
    """The median over rounds of each figure; errors summed."""
    out = {k: float(np.median([r[k] for r in rows if r.get(k) is not None])) if any(r.get(k) is not None for r in rows)
           else None for k in ("throughput", "p50_ms", "p99_ms", "client_cpu", "server_cpu", "other_cpu", "loadavg")}
    out.update(errors=sum(r["errors"] for r in rows), requests=sum(r["requests"] for r in rows), rounds=len(rows),
               p99_ms_max=max((r["p99_ms"] for r in rows if r["p99_ms"] is not None), default=None))
    return out


def lever_runs(args, store: str) -> list[dict]:
    rows = []
    body = {"model": MODEL, "target_return": TARGET, "num": 1, "format": "json"}
    for rnd in range(args.rounds):
        order = args.levers if rnd % 2 == 0 else args.levers[::-1]
        for lever in order:
            server = Server(lever, store, {"app": [], "floor": []})
            try:
                protocols = ["http"] + (["grpc"] if lever in args.grpc_levers else [])
                for i, c in enumerate(args.concurrency):
                    for protocol in protocols:
                        for target in (("floor", "app") if (i + rnd) % 2 == 0 else ("app", "floor")):
                            spec = {"concurrency": c, "seconds": args.seconds, "body": body}
                            if protocol == "grpc":
                                spec.update(grpc=f"127.0.0.1:{server.grpc_port}", app=target)
                            else:
                                spec["url"] = f"{server.url}/{target}/v1/generate"
                            row = {"round": rnd, "lever": lever, "protocol": protocol, "target": target,
                                   "concurrency": c, **measure(server, spec)}
                            rows.append(row)
                            print(f"round {rnd} {lever:>13} {protocol:4} {target:5} c={c:<3} {row['throughput']:7.1f}"
                                  f" req/s  p50 {ms(row['p50_ms']):>6}  p99 {ms(row['p99_ms']):>6} ms  errors"
                                  f" {row['errors']}  cpu client {row['client_cpu']:.2f} server {row['server_cpu']:.2f}"
                                  f" other {row['other_cpu']:.2f}" + (f" {row.get('error_kinds')}" if row["errors"] else ""),
                                  flush=True)
            finally:
                server.stop()
    return rows


def decode_curve(store: str, models: list[str]) -> dict:
    """Decode time per policy against policies per forward pass, one thread, in this process."""
    import torch

    from pgen.generator.versions import load_generator
    from pgen.store import CheckpointStore
    from serve.decoder import DecodeJob, decode_jobs

    torch.set_num_threads(1)
    out = {}
    for name in models:
        gen = load_generator(CheckpointStore(store), name, device="cpu")
        curve = {}
        for rows in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
            jobs = [DecodeJob(gen, gen.spec, TARGET, rows, 0, 0.5)]
            decode_jobs(jobs, rows)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 1.0 or n < 2:
                decode_jobs(jobs, rows)
                n += 1
            curve[rows] = (time.perf_counter() - t0) / n / rows * 1000
        out[name] = curve
        print(f"decode {name}: " + "  ".join(f"{k}:{v:.2f}" for k, v in curve.items()) + "  (ms per policy by policies"
              " per forward pass)", flush=True)
    return out


def batching_runs(args, store: str) -> list[dict]:
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.batch_cases]
    apps = {"batched": ["serve.batching=true"], "unbatched": ["serve.batching=false"]}
    server = Server(args.default_lever, store, apps)
    rows = []
    try:
        for rnd in range(args.rounds):
            for model, num in cases:
                for mode in (("batched", "unbatched") if rnd % 2 == 0 else ("unbatched", "batched")):
                    body = {"model": model, "target_return": TARGET, "num": num, "format": "json"}
                    spec = {"concurrency": args.batch_concurrency, "seconds": args.seconds, "body": body,
                            "url": f"{server.url}/{mode}/v1/generate"}
                    row = {"round": rnd, "model": model, "num": num, "mode": mode, **measure(server, spec)}
                    rows.append(row)
                    print(f"round {rnd} batching {model} num={num} {mode:>9}: {row['throughput']:6.1f} req/s p50"
                          f" {ms(row['p50_ms'])} p99 {ms(row['p99_ms'])} ms errors {row['errors']}"
                          + (f" {row.get('error_kinds')}" if row["errors"] else ""), flush=True)
    finally:
        server.stop()
    return rows


def swap_run(args, store: str) -> dict:
    """32 clients on `app` while a new version of MODEL is registered halfway through."""
    from pgen.generator.versions import load_generator, save_generator
    from pgen.store import CheckpointStore

    server = Server(args.default_lever, store, {"app": []})
    registered = {}

    def register() -> None:
        def later() -> None:
            time.sleep(args.seconds / 2)
            s = CheckpointStore(store)
            gen = load_generator(s, MODEL, device="cpu")
            registered["from"] = gen.version
            registered["to"] = save_generator(s, gen, {"final": {}, "history": [], "bench": "serve version swap"})
        threading.Thread(target=later, daemon=True).start()

    try:
        spec = {"concurrency": 32, "seconds": args.seconds, "versions": True, "url": f"{server.url}/app/v1/generate",
                "body": {"model": MODEL, "target_return": TARGET, "num": 1, "format": "json"}}
        row = {**measure(server, spec, during=register), **{f"registered_{k}": v for k, v in registered.items()}}
    finally:
        server.stop()
    print(f"version swap {registered}: {row['requests']} requests, {row['errors']} failed, versions seen"
          f" {row.get('versions')}", flush=True)
    return row


# --- where the time goes: py-spy of Serve's processes under load ---------------------------------

PROFILED = ("ProxyActor", "ServeReplica", "HAProxyManager", "haproxy", "ServeController", "raylet", "gcs_server")


def tree_processes(root: int) -> dict[int, str]:
    """pid → a short name for `root`'s descendants that are Serve's or Ray's."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        name = next((n for n in PROFILED if n in cmd), None)
        if name and int(entry) != root and is_descendant(int(entry), root):
            label = cmd.split()[0].removeprefix("ray::")
            out[int(entry)] = (name if "/" in label else label)[:60]
    return out


def is_descendant(pid: int, root: int) -> bool:
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
        if pid == root:
            return True
    return False


def process_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# what a sampled Python frame's file says it is doing
CATEGORIES = [("model (torch, pgen.generator)", ("torch/", "pgen/generator", "pgen/policy")),
              ("our endpoint (serve/app.py)", ("serve/app.py",)),
              ("HTTP (uvicorn, starlette, fastapi, pydantic, h11, aiohttp)",
               ("uvicorn/", "starlette/", "fastapi/", "pydantic", "h11/", "httptools", "aiohttp/")),
              ("Serve proxy", ("serve/_private/proxy", "serve/_private/http_util", "serve/_private/direct_ingress")),
              ("Serve router / handles", ("serve/_private/router", "serve/_private/request_router", "serve/handle",
                                          "serve/_private/replica_result")),
              ("Serve replica", ("serve/_private/replica", "serve/batching", "serve/multiplex", "serve/_private/utils")),
              ("Serve metrics, logging, long poll", ("serve/_private/metrics", "serve/_private/logging", "logging/",
                                                     "serve/_private/long_poll", "ray/util/metrics")),
              ("gRPC", ("grpc/", "grpc_", "protobuf")),
              ("Ray core (actor calls, object store)", ("ray/_private", "ray/_raylet", "ray/actor", "ray/remote")),
              ("asyncio event loop", ("asyncio/", "uvloop")),
              ("threads, queues", ("threading.py", "concurrent/", "queue.py"))]


WAITING = ("Condition.wait", "Queue.get", "select (", "poll (", "epoll", "sleep (", "Event.wait", "_wait_for_tstate_lock",
           "Thread.join", "SimpleQueue.get", "BaseSelector", "acquire (",
           # threads whose innermost Python frame hands over to native code that blocks (Ray's core
           # worker loop, gRPC's and Ray's own threads)
           "Worker.main_loop (", "Thread.run (")


def category(frame: str) -> str:
    where = frame[frame.rfind("(") + 1:]
    return next((name for name, keys in CATEGORIES if any(k in where for k in keys)), "other Python")


def waiting(leaf: str) -> bool:
    """A sample of a thread blocked in a wait (py-spy --nonblocking cannot always tell it is idle)."""
    return any(w in leaf for w in WAITING)


def spy(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
                             "--format", "raw", "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def summarise_profile(path: Path) -> dict:
    """Shares of the sampled (busy) time by the category of the innermost frame with a file of its
    own, and the top innermost functions."""
    by_cat, by_func, total = {}, {}, 0
    if not path.exists():
        return {"samples": 0}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        n = int(n)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        if waiting(leaf):
            total -= n
            continue
        # the innermost frame that is not the standard library's plumbing decides the category
        cat = next((category(f) for f in reversed(frames) if category(f) not in ("asyncio event loop",
                                                                                 "threads, queues", "other Python")),
                   category(leaf))
        by_cat[cat] = by_cat.get(cat, 0) + n
        func = leaf.split(" (")[0] + " (" + leaf[leaf.rfind("(") + 1:].split(":")[0].rsplit("/", 2)[-1] + ")"
        by_func[func] = by_func.get(func, 0) + n
    share = lambda d: {k: round(v / max(total, 1), 3) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}
    return {"samples": total, "by_category": share(by_cat), "top_functions": dict(list(share(by_func).items())[:8])}


def profile_runs(args, store: str) -> list[dict]:
    """Per lever: app (and floor) at 32 clients, every Serve/Ray process's CPU over the interval and
    a py-spy profile of the Python ones."""
    out = []
    folder = RESULTS / "runs" / "serve-profiles"
    folder.mkdir(parents=True, exist_ok=True)
    body = {"model": MODEL, "target_return": TARGET, "num": 1, "format": "json"}
    for lever in args.levers:
        server = Server(lever, store, {"app": [], "floor": []})
        try:
            for target in ("floor", "app"):
                spec = {"concurrency": 32, "seconds": args.profile_seconds + 2, "body": body,
                        "url": f"{server.url}/{target}/v1/generate"}
                procs, spies = {}, []

                def start() -> None:
                    procs.update(tree_processes(server.proc.pid))
                    for pid, label in procs.items():
                        if label != "haproxy":
                            spies.append((pid, spy(pid, args.profile_seconds, folder / f"{lever}-{target}-{pid}.txt")))

                cpu0 = {}
                row = measure(server, spec, during=lambda: (start(), cpu0.update(
                    {p: process_cpu_seconds(p) for p in procs}), time.sleep(0)))
                for _, s in spies:
                    s.wait(timeout=60)
                seconds = args.profile_seconds + 2
                processes = []
                for pid, label in procs.items():
                    entry = {"process": label, "cpu": (process_cpu_seconds(pid) - cpu0.get(pid, 0)) / seconds}
                    if label != "haproxy":
                        entry.update(summarise_profile(folder / f"{lever}-{target}-{pid}.txt"))
                    processes.append(entry)
                processes.sort(key=lambda e: -e["cpu"])
                out.append({"lever": lever, "target": target, **{k: row[k] for k in ("throughput", "p50_ms", "p99_ms",
                                                                                       "errors", "server_cpu",
                                                                                       "other_cpu")},
                            "processes": processes})
                print(f"profile {lever} {target}: {row['throughput']:.0f} req/s p99 {ms(row['p99_ms'])} ms; "
                      + "; ".join(f"{e['process']} {e['cpu']:.2f} cores" for e in processes[:5]), flush=True)
        finally:
            server.stop()
    return out


def tables(result: dict) -> str:
    lines = []
    by = {}
    for r in result["levers"]:
        by.setdefault((r["lever"], r["protocol"], r["target"], r["concurrency"]), []).append(r)
    med = {k: median_row(v) for k, v in by.items()}
    result["lever_table"] = [{"lever": k[0], "protocol": k[1], "target": k[2], "concurrency": k[3], **v}
                             for k, v in med.items()]
    lines.append("| lever | protocol | clients | floor req/s | floor p50 | floor p99 | app req/s | app p50 | app p99 |"
                 " app / floor | errors (floor, app) | CPU client / Serve / other |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for lever in result["args"]["levers"]:
        for protocol in ("http", "grpc"):
            for c in result["args"]["concurrency"]:
                f, a = med.get((lever, protocol, "floor", c)), med.get((lever, protocol, "app", c))
                if not f or not a:
                    continue
                lines.append(f"| {lever} | {protocol} | {c} | {f['throughput']:.0f} | {ms(f['p50_ms'])} | {ms(f['p99_ms'])}"
                             f" | {a['throughput']:.0f} | {ms(a['p50_ms'])} | {ms(a['p99_ms'])}"
                             f" | {a['throughput'] / max(f['throughput'], 1e-9):.2f} | {f['errors']}, {a['errors']}"
                             f" | {a['client_cpu']:.2f} / {a['server_cpu']:.2f} / {a['other_cpu']:.2f} |")
    d = result["args"]["default_lever"]
    a, f = med.get((d, "http", "app", 32)), med.get((d, "http", "floor", 32))
    if a and f:
        result["goals"] = {"lever": d, "p99_ms_at_32": a["p99_ms"], "p99_ok": a["p99_ms"] is not None and a["p99_ms"] <= 100,
                           "errors_at_32": a["errors"], "throughput_vs_floor": a["throughput"] / f["throughput"],
                           "throughput_ok": a["throughput"] >= 0.9 * f["throughput"]}
        g = result["goals"]
        lines.append(f"\ndefault `{d}` at 32 clients: p99 {ms(g['p99_ms_at_32'])} ms ({'≤' if g['p99_ok'] else '>'} 100),"
                     f" {g['errors_at_32']} errors, throughput {g['throughput_vs_floor']:.2f} × the floor"
                     f" ({'≥' if g['throughput_ok'] else '<'} 0.9)")
    if result.get("batching"):
        bb = {}
        for r in result["batching"]:
            bb.setdefault((r["model"], r["num"], r["mode"]), []).append(r)
        bm = {k: median_row(v) for k, v in bb.items()}
        result["batching_table"] = [{"model": k[0], "num": k[1], "mode": k[2], **v} for k, v in bm.items()]
        lines.append("\n| generator | num | batched req/s | p50 | p99 | unbatched req/s | p50 | p99 | batched / unbatched"
                     " | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for model, num in dict.fromkeys((k[0], k[1]) for k in bm):
            b, u = bm[(model, num, "batched")], bm[(model, num, "unbatched")]
            lines.append(f"| {model} | {num} | {b['throughput']:.1f} | {ms(b['p50_ms'])} | {ms(b['p99_ms'])}"
                         f" | {u['throughput']:.1f} | {ms(u['p50_ms'])} | {ms(u['p99_ms'])}"
                         f" | {b['throughput'] / max(u['throughput'], 1e-9):.2f}× | {b['errors'] + u['errors']} |")
    if result.get("decode_ms_per_policy"):
        sizes = list(next(iter(result["decode_ms_per_policy"].values())))
        lines.append("\n| decode ms / policy | " + " | ".join(str(s) for s in sizes) + " |\n|---|"
                     + "---:|" * len(sizes))
        for name, curve in result["decode_ms_per_policy"].items():
            lines.append(f"| {name} | " + " | ".join(f"{curve[s]:.2f}" for s in sizes) + " |")
    if result.get("profiles"):
        lines.append("\n| lever | target | req/s | p99 ms | busiest processes (cores) | where the replica's / proxy's time goes |"
                     "\n|---|---|---:|---:|---|---|")
        for r in result["profiles"]:
            busy = ", ".join(f"{e['process']} {e['cpu']:.2f}" for e in r["processes"][:4])
            where = []
            for e in r["processes"]:
                if e.get("by_category") and ("Replica" in e["process"] or "Proxy" in e["process"]):
                    top = ", ".join(f"{k} {v:.0%}" for k, v in list(e["by_category"].items())[:3])
                    where.append(f"{e['process']}: {top}")
            lines.append(f"| {r['lever']} | {r['target']} | {r['throughput']:.0f} | {ms(r['p99_ms'])} | {busy} |"
                         f" {'; '.join(where[:2])} |")
    if result.get("swap"):
        s = result["swap"]
        lines.append(f"\nversion swap at 32 clients ({s.get('registered_from')} → {s.get('registered_to')} registered"
                     f" halfway): {s['requests']} requests, {s['errors']} failed, versions seen {s.get('versions')}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=str(RESULTS / "runs" / "serve-store"))
    ap.add_argument("--levers", nargs="*", default=LEVERS, help="none: only batching, the swap, profiles")
    ap.add_argument("--grpc-levers", nargs="*", default=["default", "to+single", "ha+to+single"])
    ap.add_argument("--default-lever", default="ha+to+single", help="what `pgen serve` defaults to")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-cases", nargs="+", default=["bench-quick:1", "bench-full:1", "bench-full:16",
                                                         "bench-wide:16"], help="generator:num")
    ap.add_argument("--batch-concurrency", type=int, default=32)
    ap.add_argument("--skip-batching", action="store_true")
    ap.add_argument("--skip-swap", action="store_true")
    ap.add_argument("--profile", action="store_true", help="also py-spy every lever's Serve processes at 32 clients")
    ap.add_argument("--profile-seconds", type=float, default=8.0)
    ap.add_argument("--max-other-cpu", type=float, default=QUIET["max_other_cpu"],
                    help="wait before a point until other processes use at most this many cores")
    ap.add_argument("--max-wait", type=float, default=QUIET["max_wait_s"], help="... but at most this many seconds")
    ap.add_argument("--out", default=str(RESULTS / "serve.json"))
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--grpc-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--apps", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve_main(args)
    if args.client:
        return client_main(args)
    for lever in args.levers + [args.default_lever]:
        lever_settings(lever)
    QUIET.update(max_other_cpu=args.max_other_cpu, max_wait_s=args.max_wait)
    store = Path(args.store).resolve()
    if not (store / "generators").exists():
        make_store(store)
    t0 = time.time()
    result = {"bench": "serve", "model": MODEL, "num": 1, "format": "json", "seconds": args.seconds,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]},
              "command": "python bench/serve.py " + " ".join(sys.argv[1:]), "args": vars(args),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    save = lambda: Path(args.out).write_text(json.dumps(result, indent=1))  # noqa: E731  (after every stage)
    result["levers"] = lever_runs(args, str(store))
    save()
    if not args.skip_batching:
        result["decode_ms_per_policy"] = decode_curve(str(store), sorted({c.split(":")[0] for c in args.batch_cases}))
        result["batching"] = batching_runs(args, str(store))
        save()
    if not args.skip_swap:
        result["swap"] = swap_run(args, str(store))
        save()
    if args.profile:
        result["profiles"] = profile_runs(args, str(store))
    result["minutes"] = (time.time() - t0) / 60
    result["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    text = tables(result)
    save()
    print("\n" + text + f"\n\nwrote {args.out}")


if __name__ == "__main__":
    main()
