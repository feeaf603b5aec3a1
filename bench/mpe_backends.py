"""Batched MPE backends against mpe2 (the PettingZoo MPE): exactness, throughput, install cost.

Backends: the mpe2 Python loop (reference and speed baseline), JaxMARL (JAX) and VMAS (PyTorch),
each in its own virtualenv, and pgen's own batched backend (`make_vec_env` with
`env.backend=vector`) when this checkout has one. Cases: simple_spread_v3 (N=3) and simple_tag_v3
(1 good, 3 adversaries, 2 obstacles), max_cycles=25, discrete and continuous actions.

1. Exactness: E mpe2 episodes (seeds 0..E-1) are reset, their positions and velocities copied into
   the library's state, and both are stepped 25 times with the same seeded random actions.
   "free": the library runs on from the copied initial state (errors accumulate);
   "one_step": mpe2's state is copied in again before every step (JaxMARL's own test does this,
   tests/mpe/test_mpe.py, atol 1e-4). Reported: max |Δ| of observations (in mpe2's layout) and
   rewards, and the number of (episode, step, agent) whose done differs (mpe2: terminated or
   truncated). JaxMARL is also checked with 64-bit floats (its default is float32; mpe2 computes
   in float64) and with its default max_steps (25), whose episodes last 26 steps.
   pgen's backend is checked against pgen's pettingzoo backend (mpe2) with the same seed.
2. Throughput: env steps/s (one step of one copy, every agent acting) with pre-sampled random
   actions, including auto-reset and the results back as NumPy (JaxMARL) or torch (VMAS) arrays,
   at E copies, on one core. JaxMARL's jit compile time is reported apart; "jaxmarl-scan" runs
   25 steps per call in `lax.scan` (a bound for a policy in JAX: pgen's learner is PyTorch). The
   ratio to mpe2 pairs each timing with one of the mpe2 loop (E=32) just before it, in the same
   process, since the load of this shared machine changes the loop's speed up to 2× within minutes.
3. Install cost: what the venv's site-packages gained (packages, versions, MB), `pip check`,
   which torch/ray the venv imports, and the import time.

    python bench/mpe_backends.py --jaxmarl-python /work/venvs/jaxmarl/bin/python \
        --vmas-python /work/venvs/vmas/bin/python

Each measurement runs in a subprocess of the backend's interpreter pinned to one core
(`taskset -c CPU`, XLA single-threaded, torch 1 thread). Writes bench/results/mpe_backends.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MAX_CYCLES = 25
XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
# backend -> (module timed, the array library it stands on, timed alone for reference)
IMPORTS = {"mpe2": ("mpe2.simple_spread_v3", "numpy"), "jaxmarl": ("jaxmarl", "jax"), "vmas": ("vmas", "torch")}


@dataclass(frozen=True)
class Case:
    env: str  # mpe2 module name
    continuous: bool

    @property
    def name(self) -> str:
        return f"{self.env}/{'continuous' if self.continuous else 'discrete'}"


CASES = [Case(env, c) for env in ("simple_spread_v3", "simple_tag_v3") for c in (False, True)]
MPE2_KWARGS = {"simple_spread_v3": {"N": 3}, "simple_tag_v3": {"num_good": 1, "num_adversaries": 3, "num_obstacles": 2}}
JAXMARL_ENVS = {
    "simple_spread_v3": ("MPE_simple_spread_v3", {"num_agents": 3, "num_landmarks": 3}),
    "simple_tag_v3": ("MPE_simple_tag_v3", {"num_good_agents": 1, "num_adversaries": 3, "num_obs": 2}),
}
VMAS_ENVS = {
    "simple_spread_v3": ("simple_spread", {"n_agents": 3}),
    "simple_tag_v3": ("simple_tag", {"num_good_agents": 1, "num_adversaries": 3, "num_landmarks": 2}),
}
# mpe2 discrete action (0 no-op, 1 -x, 2 +x, 3 -y, 4 +y) -> VMAS Discrete(9) = (x, y) in {stay, -, +}^2
VMAS_DISCRETE = np.array([0, 3, 6, 1, 2])


# ---------------------------------------------------------------------------------------------
# shared by every worker: mpe2 copies, actions, comparison


def mpe2_envs(case: Case, seeds: list[int]) -> list[Any]:
    module = importlib.import_module(f"mpe2.{case.env}")
    envs = [module.parallel_env(max_cycles=MAX_CYCLES, continuous_actions=case.continuous, **MPE2_KWARGS[case.env])
            for _ in seeds]
    for env, seed in zip(envs, seeds):
        env.reset(seed=seed)
    return envs


def sample_actions(case: Case, steps: int, num_envs: int, num_agents: int, seed: int) -> np.ndarray:
    """[steps, E, agents] ints in 0..4, or [steps, E, agents, 5] floats in [0, 1) (mpe2's spaces)."""
    rng = np.random.default_rng(seed)
    if case.continuous:
        return rng.random((steps, num_envs, num_agents, 5), dtype=np.float32)
    return rng.integers(0, 5, size=(steps, num_envs, num_agents))


def mpe2_state(envs: list[Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """Positions and velocities [E, entities, 2] (agents, then landmarks) and the step count."""
    worlds = [env.unwrapped.world for env in envs]
    pos = np.array([[e.state.p_pos for e in w.entities] for w in worlds])
    vel = np.array([[e.state.p_vel for e in w.entities] for w in worlds])
    return pos, vel, envs[0].unwrapped.steps


Batch = dict[str, np.ndarray]  # agent -> [E, ...]


def mpe2_step(envs: list[Any], actions: np.ndarray) -> tuple[Batch, Batch, Batch]:
    agents = envs[0].possible_agents
    results = [env.step({a: actions[e, j] for j, a in enumerate(agents)}) for e, env in enumerate(envs)]
    obs = {a: np.stack([r[0][a] for r in results]) for a in agents}
    rew = {a: np.array([r[1][a] for r in results]) for a in agents}
    done = {a: np.array([r[2][a] or r[3][a] for r in results]) for a in agents}
    return obs, rew, done


class Discrepancy:
    """Running max |Δ| of obs and rewards, done mismatches, and the max |Δobs| at each step."""

    def __init__(self) -> None:
        self.obs = self.reward = 0.0
        self.done_mismatches = self.reward_flips = self.compared = 0
        self.obs_by_step: list[float] = []

    def add(self, ref: tuple[Batch, Batch, Batch], got: tuple[Batch, Batch, Batch]) -> None:
        step_obs = 0.0
        for agent in ref[0]:
            step_obs = max(step_obs, float(np.max(np.abs(ref[0][agent] - got[0][agent]))))
            d_rew = np.abs(ref[1][agent] - got[1][agent])
            self.reward = max(self.reward, float(np.max(d_rew)))
            self.reward_flips += int(np.sum(d_rew > 1e-3))
            self.done_mismatches += int(np.sum(ref[2][agent] != got[2][agent]))
            self.compared += len(ref[1][agent])
        self.obs = max(self.obs, step_obs)
        self.obs_by_step.append(step_obs)

    def report(self) -> dict[str, Any]:
        return {"max_abs_obs": self.obs, "max_abs_reward": self.reward, "done_mismatches": self.done_mismatches,
                "reward_diffs_over_1e-3": self.reward_flips, "agent_steps": self.compared,
                "max_abs_obs_by_step": self.obs_by_step}


def compare(case: Case, make_adapter: Callable[[int], Any], episodes: int, reinject: bool) -> dict[str, Any]:
    """Step `episodes` mpe2 copies and the library side by side for one episode of MAX_CYCLES."""
    envs = mpe2_envs(case, list(range(episodes)))
    agents = envs[0].possible_agents
    actions = sample_actions(case, MAX_CYCLES, episodes, len(agents), seed=12345)
    lib = make_adapter(episodes)
    diff = Discrepancy()
    for t in range(MAX_CYCLES):
        if reinject or t == 0:
            lib.load(*mpe2_state(envs))
        diff.add(mpe2_step(envs, actions[t]), lib.step(actions[t]))
    return diff.report()


Block = Callable[[], int]  # steps every copy MAX_CYCLES times (auto-reset included); returns env steps
Runners = dict[str, tuple[Block, dict[str, Any]]]  # variant -> (block, facts such as compile_s)


def rate(block: Block, seconds: float) -> float:
    """Env steps/s of `block` run over and over for at least `seconds`."""
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        steps += block()
    return steps / (time.perf_counter() - t0)


def paired_speed(runners: Runners, baseline: Block, seconds: float, repeats: int = 3) -> dict[str, Any]:
    """Each repeat times the mpe2 loop, then the variant, back to back. steps_per_s is the best repeat
    (the machine is shared: others only slow it down); ratio is the median of the repeats' ratios."""
    out = {}
    for variant, (block, facts) in runners.items():
        pairs = [(rate(baseline, seconds), rate(block, seconds)) for _ in range(repeats)]
        out[variant] = {"steps_per_s": max(r for _, r in pairs), "ratio": statistics.median(r / b for b, r in pairs),
                        "repeats": [r for _, r in pairs], "mpe2_repeats": [b for b, _ in pairs], **facts}
    return out


# ---------------------------------------------------------------------------------------------
# mpe2: the Python loop


def mpe2_loop(case: Case, num_envs: int) -> Block:
    envs = mpe2_envs(case, list(range(num_envs)))
    agents = envs[0].possible_agents
    actions = sample_actions(case, 4 * MAX_CYCLES, num_envs, len(agents), seed=0)
    k = 0

    def block() -> int:
        nonlocal k
        for _ in range(MAX_CYCLES):
            row = actions[k % len(actions)]
            k += 1
            for e, env in enumerate(envs):
                _, _, term, trunc, _ = env.step({a: row[e, j] for j, a in enumerate(agents)})
                if any(term.values()) or any(trunc.values()):
                    env.reset()
        return MAX_CYCLES * num_envs

    return block


# ---------------------------------------------------------------------------------------------
# JaxMARL


def jaxmarl_env(case: Case, max_steps: int) -> Any:
    from jaxmarl import make
    from jaxmarl.environments.mpe.default_params import CONTINUOUS_ACT, DISCRETE_ACT

    name, kwargs = JAXMARL_ENVS[case.env]
    return make(name, action_type=CONTINUOUS_ACT if case.continuous else DISCRETE_ACT, max_steps=max_steps, **kwargs)


class JaxmarlAdapter:
    """`step_env` (no auto-reset) of E copies, vmapped; the state is mpe2's, copied in by `load`."""

    def __init__(self, case: Case, num_envs: int, max_steps: int):
        import jax

        self.jax, self.env = jax, jaxmarl_env(case, max_steps)
        self.key = jax.random.PRNGKey(0)
        _, self.state = jax.vmap(self.env.reset)(jax.random.split(self.key, num_envs))
        self._step = jax.jit(jax.vmap(self.env.step_env))

    def load(self, pos: np.ndarray, vel: np.ndarray, step: int) -> None:
        jnp = self.jax.numpy
        order = [self.env.a_to_i[a] for a in self.env.agents] + [self.env.l_to_i[lm] for lm in self.env.landmarks]
        assert order == list(range(len(order))), "JaxMARL entity order differs from mpe2's"
        self.state = self.state.replace(p_pos=jnp.asarray(pos), p_vel=jnp.asarray(vel),
                                        step=jnp.full_like(self.state.step, step))

    def step(self, actions: np.ndarray) -> tuple[Batch, Batch, Batch]:
        self.key, sub = self.jax.random.split(self.key)
        keys = self.jax.random.split(sub, actions.shape[0])
        acts = {a: actions[:, j] for j, a in enumerate(self.env.agents)}
        obs, self.state, rew, done, _ = self._step(keys, self.state, acts)
        return ({a: np.asarray(obs[a]) for a in self.env.agents}, {a: np.asarray(rew[a]) for a in self.env.agents},
                {a: np.asarray(done[a]) for a in self.env.agents})


def exact_jaxmarl(case: Case, episodes: int) -> dict[str, Any]:
    import jax

    faithful = partial(JaxmarlAdapter, case, max_steps=MAX_CYCLES - 1)  # done after 25 steps, as mpe2
    default = partial(JaxmarlAdapter, case, max_steps=MAX_CYCLES)  # the library's default: done after 26
    return {"dtype": str(jax.numpy.zeros(1).dtype), "max_steps": MAX_CYCLES - 1,
            "free": compare(case, faithful, episodes, reinject=False),
            "one_step": compare(case, faithful, episodes, reinject=True),
            "free_default_max_steps_25": compare(case, default, episodes, reinject=False)}


def jaxmarl_runners(case: Case, num_envs: int) -> Runners:
    """`jax.jit(jax.vmap(env.step))` (auto-reset inside) called once per step from Python, actions
    from NumPy, obs/rewards/dones back to NumPy; and 25 steps per call in `lax.scan`."""
    import jax

    env = jaxmarl_env(case, MAX_CYCLES - 1)
    agents = env.agents

    def batched_step(key: Any, state: Any, actions: dict[str, Any]) -> tuple[Any, ...]:
        key, sub = jax.random.split(key)
        obs, state, rew, done, _ = jax.vmap(env.step)(jax.random.split(sub, num_envs), state, actions)
        return key, state, obs, rew, done

    def rollout(key: Any, state: Any, actions: dict[str, Any]) -> tuple[Any, ...]:
        def body(carry: tuple[Any, Any], act: dict[str, Any]) -> tuple[tuple[Any, Any], tuple[Any, ...]]:
            key, state, obs, rew, done = batched_step(*carry, act)
            return (key, state), (obs, rew, done)

        (key, state), out = jax.lax.scan(body, (key, state), actions)
        return key, state, out

    actions = sample_actions(case, 4 * MAX_CYCLES, num_envs, len(agents), seed=0)
    act_dicts = [{a: actions[t, :, j] for j, a in enumerate(agents)} for t in range(len(actions))]
    act_blocks = [{a: actions[b:b + MAX_CYCLES, :, j] for j, a in enumerate(agents)}
                  for b in range(0, len(actions), MAX_CYCLES)]
    key = jax.random.PRNGKey(0)
    _, state0 = jax.jit(jax.vmap(env.reset))(jax.random.split(key, num_envs))
    step_fn, rollout_fn = jax.jit(batched_step), jax.jit(rollout)

    def to_numpy(tree: Any) -> Any:
        return jax.tree.map(np.asarray, tree)

    t0 = time.perf_counter()
    carry = step_fn(key, state0, act_dicts[0])
    to_numpy(carry[2:])
    compile_s = time.perf_counter() - t0
    k = 0

    def block() -> int:
        nonlocal carry, k
        for _ in range(MAX_CYCLES):
            carry = step_fn(carry[0], carry[1], act_dicts[k % len(act_dicts)])
            to_numpy(carry[2:])  # obs, rewards, dones as NumPy for a PyTorch learner
            k += 1
        return MAX_CYCLES * num_envs

    t0 = time.perf_counter()
    scan_carry = rollout_fn(key, state0, act_blocks[0])
    to_numpy(scan_carry[2])
    scan_compile_s = time.perf_counter() - t0
    b = 0

    def scan_block() -> int:
        nonlocal scan_carry, b
        scan_carry = rollout_fn(scan_carry[0], scan_carry[1], act_blocks[b % len(act_blocks)])
        to_numpy(scan_carry[2])
        b += 1
        return MAX_CYCLES * num_envs

    return {"jaxmarl": (block, {"compile_s": compile_s}), "jaxmarl-scan": (scan_block, {"compile_s": scan_compile_s})}


# ---------------------------------------------------------------------------------------------
# VMAS


def vmas_env(case: Case, num_envs: int) -> Any:
    import vmas

    name, kwargs = VMAS_ENVS[case.env]
    return vmas.make_env(name, num_envs=num_envs, device="cpu", continuous_actions=case.continuous,
                         max_steps=MAX_CYCLES, seed=0, **kwargs)


def vmas_actions(case: Case, actions: np.ndarray) -> list[Any]:
    """mpe2 actions [E, agents(, 5)] -> VMAS's per-agent list: Discrete(9) index, or a force in
    [-1, 1]^2 = (move_right - move_left, move_up - move_down) as mpe2 computes it."""
    import torch

    if case.continuous:
        u = np.stack([actions[..., 2] - actions[..., 1], actions[..., 4] - actions[..., 3]], axis=-1)
        return [torch.from_numpy(np.ascontiguousarray(u[:, j])) for j in range(u.shape[1])]
    return [torch.from_numpy(VMAS_DISCRETE[actions[:, j]]) for j in range(actions.shape[1])]


def vmas_obs_to_mpe2(case: Case, obs: Any) -> np.ndarray:
    """VMAS simple_spread observes [pos, vel, landmarks, others] (16); mpe2 [vel, pos, landmarks,
    others, comm] (18, comm always 0: agents are silent). simple_tag's layouts are the same."""
    obs = obs.numpy()
    if case.env == "simple_spread_v3":
        return np.concatenate([obs[:, 2:4], obs[:, 0:2], obs[:, 4:], np.zeros((len(obs), 4), np.float32)], axis=1)
    return obs


class VmasAdapter:
    def __init__(self, case: Case, num_envs: int):
        self.case, self.env = case, vmas_env(case, num_envs)
        self.env.reset()

    def load(self, pos: np.ndarray, vel: np.ndarray, step: int) -> None:
        import torch

        world = self.env.world  # world.entities is landmarks + agents in VMAS: mpe2's order is agents first
        for i, entity in enumerate(world.agents + world.landmarks):
            entity.set_pos(torch.tensor(pos[:, i], dtype=torch.float32), batch_index=None)
            entity.set_vel(torch.tensor(vel[:, i], dtype=torch.float32), batch_index=None)
        self.env.steps[:] = step

    def step(self, actions: np.ndarray) -> tuple[Batch, Batch, Batch]:
        obs, rews, dones, _ = self.env.step(vmas_actions(self.case, actions))
        names = [a.name for a in self.env.agents]
        return ({n: vmas_obs_to_mpe2(self.case, o) for n, o in zip(names, obs)},
                {n: r.numpy() for n, r in zip(names, rews)}, {n: dones.numpy() for n in names})


def exact_vmas(case: Case, episodes: int) -> dict[str, Any]:
    return {"dtype": "float32", "free": compare(case, partial(VmasAdapter, case), episodes, reinject=False),
            "one_step": compare(case, partial(VmasAdapter, case), episodes, reinject=True)}


def vmas_runners(case: Case, num_envs: int) -> Runners:
    """`vmas.make_env(num_envs=E)`; finished copies reset (all at once when all are done); obs stay
    torch tensors, which a PyTorch learner takes as they are."""
    env = vmas_env(case, num_envs)
    env.reset()
    actions = sample_actions(case, 4 * MAX_CYCLES, num_envs, len(env.agents), seed=0)
    rows = [vmas_actions(case, actions[t]) for t in range(len(actions))]
    k = 0

    def block() -> int:
        nonlocal k
        for _ in range(MAX_CYCLES):
            _, _, dones, _ = env.step(rows[k % len(rows)])
            k += 1
            if dones.all():
                env.reset()
            else:
                for i in dones.nonzero().flatten().tolist():
                    env.reset_at(i)
        return MAX_CYCLES * num_envs

    return {"vmas": (block, {})}


# ---------------------------------------------------------------------------------------------
# pgen's own batched backend (env.backend=vector), when this checkout has one


def pgen_vec_env(case: Case, backend: str, num_envs: int) -> Any:
    """`make_vec_env` with `env.backend`; ImportError/AttributeError/TypeError when pgen has none."""
    from pgen.config import EnvConfig
    from pgen.envs import make_vec_env

    cfg = EnvConfig(name=case.env, id=f"mpe2.{case.env}", backend=backend,
                    kwargs={"max_cycles": MAX_CYCLES, "continuous_actions": case.continuous, **MPE2_KWARGS[case.env]})
    return make_vec_env(cfg, num_envs=num_envs, seed=0, with_state=False)


def pgen_actions(vec: Any, actions: np.ndarray) -> dict[str, np.ndarray]:
    """Actions [E, agents(, 5)] (agents in group order) -> {group: [E, n(, 5)]}."""
    out, offset = {}, 0
    for g in vec.groups:
        out[g.name] = actions[:, offset:offset + g.size]
        offset += g.size
    return out


def exact_pgen(case: Case, episodes: int) -> dict[str, Any]:
    """pgen's vector backend against its pettingzoo backend (mpe2 copies), same seed and actions."""
    ref, vec = pgen_vec_env(case, "pettingzoo", episodes), pgen_vec_env(case, "vector", episodes)
    ref.reset(), vec.reset()
    n_agents = sum(g.size for g in ref.groups)
    actions = sample_actions(case, 2 * MAX_CYCLES, episodes, n_agents, seed=12345)  # through one auto-reset
    diff = Discrepancy()
    for t in range(len(actions)):
        steps = ref.step(pgen_actions(ref, actions[t])), vec.step(pgen_actions(vec, actions[t]))
        diff.add(*[({g: s.obs for g, s in st.groups.items()}, {g: s.reward for g, s in st.groups.items()},
                    {g: s.ended for g, s in st.groups.items()}) for st in steps])
    ref.close(), vec.close()
    return {"free": diff.report(), "reference": "pgen env.backend=pettingzoo (mpe2), same seed, 2 episodes per copy"}


def pgen_runners(case: Case, num_envs: int) -> Runners:
    vec = pgen_vec_env(case, "vector", num_envs)
    vec.reset()
    actions = sample_actions(case, 4 * MAX_CYCLES, num_envs, sum(g.size for g in vec.groups), seed=0)
    rows = [pgen_actions(vec, actions[t]) for t in range(len(actions))]
    k = 0

    def block() -> int:
        nonlocal k
        for _ in range(MAX_CYCLES):
            vec.step(rows[k % len(rows)])
            k += 1
        return MAX_CYCLES * num_envs

    return {"pgen-vector": (block, {})}


# ---------------------------------------------------------------------------------------------
# workers (run inside the backend's interpreter)


EXACT: dict[str, Callable[[Case, int], dict[str, Any]]] = {"jaxmarl": exact_jaxmarl, "vmas": exact_vmas,
                                                           "pgen-vector": exact_pgen}
RUNNERS: dict[str, Callable[[Case, int], Runners]] = {"jaxmarl": jaxmarl_runners, "vmas": vmas_runners,
                                                     "pgen-vector": pgen_runners}


def worker_measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    if args.backend == "pgen-vector":
        sys.path.insert(0, str(args.pgen_root))
        try:
            pgen_vec_env(CASES[0], "vector", 1).close()
        except (ImportError, AttributeError, TypeError) as err:
            return {"skipped": f"pgen has no batched MPE backend here ({type(err).__name__}: {err})"}
    out: dict[str, Any] = {}
    for case in CASES:
        entry: dict[str, Any] = {}
        if args.backend in EXACT:
            entry["exact"] = EXACT[args.backend](case, args.episodes)
        if not args.exact_only:
            # the ratio's base: the mpe2 loop in this process, timed back to back with each variant
            baseline = mpe2_loop(case, args.mpe2_max_envs)
            sizes = [args.mpe2_max_envs] if args.backend == "mpe2" else args.sizes
            entry["speed"] = {str(n): paired_speed({"mpe2": (baseline, {})} if args.backend == "mpe2" else
                                                   RUNNERS[args.backend](case, n), baseline, args.seconds)
                              for n in sizes}
        out[case.name] = entry
    return out


def worker_install() -> dict[str, Any]:
    """What this venv's own site-packages hold (beyond pip), and where torch/ray come from."""
    import importlib.metadata as md
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    added = []
    for dist in md.distributions(path=[str(site)]):
        name = dist.metadata["Name"]
        if name.lower() == "pip":
            continue
        size = sum((site / f).stat().st_size for f in dist.files or [] if (site / f).is_file())
        added.append({"name": name, "version": dist.version, "mb": round(size / 2**20, 2)})
    imported = {}
    for mod in ("torch", "ray", "numpy", "gymnasium", "pettingzoo", "mpe2"):
        m = importlib.import_module(mod)
        imported[mod] = {"version": m.__version__, "from_venv": Path(m.__file__).resolve().is_relative_to(site)}
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    du = subprocess.run(["du", "-sm", sys.prefix], capture_output=True, text=True).stdout.split()[0]
    return {"prefix": sys.prefix, "venv_mb": int(du), "added_mb": round(sum(p["mb"] for p in added), 1),
            "added": sorted(added, key=lambda p: p["name"].lower()), "pip_check": (check.stdout + check.stderr).strip(),
            "imports": imported}


# ---------------------------------------------------------------------------------------------
# orchestration


def run_worker(python: str, cpu: int, argv: list[str], env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "XLA_FLAGS": XLA_FLAGS, **(env_extra or {})}
        cmd = ["taskset", "-c", str(cpu), python, str(Path(__file__).resolve()), "worker", *argv, "--out", out.name]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
        return json.loads(Path(out.name).read_text())


def import_time(python: str, cpu: int, module: str, warm_runs: int = 3) -> dict[str, Any]:
    """Wall time of `python -c "import module"` minus that of `python -c pass`; the first run of this
    invocation ("first": the page cache may already hold the files) and the fastest of the next ones;
    and `-X importtime`'s cumulative time of the module's top-level import."""

    def wall(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run(["taskset", "-c", str(cpu), python, "-c", code], check=True, capture_output=True,
                       env={**os.environ, "XLA_FLAGS": XLA_FLAGS})
        return time.perf_counter() - t0

    first = wall(f"import {module}")
    warm = min(wall(f"import {module}") for _ in range(warm_runs))
    base = min(wall("pass") for _ in range(warm_runs))
    proc = subprocess.run([python, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True)
    cumulative = [int(m.group(1)) for m in re.finditer(rf"\|\s*(\d+) \|\s*{re.escape(module)}$", proc.stderr, re.M)]
    return {"module": module, "first_s": first - base, "warm_s": warm - base,
            "importtime_cumulative_s": cumulative[-1] / 1e6 if cumulative else None}


def fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def print_table(results: dict[str, Any], sizes: list[int]) -> None:
    head = ["backend", "scenario", "exact?", "max|Δobs|", "max|Δrew|", "done≠",
            *[f"steps/s E={n}" for n in sizes], *[f"×mpe2 E={n}" for n in sizes], "install MB", "import s"]
    rows, notes = [], []
    for backend, res in results["backends"].items():
        if "skipped" in res or "error" in res:
            notes.append(f"{backend}: {res.get('skipped') or res['error'][:300]}")
            continue
        install = res.get("install", {})
        for case in CASES:
            entry = res["cases"][case.name]
            for variant in sorted({v for s in entry["speed"].values() for v in s}):
                free = entry.get("exact", {}).get("free") if variant == backend else None
                timed = [entry["speed"].get(str(n), {}).get(variant, {}) for n in sizes]
                rates, ratios = [t.get("steps_per_s") for t in timed], [t.get("ratio") for t in timed]
                verdict = ("reference" if backend == "mpe2" else "—" if free is None else
                           "yes" if free["max_abs_obs"] < 1e-4 and free["max_abs_reward"] < 1e-4
                           and free["done_mismatches"] == 0 else "no")
                rows.append([variant, case.name, verdict, fmt(free and free["max_abs_obs"], ".1e"),
                             fmt(free and free["max_abs_reward"], ".1e"),
                             "—" if free is None else str(free["done_mismatches"]),
                             *[fmt(r, ",.0f") for r in rates], *[fmt(r, ".1f") for r in ratios],
                             fmt(install.get("added_mb"), ".0f"), fmt(install.get("import", {}).get("warm_s"), ".2f")])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print("exact? = free-running from mpe2's initial state: max|Δobs|, max|Δrew| < 1e-4 and no done differs;"
          f" ×mpe2 = over the mpe2 loop at E={results['settings']['mpe2_max_envs']}, timed back to back in the same"
          " worker (median of 3 pairs); steps/s = best of 3")
    for note in notes:
        print(note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jaxmarl-python", help="interpreter of a venv with jaxmarl (skipped without)")
    parser.add_argument("--vmas-python", help="interpreter of a venv with vmas (skipped without)")
    parser.add_argument("--pgen-root", type=Path, default=ROOT, help="checkout whose pgen.envs is measured")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 256, 1024])
    parser.add_argument("--mpe2-max-envs", type=int, default=32, help="the mpe2 loop runs at E up to this")
    parser.add_argument("--episodes", type=int, default=100, help="episodes compared with mpe2 per case")
    parser.add_argument("--seconds", type=float, default=1.5, help="per timing (3 pairs of mpe2 and backend)")
    parser.add_argument("--cpu", type=int, default=1, help="core every measurement is pinned to")
    parser.add_argument("--out", type=Path, default=RESULTS / "mpe_backends.json")
    args = parser.parse_args()

    common = ["--episodes", str(args.episodes), "--seconds", str(args.seconds), "--sizes", *map(str, args.sizes),
              "--mpe2-max-envs", str(args.mpe2_max_envs), "--pgen-root", str(args.pgen_root)]
    interpreters = {"mpe2": sys.executable, "jaxmarl": args.jaxmarl_python, "vmas": args.vmas_python,
                    "pgen-vector": sys.executable}
    backends: dict[str, Any] = {}
    load_before = os.getloadavg()
    for backend, python in interpreters.items():
        if python is None:
            print(f"{backend}: skipped (no --{backend}-python given)", file=sys.stderr)
            backends[backend] = {"skipped": f"no --{backend}-python given"}
            continue
        print(f"{backend}: measuring with {python} ...", file=sys.stderr, flush=True)
        cases = run_worker(python, args.cpu, ["measure", "--backend", backend, *common])
        if "skipped" in cases or "error" in cases:
            print(f"{backend}: {cases.get('skipped') or cases.get('error')}", file=sys.stderr)
            backends[backend] = cases
            continue
        res: dict[str, Any] = {"python": python, "cases": cases}
        if backend == "jaxmarl":
            x64 = run_worker(python, args.cpu, ["measure", "--backend", backend, "--exact-only", *common],
                             {"JAX_ENABLE_X64": "1"})
            for case in CASES:
                res["cases"][case.name]["exact_x64"] = x64.get(case.name, x64).get("exact", x64)
        if backend in ("jaxmarl", "vmas"):
            res["install"] = run_worker(python, args.cpu, ["install"])
        if backend in IMPORTS:
            module, base = IMPORTS[backend]
            res.setdefault("install", {})["import"] = import_time(python, args.cpu, module)
            res["install"]["import_base"] = import_time(python, args.cpu, base)
        backends[backend] = res

    results = {
        "settings": {"max_cycles": MAX_CYCLES, "sizes": args.sizes, "mpe2_max_envs": args.mpe2_max_envs,
                     "episodes": args.episodes, "seconds_per_repeat": args.seconds, "cpu": args.cpu,
                     "xla_flags": XLA_FLAGS, "cases": [c.name for c in CASES]},
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "backends": backends,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print_table(results, args.sizes)
    print(f"\nwrote {args.out}")


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=["measure", "install"])
    parser.add_argument("--backend", choices=["mpe2", *RUNNERS])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 256, 1024])
    parser.add_argument("--mpe2-max-envs", type=int, default=32)
    parser.add_argument("--pgen-root", type=Path, default=ROOT)
    parser.add_argument("--exact-only", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = worker_measure(args) if args.task == "measure" else worker_install()
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker_main(sys.argv[2:])
    else:
        main()
