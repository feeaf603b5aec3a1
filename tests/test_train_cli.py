"""`pgen train` end to end on a tiny config, through the real console script."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pgen.config import ConfigError, compose_config
from pgen.policies.policy_file import load_policies, read_policy_file

TINY = ["algo.num_envs=4", "algo.rollout_steps=25", "algo.update_epochs=2", "log_every_s=0"]


def pgen(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pgen.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_train_writes_curve_policies_state_and_resumes(tmp_path):
    run = ["train", *TINY, "env=simple_tag", "population.max_env_steps=300", f"run_dir={tmp_path}", "run_id=r1"]
    out = pgen(*run, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "env steps/s" in out.stderr and "ETA" in out.stderr
    path = tmp_path / "r1"
    info = json.loads((path / "run.json").read_text())
    assert info["status"] == "done" and info["env_steps"] == 300 and set(info["groups"]) == {"adversary", "agent"}
    curve = json.loads((path / "curve.json").read_text())
    assert [r["env_steps"] for r in curve] == [100, 200, 300]
    assert (path / "curve.png").stat().st_size > 1000 and (path / "curve.csv").exists()
    pf = read_policy_file(path / "policies" / "adversary.safetensors")
    assert pf.metadata["arch"] == "mlp-16x64x64x5-tanh" and pf.params.shape[0] == 1
    assert len(load_policies(path / "policies" / "agent.safetensors")) == 1
    # resume continues from the saved state instead of starting over
    more = pgen(*[a for a in run if not a.startswith("population.max_env_steps")], "population.max_env_steps=500",
                "resume=true", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert "resumed r1 at iteration 3" in more.stderr
    curve = json.loads((path / "curve.json").read_text())
    assert [r["env_steps"] for r in curve] == [100, 200, 300, 400, 500]
    assert not np.array_equal(read_policy_file(path / "policies" / "adversary.safetensors").params, pf.params)


def test_typo_in_an_override_fails_with_the_key_named(tmp_path, pgen_in_process):
    out = pgen("train", "algo.lrr=0.1", cwd=tmp_path)  # the command itself, once
    assert out.returncode == 2 and "algo.lrr" in out.stderr and "Traceback" not in out.stderr
    status, _, err = pgen_in_process("train", "algo.num_envs=many")
    assert status == 2 and "num_envs" in err


def test_a_bad_calibration_setting_stops_the_pipeline_before_it_populates(tmp_path, pgen_in_process):
    status, _, err = pgen_in_process("pipeline", "generator.calibration.samples=0", f"store.uri={tmp_path / 'store'}")
    assert status == 2 and "generator.calibration.samples" in err and "Traceback" not in err
    assert "populate" not in err and not (tmp_path / "store").exists()


def test_a_profile_of_another_command_is_refused_by_name():
    """`profile=zoo` is a preset of the pipeline's keys (population, generator, evaluate): `pgen tune`
    and `pgen loop` have profiles of their own and name them instead of failing on a key."""
    for command in ("tune", "loop"):
        with pytest.raises(ConfigError, match=f"unknown profile=zoo; the profiles of `pgen {command}` are full | quick"):
            compose_config(command, ["profile=zoo"])
        assert compose_config(command, ["profile=full"]).profile == "full"
    assert compose_config("pipeline", ["profile=zoo"]).population.size == 24


def test_unknown_env_id_fails_clearly(tmp_path, pgen_in_process):
    status, _, err = pgen_in_process("train", "env.id=not_a_module_xyz")
    assert status == 2 and "not an importable module" in err and "Traceback" not in err


def test_help_lists_train():
    out = pgen("--help")
    assert out.returncode == 0 and "train" in out.stdout
    out = pgen("pipeline", "--help")  # a command's --help is the usage, not a Hydra override error
    assert out.returncode == 0 and "pgen pipeline --cfg" in out.stdout and not out.stderr
