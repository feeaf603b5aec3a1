"""Population workers on a real local Ray, streaming to a local folder and to a real S3 server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from pgen.config import compose_config
from pgen.population.worker import member_hparams
from pgen.store import CheckpointStore, params_checksum
from tests.tcp_proxy import TcpProxy

# 100 env steps per PPO update, 200 per checkpoint interval
TINY = ["algo.num_envs=4", "algo.rollout_steps=25", "algo.update_epochs=2", "population.checkpoint_every=2",
        "population.eval_episodes=4", "log_every_s=2", "population.cpus_per_worker=1"]


def pgen(*args, env=None, timeout=240, cwd=None):
    return subprocess.run([sys.executable, "-m", "pgen.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)


def pgen_background(*args, env=None, cwd=None):
    return subprocess.Popen([sys.executable, "-m", "pgen.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}, cwd=cwd)


def assert_complete_runs(store: CheckpointStore, run_ids: list[str], last_step: int, interval: int = 200) -> None:
    """Every run has exactly one valid record per checkpoint step 0, interval, ..., last_step."""
    result = store.read_records()
    assert result.bad_rows == 0 and result.bad_parts == []
    rows = result.table.to_pylist()
    for run in run_ids:
        steps = sorted(r["step"] for r in rows if r["run_id"] == run)
        assert steps == list(range(0, last_step + 1, interval)), (run, steps)
        for r in rows:
            if r["run_id"] == run:
                assert params_checksum(np.asarray(r["params"], np.float32)) == r["checksum"]
                assert len(r["params"]) == r["num_params"]


def test_member_hparams_are_deterministic_and_in_range():
    ranges = {"lr": [1e-4, 1e-3], "ent_coef": [0.0, 0.02], "init_scale": [1.0, 1.0]}
    a = [member_hparams(ranges, 0, m) for m in range(20)]
    assert a == [member_hparams(ranges, 0, m) for m in range(20)]
    assert all(1e-4 <= h["lr"] <= 1e-3 and 0 <= h["ent_coef"] <= 0.02 and h["init_scale"] == 1.0 for h in a)
    assert len({h["lr"] for h in a}) == 20
    with pytest.raises(ValueError, match="not an algo setting"):
        member_hparams({"learning_rate": [1, 2]}, 0, 0)


def test_populate_local_store_then_dataset(tmp_path, pgen_in_process):
    store_dir = tmp_path / "store"
    out = pgen("populate", *TINY, "population.size=2", "population.max_env_steps=600", f"store.uri={store_dir}",
               "run_id=pop", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "env steps" in out.stderr and "member" in out.stderr  # the live table
    store = CheckpointStore(str(store_dir))
    assert_complete_runs(store, ["pop-m000", "pop-m001"], 600)
    runs = {m: json.loads(store.get(f"runs/pop-m00{m}/run.json")) for m in (0, 1)}
    assert runs[0]["hparams"] != runs[1]["hparams"] and runs[0]["origin"] == "trained"
    assert store.exists("runs/pop-m000/state/latest")
    # a larger population on the same run id extends it: the finished members resume and stop, the new
    # one trains, and the progress rate counts this run's env steps only (not the resumed members')
    more = pgen("populate", *TINY, "population.size=3", "population.max_env_steps=600", f"store.uri={store_dir}",
                "run_id=pop", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert_complete_runs(store, ["pop-m000", "pop-m001", "pop-m002"], 600)
    last = re.findall(r"population pop: ([\d,]+) env steps after (\d+)m(\d+)s \(([\d,]+)/s", more.stderr)[-1]
    total, seconds, rate = int(last[0].replace(",", "")), 60 * int(last[1]) + int(last[2]), int(last[3].replace(",", ""))
    assert total == 1800 and rate * seconds < 1200, last
    # pgen dataset: counts, return range, histogram
    status, out, err = pgen_in_process("dataset", f"store.uri={store_dir}", f"out_dir={tmp_path / 'ds'}")
    assert status == 0, err
    assert "12 checkpoints" in out and "pop-m002" in out and "0 bad rows" in out
    assert (tmp_path / "ds" / "returns.png").stat().st_size > 1000
    # a corrupted part is skipped and reported, never fatal
    key = "checkpoints/" + next(k.split("checkpoints/", 1)[1] for k in store.list("checkpoints/"))
    bad = key.rsplit("part-", 1)[0] + "part-999999.parquet"
    assert store.put_once(bad, b"PAR1 this is not parquet")
    status, out, err = pgen_in_process("dataset", f"store.uri={store_dir}", f"out_dir={tmp_path / 'ds'}")
    assert status == 0 and "1 unreadable parts" in out and "part-999999" in out, err


class PopulateProcess:
    """`pgen populate` (or another long-running `command`) in the background, its merged output
    collected line by line."""

    def __init__(self, *args: str, env=None, cwd=None, command: str = "populate"):
        self.proc = pgen_background(command, *args, env=env, cwd=cwd)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                                       daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until(self, condition: Callable[[], bool], deadline: float, poll_s: float = 0.2) -> None:
        """Until `condition()` holds; fails with the output's tail if the command exits first or the
        `deadline` (a `time.time()`) passes."""
        while not condition():
            assert time.time() < deadline and self.proc.poll() is None, self.output[-4000:]
            time.sleep(poll_s)

    def wait_for_members(self, prefix: str, size: int, timeout: float = 120) -> None:
        """Until every member's table row shows env steps > 0 (each has saved state)."""
        row = re.compile(rf"{prefix}-m(\d+)\s+[1-9]")
        self.wait_until(lambda: len({m.group(1) for line in self.lines if (m := row.search(line))}) >= size,
                        time.time() + timeout, poll_s=0.5)

    def finish(self, timeout: float = 240) -> str:
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return self.output


