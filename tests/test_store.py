"""CheckpointStore against a local folder and a moto S3 server (a real subprocess on 127.0.0.1)."""

import hashlib
import io
import logging
import threading
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pgen.store import RECORD_SCHEMA, CheckpointStore, StoreError, params_checksum, part_key

N = 5573  # our policy size


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> CheckpointStore:
    uri = str(tmp_path / "store") if request.param == "local" else request.getfixturevalue("s3_store_uri")
    return CheckpointStore(uri, retry_s=10)


def record(run_id="r1", member=0, env_key="spread", group="agent", arch="mlp-a", step=0, params=None, **over):
    params = np.random.default_rng(step).standard_normal(N).astype(np.float32) if params is None else params
    r = {"run_id": run_id, "member": member, "env_id": "mpe2.simple_spread_v3", "env_key": env_key,
         "group": group, "arch": arch, "step": step, "update": step // 100, "return_mean": -10.0 + step,
         "return_std": 1.5, "episodes": 8, "num_params": int(params.size), "params": params,
         "checksum": params_checksum(params), "created_at": datetime(2025, 1, 2, 3, 4, 5, 678901, timezone.utc),
         "seed": 1000 + member, "origin": "trained"}
    return r | over


def write(store, records, seq):
    r = records[0]
    return store.write_part(records, r["env_key"], r["group"], r["arch"], r["run_id"], seq)


def test_params_checksum_is_sha256_of_little_endian_float32():
    values = np.array([0.0, -0.0, 1.5, -2.25, np.float32(1e-45), 3.4e38], dtype=np.float32)
    expected = hashlib.sha256(values.astype("<f4").tobytes()).hexdigest()
    assert params_checksum(values) == expected
    assert params_checksum(values.astype(">f4")) == expected  # byte order of the input does not matter
    assert hashlib.sha256(b"\x00\x00\xc0\x3f").hexdigest() == params_checksum(np.array([1.5], np.float32))


def test_round_trip_is_exact(store):
    special = np.array([0.0, -0.0, np.float32(1e-45), -3.4e38, 1 / 3], dtype=np.float32)
    records = [record(step=s, member=s % 2) for s in range(3)]
    records[1]["params"] = np.concatenate([special, records[1]["params"][special.size:]])
    records[1]["checksum"] = params_checksum(records[1]["params"])
    assert write(store, records, 0) is True
    result = store.read_records()
    assert (result.rows, result.bad_rows, result.bad_parts) == (3, 0, [])
    assert result.table.schema.equals(RECORD_SCHEMA)
    for got, want in zip(result.table.to_pylist(), records):
        assert np.array_equal(np.asarray(got.pop("params"), np.float32).view(np.uint32), want["params"].view(np.uint32))
        assert got == {k: v for k, v in want.items() if k != "params"}


def test_put_once_never_overwrites(store):
    assert store.put_once("runs/r1/run.json", b"first") is True
    assert store.put_once("runs/r1/run.json", b"second") is False
    assert store.get("runs/r1/run.json") == b"first"
    assert write(store, [record()], 0) is True
    assert write(store, [record(step=7)], 0) is False
    assert store.read_records().table["step"].to_pylist() == [0]


def test_put_once_race_has_one_winner(store):
    results = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, store.put_once("k/x", b"%d" % i)))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, ok in results.items() if ok]
    assert len(winners) == 1 and store.get("k/x") == b"%d" % winners[0]


def test_pointer_overwrites_and_objects(store):
    store.put_pointer("runs/r1/state/latest", b"00000001")
    store.put_pointer("runs/r1/state/latest", b"00000002")
    assert store.get("runs/r1/state/latest") == b"00000002"
    assert store.exists("runs/r1/state/latest") and not store.exists("runs/r1/state/nope")
    with pytest.raises(KeyError):
        store.get("runs/r1/nope")
    with pytest.raises(ValueError):
        store.put_once("runs/../escape", b"x")


def test_listing_filters_and_next_seq(store):
    layout = [("spread", "agent", "mlp-a", "r1"), ("spread", "agent", "mlp-a", "r2"),
              ("spread", "adversary", "mlp-b", "r1"), ("tag", "agent", "mlp-a", "r3")]
    for i, (env_key, group, arch, run_id) in enumerate(layout):
        for seq in (0, 1):
            write(store, [record(run_id, env_key=env_key, group=group, arch=arch, step=10 * i + seq)], seq)
    store.put_once("runs/r1/run.json", b"{}")
    assert store.list("runs/") == ["runs/r1/run.json"]
    assert len(store.list()) == 9 and store.list() == sorted(store.list())
    assert store.list("checkpoints/env=tag/") == [part_key("tag", "agent", "mlp-a", "r3", s) for s in (0, 1)]
    for filters, steps in [({}, [0, 1, 10, 11, 20, 21, 30, 31]), ({"env_key": "spread"}, [0, 1, 10, 11, 20, 21]),
                           ({"group": "agent"}, [0, 1, 10, 11, 30, 31]), ({"arch": "mlp-b"}, [20, 21]),
                           ({"run_id": "r1"}, [0, 1, 20, 21]), ({"env_key": "spread", "run_id": "r2"}, [10, 11]),
                           ({"env_key": "nope"}, [])]:
        result = store.read_records(**filters, columns=["step", "run_id"])
        assert sorted(result.table["step"].to_pylist()) == steps, filters
        assert result.table.column_names == ["step", "run_id"]
    assert store.next_part_seq("spread", "agent", "mlp-a", "r1") == 2
    assert store.next_part_seq("spread", "agent", "mlp-a", "r9") == 0
    write(store, [record("r1", step=99)], 7)
    assert store.next_part_seq("spread", "agent", "mlp-a", "r1") == 8


