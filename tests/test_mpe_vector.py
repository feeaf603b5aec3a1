"""The batched NumPy MPE backend against mpe2 itself, and how `env.backend` picks a backend.

Every exactness test steps E mpe2 envs (`VecEnv`, the PettingZoo loop) and `MPEVecEnv` with the
same seeds and the same random actions, and compares everything a step returns.
"""

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from pgen.config import EnvBackend, EnvConfig, compose_config
from pgen.envs import EnvError, MPEVecEnv, SubprocVecEnv, VecEnv, env_key, group_agents, make_parallel_env, make_vec_env
from pgen.envs import backend as backend_module
from pgen.envs.mpe import supports

TOL = 1e-4
SPREAD = EnvConfig("simple_spread", "mpe2.simple_spread_v3", {"N": 3, "max_cycles": 25})
TAG = EnvConfig("simple_tag", "mpe2.simple_tag_v3", {"max_cycles": 25})
EARLY = EnvConfig("early_exit", "tests.toy_envs.early_exit", {"max_cycles": 5})

SCENARIOS = {
    "spread-N3": ("mpe2.simple_spread_v3", {"N": 3}),
    "spread-N3-lr0.25": ("mpe2.simple_spread_v3", {"N": 3, "local_ratio": 0.25}),
    "spread-N2": ("mpe2.simple_spread_v3", {"N": 2}),
    "spread-N2-lr0.25": ("mpe2.simple_spread_v3", {"N": 2, "local_ratio": 0.25}),
    "tag-1-3-2": ("mpe2.simple_tag_v3", {}),
    "tag-2-2-1": ("mpe2.simple_tag_v3", {"num_good": 2, "num_adversaries": 2, "num_obstacles": 1}),
}
CASES = [(f"{name}-{kind}", env_id, {**kwargs, "max_cycles": 25, "continuous_actions": kind == "box"})
         for name, (env_id, kwargs) in SCENARIOS.items() for kind in ("discrete", "box")]