def pids_of(pattern: str) -> list[int]:
    """The processes whose command line matches `pattern` (Ray names an actor's worker `ray::<Class>`)."""
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_killed_workers_resume_without_duplicates(tmp_path):
    """On the PettingZoo env backend (the path of every env the batched backend does not cover; the
    other population tests run simple_spread / simple_tag on the batched one)."""
    store_dir = tmp_path / "store"
    # no step limit: the test decides when the run ends, so a fast machine cannot finish it first
    pop = PopulateProcess(*TINY, "env.backend=pettingzoo", "population.size=2", "population.max_env_steps=null",
                          f"store.uri={store_dir}", "run_id=kill", cwd=tmp_path)
    pop.wait_for_members("kill", 2)  # both have saved state: a kill now leads to a resume
    kills, killed = 0, set()
    deadline = time.time() + 180
    while kills < 2 and time.time() < deadline and pop.proc.poll() is None:
        # kill only once the previous victim has come back (its "resumed at" line is out)
        if pop.output.count("resumed at") < kills:
            time.sleep(0.5)
            continue
        time.sleep(2.0)
        pids = [p for p in pids_of("ray::PopulationWorker") if p not in killed]
        if pids:
            killed.add(pids[0])
            os.kill(pids[0], signal.SIGKILL)
            kills += 1
    while pop.output.count("resumed at") < kills and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2.0)  # at least one more interval after the last resume
    pop.proc.send_signal(signal.SIGTERM)
    output = pop.finish()
    # SIGTERM: the intervals in flight finish, and the command exits cleanly with every run complete
    assert pop.proc.returncode == 0 and "SIGTERM: finishing the current intervals" in output, output[-3000:]
    assert kills == 2, output[-2000:]
    assert output.count("resumed at") >= 2, output[-3000:]
    store = CheckpointStore(str(store_dir))
    rows = store.read_records().table.to_pylist()
    for run in ("kill-m000", "kill-m001"):
        assert_complete_runs(store, [run], max(r["step"] for r in rows if r["run_id"] == run))