def test_local_temp_files_are_invisible(tmp_path):
    store = CheckpointStore(f"file://{tmp_path}")
    assert store.uri == f"file://{tmp_path}"
    write(store, [record()], 0)
    assert not list(tmp_path.rglob(".*"))  # no temp file left behind
    (tmp_path / "checkpoints" / ".part-000001.parquet.abc.tmp").write_bytes(b"half a part")
    assert store.list() == [part_key("spread", "agent", "mlp-a", "r1", 0)]
    assert CheckpointStore("relative/dir").uri.startswith("/")


def test_bad_parts_and_bad_rows_are_skipped_and_counted(store):
    write(store, [record(step=0)], 0)
    store.put_once(part_key("spread", "agent", "mlp-a", "r1", 1), b"garbage, not parquet")
    other = io.BytesIO()
    pq.write_table(pa.table({"run_id": ["r1"], "params": [[1.0]]}), other)
    store.put_once(part_key("spread", "agent", "mlp-a", "r1", 2), other.getvalue())
    good, nan = record(step=3), np.ones(N, np.float32)
    nan[5] = np.nan
    bad = [record(step=4, checksum="0" * 64), record(step=5, params=nan),
           record(step=6, num_params=N - 1), record(step=7, return_mean=float("inf"))]
    write(store, [good] + bad, 3)
    result = store.read_records()
    assert result.rows == 2 and sorted(result.table["step"].to_pylist()) == [0, 3]
    assert result.bad_rows == 4
    reasons = dict(result.bad_parts)
    assert set(reasons) == {part_key("spread", "agent", "mlp-a", "r1", s) for s in (1, 2)}
    assert "unreadable" in reasons[part_key("spread", "agent", "mlp-a", "r1", 1)]
    assert "wrong schema" in reasons[part_key("spread", "agent", "mlp-a", "r1", 2)]
    # without params the checksum cannot be checked; a non-finite return still can
    light = store.read_records(columns=["step"])
    assert (light.rows, light.bad_rows) == (5, 1)


@pytest.mark.parametrize("uri", ["ftp://host/x", "gs://bucket/x", "", "s3:///prefix-only", "file://host/x"])
def test_bad_uri_is_a_store_error(uri):
    with pytest.raises(StoreError):
        CheckpointStore(uri)


def test_missing_bucket_fails_fast(s3_server):
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="pgen-missing-bucket.*no such bucket"):
        CheckpointStore("s3://pgen-missing-bucket/pgen", retry_s=30)
    assert time.monotonic() - t0 < 5


def test_retry_classification(s3_server, tmp_path, caplog):
    """A 5xx is retried by botocore (and logged); a retried put whose first attempt landed is 'already
    there' (412); 403 is final at once."""
    import boto3
    from botocore.stub import Stubber

    from tests.s3server import S3Server

    # the first two object PUTs lose their reply: the store's conditional-write probe, then a/b
    with S3Server(persist=False, state_dir=tmp_path / "moto", fail_puts=2) as lossy:
        boto3.client("s3", endpoint_url=lossy.endpoint_url).create_bucket(Bucket="lossy")
        store = CheckpointStore("s3://lossy/pgen", endpoint_url=lossy.endpoint_url, retry_s=10)
        with caplog.at_level(logging.WARNING, "pgen"):
            assert store.put_once("a/b", b"x") is False  # stored, the reply lost, the retry gets 412
        assert "500 InternalError); retry 1 of" in caplog.text and "testing" not in caplog.text
        assert "ignores If-None-Match" not in caplog.text  # moto enforces it
        assert store.get("a/b") == b"x" and store.put_once("a/c", b"y") is True
    client = store._backend.client
    with Stubber(client) as stub:
        stub.add_client_error("put_object", "AccessDenied", http_status_code=403)
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="access denied"):
            store.put_once("a/d", b"x")
        assert time.monotonic() - t0 < 1


def test_put_survives_a_server_outage(s3_server, s3_store_uri, caplog):
    # retry_s=60: ten retries whose jittered backoff (mean 65 s, sd 14 s) cannot plausibly run out
    # while the server replays its recording and rebinds (with retry_s=30 one run in ~50 did)
    store = CheckpointStore(s3_store_uri, retry_s=60)
    write(store, [record()], 0)
    result = {}
    s3_server.stop()
    try:
        with caplog.at_level(logging.WARNING, "pgen"):
            thread = threading.Thread(target=lambda: result.update(ok=write(store, [record(step=1)], 1)))
            thread.start()
            time.sleep(3)
            assert thread.is_alive()  # still retrying
    finally:
        s3_server.start()  # keeps its buckets and objects (replayed)
    thread.join(90)
    assert result == {"ok": True}
    assert "retry" in caplog.text
    assert store.read_records().table["step"].to_pylist() == [0, 1]


