"""Every command example of README.md and docs/, run as a user would type it.

The examples are read from the ```bash blocks of README.md and docs/*.md. Each has an entry in `EXAMPLES`: how the test
runs it (`Run`: appended overrides that shrink its budget, then to completion or to its first sign
of life), or which test runs it elsewhere (`Elsewhere`). An example without an entry, or an entry
whose example left the docs, fails `test_every_readme_example_has_a_test`, so an example cannot be
added or changed without a test that runs it.

The examples run in order, in one scratch folder (so `./pgen-store` and `pgen-runs/` carry from one
to the next, as for a user going down the page), with the S3 test server as `AWS_ENDPOINT_URL`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
import requests

from tests.s3server import free_port
from tests.serving import local_serve_env, stop_orphaned_haproxy
from tests.test_generator import TINY_CALIBRATION

ROOT = Path(__file__).resolve().parents[1]

# budgets small enough for seconds, appended after the example's own arguments (the last value wins)
LEARN = ["algo.num_envs=4", "algo.rollout_steps=25", "algo.update_epochs=1", "log_every_s=1"]
TRAIN = [*LEARN, "population.max_env_steps=200"]
POPULATE = [*LEARN, "population.size=2", "population.max_env_steps=400", "population.checkpoint_every=2",
            "population.eval_episodes=4", "population.cpus_per_worker=0.5"]
# simple_tag's checkpoints are rescored over 10 episodes: over 2 the few catches of near-random
# adversaries average to the same 0.0 for every checkpoint, and R² over a grid of one return is undefined
GENERATOR = ["generator.epochs=2", "generator.d_model=16", "generator.n_layers=1", "generator.latent_dim=4",
             "generator.batch_size=8", "generator.rescore_episodes=10", *TINY_CALIBRATION]
EVALUATE = ["evaluate.episodes=4", "evaluate.samples=1", "evaluate.targets=2", "evaluate.max_top=2",
            "evaluate.states=2"]
# the profiles' search spaces stay as they are (the trial's model size comes from them): one trial of two
# epochs (what a sweep of several does, ASHA, resume, the choice of the best: tests/test_tune.py)
TUNE = ["generator.epochs=2", "generator.rescore_episodes=10", *TINY_CALIBRATION, *EVALUATE, "tune.num_samples=1", "tune.grace_period=1",
        "tune.checkpoint_every=1", "log_every_s=2"]
SERVE = ["serve.seed_eval_episodes=2", "serve.max_replicas=1"]
MODEL = "simple_spread-agent-mlp-18x64x64x5-tanh"
# the same commands with two tiny architectures and a tiny budget, in one store
ARCHS = "tests/test_archs.py::test_mixed_population_to_family_generator_generate_and_evaluate_end_to_end"


@dataclass
class Run:
    """Run the example here: `tiny` appended to it; `ready` (a regex on its output, or "http" for an
    endpoint answering /healthz) marks a long-running one, stopped with SIGINT once seen;
    `while_up`: README examples run while it is up; `before`: pgen commands run first."""

    tiny: list[str] = field(default_factory=list)
    ready: str | None = None
    while_up: list[str] = field(default_factory=list)
    before: list[str] = field(default_factory=list)


@dataclass
class Elsewhere:
    """The example runs in `where` (a test, or the CI entry point), not here."""

    where: str


EXAMPLES: dict[str, Run | Elsewhere] = {
    # quick start
    'python3 -m pip install "torch==2.13.0" -e . && pgen pipeline':
        Elsewhere("tests/test_pipeline.py::test_pipeline_runs_populate_train_evaluate (pgen pipeline, tiny budget)"),
    'python3 -m pip install "torch==2.13.0" -e ".[dev]" && python3 -m pytest -q': Elsewhere(".ci/run"),
    # pgen train
    "pgen train env=simple_tag algo=ippo seed=3": Run(TRAIN),
    "pgen train policy=gru population.max_env_steps=500000": Run(TRAIN),
    "pgen train env.kwargs.continuous_actions=true": Run(TRAIN),
    "pgen train env.id=pettingzoo.sisl.pursuit_v5": Run(TRAIN),
    "pgen train env.id=mpe2.simple_push_v3 env.kwargs.max_cycles=50": Run(TRAIN),
    "pgen train run_id=my-run resume=true": Run(TRAIN),
    # populations and the store
    "pgen populate population.size=4 population.max_env_steps=1000000": Run(POPULATE),
    "pgen populate store.uri=s3://my-bucket/pgen population.duration_s=3600": Run(POPULATE),
    "pgen dataset": Run(),
    # the generator
    "pgen train-generator": Run(GENERATOR),
    "pgen train-generator env=simple_tag generator.group=adversary generator.epochs=200":
        Run(GENERATOR, before=["pgen populate env=simple_tag population.size=2 " + " ".join(POPULATE)]),
    f"pgen generate model={MODEL} target_return=-50 num=8 seed=1 out=p.safetensors": Run(),
    f"pgen generate model={MODEL}@v0001 target_return=-50 temperature=1.0": Run(),
    f"pgen evaluate model={MODEL} evaluate.extra_targets=[-30]": Run(EVALUATE),
    "tensorboard --logdir pgen-runs/generators": Run(["--port", "{port}"], ready=r"TensorBoard \S+ at http"),
    # architectures (one generator for a family)
    "pgen populate population.size=16 'population.archs=[{hidden:[32,32]},{hidden:[64,64]},{hidden:[128,128]},"
    "{hidden:[64]}]'": Elsewhere(ARCHS),
    "pgen train-generator generator=family": Elsewhere(ARCHS),
    "pgen generate model=simple_spread-agent-mlp-18xHx5-tanh target_return=-50 arch=mlp-18x96x96x5-tanh":
        Elsewhere(ARCHS),
    "pgen generate model=simple_spread-agent-mlp-18xHx5-tanh target_return=-50 policy.hidden=[256,256]":
        Elsewhere(ARCHS),
    "pgen evaluate model=simple_spread-agent-mlp-18xHx5-tanh evaluate.archs=[[96,96],[256,256],[64,64,64]]":
        Elsewhere(ARCHS),
    # serving
    "pgen serve store.uri=./pgen-store": Run(
        [*SERVE, "serve.port={port}", "serve.grpc_port=0"], ready="http",
        while_up=[
            "curl localhost:8000/v1/models",
            f"curl -X POST localhost:8000/v1/generate -H 'Content-Type: application/json' -d '{{\"model\": \"{MODEL}\","
            ' "target_return": -45, "num": 2, "seed": 1}\'',
            f"curl -X POST localhost:8000/v1/generate -H 'Content-Type: application/json' -o p.safetensors -d"
            f" '{{\"model\": \"{MODEL}@v0001\", \"target_return\": -45, \"format\": \"safetensors\"}}'",
            "curl -X POST localhost:8000/v1/seed -H 'Content-Type: application/json' -H \"Authorization: Bearer"
            f" $PGEN_SERVE_TOKEN\" -d '{{\"model\": \"{MODEL}\", \"target_return\": -45, \"population_size\": 4}}'",
        ]),
    "serve run serve.app:app store.uri=$PWD/pgen-store": Run(SERVE, ready="http"),
    "serve deploy serve/config.yaml": Elsewhere("tests/test_cluster_job.py::test_serve_deploy_then_generate"),
    "serve deploy serve/config.gpu.yaml": Elsewhere(
        "needs GPU nodes; tests/test_cluster.py checks the file is a valid Serve config of the same app"),
    "pgen populate population.seed_from=<run_id> population.size=4": Run(POPULATE),
    f"pgen populate population.seed.model={MODEL} population.seed.target_return=-45": Elsewhere(
        "tests/test_seeding.py::test_population_members_seeded_through_a_deployment_handle (needs a running app)"),
    # sweeps
    "pgen tune": Run(TUNE),
    "pgen tune profile=full env=simple_tag generator.group=adversary": Run(TUNE),
    "pgen tune tune.search=optuna tune.num_samples=16": Elsewhere(
        "tests/test_tune.py::test_sweep_on_s3_storage_with_optuna (pgen tune ... tune.search=optuna)"),
    "pgen tune store.uri=s3://bucket/pgen tune.storage=s3://bucket/tune": Elsewhere(
        "tests/test_tune.py::test_sweep_on_s3_storage_with_optuna (store and tune.storage on S3)"),
    "pgen tune tune.name=<name> resume=true": Elsewhere(
        "tests/test_tune.py::test_sweep_survives_a_killed_trial_and_an_interruption_then_registers_the_best"),
    "pgen loop": Elsewhere("tests/test_loop.py::test_the_loop_runs_itself_through_faults_and_serves_every_promotion"
                           " (a tiny budget)"),
    "pgen loop loop.loop_id=<loop_id> resume=true": Elsewhere(
        "tests/test_loop.py::test_the_loop_runs_itself_through_faults_and_serves_every_promotion (after SIGKILL)"),
    # on a cluster
    "ray up cluster/aws.yaml && ray dashboard cluster/aws.yaml &": Elsewhere(
        "a cloud account; tests/test_cluster.py::test_ray_up_config_passes_rays_validation validates the config"),
    'ray job submit --runtime-env-json "$(python cluster/job_env.py)" --working-dir . -- pgen populate'
    " store.uri=s3://<your-bucket>/pgen population.size=64 +population.resources.population=1": Elsewhere(
        "tests/test_cluster_job.py::test_populate_job_streams_to_s3_and_ray_job_stop_lets_it_finish"),
}


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_examples(paths: list[Path] = DOCS) -> list[str]:
    """The commands of the ```bash blocks of README.md and docs/: continuation lines joined, comments
    dropped, `export` lines (settings, not commands) left out; in the order of the files."""
    commands, block, pending = [], False, ""
    for line in (line for path in paths for line in path.read_text().splitlines()):
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block:
            continue
        text = re.sub(r"\s{2,}#.*$", "", line).strip()  # a comment: after two spaces or more
        if text.endswith("\\"):
            pending += text[:-1].strip() + " "
            continue
        text = (pending + text).strip()
        pending = ""
        if text and not text.startswith(("#", "export ")):
            commands.append(text)
    return commands


def test_every_readme_example_has_a_test():
    examples = readme_examples()
    served = {c for run in EXAMPLES.values() if isinstance(run, Run) for c in run.while_up}
    missing = [c for c in examples if c not in EXAMPLES and c not in served]
    stale = [c for c in [*EXAMPLES, *served] if c not in examples]
    assert not missing, f"README examples with no entry in EXAMPLES (add how they are tested): {missing}"
    assert not stale, f"EXAMPLES entries no longer in the README: {stale}"


@pytest.fixture(scope="module")
def user(tmp_path_factory, s3_server):
    """A scratch folder to run the examples in, its environment (the S3 test server, a serve token),
    and the buckets the examples name."""
    folder = tmp_path_factory.mktemp("readme")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="my-bucket")
    env = {**os.environ, **local_serve_env(), "PGEN_SERVE_TOKEN": "readme-token", "RAY_DEDUP_LOGS": "0"}
    return folder, env


def _shell(command: str, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _fill(args: list[str], port: int) -> str:
    return " ".join(a.replace("{port}", str(port)) for a in args)


def _substitute(command: str, cwd: Path) -> str:
    """Placeholders a user fills in with what they have: a run id of theirs."""
    if "<run_id>" in command:
        runs = sorted(p.name for p in (cwd / "pgen-store" / "runs").iterdir())
        command = command.replace("<run_id>", runs[0])
    return command


def _until_ready(command: str, run: Run, cwd: Path, env: dict, port: int, timeout: float = 240) -> str:
    """Start a long-running example, wait until it is ready, run `while_up`, stop it with SIGINT (and
    its process group with SIGKILL a minute later). Each gets Serve side ports of its own, so that an
    HAProxy left by an earlier example cannot take them."""
    env = {**env, **{k: v for k, v in local_serve_env().items() if k.endswith("_PORT")}}
    log = cwd / f"example-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"{command!r} exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"{command!r} never became ready:\n{log.read_text()[-4000:]}"
            if run.ready == "http":
                try:
                    if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
            elif re.search(run.ready, log.read_text()):
                break
            time.sleep(0.5)
        for example in run.while_up:
            out = _shell(example.replace("localhost:8000", f"localhost:{port}") + " --fail-with-body -sS", cwd, env)
            assert out.returncode == 0, f"{example!r}: {out.stdout[-2000:]} {out.stderr[-2000:]}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stop_orphaned_haproxy(env)
    return log.read_text()


@pytest.mark.parametrize("example", [c for c, run in EXAMPLES.items() if isinstance(run, Run)])
def test_readme_example_runs(user, example):
    cwd, env = user
    run = EXAMPLES[example]
    for command in run.before:
        out = _shell(command, cwd, env)
        assert out.returncode == 0, f"{command!r}:\n{out.stderr[-4000:]}"
    port = free_port()
    command = f"{_substitute(example, cwd)} {_fill(run.tiny, port)}"
    if run.ready is not None:
        if example.startswith("serve run"):  # Serve's CLI has no port option: its HTTP port is the default, 8000
            assert not _taken(8000), "port 8000 is taken on this machine: `serve run` cannot bind it"
            port = 8000
        _until_ready(command, run, cwd, env, port)
        return
    out = _shell(command, cwd, env)
    assert out.returncode == 0, f"{command!r} exited with {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    assert "Traceback" not in _without_rays_own_noise(out.stderr), out.stderr[-4000:]


# Ray Tune 2.60 copies its driver artifacts to the storage path in a background syncer; when a file
# there is replaced while it copies (Ray's own temp files, `.<uuid>`), it logs the failed copy with a
# traceback and syncs again at the next checkpoint. That is Ray's retry, not an error of the command.
TUNE_SYNC_RETRY = re.compile(r"Saving experiment state to storage at .*? failed with exception: \n"
                             r"Traceback \(most recent call last\):\n(?:  .*\n)+\S*FileNotFoundError: .*\n?")


# When Tune stops a trial early, Ray terminates its worker with SIGTERM; Ray's handler raises
# SystemExit, and if the signal lands while the worker runs a weakref callback, Python prints that
# exit as an ignored exception with a traceback. That is the worker being stopped, not an error.
_WORKER = r"(?:\x1b\[\d+m)?\(\w+ pid=\d+(?:, ip=[\d.]+)?\)(?:\x1b\[0m)? "
WORKER_SIGTERM_EXIT = re.compile(rf"(?:{_WORKER}Exception ignored in: .*\n)?"
                                 rf"{_WORKER}Traceback \(most recent call last\):\n"
                                 rf"(?:{_WORKER}(?!Traceback|SystemExit).*\n)*?"
                                 rf"{_WORKER}  File .*, in sigterm_handler\n"
                                 rf"(?:{_WORKER}(?!Traceback|SystemExit).*\n)*?"
                                 rf"{_WORKER}SystemExit: 1\n?")


def _without_rays_own_noise(stderr: str) -> str:
    return WORKER_SIGTERM_EXIT.sub("", TUNE_SYNC_RETRY.sub("", stderr))


def test_only_rays_own_retries_and_worker_exits_are_taken_out_of_stderr():
    w = "\x1b[36m(train_trial pid=15695)\x1b[0m "
    sigterm = (f"{w}Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7f>\n"
               f"{w}Traceback (most recent call last):\n"
               f'{w}  File "/py/_weakrefset.py", line 39, in _remove\n'
               f"{w}    def _remove(item, selfref=ref(self)):\n{w}\n"
               f'{w}  File "/py/ray/_private/worker.py", line 1063, in sigterm_handler\n'
               f"{w}    raise_sys_exit_with_custom_error_message(\n"
               f'{w}  File "python/ray/_raylet.pyx", line 712, in ray._raylet.raise_sys_exit_with_custom_error_message\n'
               f"{w}SystemExit: 1\n")
    ours = (f"{w}Traceback (most recent call last):\n"
            f'{w}  File "/work/pgen/tune.py", line 9, in train_trial\n'
            f"{w}ValueError: bad\n")
    assert _without_rays_own_noise(f"a\n{sigterm}b\n") == "a\nb\n"
    assert "Traceback" in _without_rays_own_noise(f"{ours}{sigterm}")
    assert "ValueError" in _without_rays_own_noise(f"{ours}{sigterm}")


def _taken(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