def test_s3_outage_mid_run_loses_nothing(tmp_path, s3_server, s3_store_uri):
    proxy = TcpProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])).start()
    try:
        pop = PopulateProcess(*TINY, "population.size=2", "population.max_env_steps=null",
                              f"store.uri={s3_store_uri}", "run_id=outage", env={"AWS_ENDPOINT_URL": proxy.url},
                              cwd=tmp_path)
        pop.wait_for_members("outage", 2)
        proxy.stop()  # the S3 endpoint refuses connections for 6 s (several checkpoints' writes)
        time.sleep(6)
        assert pop.proc.poll() is None, pop.output[-3000:]
        proxy.start()
        steps_at_restart = pop.output.count("population outage:")
        deadline = time.time() + 120
        while pop.output.count("population outage:") < steps_at_restart + 3 and time.time() < deadline:
            time.sleep(0.5)  # a few more table refreshes after the outage
        pop.proc.send_signal(signal.SIGTERM)
        output = pop.finish()
    finally:
        proxy.stop()
    assert pop.proc.returncode == 0 and "SIGTERM: finishing the current intervals" in output, output[-3000:]
    assert "retry" in output.lower()
    store = CheckpointStore(s3_store_uri, endpoint_url=s3_server.endpoint_url)
    rows = store.read_records().table.to_pylist()
    for run in ("outage-m000", "outage-m001"):
        assert_complete_runs(store, [run], max(r["step"] for r in rows if r["run_id"] == run))