def tiny_generator(name: str):
    """A registrable (untrained) generator of a 2-2-2 MLP policy."""
    from dataclasses import asdict

    from pgen.generator.single.kind import SingleArchGenerator
    from pgen.generator.single.model import ModelConfig, ParamVAE
    from pgen.generator.single.normalize import Normalizer
    from pgen.generator.single.tokens import Tokenizer
    from pgen.policies.spec import PolicySpec

    spec = PolicySpec("mlp", 2, (2,), 2, True, "tanh")
    tokenizer = Tokenizer(spec.layout, "neuron", 4)
    model = ParamVAE(ModelConfig([t.tokens for t in tokenizer.layers], [t.width for t in tokenizer.layers],
                                 d_model=8, n_layers=1, n_heads=2, latent_dim=2, fourier_features=2))
    params = np.random.default_rng(0).standard_normal((4, spec.layout.num_params)).astype(np.float32)
    info = {"name": name, "generator": {"tokenisation": "neuron", "chunk_size": 4}, "model": asdict(model.cfg),
            "policy_spec": spec.to_json(), "layout": spec.layout.to_json(), "arch": spec.arch_key,
            "env": {"name": "spread", "id": "mpe2.simple_spread_v3", "kwargs": {}}, "env_key": "spread",
            "group": "agent", "dataset": {"return_min": 0.0, "return_max": 3.0}}
    return SingleArchGenerator(model, tokenizer, Normalizer.fit(params, np.arange(4.0), tokenizer), info)


class HeldAtLatest:
    """A store whose writes of a generator's LATEST pointer (`put_pointer`, `advance_pointer`) wait,
    per thread, until the test releases that thread: it lets two registrations reach the pointer in
    an order the test chooses."""

    def __init__(self, store: CheckpointStore):
        self._store, self._gates, self.waiting = store, {}, {}

    def gate(self, thread_name: str) -> threading.Event:
        self.waiting[thread_name] = threading.Event()
        return self._gates.setdefault(thread_name, threading.Event())

    def __getattr__(self, attr):
        value = getattr(self._store, attr)
        if attr not in ("put_pointer", "advance_pointer"):
            return value

        def call(*args, **kwargs):
            name = threading.current_thread().name
            if name in self._gates and any(isinstance(a, str) and a.endswith("/LATEST") for a in args):
                self.waiting[name].set()
                self._gates[name].wait(timeout=30)
            return value(*args, **kwargs)

        return call


@pytest.mark.parametrize("older_last", [True, False], ids=["older-version-moves-last", "newer-version-moves-last"])
def test_latest_never_moves_back_under_concurrent_registrations(store, older_last):
    """Two trainers register at once: the first claims v0002, the second v0003; both then reach LATEST,
    in either order. LATEST must end at v0003 and readers must say so."""
    from pgen.generator.versions import list_generators, resolve_model, save_generator

    assert save_generator(store, tiny_generator("race"), {}) == "v0001"
    held = HeldAtLatest(store)
    versions: dict[str, str] = {}
    threads = {}
    for name in ("first", "second"):  # "first" claims its version before "second" starts
        held.gate(name)
        threads[name] = threading.Thread(name=name, target=lambda n=name: versions.update(
            {n: save_generator(held, tiny_generator("race"), {})}))
        threads[name].start()
        assert held.waiting[name].wait(30), f"{name} never reached LATEST"
    order = ["second", "first"] if older_last else ["first", "second"]
    for name in order:
        held._gates[name].set()
        threads[name].join(30)
        assert not threads[name].is_alive()
    assert versions == {"first": "v0002", "second": "v0003"}
    assert resolve_model(store, "race") == ("race", "v0003")
    assert store.get("generators/race/LATEST").decode().strip() == "v0003"
    assert [m["version"] for m in list_generators(store) if m["latest"]] == ["v0003"]


def test_put_once_never_overwrites_on_a_server_that_ignores_conditions(s3_server, tmp_path, caplog):
    import boto3

    from tests.s3server import S3Server

    with S3Server(persist=False, state_dir=tmp_path / "moto", ignore_conditional_writes=True) as lax:
        boto3.client("s3", endpoint_url=lax.endpoint_url).create_bucket(Bucket="lax")
        store = CheckpointStore("s3://lax/pgen", endpoint_url=lax.endpoint_url, retry_s=5)
        with caplog.at_level(logging.WARNING, "pgen"):
            assert store.put_once("a/b", b"first") is True
            assert store.put_once("a/b", b"second") is False
        assert store.get("a/b") == b"first" and "ignores If-None-Match" in caplog.text
        assert store.list("") == ["a/b"]  # the probe is gone
