"""The Serve application over real HTTP: `serve run` of serve/config.yaml (port and args changed) on
a local Ray, in a subprocess, against a local store holding a small trained generator.

Every endpoint, the error cases, a schema-driven fuzz of the request bodies (no 5xx), the bearer
token, a new generator version under traffic with zero failed requests, and a population seeded by
/v1/seed that starts at the seed policies' measured return.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgen.generator.sample import load_generator
from pgen.generator.train import train_generator
from pgen.policy import load_policies, read_policy_file
from pgen.store import CheckpointStore
from tests.s3server import free_port
from tests.test_generator import SMALL, fill_store, pgen, train_cfg

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-7f3a"
SERVE_ARGS = {"serve.max_num": 8, "serve.max_population": 4, "serve.max_body_bytes": 4096,
              "serve.seed_eval_episodes": 4, "serve.latest_ttl_s": 0.5, "serve.max_replicas": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, store URI, log path) of `serve run` on a store with generator `spread` v0001."""
    tmp = tmp_path_factory.mktemp("serve")
    store_uri = str(tmp / "store")
    fill_store(CheckpointStore(store_uri))
    train_generator(train_cfg(store_uri, name="spread", epochs=3))
    port = free_port()
    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    app = config["applications"][0]
    app["args"] = {**app["args"], "store.uri": store_uri, **SERVE_ARGS}
    # beside it, on the same Serve instance: an app whose token variable is unset (/v1/seed closed), and
    # one with a generator that takes one request at a time and queues one (overload)
    small = {"serve.num_cpus": 0.1, "serve.ingress_num_cpus": 0.1}
    config["applications"] += [
        {**app, "name": "open", "route_prefix": "/open",
         "args": {**app["args"], **small, "serve.token_env": "PGEN_TEST_UNSET_TOKEN"}},
        {**app, "name": "tight", "route_prefix": "/tight",
         "args": {**app["args"], **small, "serve.batching": False, "serve.max_batch_size": 1,
                  "serve.max_ongoing_requests": 1, "serve.max_queued_requests": 1}}]
    (tmp / "serve.yaml").write_text(yaml.safe_dump(config))
    log = tmp / "serve.log"
    env = {**os.environ, "PGEN_SERVE_TOKEN": TOKEN, "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.Popen(["serve", "run", str(tmp / "serve.yaml")], cwd=ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if all(requests.get(f"{base}{prefix}/healthz", timeout=5).status_code == 200
                   for prefix in ("", "/open", "/tight")):
                break
        except requests.RequestException:  # not listening yet, or the proxy waits for the app
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"serve run did not come up:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    yield base, store_uri, log
    stop(proc)


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
    base, store_uri, _ = server
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
    base, store_uri, _ = server
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
    r = post(base, "/v1/generate", {**body, "model": "spread@v0001", "format": "safetensors"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    (tmp_path / "p.safetensors").write_bytes(r.content)
    pf = read_policy_file(tmp_path / "p.safetensors")
    assert pf.metadata["model"] == "spread" and pf.metadata["version"] == "v0001"
    assert float(pf.metadata["target_return"]) == -50.0 and pf.params.shape == params.shape
    np.testing.assert_allclose(pf.params, params, rtol=1e-5, atol=1e-6)
    assert len(load_policies(tmp_path / "p.safetensors")) == 3
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
    base, store_uri, _ = server
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
    base, _, log = server
    body = {"model": "spread", "target_return": -50, "population_size": 2}
    r = post(base, "/v1/seed", body)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert post(base, "/v1/seed", body, {"Authorization": "Bearer wrong"}).status_code == 403
    assert post(base, "/v1/seed", {**body, "population_size": 5}, {"Authorization": f"Bearer {TOKEN}"}).status_code == 422
    assert TOKEN not in log.read_text()


def test_seed_is_closed_when_the_server_has_no_token(server):
    base = server[0]
    body = {"model": "spread", "target_return": -50, "population_size": 2}
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
        r = post(base, "/open/v1/seed", body, headers)
        assert r.status_code == 403 and "PGEN_TEST_UNSET_TOKEN" in r.json()["error"], r.text
        assert "allow_unauthenticated_seed" in r.json()["error"]
    assert post(base, "/open/v1/generate", {"model": "spread", "target_return": -50}).status_code == 200


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
    base, store_uri, _ = server
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
    base, store_uri, _ = server
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
    base, store_uri, _ = server
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


def test_pgen_serve_rejects_a_bad_config_with_a_clear_error(tmp_path):
    out = pgen("serve", "serve.max_num=many", cwd=tmp_path)
    assert out.returncode == 2 and "serve.max_num" in out.stderr and "Traceback" not in out.stderr
    out = pgen("serve", "serve.nope=1", cwd=tmp_path)
    assert out.returncode == 2 and "nope" in out.stderr
    out = pgen("serve", "serve.max_batch_size=100", cwd=tmp_path)
    assert out.returncode == 2 and "cannot exceed serve.max_ongoing_requests" in out.stderr


def test_a_batch_decodes_every_job_as_if_it_were_alone(tmp_path):
    from serve.app import DecodeJob, decode_jobs

    store = CheckpointStore(str(tmp_path / "store"))
    fill_store(store)
    train_generator(train_cfg(store.uri, name="spread", epochs=2))
    a, b = load_generator(store, "spread@v0001"), load_generator(store, "spread@v0001")  # two models in one batch
    jobs = [DecodeJob(a, -50.0, 2, 1, 1.0), DecodeJob(b, -30.0, 1, 2, 0.5), DecodeJob(a, -40.0, 3, 3, 0.0)]
    out = decode_jobs(jobs)
    assert [o.shape[0] for o in out] == [2, 1, 3]
    for job, params in zip(jobs, out):
        alone = job.gen.generate(job.target, num=job.num, seed=job.seed, temperature=job.temperature)
        np.testing.assert_allclose(params, alone, rtol=1e-5, atol=1e-6)
