"""`pgen tune`: the search space from the config, storage locations, and tiny sweeps end to end on a
real local Ray with real training — a trial killed and retried from its checkpoint, the sweep
interrupted and resumed with Tuner.restore, the best registered; and a sweep stored on S3."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import boto3
import numpy as np
import pytest

from pgen.cli import main
from pgen.config import SearchParam, SingleGeneratorConfig, compose_config
from pgen.generator.versions import list_generators, load_generator
from pgen.policies.spec import PolicySpec
from pgen.store import CheckpointStore
from pgen.util.progress import log
from tests.test_generator import TINY_CALIBRATION, fill_store
from tests.test_population import pgen, pgen_background
from tune.space import default_point, search_space
from tune.sweep import INTERRUPTED, storage_location, trial_resources

# a tiny generator and evaluation on the synthetic slice of tests/test_generator.py (policy [8])
TINY_SWEEP = [
    "~profile", "policy.hidden=[8]", "generator.d_model=16", "generator.n_layers=1", "generator.latent_dim=4",
    "generator.batch_size=8", "generator.kl_warmup_epochs=2", "evaluate.episodes=4", "evaluate.samples=2",
    "evaluate.targets=2", "evaluate.max_top=2", "evaluate.states=2", "tune.max_concurrent=2", "log_every_s=2",
    *TINY_CALIBRATION,
    "++tune.space={lr:{loguniform:[1e-3,1e-2]},d_model:{choice:[8,16]},tokenisation:{choice:[neuron,chunk]}}",
]


def space(**entries: dict) -> dict[str, SearchParam]:
    return {k: None if v is None else SearchParam(**v) for k, v in entries.items()}


def test_search_space_becomes_tune_domains_and_the_default_point():
    base = SingleGeneratorConfig()
    domains = search_space(space(d_model={"choice": [32, 64]}, lr={"loguniform": [1e-3, 1e-2]},
                                 n_layers={"randint": [1, 3]}, beta={"uniform": [0.0, 0.5]},
                                 tokenisation={"choice": ["neuron", "chunk"]}, dropout=None), base)
    assert sorted(domains) == ["beta", "d_model", "lr", "n_layers", "tokenisation"]  # null: not swept
    assert domains["d_model"].categories == [32, 64] and domains["tokenisation"].categories == ["neuron", "chunk"]
    assert (domains["lr"].lower, domains["lr"].upper) == (1e-3, 1e-2)
    rng = np.random.default_rng(0)
    layers = {domains["n_layers"].sample(random_state=rng) for _ in range(200)}
    assert layers == {1, 2, 3}  # randint bounds are inclusive
    assert default_point(space(d_model={"choice": [32, 64]}, lr={"loguniform": [1e-3, 1e-2]}), base) == {
        "d_model": 64, "lr": 3e-3}


@pytest.mark.parametrize("entries, message", [
    ({}, "tune.space is empty"),
    ({"lr": None}, "tune.space is empty"),
    ({"learning_rate": {"choice": [1e-3]}}, "tune.space.learning_rate: not a generator setting"),
    ({"epochs": {"choice": [10, 20]}}, "tune.space.epochs: cannot be swept"),
    ({"val_fraction": {"uniform": [0.1, 0.3]}}, "same held-out runs"),
    ({"lr": {"uniform": [1e-3, 1e-2], "choice": [1e-3]}}, "exactly one of"),
    ({"lr": {"loguniform": [1e-2, 1e-3]}}, "low < high"),
    ({"lr": {"loguniform": [0.0, 1e-3]}}, "low must be > 0"),
    ({"lr": {"uniform": [1e-3]}}, "expected [low, high]"),
    ({"d_model": {"uniform": [16, 64]}}, "use randint or choice"),
    ({"tokenisation": {"uniform": [0, 1]}}, "use choice"),
    ({"d_model": {"choice": []}}, "empty list"),
    ({"d_model": {"choice": [32, "wide"]}}, "'wide' is not a valid generator.d_model"),
    ({"tokenisation": {"choice": ["neuron", "pixel"]}}, "'pixel' is not a valid generator.tokenisation"),
    ({"d_model": {"choice": [30, 64]}}, "30 is not divisible by 4"),
])
def test_bad_search_spaces_are_clear_errors(entries, message):
    from pgen.config import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        search_space(space(**entries), SingleGeneratorConfig())


def test_trials_ask_for_gpus_only_when_told():
    from pgen.config import SweepSettings

    assert trial_resources(SweepSettings(cpus_per_trial=2)) == {"cpu": 2}
    assert trial_resources(SweepSettings(cpus_per_trial=1, gpus_per_trial=0.5)) == {"cpu": 1, "gpu": 0.5}


def test_default_point_outside_the_space_is_a_clear_error():
    from pgen.config import ConfigError

    with pytest.raises(ConfigError, match=r"generator.lr=0.003 is outside tune.space.lr"):
        default_point(space(lr={"loguniform": [1e-4, 1e-3]}), SingleGeneratorConfig())


@pytest.mark.parametrize("args, message", [
    (["tune.search=grid"], "tune.search=grid"),
    (["~profile"], "tune.space is empty"),
    (["tune.space.lr={uniform:[0.01,0.1]}"], "tune.space.lr: give exactly one of"),  # merged with the profile's
    (["~profile", "++tune.space={lr:{loguniform:[0.1,0.01]}}"], "tune.space.lr.loguniform: expected [low, high]"),
    (["tune.num_samples=0"], "tune.num_samples must be >= 1"),
    (["tune.gpus_per_trial=-1"], "tune.gpus_per_trial >= 0"),
    (["tune.metric=train_loss"], "tune.metric must be a per-epoch validation metric"),
    (["resume=true"], "resume=true needs tune.name"),
    (["resume=true", "tune.name=nope"], "no sweep 'nope' to resume"),
])
def test_pgen_tune_rejects_bad_input_with_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr(log, "handlers", [])  # main() logs to this test's stderr, not a closed earlier one
    fill_store(CheckpointStore(str(tmp_path / "store")), runs=2, per_run=3)
    status = main(["tune", f"store.uri={tmp_path / 'store'}", "policy.hidden=[8]",
                   f"tune.storage={tmp_path / 'ray'}", *args])
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err, err


def test_a_wrong_resume_is_reported_before_the_slice_is_read(tmp_path, capsys, monkeypatch):
    """Opening the slice can take minutes (a multi-group env re-measures every checkpoint), so the
    sweep's own checks come first: here the store is empty and the resume error still wins."""
    monkeypatch.setattr(log, "handlers", [])
    status = main(["tune", f"store.uri={tmp_path / 'store'}", f"tune.storage={tmp_path / 'ray'}",
                   "env=simple_tag", "resume=true", "tune.name=nope"])
    err = capsys.readouterr().err
    assert status == 2 and "no sweep 'nope' to resume" in err and "Traceback" not in err, err