def test_seed_from_starts_members_from_seed_checkpoints(tmp_path):
    store_dir = tmp_path / "store"
    store = CheckpointStore(str(store_dir))
    cfg = compose_config("populate", TINY)
    from pgen.envs import env_key
    from pgen.policies.nets import Actor
    from pgen.policies.spec import PolicySpec

    spec = PolicySpec("mlp", 18, (64, 64), 5, True, "tanh")
    seeds = [Actor(spec).flat_params() for _ in range(2)]
    for i, params in enumerate(seeds):
        record = {"run_id": "seedrun", "member": i, "env_id": cfg.env.id, "env_key": env_key(cfg.env),
                  "group": "agent", "arch": spec.arch_key, "step": 0, "update": 0, "return_mean": -30.0,
                  "return_std": 1.0, "episodes": 4, "num_params": params.size, "params": params,
                  "checksum": params_checksum(params), "created_at": __import__("datetime").datetime.now(
                      __import__("datetime").timezone.utc), "seed": 0, "origin": "seeded:gen@3"}
        store.write_part([record], env_key(cfg.env), "agent", spec.arch_key, "seedrun", i)
    # population.seed_critic_warmup=2: each seeded policy plays unchanged for two updates, then learns
    out = pgen("populate", *TINY, "population.size=2", "population.max_env_steps=300", f"store.uri={store_dir}",
               "population.checkpoint_every=1", "population.seed_from=seedrun", "population.seed_critic_warmup=2",
               "run_id=seeded", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for member in (0, 1):
        rows = store.read_records(run_id=f"seeded-m{member:03d}").table.to_pylist()
        first = min(rows, key=lambda r: r["step"])
        assert first["step"] == 0 and first["origin"] == "seeded:gen@3"
        by_update = {r["update"]: np.asarray(r["params"], np.float32) for r in rows}
        assert sorted(by_update) == [0, 1, 2, 3]
        assert all(np.array_equal(by_update[u], seeds[member]) for u in (0, 1, 2))
        assert not np.array_equal(by_update[3], seeds[member])


def test_an_algo_setting_population_hparams_draws_per_member_is_named_with_how_to_pin_it():
    from pgen.population.worker import algo_settings_drawn_per_member

    assert algo_settings_drawn_per_member(compose_config("populate", [])) == []
    (line,) = algo_settings_drawn_per_member(compose_config("populate", ["algo.lr=5e-4", "algo.gamma=0.95"]))
    assert line.startswith("algo.lr=0.0005 is not used") and "population.hparams.lr=[0.0005,0.0005]" in line
    assert algo_settings_drawn_per_member(compose_config("populate", ["algo.lr=5e-4",
                                                                      "population.hparams.lr=[5e-4,5e-4]"])) == []
    assert algo_settings_drawn_per_member(compose_config("loop", ["algo.ent_coef=0.05"]))[0].startswith(
        "algo.ent_coef=0.05 is not used")


def test_bad_population_config_is_a_clear_error(tmp_path, pgen_in_process):
    status, _, err = pgen_in_process("populate", "+population.hparams.learning_rate=[1,2]", f"store.uri={tmp_path}")
    assert status == 2 and "not an algo setting" in err and "Traceback" not in err


def test_a_store_that_ignores_conditional_writes_loses_and_mixes_nothing(tmp_path, s3_server):
    """Some S3-compatible servers accept If-None-Match and overwrite anyway. A two-group member
    (simple_tag) is killed at the two moments that matter -- while the first group's part of a
    checkpoint is being written, and while its trainer state is -- and resumes each time. No part may
    be written twice with other contents, and each checkpoint index holds both groups' records of
    one and the same training (same step, update and creation time)."""
    import boto3

    from tests.s3server import S3Server

    hold = r"(group=adversary/.*part-00000[2-9])|(state/[^/]+/trainer\.safetensors)"
    server = S3Server(persist=False, state_dir=tmp_path / "moto", ignore_conditional_writes=True,
                      hold=(hold, 1.5)).start()
    try:
        s3 = boto3.client("s3", endpoint_url=server.endpoint_url)
        s3.create_bucket(Bucket="lax")
        s3.put_bucket_versioning(Bucket="lax", VersioningConfiguration={"Status": "Enabled"})
        pop = PopulateProcess(*TINY, "env=simple_tag", "population.size=1", "population.max_env_steps=null",
                              "store.uri=s3://lax/pgen", "run_id=lax", env={"AWS_ENDPOINT_URL": server.endpoint_url},
                              cwd=tmp_path)
        deadline = time.time() + 240

        def kill_at(pattern: str, after: int) -> int:
            """SIGKILL the member once a PUT matching `pattern` (past line `after` of the log) is held."""
            while time.time() < deadline:
                assert pop.proc.poll() is None, pop.output[-3000:]
                puts = server.puts.read_text().splitlines() if server.puts.exists() else []
                if any(re.search(pattern, line) for line in puts[after:]):
                    pids = pids_of("ray::PopulationWorker")
                    assert len(pids) == 1, pids
                    os.kill(pids[0], signal.SIGKILL)
                    return len(puts)
                time.sleep(0.05)
            raise AssertionError(f"no PUT matching {pattern}:\n{pop.output[-3000:]}")

        def wait_resumed(times: int) -> None:
            while pop.output.count("resumed at") < times:
                assert time.time() < deadline and pop.proc.poll() is None, pop.output[-3000:]
                time.sleep(0.2)

        seen = kill_at(r"group=adversary/.*part-000002", 0)  # mid-checkpoint: one group's part is stored
        wait_resumed(1)
        kill_at(r"state/[^/]+/trainer\.safetensors", seen)  # while the trainer state is being written
        wait_resumed(2)
        time.sleep(8)  # a few checkpoints after the second resume
        pop.proc.send_signal(signal.SIGTERM)
        output = pop.finish()
        assert pop.proc.returncode == 0, output[-3000:]
        versions = s3.list_object_versions(Bucket="lax", Prefix="pgen/checkpoints/").get("Versions", [])
        etags: dict[str, set] = {}
        for v in versions:
            etags.setdefault(v["Key"], set()).add(v["ETag"])
        rewritten = {k: e for k, e in etags.items() if len(e) > 1}
        assert not rewritten, f"parts written again with other contents: {sorted(rewritten)}"
        store = CheckpointStore("s3://lax/pgen", endpoint_url=server.endpoint_url)
        rows = store.read_records(columns=["group", "step", "update", "created_at", "run_id"]).table.to_pylist()
        by_group = {g: sorted((r for r in rows if r["group"] == g), key=lambda r: r["step"])
                    for g in ("adversary", "agent")}
        assert len(by_group["adversary"]) == len(by_group["agent"]) >= 6
        for a, b in zip(*by_group.values()):
            assert (a["step"], a["update"], a["created_at"]) == (b["step"], b["update"], b["created_at"]), (a, b)
        steps = [r["step"] for r in by_group["agent"]]
        assert steps == list(range(0, 200 * len(steps), 200)), steps
    finally:
        if "pop" in locals() and pop.proc.poll() is None:
            pop.proc.kill()
        server.stop()