def random_actions(groups, num_envs: int, steps: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Actions held for 1-6 steps (so agents reach their speed limits and the borders); Box actions
    also outside [0, 1], which both backends clip."""
    rng = np.random.default_rng(seed)
    out, current = [], {}
    for t in range(steps):
        if t == 0 or rng.random() < 0.3:
            current = {g.name: rng.integers(0, g.action_dim, (num_envs, g.size)) if g.discrete
                       else rng.uniform(-0.25, 1.25, (num_envs, g.size, g.action_dim)) for g in groups}
        out.append(current)
    return out


def exercised(step) -> set[str]:
    """The rules of the scenarios a step of mpe2 exercised, read from mpe2's own outputs."""
    groups, out = step.groups, set()
    if "adversary" not in groups:  # simple_spread: obs [vel, pos, N landmarks, N-1 others, comm], D = 6N
        obs = groups["agent"].obs
        n = obs.shape[-1] // 6
        others = obs[..., 4 + 2 * n : 4 + 4 * n - 2].reshape(*obs.shape[:2], n - 1, 2)
        if np.any(np.linalg.norm(others, axis=-1) < 2 * 0.15):  # closer than two agent radii
            out.add("collision")
        return out
    prey = groups["agent"].reward
    if np.any(groups["adversary"].reward > 0):
        out.add("catch")
    if np.any(np.abs(prey - np.round(prey / 10) * 10) > 1e-6):  # not a multiple of the catch penalty
        out.add("border")
    if np.any(np.abs(np.linalg.norm(groups["adversary"].obs[..., 0:2], axis=-1) - 1.0) < 1e-6):
        out.add("speed limit")  # an adversary at exactly its max speed
    return out


class MaxDiff:
    """The largest |mpe2 - vector| seen per field."""

    def __init__(self):
        self.seen: dict[str, float] = {}

    def add(self, field, ours, theirs):
        ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
        assert ours.shape == theirs.shape, f"{field}: shape {ours.shape} != mpe2's {theirs.shape}"
        diff = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
        self.seen[field] = max(self.seen.get(field, 0.0), diff)
        assert diff <= TOL, f"{field}: max |vector - mpe2| = {diff}"


@pytest.mark.parametrize("env_id,kwargs", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_vector_backend_is_exact_against_mpe2(env_id, kwargs):
    E, episodes_per_copy, T = 8, 3, 25
    cfg = EnvConfig("x", env_id, kwargs)
    theirs, ours = VecEnv(cfg, E, seed=7), MPEVecEnv(cfg, E, seed=7)
    diff = MaxDiff()
    (o1, a1, s1), (o2, a2, s2) = theirs.reset(), ours.reset()
    for g in theirs.groups:
        assert o2[g.name].dtype == np.float32
        diff.add("obs", o2[g.name], o1[g.name])
        diff.add("alive", a2[g.name], a1[g.name])
    diff.add("state", s2, s1)
    assert ours.state_dim == theirs.state_dim
    seen: set[str] = set()
    episodes = []
    for actions in random_actions(theirs.groups, E, episodes_per_copy * T, seed=1):
        x, y = theirs.step(actions), ours.step(actions)
        for g in theirs.groups:
            a, b = x.groups[g.name], y.groups[g.name]
            for field in ("obs", "reward", "ended", "truncated", "alive", "final_obs"):
                diff.add(field, getattr(b, field), getattr(a, field))
        diff.add("state", y.state, x.state)
        diff.add("final_state", y.final_state, x.final_state)
        assert len(y.episodes) == len(x.episodes)
        for p, q in zip(x.episodes, y.episodes):
            assert list(q) == list(p)
            for key in p:
                diff.add(f"episode {key}", q[key], p[key])
        episodes += x.episodes
        seen |= exercised(x)
    assert len(episodes) == E * episodes_per_copy  # ≥ 20 episodes; every copy auto-resets twice
    assert all(ep["length"] == T for ep in episodes)
    required = {"collision"} if "spread" in env_id else {"catch", "border", "speed limit"}
    assert required <= seen, f"the random episodes did not exercise {required - seen}"
    print(env_id, kwargs, diff.seen)


@pytest.mark.parametrize("cfg", [SPREAD, TAG], ids=["spread", "tag"])
def test_vector_backend_is_bit_identical(cfg):
    """Stronger than TOL: the same float64 operations in the same order give the same bits."""
    theirs, ours = VecEnv(cfg, 4, seed=3), MPEVecEnv(cfg, 4, seed=3)
    assert np.array_equal(theirs.reset()[2], ours.reset()[2])
    for actions in random_actions(theirs.groups, 4, 50, seed=2):
        x, y = theirs.step(actions), ours.step(actions)
        assert np.array_equal(x.state, y.state) and np.array_equal(x.final_state, y.final_state)
        for g in theirs.groups:
            assert np.array_equal(x.groups[g.name].reward, y.groups[g.name].reward)
        assert x.episodes == y.episodes


def test_groups_and_spaces_are_mpe2s():
    for cfg in (SPREAD, TAG, replace(TAG, kwargs={"continuous_actions": True, "num_good": 2})):
        ours = MPEVecEnv(cfg, 2, 0).groups
        theirs = group_agents(make_parallel_env(cfg), cfg.id)
        assert [(g.name, g.agents, g.observation_space, g.action_space) for g in ours] == \
               [(g.name, g.agents, g.observation_space, g.action_space) for g in theirs]


def test_reseed_and_reset_restart_the_copies_from_their_seeds():
    theirs, ours = VecEnv(TAG, 3, seed=1), MPEVecEnv(TAG, 3, seed=1)
    for vec in (theirs, ours):
        vec.reset()
        vec.reseed(5)
    (o1, _, s1), (o2, _, s2) = theirs.reset(), ours.reset()
    assert np.array_equal(s1, s2) and np.array_equal(o1["agent"], o2["agent"])
    seeds = [11, 12, 13]
    theirs.set_seeds(seeds)
    ours.set_seeds(seeds)
    assert np.array_equal(theirs.reset()[2], ours.reset()[2])


def test_without_state_there_is_no_state():
    vec = MPEVecEnv(SPREAD, 2, 0, with_state=False)
    _, _, state = vec.reset()
    step = vec.step({"agent": np.zeros((2, 3), np.int64)})
    assert state is None and vec.state_dim is None and step.state is None and step.final_state is None


def test_bad_actions_are_clear_errors():
    vec = MPEVecEnv(SPREAD, 2, 0)
    with pytest.raises(EnvError, match="reset"):
        vec.step({"agent": np.zeros((2, 3), np.int64)})
    vec.reset()
    with pytest.raises(EnvError, match=r"discrete actions must be in \[0, 5\)"):
        vec.step({"agent": np.full((2, 3), 5)})
    with pytest.raises(EnvError, match="shape"):
        vec.step({"agent": np.zeros((2, 2), np.int64)})


# --- backend selection ----------------------------------------------------------------------------


@pytest.fixture
def pgen_log(monkeypatch):
    """Lines the `pgen` logger emits (its own handler: `setup_logging` may stop propagation), with
    the once-per-process memory of backend.py emptied."""
    monkeypatch.setattr(backend_module, "_logged", set())
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    log = logging.getLogger("pgen")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield lines
    log.removeHandler(handler)
    log.setLevel(old_level)


@pytest.mark.parametrize("cfg", [SPREAD, TAG, replace(SPREAD, kwargs={"dynamic_rescaling": False, "curriculum": False})],
                         ids=["spread", "tag", "no-effect-and-default-kwargs"])
def test_auto_picks_the_vector_backend_when_it_supports_the_env(cfg, pgen_log):
    vec = make_vec_env(cfg, 2, 0)
    assert isinstance(vec, MPEVecEnv) and not pgen_log
    assert isinstance(make_vec_env(cfg, 2, 0, num_workers=2), MPEVecEnv)  # env_workers: ignored
    assert isinstance(make_vec_env(replace(cfg, backend=EnvBackend.pettingzoo), 2, 0), VecEnv)


UNSUPPORTED = [
    (EARLY, "not one of its scenarios"),
    (replace(SPREAD, kwargs={"N": 3, "curriculum": True}), "curriculum=True is not implemented"),
    (replace(TAG, kwargs={"num_agent_neighbors": 2}), "num_agent_neighbors=2 is not implemented"),
    (replace(SPREAD, kwargs={"render_mode": "rgb_array"}), "render_mode='rgb_array' is not implemented"),
]


@pytest.mark.parametrize("cfg,reason", UNSUPPORTED, ids=["toy-env", "curriculum", "neighbors", "render_mode"])
def test_auto_falls_back_to_pettingzoo_once_with_the_reason(cfg, reason, pgen_log):
    ok, why = supports(cfg)
    assert not ok and reason in why
    vec = make_vec_env(cfg, 2, 0)
    assert isinstance(vec, VecEnv)
    assert len(pgen_log) == 1 and cfg.id in pgen_log[0] and "PettingZoo backend" in pgen_log[0] and reason in pgen_log[0]
    vec.close()
    make_vec_env(cfg, 2, 0).close()
    assert len(pgen_log) == 1  # once per process


def test_auto_falls_back_to_pettingzoo_worker_processes():
    sub = make_vec_env(EARLY, 2, 0, num_workers=2)
    assert isinstance(sub, SubprocVecEnv)
    sub.close()


@pytest.mark.parametrize("cfg,reason", UNSUPPORTED + [(replace(SPREAD, kwargs={"no_such_kwarg": 1}), "no kwarg 'no_such_kwarg'")],
                         ids=["toy-env", "curriculum", "neighbors", "render_mode", "unknown-kwarg"])
def test_vector_backend_refuses_what_it_does_not_support(cfg, reason):
    with pytest.raises(EnvError, match="env.backend=vector cannot run") as err:
        make_vec_env(replace(cfg, backend=EnvBackend.vector), 2, 0)
    assert reason in str(err.value) and cfg.id in str(err.value)
    with pytest.raises(EnvError, match="the vector backend cannot run"):
        MPEVecEnv(cfg, 2, 0)


def test_bad_kwarg_values_get_mpe2s_own_error():
    with pytest.raises(EnvError, match="local_ratio"):
        MPEVecEnv(replace(SPREAD, kwargs={"local_ratio": 2.0}), 2, 0)


def test_the_backend_is_not_part_of_the_env_key():
    # the key of TAG before backends existed (main's env_key): stores stay valid across backends
    assert {env_key(replace(TAG, backend=b)) for b in EnvBackend} == {"simple_tag_v3-19725226"}


def test_backend_is_a_config_key():
    cfg = compose_config("train", ["env=simple_tag", "env.backend=pettingzoo"])
    assert cfg.env.backend == EnvBackend.pettingzoo
    assert compose_config("train", []).env.backend == EnvBackend.auto


# --- the learner and evaluation on the vector backend ---------------------------------------------

TINY = ["algo.num_envs=4", "algo.rollout_steps=25", "algo.update_epochs=2", "population.max_env_steps=1000"]


@pytest.mark.parametrize("env", ["simple_spread", "simple_tag"])
def test_ppo_on_the_vector_backend_trains_as_on_pettingzoo(env):
    runs = {}
    for backend in ("vector", "pettingzoo"):
        from pgen.learner.ppo import PPOLearner

        cfg = compose_config("train", TINY + [f"env={env}", f"env.backend={backend}"])
        learner = PPOLearner(cfg.env, cfg.policy, cfg.algo, cfg.seed, cfg.population.max_env_steps)
        assert isinstance(learner.vec, MPEVecEnv if backend == "vector" else VecEnv)
        stats = [learner.iterate() for _ in range(2)]
        runs[backend] = ([s.episode_returns for s in stats], [s.losses for s in stats],
                         {n: gl.actor.flat_params() for n, gl in learner.groups.items()})
        learner.close()
    assert runs["vector"][1][-1] and all(np.isfinite(v) for g in runs["vector"][1][-1].values() for v in g.values())
    assert runs["vector"][0] == runs["pettingzoo"][0]  # the same episodes ...
    assert runs["vector"][1] == runs["pettingzoo"][1]  # ... the same updates
    for name, params in runs["vector"][2].items():
        assert np.array_equal(params, runs["pettingzoo"][2][name])


@pytest.mark.parametrize("cfg", [TAG, replace(SPREAD, kwargs={"N": 3, "continuous_actions": True})], ids=["tag", "spread-box"])
def test_evaluate_returns_is_the_same_on_both_backends(cfg):
    from pgen.policies.nets import Actor
    from pgen.policies.rollout import evaluate_returns
    from pgen.policies.spec import PolicySpec

    groups = group_agents(make_parallel_env(cfg), cfg.id)
    torch.manual_seed(0)
    # the first group plays a fixed random-init policy, any other uniformly random actions
    policies = {g.name: Actor(PolicySpec.for_group(g, "mlp", (16,), "tanh")).eval() if i == 0 else None
                for i, g in enumerate(groups)}
    returns = {b: evaluate_returns(replace(cfg, backend=b), policies, episodes=12, num_envs=4) for b in EnvBackend}
    for b in EnvBackend:
        assert returns[b].keys() == returns[EnvBackend.pettingzoo].keys()
        for name, r in returns[b].items():
            assert r.shape == (12,)
            np.testing.assert_array_equal(r, returns[EnvBackend.pettingzoo][name])


def test_a_policy_file_trained_on_the_vector_backend_plays_the_same_on_mpe2(tmp_path):
    """Train on the batched backend, write the policy file; rolled out on mpe2 directly (the PettingZoo
    backend) on the same fixed-seed episodes, it gets exactly the return the batched backend reports."""
    from pgen.commands.train import train
    from pgen.policies.policy_file import load_policies
    from pgen.policies.rollout import evaluate_returns

    cfg = compose_config("train", TINY + ["env.backend=vector", "population.max_env_steps=2000",
                                          f"run_dir={tmp_path}", "run_id=vec"])
    result = train(cfg)
    policy = load_policies(result.policy_files["agent"])[0]
    played = {b: evaluate_returns(replace(cfg.env, backend=b), {"agent": policy}, episodes=20)["agent"]
              for b in (EnvBackend.vector, EnvBackend.pettingzoo)}
    np.testing.assert_array_equal(played[EnvBackend.vector], played[EnvBackend.pettingzoo])
    assert np.ptp(played[EnvBackend.pettingzoo]) > 0  # real, varied episodes
