"""Loading envs by module, agent grouping, and vectorised stepping with masks."""

import numpy as np
import pytest

from pgen.config import EnvConfig
from pgen.envs import EnvError, SubprocVecEnv, VecEnv, describe_env, make_parallel_env

SPREAD = EnvConfig("simple_spread", "mpe2.simple_spread_v3", {"N": 3, "max_cycles": 25})
TAG = EnvConfig("simple_tag", "mpe2.simple_tag_v3", {"max_cycles": 25})
EARLY = EnvConfig("early_exit", "tests.toy_envs.early_exit", {"max_cycles": 5})


def test_grouping_simple_spread():
    spec = describe_env(SPREAD)
    assert [(g.name, g.agents, g.obs_dim, g.action_dim, g.discrete) for g in spec.groups] == [
        ("agent", ("agent_0", "agent_1", "agent_2"), 18, 5, True)
    ]
    assert spec.state_dim == 54


def test_grouping_simple_tag_has_two_groups_with_different_spaces():
    spec = describe_env(TAG)
    groups = {g.name: g for g in spec.groups}
    assert set(groups) == {"adversary", "agent"}
    assert groups["adversary"].agents == ("adversary_0", "adversary_1", "adversary_2")
    assert groups["agent"].agents == ("agent_0",)
    assert groups["adversary"].obs_dim == 16 and groups["agent"].obs_dim == 14


def test_unknown_module_is_a_clear_error():
    with pytest.raises(EnvError, match="not an importable module"):
        make_parallel_env(EnvConfig("x", "no_such_pkg.nothing_v0", {}))


def test_module_without_parallel_env_is_a_clear_error():
    with pytest.raises(EnvError, match="has no parallel_env"):
        make_parallel_env(EnvConfig("x", "tests.toy_envs.not_an_env", {}))


def test_bad_kwargs_are_a_clear_error():
    with pytest.raises(EnvError, match="no_such_kwarg"):
        make_parallel_env(EnvConfig("x", "tests.toy_envs.early_exit", {"no_such_kwarg": 1}))


def test_unsupported_action_space_is_a_clear_error():
    with pytest.raises(EnvError, match="action space MultiDiscrete"):
        VecEnv(EnvConfig("x", "tests.toy_envs.early_exit", {"action_space": "multidiscrete"}), 2, 0)


def test_agents_that_finish_early_are_masked_and_copies_auto_reset():
    vec = VecEnv(EARLY, 2, seed=0)
    obs, alive, _ = vec.reset()
    assert alive["runner"].tolist() == [[1, 1], [1, 1]]
    ones = {"runner": np.ones((2, 2), dtype=np.int64)}
    s1 = vec.step(ones)
    assert s1.groups["runner"].ended.sum() == 0
    s2 = vec.step(ones)  # runner_1 terminates at t=2
    g = s2.groups["runner"]
    assert g.ended[:, 1].tolist() == [1, 1] and g.truncated[:, 1].tolist() == [0, 0]
    assert g.alive[:, 1].tolist() == [0, 0] and g.alive[:, 0].tolist() == [1, 1]
    assert np.all(g.obs[:, 1] == 0)
    for _ in range(2):
        s = vec.step(ones)
        assert s.groups["runner"].reward[:, 1].sum() == 0  # masked agent gets nothing
    s5 = vec.step(ones)  # t=5: truncation of runner_0 ends the episode, copies reset
    g = s5.groups["runner"]
    assert g.ended[:, 0].tolist() == [1, 1] and g.truncated[:, 0].tolist() == [1, 1]
    assert g.final_obs[0, 0, 0] == pytest.approx(1.0)  # t / max_cycles at the end
    assert g.alive.tolist() == [[1, 1], [1, 1]]
    assert [ep["runner"] for ep in s5.episodes] == [7.0, 7.0] and s5.episodes[0]["length"] == 5
    vec.close()


def test_subprocess_workers_give_the_same_steps_as_in_process():
    rng = np.random.default_rng(0)
    inproc = VecEnv(SPREAD, 4, seed=3)
    sub = SubprocVecEnv(SPREAD, 4, seed=3, num_workers=2)
    try:
        a, b = inproc.reset(), sub.reset()
        assert np.array_equal(a[0]["agent"], b[0]["agent"]) and np.array_equal(a[2], b[2])
        for _ in range(30):
            act = {"agent": rng.integers(0, 5, size=(4, 3))}
            x, y = inproc.step(act), sub.step(act)
            assert np.array_equal(x.groups["agent"].obs, y.groups["agent"].obs)
            assert np.array_equal(x.groups["agent"].reward, y.groups["agent"].reward)
            assert x.episodes == y.episodes
    finally:
        inproc.close()
        sub.close()


def test_grouping_pursuit_flattens_image_observations():
    spec = describe_env(EnvConfig("pursuit", "pettingzoo.sisl.pursuit_v5", {"max_cycles": 50}))
    (group,) = spec.groups
    assert group.name == "pursuer" and group.size == 8 and group.obs_dim == 7 * 7 * 3 and group.discrete


THREADED_BUILDS = """
import threading
from concurrent.futures import ThreadPoolExecutor
from pgen.config import EnvConfig
from pgen.envs import MPEVecEnv, VecEnv
cfg = EnvConfig("simple_spread", "mpe2.simple_spread_v3", {"N": 3, "max_cycles": 25})
together = threading.Barrier(4)
def build_and_close(worker):
    for i in range(25):
        together.wait(timeout=30)  # all four threads build at the same moment
        (VecEnv if (worker + i) % 2 else MPEVecEnv)(cfg, 2, 0).close()
with ThreadPoolExecutor(4) as pool:
    list(pool.map(build_and_close, range(4)))
print("built and closed")
"""


def test_envs_built_and_closed_from_many_threads_at_once_do_not_crash_the_process():
    import subprocess
    import sys

    # mpe2's envs start pygame's freetype when built and quit pygame when closed; without the lock in
    # pgen.envs.loading, four threads doing that at once abort the process (heap corruption) or raise
    # "Failed to load font", as two /v1/seed calls on one Serve replica did
    out = subprocess.run([sys.executable, "-c", THREADED_BUILDS], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0 and "built and closed" in out.stdout, (out.returncode, out.stderr[-2000:])
