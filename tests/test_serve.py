"""The Serve application over real HTTP and gRPC: `serve run` of serve/config.yaml (ports and args
changed) on a local Ray started in the mode `pgen serve` defaults to (`serve.app.ray_serve_env`:
HAProxy ingress, throughput-optimised Serve), in a subprocess, against a local store holding a
small trained generator.

Every endpoint, the error cases, a schema-driven fuzz of the request bodies (no 5xx), the bearer
token, a new generator version under traffic with zero failed requests, a population seeded by
/v1/seed that starts at the seed policies' measured return, the gRPC endpoint, and the split layout
(Ingress → PolicyGenerator) answering as the single one does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgen.commands.train_generator import train_generator
from pgen.generator.versions import load_generator
from pgen.policies.policy_file import load_policies, read_policy_file
from pgen.store import CheckpointStore
from tests.s3server import free_ports
from tests.serving import local_serve_env
from tests.test_generator import SMALL, fill_store, pgen, train_cfg

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-7f3a"
SERVE_ARGS = {"serve.max_num": 8, "serve.max_population": 4, "serve.max_body_bytes": 4096,
              "serve.seed_eval_episodes": 4, "serve.latest_ttl_s": 0.5, "serve.max_replicas": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, store URI, log paths, gRPC address) of `serve run` on a store with generator
    `spread` v0001; the log paths are `serve run`'s output and every file of its Ray's logs."""
    tmp = tmp_path_factory.mktemp("serve")
    store_uri = str(tmp / "store")
    fill_store(CheckpointStore(store_uri))
    train_generator(train_cfg(store_uri, name="spread", epochs=3))
    port, grpc_port = free_ports(2)
    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    config["grpc_options"] = {**config["grpc_options"], "port": grpc_port}
    app = config["applications"][0]
    app["args"] = {**app["args"], "store.uri": store_uri, **SERVE_ARGS}
    # beside it, on the same Serve instance: one with a generator that takes one request at a time and
    # queues one (overload), and one in the split layout whose token variable is unset (/v1/seed closed)
    small = {"serve.num_cpus": 0.1, "serve.ingress_num_cpus": 0.1}
    config["applications"] += [
        {**app, "name": "tight", "route_prefix": "/tight",
         "args": {**app["args"], **small, "serve.batching": False, "serve.max_batch_size": 1,
                  "serve.max_ongoing_requests": 1, "serve.max_queued_requests": 1}},
        {**app, "name": "split", "route_prefix": "/split",
         "args": {**app["args"], **small, "serve.layout": "split", "serve.token_env": "PGEN_TEST_UNSET_TOKEN"}}]
    (tmp / "serve.yaml").write_text(yaml.safe_dump(config))
    log = tmp / "serve.log"
    # Ray's own files (where Serve's logs go: throughput-optimised Serve writes none to stderr) in a
    # short folder of this test's (socket paths have a length limit)
    ray_tmp = Path(tempfile.mkdtemp(prefix="pgen-ray-"))
    env = {**os.environ, **local_serve_env(), "PGEN_SERVE_TOKEN": TOKEN, "RAY_DEDUP_LOGS": "0",
           "RAY_TMPDIR": str(ray_tmp)}
    proc = subprocess.Popen(["serve", "run", str(tmp / "serve.yaml")], cwd=ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    # HAProxy marks a replica up after two health checks, and Ray starts slowly on a loaded machine
    deadline = time.monotonic() + 360
    while True:
        try:
            if all(requests.get(f"{base}{prefix}/healthz", timeout=5).status_code == 200
                   for prefix in ("", "/tight", "/split")):
                break
        except requests.RequestException:  # not listening yet, or the proxy waits for the app
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"serve run did not come up:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    yield base, store_uri, [log, ray_tmp], f"127.0.0.1:{grpc_port}"
    stop(proc)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def logged_text(paths: list[Path]) -> str:
    """Everything `serve run` printed and every log file of its Ray."""
    files = [p for path in paths for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()]
    return "\n".join(p.read_text(errors="replace") for p in files)


def stop(proc: subprocess.Popen) -> None:
    """SIGINT to `serve run`'s session (it shuts the application and its Ray down), SIGKILL if it hangs."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of its Ray is left in the session
    except ProcessLookupError:
        pass


def post(base: str, path: str, body, headers: dict | None = None, **kw) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{base}{path}", data=data, headers={"Content-Type": "application/json", **(headers or {})},
                         timeout=60, **kw)


def test_health_models_and_openapi(server):
    base, store_uri, _, _ = server
    assert requests.get(f"{base}/healthz").json() == {"status": "ok"}  # nothing about the store
    models = requests.get(f"{base}/v1/models").json()["models"]
    spread = [m for m in models if m["name"] == "spread"]
    assert spread and spread[0]["version"] == "v0001" and spread[0]["arch"] == SMALL.arch_key
    assert spread[0]["group"] == "agent" and spread[0]["return_min"] < spread[0]["return_max"]
    schema = requests.get(f"{base}/openapi.json").json()
    assert {"/v1/generate", "/v1/seed", "/v1/models", "/healthz"} <= set(schema["paths"])
    assert "GenerateRequest" in schema["components"]["schemas"]
    assert requests.get(f"{base}/docs").status_code == 200


def test_generate_json_and_policy_file(server, tmp_path):
    base, store_uri, _, _ = server
    body = {"model": "spread", "target_return": -50.0, "num": 3, "seed": 11}
    r = post(base, "/v1/generate", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["version"] == "v0001" and out["model_id"] == "spread@v0001" and out["seed"] == 11
    params = np.asarray(out["params"], np.float32)
    assert params.shape == (3, out["num_params"]) and out["in_range"]
    assert [tuple(x[1]) for x in out["layout"]] == [s for _, s in SMALL.layout.entries]
    # deterministic under a seed, and what the generator gives in-process (up to batched float rounding)
    again = np.asarray(post(base, "/v1/generate", body).json()["params"], np.float32)
    local = load_generator(CheckpointStore(store_uri), "spread@v0001").generate(-50.0, num=3, seed=11)
    np.testing.assert_allclose(again, params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params, local, rtol=1e-5, atol=1e-6)
    # the return the model was conditioned on (a calibrated version's curve), null when the request itself
    conditioned = load_generator(CheckpointStore(store_uri), "spread@v0001").conditioned_on(-50.0)
    assert out["conditioned_on"] == (None if conditioned is None else pytest.approx(conditioned))
    r = post(base, "/v1/generate", {**body, "model": "spread@v0001", "format": "safetensors"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    (tmp_path / "p.safetensors").write_bytes(r.content)
    pf = read_policy_file(tmp_path / "p.safetensors")
    assert pf.metadata["model"] == "spread" and pf.metadata["version"] == "v0001"
    assert float(pf.metadata["target_return"]) == -50.0 and pf.params.shape == params.shape
    np.testing.assert_allclose(pf.params, params, rtol=1e-5, atol=1e-6)
    assert len(load_policies(tmp_path / "p.safetensors")) == 3
    assert pf.metadata.get("conditioned_on") == (None if conditioned is None else repr(conditioned))
    assert post(base, "/v1/generate", {"model": "spread", "target_return": 5.0}).json()["seed"] >= 0


BAD = [
    ({"target_return": -50}, 422, "model"),
    ({"model": "nope", "target_return": -50}, 404, "no generator 'nope'"),
    ({"model": "spread@v0042", "target_return": -50}, 404, "no complete version v0042"),
    ({"model": "../etc", "target_return": -50}, 422, "model"),
    ({"model": "spread"}, 422, "target_return"),
    ({"model": "spread", "target_return": "abc"}, 422, "target_return"),
    ({"model": "spread", "target_return": "-50"}, 422, "target_return"),
    ({"model": "spread", "target_return": None}, 422, "target_return"),
    ({"model": "spread", "target_return": -50, "num": 9}, 422, "at most 8"),
    ({"model": "spread", "target_return": -50, "num": 0}, 422, "num"),
    ({"model": "spread", "target_return": -50, "temperature": -1}, 422, "temperature"),
    ({"model": "spread", "target_return": -50, "format": "pickle"}, 422, "format"),
    ({"model": "spread", "target_return": -50, "surprise": 1}, 422, "surprise"),
    ([1, 2], 422, "body"),
]


@pytest.mark.parametrize("body, status, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_generate_requests_get_a_4xx_with_a_json_message(server, body, status, message):
    base, store_uri, _, _ = server
    r = post(base, "/v1/generate", body)
    assert r.status_code == status and message in r.json()["error"], r.text
    assert store_uri not in r.text and "127.0.0.1" not in r.text  # where the store is stays in the logs


@pytest.mark.parametrize("raw", ['{"model": "spread", "target_return": NaN}', '{"model": "spread", "target_return": Infinity}',
                                 '{"model": "spread", "target_return": -Infinity}', '{"model": "spread", "target_return": 1e999}',
                                 "not json", '{"model": "spread", "target_return": -50', ""])
def test_non_finite_and_malformed_json_is_a_422(server, raw):
    r = post(server[0], "/v1/generate", raw)
    assert r.status_code == 422 and "error" in r.json(), r.text


def test_content_type_size_and_unknown_routes(server):
    base = server[0]
    r = requests.post(f"{base}/v1/generate", data='{"model": "spread", "target_return": 1}',
                      headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    r = post(base, "/v1/generate", {"model": "spread", "target_return": 1, "pad": "x" * 5000})
    assert r.status_code == 413 and "4096 bytes" in r.json()["error"]
    chunks = iter([b'{"model": "spread", ', b'"pad": "' + b"x" * 5000 + b'", "target_return": 1}'])
    r = requests.post(f"{base}/v1/generate", data=chunks, headers={"Content-Type": "application/json"})
    assert r.status_code == 413  # streamed without a Content-Length
    assert requests.get(f"{base}/v2/nothing").json()["error"] == "Not Found"
    assert requests.get(f"{base}/v1/generate").status_code == 405


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
FIELDS = ["model", "target_return", "num", "seed", "temperature", "format", "population_size", "run_id"]
FIELD_VALUES = {"model": st.sampled_from(["spread", "spread@v0001", "nope", "", "a" * 300]) | JSON_VALUES,
                "target_return": st.floats(-1e6, 1e6) | JSON_VALUES,
                "num": st.integers(-2, 12) | JSON_VALUES, "population_size": st.integers(-1, 6) | JSON_VALUES,
                "format": st.sampled_from(["json", "safetensors"]) | JSON_VALUES}


@st.composite
def request_bodies(draw):
    """Dicts over the schema's fields (plausible or arbitrary values), sometimes extra keys or not a dict."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON_VALUES)
    keys = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=len(FIELDS)))
    body = {k: draw(FIELD_VALUES.get(k, JSON_VALUES)) for k in keys}
    if draw(st.integers(0, 5)) == 0:
        body[draw(st.text(max_size=6))] = draw(JSON_VALUES)
    return body


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=request_bodies(), path=st.sampled_from(["/v1/generate", "/v1/seed"]))
def test_fuzzed_request_bodies_never_get_a_5xx(server, body, path):
    base = server[0]
    # json.dumps writes NaN / Infinity literals, which is what a careless client sends
    r = post(base, path, json.dumps(body), headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code < 500, (body, r.status_code, r.text)
    if r.status_code >= 400:
        assert isinstance(r.json()["error"], str)


def test_seed_needs_the_bearer_token_and_the_token_is_not_logged(server):
    base, _, logs, _ = server
    body = {"model": "spread", "target_return": -50, "population_size": 2}
    r = post(base, "/v1/seed", body)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert post(base, "/v1/seed", body, {"Authorization": "Bearer wrong"}).status_code == 403
    assert post(base, "/v1/seed", {**body, "population_size": 5}, {"Authorization": f"Bearer {TOKEN}"}).status_code == 422
    assert TOKEN not in logged_text(logs)  # serve run's output and the Serve log files (buffered: what is there)


def test_seed_is_closed_when_the_server_has_no_token(server):
    base = server[0]
    body = {"model": "spread", "target_return": -50, "population_size": 2}
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
        r = post(base, "/split/v1/seed", body, headers)
        assert r.status_code == 403 and "PGEN_TEST_UNSET_TOKEN" in r.json()["error"], r.text
        assert "allow_unauthenticated_seed" in r.json()["error"]
    assert post(base, "/split/v1/generate", {"model": "spread", "target_return": -50}).status_code == 200


def test_one_client_gets_429_beyond_its_seed_concurrency(server):
    from concurrent.futures import ThreadPoolExecutor

    base = server[0]
    body = {"model": "spread", "target_return": -50, "population_size": 1}
    with ThreadPoolExecutor(33) as pool:
        replies = list(pool.map(lambda _: post(base, "/v1/seed", body, {"Authorization": f"Bearer {TOKEN}"}),
                                range(33)))
    codes = sorted(r.status_code for r in replies)
    assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, codes
    busy = next(r for r in replies if r.status_code == 429)
    assert int(busy.headers["Retry-After"]) >= 1 and "serve.seed_concurrency" in busy.json()["error"]


def test_overload_gets_503_with_retry_after(server):
    from concurrent.futures import ThreadPoolExecutor

    base = server[0]
    body = {"model": "spread", "target_return": -50, "num": 8}
    with ThreadPoolExecutor(48) as pool:
        replies = list(pool.map(lambda _: post(base, "/tight/v1/generate", body), range(96)))
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, sorted(codes)
    busy = next(r for r in replies if r.status_code == 503)
    assert int(busy.headers["Retry-After"]) >= 1 and "overloaded" in busy.json()["error"], busy.text


def test_a_new_version_under_traffic_fails_no_request(server):
    base, store_uri, _, _ = server
    seen, failures, stop = [], [], threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                r = post(base, "/v1/generate", {"model": "spread", "target_return": -60.0, "num": 2})
                (seen.append(r.json()["version"]) if r.status_code == 200 else failures.append(r.text))
            except requests.RequestException as err:
                failures.append(repr(err))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    new = train_generator(train_cfg(store_uri, name="spread", epochs=2))  # registers v0002, moves LATEST
    deadline = time.monotonic() + 60
    while "v0002" not in seen[-4:] and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    assert new.version == "v0002" and not failures, failures[:3]
    assert "v0001" in seen and seen[-1] == "v0002", seen[-10:]
    assert requests.get(f"{base}/v1/models").json()["models"][-1]["version"] == "v0002"


def test_seeded_population_starts_at_the_seed_policies_return(server, tmp_path):
    base, store_uri, _, _ = server
    body = {"model": "spread@v0001", "target_return": -45.0, "population_size": 2, "run_id": "seeds-1", "seed": 5}
    r = post(base, "/v1/seed", body, {"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    seeded = r.json()
    assert seeded["run_id"] == "seeds-1" and seeded["origin"] == "seeded:spread@v0001" and len(seeded["returns"]) == 2
    assert post(base, "/v1/seed", body, {"Authorization": f"Bearer {TOKEN}"}).status_code == 409
    store = CheckpointStore(store_uri)
    rows = sorted(store.read_records(run_id="seeds-1").table.to_pylist(), key=lambda r: r["member"])
    assert [r["return_mean"] for r in rows] == seeded["returns"] and {r["step"] for r in rows} == {0}
    out = pgen("populate", f"store.uri={store_uri}", "policy.hidden=[8]", "population.size=2",
               "population.max_env_steps=400", "population.eval_episodes=4", "algo.num_envs=4", "algo.rollout_steps=50",
               "population.checkpoint_every=1", "population.cpus_per_worker=0.5", "population.seed_from=seeds-1",
               "run_id=from-seed", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for member in (0, 1):
        first = min(store.read_records(run_id=f"from-seed-m{member:03d}").table.to_pylist(), key=lambda r: r["step"])
        # the same weights on the same evaluation episodes: the population starts exactly where the seeds are
        assert first["step"] == 0 and first["origin"] == "seeded:spread@v0001"
        assert first["return_mean"] == seeded["returns"][member]
        np.testing.assert_array_equal(np.asarray(first["params"], np.float32), np.asarray(rows[member]["params"], np.float32))


def test_a_corrupt_version_is_a_404_and_the_replica_keeps_serving(server):
    base, store_uri, _, _ = server
    root = Path(store_uri) / "generators"
    broken = root / "broken" / "v0001"
    broken.mkdir(parents=True)
    for name in ("normalizer.safetensors", "metrics.json", "config.json"):
        (broken / name).write_bytes((root / "spread" / "v0001" / name).read_bytes())
    (broken / "model.safetensors").write_bytes((root / "spread" / "v0001" / "model.safetensors").read_bytes()[:200])
    (root / "broken" / "LATEST").write_text("v0001")
    r = post(base, "/v1/generate", {"model": "broken", "target_return": -50})
    assert r.status_code == 404 and "unreadable" in r.json()["error"], r.text
    assert post(base, "/v1/generate", {"model": "spread@v0001", "target_return": -50}).status_code == 200


def test_pgen_serve_rejects_a_bad_config_with_a_clear_error(tmp_path, pgen_in_process):
    out = pgen("serve", "serve.max_num=many", cwd=tmp_path)  # the command itself, once
    assert out.returncode == 2 and "serve.max_num" in out.stderr and "Traceback" not in out.stderr
    for override, message in (("serve.nope=1", "nope"),
                              ("serve.max_batch_size=100", "cannot exceed serve.max_ongoing_requests"),
                              ("serve.layout=triple", "layout"), ("serve.grpc_port=70000", "serve.grpc_port")):
        status, _, err = pgen_in_process("serve", override)
        assert status == 2 and message in err and "Traceback" not in err, (override, err)


def test_a_batch_decodes_every_job_as_if_it_were_alone(tmp_path):
    from serve.decoder import DecodeJob, decode_jobs

    store = CheckpointStore(str(tmp_path / "store"))
    fill_store(store)
    train_generator(train_cfg(store.uri, name="spread", epochs=2))
    a, b = load_generator(store, "spread@v0001"), load_generator(store, "spread@v0001")  # two models in one batch
    jobs = [DecodeJob(a, a.spec, -50.0, 2, 1, 1.0), DecodeJob(b, b.spec, -30.0, 1, 2, 0.5),
            DecodeJob(a, a.spec, -40.0, 3, 3, 0.0)]
    for rows in (64, 2):  # one forward pass per model, or slices of two policies (serve.decode_rows)
        out = decode_jobs(jobs, rows)
        assert [o.shape[0] for o in out] == [2, 1, 3]
        for job, params in zip(jobs, out):
            alone = job.gen.generate(job.target, num=job.num, seed=job.seed, temperature=job.temperature)
            np.testing.assert_allclose(params, alone, rtol=1e-5, atol=1e-6)


def test_grpc_generate_matches_http_and_maps_errors(server):
    import grpc

    from serve import pgen_pb2 as pb
    from serve import pgen_pb2_grpc

    base, _, _, target = server
    # a pinned version: an earlier test may have registered v0002 and moved LATEST
    http = post(base, "/v1/generate", {"model": "spread@v0001", "target_return": -50.0, "num": 3, "seed": 11}).json()
    with grpc.insecure_channel(target) as channel:
        stub = pgen_pb2_grpc.PolicyGeneratorStub(channel)
        meta = (("application", "pgen"),)
        reply = stub.Generate(pb.GenerateRequest(model="spread@v0001", target_return=-50.0, num=3, seed=11),
                              metadata=meta)
        assert (reply.model_id, reply.seed, reply.num, reply.num_params) == ("spread@v0001", 11, 3, http["num_params"])
        params = np.asarray(reply.params, np.float32).reshape(reply.num, reply.num_params)
        np.testing.assert_allclose(params, np.asarray(http["params"], np.float32), rtol=1e-5, atol=1e-6)
        assert json.loads(reply.layout_json) == http["layout"] and reply.in_range == http["in_range"]
        assert (reply.conditioned_on if reply.HasField("conditioned_on") else None) == http["conditioned_on"]
        unset = stub.Generate(pb.GenerateRequest(model="spread", target_return=-50.0), metadata=meta)
        assert unset.num == 1 and unset.temperature == 0.5 and len(unset.params) == unset.num_params
        assert unset.model_id.startswith("spread@v")  # a bare name resolves to LATEST
        file = stub.Generate(pb.GenerateRequest(model="spread@v0001", target_return=-50.0, num=3, seed=11,
                                                format=pb.POLICY_FILE), metadata=meta)
        assert file.policy_file[:8] and not file.params
        bad = [(pb.GenerateRequest(model="spread", target_return=float("nan")), "INVALID_ARGUMENT", "target_return"),
               (pb.GenerateRequest(model="spread", target_return=1, num=0), "INVALID_ARGUMENT", "num"),
               (pb.GenerateRequest(model="spread", target_return=1, num=9), "INVALID_ARGUMENT", "at most 8"),
               (pb.GenerateRequest(model="spread", target_return=1, seed=2**64 - 1), "INVALID_ARGUMENT", "seed"),
               (pb.GenerateRequest(model="../etc", target_return=1), "INVALID_ARGUMENT", "model"),
               (pb.GenerateRequest(model="nope", target_return=1), "NOT_FOUND", "no generator 'nope'")]
        for request, code, message in bad:
            with pytest.raises(grpc.RpcError) as err:
                stub.Generate(request, metadata=meta)
            assert err.value.code().name == code and message in err.value.details(), err.value.details()
            assert server[1] not in err.value.details()


def test_grpc_stubs_are_generated_from_the_proto(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc")
    shutil.copytree(ROOT / "serve", tmp_path / "serve", ignore=shutil.ignore_patterns("*.py[co]", "__pycache__"))
    for stub in ("pgen_pb2.py", "pgen_pb2_grpc.py"):
        (tmp_path / "serve" / stub).unlink()
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert protoc.main(["protoc", "-I.", "--python_out=.", "--grpc_python_out=.", "serve/pgen.proto"]) == 0
    finally:
        os.chdir(cwd)
    for stub in ("pgen_pb2.py", "pgen_pb2_grpc.py"):
        fresh, committed = (without_tool_versions((d / "serve" / stub).read_text()) for d in (tmp_path, ROOT))
        assert fresh == committed, f"serve/{stub} is stale: regenerate it (the command is at the top of serve/pgen.proto)"


def without_tool_versions(stub: str) -> str:
    """A generated stub without the versions of the grpcio-tools / protobuf that wrote it (pip installs the
    newest; the committed stubs keep the floors of pyproject.toml, which they also require at import)."""
    stub = re.sub(r"GRPC_GENERATED_VERSION = '[^']*'", "GRPC_GENERATED_VERSION = ''", stub)
    stub = re.sub(r"# Protobuf Python Version: \S+", "# Protobuf Python Version:", stub)
    return re.sub(r"ValidateProtobufRuntimeVersion\([^)]*\)", "ValidateProtobufRuntimeVersion()", stub)


def test_the_split_layout_answers_as_the_single_one(server):
    base = server[0]
    body = {"model": "spread", "target_return": -50.0, "num": 3, "seed": 11}
    single, split = post(base, "/v1/generate", body).json(), post(base, "/split/v1/generate", body).json()
    np.testing.assert_allclose(np.asarray(split["params"], np.float32), np.asarray(single["params"], np.float32),
                               rtol=1e-5, atol=1e-6)
    assert {k: v for k, v in split.items() if k != "params"} == {k: v for k, v in single.items() if k != "params"}
    for body, status in (({"model": "nope", "target_return": -50}, 404), ({"model": "spread", "target_return": -50,
                                                                            "num": 9}, 422)):
        r = post(base, "/split/v1/generate", body)
        assert r.status_code == status and r.json()["error"], r.text
    assert requests.get(f"{base}/split/healthz").json() == {"status": "ok"}


def test_pgen_serve_starts_its_ray_in_the_adopted_mode_and_leaves_the_environment_alone(monkeypatch):
    from pgen.config import ServeProxy, ServeSettings
    from serve.launcher import environment, ray_serve_env

    assert ray_serve_env(ServeSettings()) == {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    assert ray_serve_env(ServeSettings(proxy=ServeProxy.python, throughput_optimized=False)) == {
        "RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    monkeypatch.setenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0")
    with environment(ray_serve_env(ServeSettings())):
        assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ and os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"