def test_storage_location(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert storage_location("pgen-runs/tune") == (str(tmp_path / "pgen-runs" / "tune"), None)
    assert storage_location("file:///data/tune") == ("/data/tune", None)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    path, fs = storage_location("s3://bucket/some/prefix/")
    assert path == "bucket/some/prefix" and fs.type_name == "s3"
    assert storage_location("s3://bucket", endpoint_url="http://127.0.0.1:10")[0] == "bucket"
    for bad in ("s3:///prefix", "gs://bucket/x"):
        with pytest.raises(ValueError, match="tune.storage"):
            storage_location(bad)


def result_lines(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def wait_for(what: str, check, proc, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (status {proc.returncode}) before {what}:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def test_sweep_survives_a_killed_trial_and_an_interruption_then_registers_the_best(tmp_path):
    """A trial's worker is SIGKILLed (Tune retries it from its last checkpoint), the driver is
    interrupted (SIGINT, exit 130), `resume=true` finishes the sweep with Tuner.restore: every trial
    completes, none starts again from epoch 1, the best is registered and the outputs are there."""
    store_uri = tmp_path / "store"
    # enough rows for ~0.5 s epochs, and 6 trials two at a time: the SIGINT below must land while
    # trials still have epochs to run (with 3, ASHA once stopped the last two before it arrived)
    fill_store(CheckpointStore(str(store_uri)), runs=3, per_run=120)
    experiment = tmp_path / "ray" / "sweep"
    args = ["tune", *TINY_SWEEP, f"store.uri={store_uri}", f"tune.storage={tmp_path / 'ray'}", "tune.name=sweep",
            f"out_dir={tmp_path / 'out'}", "generator.epochs=12", "tune.num_samples=6", "tune.checkpoint_every=1",
            "tune.grace_period=2", "tune.reduction_factor=2", "tune.max_failures=2"]
    proc = pgen_background(*args, cwd=tmp_path)

    def trial_at(epoch: int) -> Path | None:
        return next((d for d in sorted(experiment.glob("trial-*"))
                     if any(r["epoch"] >= epoch for r in result_lines(d))), None)

    victim = wait_for("a trial reached epoch 3", lambda: trial_at(3), proc)
    before_kill = result_lines(victim)
    os.kill(before_kill[-1]["pid"], signal.SIGKILL)
    # the retry is a new worker process that continues after the last checkpoint, not from epoch 1
    retried = wait_for("the killed trial was retried", lambda: [r for r in result_lines(victim)
                                                              if r["pid"] != before_kill[-1]["pid"]], proc)
    assert retried[0]["epoch"] >= before_kill[-1]["epoch"], (before_kill[-1]["epoch"], retried[0]["epoch"])
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == INTERRUPTED, out[-4000:]
    assert "resume=true tune.name=sweep" in out
    assert not CheckpointStore(str(store_uri)).exists("generators/simple_spread-agent-mlp-18x8x5-tanh/LATEST")
    reached = {d.name: max((r["epoch"] for r in result_lines(d)), default=0) for d in experiment.glob("trial-*")}
    lines_before = {d.name: len(result_lines(d)) for d in experiment.glob("trial-*")}
    assert any(0 < e < 12 for e in reached.values()), reached  # something was cut off mid-trial

    resumed = pgen(*args, "resume=true", cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    summary = json.loads((tmp_path / "out" / "sweep" / "sweep.json").read_text())
    assert not summary["interrupted"] and len(summary["trials"]) == 6
    assert {t["status"] for t in summary["trials"]} == {"TERMINATED"}
    assert summary["stopped_early"] == sum(t["epoch"] < 12 for t in summary["trials"])
    victim_id = victim.name.removeprefix("trial-")
    for t in summary["trials"]:
        if t["stopped_early"]:  # ASHA judges a trial at its first report at or past a rung (2, 4, 8): the
            # rung itself, unless the kill or the interruption swallowed that report (then the one after)
            cut_off = t["trial_id"] == victim_id or 0 < reached.get(f"trial-{t['trial_id']}", 0) < 12
            assert t["epoch"] in (2, 4, 8) or (cut_off and 2 < t["epoch"] < 12), t
    assert summary["evaluated"] == 6 - summary["stopped_early"] >= 1
    for trial in experiment.glob("trial-*"):
        epochs = [r["epoch"] for r in result_lines(trial)]
        assert epochs.count(1) == 1, (trial.name, epochs)  # never restarted from scratch
        new = epochs[lines_before.get(trial.name, 0):]
        if reached.get(trial.name, 0) > 0 and new:  # resumed after its last checkpoint (at most one epoch redone)
            assert new[0] >= reached[trial.name], (trial.name, reached[trial.name], new)
        assert any(p.name.startswith("events.out.tfevents") for p in trial.iterdir())  # TensorBoard per trial
    killed = next(t for t in summary["trials"] if t["trial_id"] == victim_id)
    assert killed["failures"] >= 1

    best = summary["best"]
    assert best["objective"] == max(t["objective"] for t in summary["trials"] if t["objective"] is not None)
    store = CheckpointStore(str(store_uri))
    gen = load_generator(store, "simple_spread-agent-mlp-18x8x5-tanh")
    assert best["model"] == gen.model_id == "simple_spread-agent-mlp-18x8x5-tanh@v0001"
    assert gen.info["dataset"]["val_runs"] == summary["slice"]["val_runs"] and gen.info["dataset"]["rows"] == 360
    for key, value in best["config"].items():
        assert gen.info["generator"][key] == value, key
    metrics = json.loads(store.get(f"generators/{gen.name}/{gen.version}/metrics.json"))
    assert metrics["tune"]["trial_id"] == best["trial_id"] and len(metrics["history"]) == 12
    assert gen.generate(-60.0, num=2, seed=1).shape == (2, gen.layout.num_params)
    assert (tmp_path / "out" / "sweep" / "trials.png").stat().st_size > 10_000
    assert "stopped early by ASHA" in resumed.stdout and "registered as" in resumed.stdout  # the table
    assert "epochs/s" in resumed.stderr and "ETA" in resumed.stderr  # console progress


def test_sweep_on_s3_storage_with_optuna(s3_store_uri, tmp_path, capsys, monkeypatch):
    """Tune's storage on S3 (the store's endpoint), Optuna search, the store on S3; a finished sweep
    cannot be resumed (its best is registered once)."""
    fill_store(CheckpointStore(s3_store_uri), runs=2, per_run=8)
    bucket = s3_store_uri.split("/")[2]
    args = ["tune", *TINY_SWEEP, f"store.uri={s3_store_uri}", f"tune.storage=s3://{bucket}/tune", "tune.name=s3sweep",
            f"out_dir={tmp_path / 'out'}", "generator.epochs=3", "tune.num_samples=2", "tune.search=optuna",
            "tune.grace_period=3", "generator.name=spread-tuned"]
    out = pgen(*args, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    keys = [o["Key"] for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="tune/s3sweep/") for o in page.get("Contents", [])]
    assert any(k.endswith("tuner.pkl") for k in keys)
    assert any("/trial-" in k and "events.out.tfevents" in k for k in keys)
    assert any("/trial-" in k and k.endswith("model.safetensors") for k in keys)  # the final checkpoints
    store = CheckpointStore(s3_store_uri)
    assert [(g["name"], g["version"]) for g in list_generators(store)] == [("spread-tuned", "v0001")]
    monkeypatch.setattr(log, "handlers", [])
    assert main([*args, "resume=true"]) == 2
    assert "sweep 's3sweep' has finished; its best trial" in capsys.readouterr().err
    assert [(g["name"], g["version"]) for g in list_generators(store)] == [("spread-tuned", "v0001")]


def test_tune_profiles_compose():
    quick = compose_config("tune", [])
    assert quick.profile == "quick" and quick.tune.num_samples >= 8 and len(quick.tune.space) >= 10
    search_space(quick.tune.space, quick.generator)
    default_point(quick.tune.space, quick.generator)
    full = compose_config("tune", ["profile=full", "tune.space.chunk_size=null"])
    assert full.generator.epochs == 200 and full.tune.space["chunk_size"] is None
    search_space(full.tune.space, full.generator)
    assert compose_config("pipeline", ["profile=quick"]).population.size == 6  # the pipeline's own profile


def test_a_sweep_of_an_arch_family_generator_registers_a_family_version(tmp_path):
    """`pgen tune generator=family`: trials fit the family kind on every architecture of the family in
    the store; the space's single-architecture settings (tokenisation) are left out, with a log line;
    the best trial is registered as a family version that generates an architecture it never saw."""
    store_uri = tmp_path / "store"
    for hidden in ((8,), (8, 8)):
        fill_store(CheckpointStore(str(store_uri)), spec=PolicySpec("mlp", 18, hidden, 5, True), runs=2, per_run=6,
                   prefix=f"syn{len(hidden)}")
    out = pgen("tune", *TINY_SWEEP, "generator=family", "generator.readout_dim=8", f"store.uri={store_uri}",
               f"tune.storage={tmp_path / 'ray'}", "tune.name=fam", f"out_dir={tmp_path / 'out'}", "generator.epochs=2",
               "tune.num_samples=2", "tune.grace_period=2", "generator.calibration.validation_samples=0",
               cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "tune.space.tokenisation: not a setting of generator=family; not swept" in out.stderr
    summary = json.loads((tmp_path / "out" / "fam" / "sweep.json").read_text())
    assert summary["slice"]["arch"] == "mlp-18xHx5-tanh" and summary["slice"]["archs"] == [
        "mlp-18x8x5-tanh", "mlp-18x8x8x5-tanh"]
    assert all("tokenisation" not in t["config"] for t in summary["trials"])
    gen = load_generator(CheckpointStore(str(store_uri)), "simple_spread-agent-mlp-18xHx5-tanh")
    assert gen.info["model"]["type"] == "arch-family" and gen.info["generator"]["kind"] == "family"
    assert gen.generate(-60.0, num=2, spec=PolicySpec("mlp", 18, (12, 12), 5, True)).shape == (
        2, PolicySpec("mlp", 18, (12, 12), 5, True).layout.num_params)
