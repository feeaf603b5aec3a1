"""`pgen loop`: the gate and the loop's state as pure parts, then the service end to end on a real
local Ray with Serve over HTTP: versions fitted, gated and promoted under a constant load of
/v1/generate requests (none may fail, no client may see an older version after a newer one), weak
members reseeded through the served generator, the trainer actor SIGKILLed mid-fit and the driver
SIGKILLed then resumed, with no checkpoint lost or duplicated, no partial version, the gate history
intact."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest
import requests

from loop.driver import check_config, reseed_target
from loop.state import LoopState, Member
from pgen.config import ConfigError, compose_config
from pgen.evaluation.gate import decide, gate_records, record_decision, with_gates
from pgen.generator.versions import list_generators, resolve_model
from pgen.store import CheckpointStore
from tests.s3server import free_port
from tests.test_population import PopulateProcess, pids_of

GATE = {"alignment_r2": 0.8, "spearman": 0.9, "normalised_score_top": 1.0}


def test_the_gate_promotes_unless_worse_by_more_than_the_tolerance():
    assert decide(GATE, None, 0.05) == (True, "no version is served yet")
    assert decide({**GATE, "alignment_r2": 0.76}, GATE, 0.05)[0]  # within the tolerance
    promoted, why = decide({**GATE, "normalised_score_top": 0.9}, GATE, 0.05)
    assert not promoted and "normalised_score_top 0.900 < served 1.000 - 0.05" in why
    assert not decide({**GATE, "alignment_r2": float("nan")}, GATE, 0.05)[0]
    assert decide(GATE, {**GATE, "alignment_r2": float("nan")}, 0.05)[0]  # a served NaN does not block


def test_reseed_targets_and_bad_loop_settings():
    assert reseed_target("best", -40.0) == -40.0 and reseed_target("best+5", -40.0) == -35.0
    assert reseed_target("-30", -40.0) == -30.0
    for bad in ("worst", "nan", "best+x"):
        with pytest.raises(ConfigError, match="loop.reseed_target"):
            reseed_target(bad, 0.0)
    with pytest.raises(ConfigError, match="loop.loop_id"):
        check_config(compose_config("loop", ["resume=true"]))
    with pytest.raises(ConfigError, match="loop.app"):
        check_config(compose_config("loop", ["loop.serve=false"]))
    with pytest.raises(ConfigError, match="loop.reseed_fraction"):
        check_config(compose_config("loop", ["loop.reseed_fraction=2"]))
    with pytest.raises(ConfigError, match="generator.calibration.points must be 0"):  # not in a trainer, later
        check_config(compose_config("loop", ["generator.calibration.points=1"]))


def test_loop_state_and_gate_records_round_trip(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    state = LoopState("l1", "2026-12-01T00:00:00", [Member(0, "l1-m000"), Member(1, "l1-m001", env_steps=5)])
    state.save(store)
    state.members[0].env_steps, state.served = 7, "g@v0002"
    state.save(store)
    back = LoopState.load(store, "l1")
    assert back.seq == 2 and back.served == "g@v0002" and back.env_steps == 12 and back.members[0].env_steps == 7
    assert LoopState.load(store, "nope") is None
    record_decision(store, "l1", {"model_id": "g@v0002", "promoted": False, "why": "worse", "metrics": GATE})
    record_decision(store, "l1", {"model_id": "g@v0002", "promoted": True, "why": "retry", "metrics": GATE})
    assert gate_records(store)["g@v0002"]["why"] == "worse"  # write-once: a retry does not rewrite it


# --- the service, end to end -----------------------------------------------------------------------

# a small calibration (it runs after every fit, as in the loop's profiles, but its default 96 policies × 30
# episodes would make each fit minutes long)
# loop.tolerance=1000: every version with finite gate metrics is promoted (what is promoted on tiny data
# is noise; the gate's rule has its own test above), so the swaps under load are certain to happen
# policy.hidden=[16] and two members: a generator of 21 tokens instead of the default policy's 133 fits,
# calibrates and is gated several times faster, and fewer processes share the 2 cores with it
LOOP = ["policy.hidden=[16]", "algo.num_envs=16", "algo.rollout_steps=25", "algo.update_epochs=2", "population.size=2",
        "population.checkpoint_every=2", "population.eval_episodes=8", "population.cpus_per_worker=0.3",
        "generator.epochs=12", "generator.d_model=16", "generator.n_layers=1", "generator.latent_dim=4",
        "generator.batch_size=16", "generator.calibration.points=4", "generator.calibration.samples=1",
        "generator.calibration.episodes=4", "generator.calibration.refine=2", "generator.calibration.validation_samples=2",
        "evaluate.episodes=8", "evaluate.samples=2", "evaluate.targets=3",
        "evaluate.max_top=3", "evaluate.states=2", "loop.retrain_every=12", "loop.reseed_every=18",
        "loop.reseed_min_env_steps=4000", "loop.tolerance=1000", "loop.trainer_cpus=0.3", "loop.log_every_s=3",
        "serve.num_cpus=0.1", "serve.ingress_num_cpus=0.1", "serve.latest_ttl_s=0.5", "serve.max_replicas=1",
        "~profile"]


NAME = "simple_spread-agent-mlp-18x16x5-tanh"


def test_the_loop_runs_itself_through_faults_and_serves_every_promotion(tmp_path, s3_server, s3_store_uri):
    store_uri, port = s3_store_uri, free_port()
    args = [*LOOP, f"store.uri={store_uri}", "loop.loop_id=svc", f"serve.port={port}", f"loop.out_dir={tmp_path / 'out'}",
            "loop.max_env_steps=400000"]  # out of reach: the test stops the loop
    base, seen, failures, stop = f"http://127.0.0.1:{port}", [], [], threading.Event()

    def client() -> None:  # a constant load while versions are promoted
        last = 0
        while not stop.is_set():
            try:
                r = requests.post(f"{base}/v1/generate", json={"model": NAME,
                                                               "target_return": -60.0}, timeout=30)
            except requests.RequestException:  # the endpoint not up yet, or gone with the driver
                time.sleep(0.3)
                continue
            # no version promoted yet, or Serve's proxy up before the application's route (the resumed
            # driver redeploying it): the service is not up, as when the connection is refused
            if r.status_code == 404 and (not seen or "not found. Ping" in r.text):
                time.sleep(0.2)
                continue
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text[:200]}")
                continue
            number = int(r.json()["version"][1:])
            if number < last:
                failures.append(f"v{number} after v{last}")
            last = max(last, number)
            seen.append(number)

    loop = PopulateProcess(*args, command="loop", cwd=tmp_path)
    resumed = None
    clients = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for t in clients:
        t.start()
    try:
        # 1. the trainer is SIGKILLed during its first fit: Ray restarts it and the fit is retried
        deadline = time.time() + 500
        loop.wait_until(lambda: "fitting a new version" in loop.output, deadline)
        time.sleep(1.0)
        victims = pids_of("ray::GeneratorTrainer")
        assert victims, loop.output[-3000:]
        os.kill(victims[0], signal.SIGKILL)
        # 2. after the retried fit's decision and a member reseeded from the version it promoted (its new run
        # in the live table with a checkpoint), the driver itself is SIGKILLed while its members train and
        # its next fit runs
        reseeded = re.compile(r"svc-m\d+-g\d+\s+[\d,]+\s+[1-9]")
        loop.wait_until(lambda: "loop svc: gate " in loop.output and reseeded.search(loop.output) is not None, deadline)
        before = LoopState.load(CheckpointStore(store_uri, endpoint_url=s3_server.endpoint_url), "svc")
        loop.proc.kill()
        loop.finish(timeout=60)
        decided_before = [d["model_id"] for d in before.decisions]
        assert decided_before, loop.output[-4000:]
        # 3. resume: the same loop continues, now with its members paused during fits, and fits again (at
        # once, or after at most 16 more checkpoints)
        resumed = PopulateProcess(*args, "resume=true", "loop.pause_during_fit=true", "loop.retrain_every=16",
                                  command="loop", cwd=tmp_path)
        # 4. once that fit is decided and the clients are answered by the version it promoted, SIGTERM: a
        # service's stop (the budget, far away, is how the family test below ends)
        resumed.wait_until(lambda: "loop svc: gate " in resumed.output, deadline)
        newest = len(decided_before) + 1
        resumed.wait_until(lambda: bool(seen) and seen[-1] >= newest, deadline)
        resumed.proc.send_signal(signal.SIGTERM)
        output = resumed.finish(timeout=120)
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=30)
        for i, run in enumerate((loop, resumed)):
            if run is not None and run.proc.poll() is None:
                run.proc.kill()
            if run is not None:  # the drivers' logs, beside the test's store, for reading a failure
                (tmp_path / f"driver-{i}.log").write_text(run.output)
    assert resumed.proc.returncode == 0 and "SIGTERM: finishing the intervals in flight" in output, output[-4000:]
    assert "resumed at" in output and "(resumed at" in output
    store = CheckpointStore(store_uri, endpoint_url=s3_server.endpoint_url)
    state = LoopState.load(store, "svc")
    # the gate history: nothing lost across the kill, every decision recorded once, in the store
    assert [d["model_id"] for d in state.decisions][:len(decided_before)] == decided_before
    records = gate_records(store)
    assert {d["model_id"] for d in state.decisions} <= set(records)
    promoted = [d for d in state.decisions if d["promoted"]]
    assert len(promoted) >= 2 and resolve_model(store, NAME)[1] == \
        state.served.split("@")[1]
    # no partial version: every version folder either is complete or is invisible to readers
    listed = {(m["name"], m["version"]) for m in list_generators(store)}
    assert all(m["gate"] is not None for m in with_gates(list_generators(store), store)
               if f"{m['name']}@{m['version']}" in records)
    folders = {tuple(k.split("/")[1:3]) for k in store.list("generators/") if k.count("/") == 3}
    assert {f for f in folders if store.exists(f"generators/{f[0]}/{f[1]}/config.json")} == listed
    assert {tuple(d["model_id"].split("@")) for d in state.decisions} <= listed
    # paused during the fits after the resume: at most the intervals in flight when a fit started
    # (one checkpoint per member, and a reseeded run's first) arrived while it ran
    after = [d for d in state.decisions if f"loop svc: gate {d['model_id']}:" in output]
    assert after, output[-3000:]
    assert all(d["checkpoints"] - d["fit_from_checkpoints"] <= 6 for d in after), \
        [(d["checkpoints"], d["fit_from_checkpoints"]) for d in after]
    # reseeded members: new runs whose first checkpoint carries the generator's origin
    assert state.reseeds and all(r["model"] in records for r in state.reseeds)
    rows = store.read_records(columns=["run_id", "origin", "step"]).table.to_pylist()
    seeded = {r["run_id"] for r in rows if r["origin"].startswith("seeded:simple_spread-agent")}
    assert seeded and all("-g" in run for run in seeded), sorted({(r["run_id"], r["origin"]) for r in rows})
    # every run complete: one record per checkpoint step, none duplicated after the kills
    for run in {r["run_id"] for r in rows}:
        steps = [r["step"] for r in rows if r["run_id"] == run]
        assert len(steps) == len(set(steps)), run
    # the load: not one failed request, never an older version once a newer one was answered
    assert not failures, failures[:5]
    assert len(set(seen)) >= 2, sorted(set(seen))
    summary = json.loads((tmp_path / "out" / "svc" / "summary.json").read_text())
    assert summary["decisions"] and (tmp_path / "out" / "svc" / "best_return.png").stat().st_size > 5000
    assert list((tmp_path / "out" / "svc" / "tensorboard").glob("events.out.tfevents*"))


def test_the_loop_with_an_arch_family_generator(tmp_path):
    """`pgen loop generator=family` with members spread over two architectures: versions of the family
    are fitted (cold), gated on the default architecture's figures, promoted and served; a reseeded
    member asks the served generator for its own architecture."""
    port = free_port()
    args = [*LOOP, "generator=family", "generator.readout_dim=8", "policy.hidden=[8]",
            "population.archs=[{hidden:[8]},{hidden:[8,8]}]", "loop.retrain_every=16",
            "loop.pause_during_fit=true", "loop.reseed_every=12", "loop.reseed_fraction=0.5",
            "loop.reseed_min_env_steps=2000",
            f"store.uri={tmp_path / 'store'}", "loop.loop_id=fam", f"serve.port={port}",
            f"loop.out_dir={tmp_path / 'out'}", "loop.max_env_steps=24000"]
    run = PopulateProcess(*args, command="loop", cwd=tmp_path)
    output = run.finish(timeout=400)
    assert run.proc.returncode == 0, output[-4000:]
    store = CheckpointStore(str(tmp_path / "store"))
    state = LoopState.load(store, "fam")
    assert state.decisions and state.served, output[-3000:]
    name = "simple_spread-agent-mlp-18xHx5-tanh"
    assert state.served.startswith(f"{name}@") and resolve_model(store, name)[1] == state.served.split("@")[1]
    info = json.loads(store.get(f"generators/{name}/{state.served.split('@')[1]}/config.json"))
    assert info["model"]["type"] == "arch-family" and info["archs"] == ["mlp-18x8x5-tanh", "mlp-18x8x8x5-tanh"]
    assert all(d["warm_start"]["from"] is None for d in state.decisions)  # family versions start cold
    assert state.reseeds, output[-3000:]
    rows = store.read_records(columns=["run_id", "origin", "arch", "step"]).table.to_pylist()
    seeded = [r for r in rows if r["origin"].startswith(f"seeded:{name}@") and r["step"] == 0]
    assert seeded and {r["arch"] for r in seeded} <= {"mlp-18x8x5-tanh", "mlp-18x8x8x5-tanh"}
    for r in seeded:  # each reseeded run kept the architecture of its slot (member m trains archs[m mod 2])
        slot = int(r["run_id"].split("-m")[1][:3])
        assert r["arch"] == ["mlp-18x8x5-tanh", "mlp-18x8x8x5-tanh"][slot % 2], r
