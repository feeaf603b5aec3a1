"""Throughput benchmark, all in one run on this machine (env steps/s; one env step = one `step()` of
one env copy with every agent acting), simple_spread, one torch thread:

  (a)  the raw mpe2 PettingZoo loop over E = 32 copies with pre-sampled actions (no pgen code);
  (a') the raw batched NumPy backend (`env.backend=vector`) at E = 32, 256 and 1024 copies;
  (b)  pgen rollout collection with batched policy inference (`PPOLearner.collect`, MAPPO) on the
       batched backend with the defaults, and on the PettingZoo loop with the previous defaults;
  (c)  full pgen PPO training (collection + updates): the defaults on the batched backend (one torch
       thread, and two: the two cores RLlib's two env runners use), and the previous defaults on the PettingZoo loop (in-process and with 2 env worker processes);
  (d)  RLlib PPO (Ray 2.60, `bench/rllib_ppo.py`), same env, shared policy, the defaults' batch sizes.

The previous defaults (before the batched backend): 32 copies × 50 steps per update, 10 epochs of 2
minibatches, lr 7e-4. Prints the table and the ratios (a')/(a) (goal ≥ 50), (c)/(d) (goal ≥ 10) and
(c)/(c on the PettingZoo loop with the previous defaults) (goal ≥ 5); writes
`bench/results/rollout.json`.

    python bench/rollout.py --seconds 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
PREVIOUS = ["env.backend=pettingzoo", "algo.num_envs=32", "algo.rollout_steps=50", "algo.update_epochs=10",
            "algo.num_minibatches=2", "algo.lr=7e-4"]


def raw_env_loop(env_cfg, num_envs: int, seconds: float, seed: int = 0) -> float:
    """(a) Plain PettingZoo: step E copies with actions sampled in advance, reset finished copies."""
    from pgen.envs import make_parallel_env

    envs = [make_parallel_env(env_cfg) for _ in range(num_envs)]
    for i, env in enumerate(envs):
        env.reset(seed=seed + i)
    agents = envs[0].possible_agents
    n_actions = [envs[0].action_space(a).n for a in agents]
    actions = np.random.default_rng(seed).integers(0, n_actions, size=(4096, num_envs, len(agents)))
    steps, k, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        row = actions[k % len(actions)]
        for i, env in enumerate(envs):
            env.step({a: int(row[i, j]) for j, a in enumerate(agents) if a in env.agents})
            if not env.agents:
                env.reset()
        steps += num_envs
        k += 1
    return steps / (time.perf_counter() - t0)


def timed(fn, steps_per_call: int, seconds: float) -> float:
    fn()  # warm-up
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or calls == 0:
        fn()
        calls += 1
    return calls * steps_per_call / (time.perf_counter() - t0)


def learner_rate(overrides: list[str], seconds: float, what: str, threads: int = 1) -> float:
    from pgen.config import compose_config
    from pgen.learner.ppo import PPOLearner

    cfg = compose_config("train", overrides)
    learner = PPOLearner(cfg.env, cfg.policy, cfg.algo, 0, max_env_steps=None)
    torch.set_num_threads(threads)
    try:
        fn = learner.collect if what == "collect" else learner.iterate
        return timed(fn, learner.batch_env_steps, seconds)
    finally:
        torch.set_num_threads(1)
        learner.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=2, help="env worker processes of the PettingZoo (c) variant")
    p.add_argument("--vector-envs", default="32,256,1024", help="copies of the raw batched backend (a')")
    p.add_argument("--skip-rllib", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)

    from mpe_vector import steps_per_s  # bench/mpe_vector.py: the raw batched backend, same method

    from pgen.config import compose_config
    from pgen.envs import MPEVecEnv

    defaults = compose_config("train", [])
    env_cfg = defaults.env
    rows: dict[str, float] = {}
    rows["(a) raw mpe2 loop, E=32"] = raw_env_loop(env_cfg, 32, a.seconds)
    for E in (int(x) for x in a.vector_envs.split(",")):
        rows[f"(a') raw batched backend, E={E}"] = steps_per_s(MPEVecEnv(env_cfg, E, 0, with_state=False),
                                                              a.seconds / 3, 3)
    rows["(b) collect, defaults, batched"] = learner_rate([], a.seconds, "collect")
    rows["(b) collect, previous defaults, PettingZoo"] = learner_rate(PREVIOUS, a.seconds, "collect")
    rows["(c) train, defaults, batched"] = learner_rate([], a.seconds, "iterate")
    rows["(c) train, defaults, batched, 2 torch threads"] = learner_rate([], a.seconds, "iterate", threads=2)
    rows["(c) train, previous defaults, PettingZoo"] = learner_rate(PREVIOUS, a.seconds, "iterate")
    rows[f"(c) train, previous defaults, PettingZoo, {a.workers} env workers"] = learner_rate(
        PREVIOUS + [f"algo.env_workers={a.workers}"], a.seconds, "iterate")
    algo = defaults.algo
    rllib = None
    if not a.skip_rllib:
        import os

        # Ray's env runners must import this folder's rllib_ppo module (for the env creator)
        here = str(Path(__file__).resolve().parent)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        from rllib_ppo import rllib_ppo_throughput

        for runners in (0, a.workers):
            r = rllib_ppo_throughput(num_envs=algo.num_envs, rollout_steps=algo.rollout_steps,
                                     num_epochs=algo.update_epochs, num_minibatches=algo.num_minibatches,
                                     seconds=a.seconds, num_env_runners=runners)
            rows[f"(d) RLlib PPO, defaults' batch, {runners} env runners"] = r["env_steps_per_s"]
            rllib = r if rllib is None or r["env_steps_per_s"] > rllib["env_steps_per_s"] else rllib

    raw = rows["(a) raw mpe2 loop, E=32"]
    train = rows["(c) train, defaults, batched"]
    previous = max(v for k, v in rows.items() if k.startswith("(c) train, previous"))
    ratios = {"best (a') / (a)": max(v for k, v in rows.items() if k.startswith("(a')")) / raw,
              "(b) batched / (a)": rows["(b) collect, defaults, batched"] / raw,
              "(c) / best (c) previous, PettingZoo": train / previous}
    if rllib:  # the same cores: 1 process against RLlib without env runners, 2 threads against 2 runners
        ratios["(c) / (d), one core each"] = train / rows["(d) RLlib PPO, defaults' batch, 0 env runners"]
        ratios[f"(c) 2 torch threads / (d) {a.workers} env runners"] = (
            rows["(c) train, defaults, batched, 2 torch threads"]
            / rows[f"(d) RLlib PPO, defaults' batch, {a.workers} env runners"])
        ratios["best (c) / best (d)"] = max(v for k, v in rows.items() if k.startswith("(c) train, defaults")) / max(
            v for k, v in rows.items() if k.startswith("(d)"))
    out = {"env": env_cfg.id, "seconds": a.seconds, "defaults": {k: getattr(algo, k) for k in (
        "num_envs", "rollout_steps", "update_epochs", "num_minibatches", "lr")}, "previous_defaults": PREVIOUS,
        "env_steps_per_s": rows, "ratios": ratios, "rllib": rllib}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rollout.json").write_text(json.dumps(out, indent=1))
    print(f"\n{env_cfg.id}, {a.seconds:g} s per row, defaults {out['defaults']}")
    for name, value in rows.items():
        print(f"  {name:<58} {value:>10,.0f} env steps/s")
    for name, value in ratios.items():
        print(f"  {name:<58} {value:>10.2f}")


if __name__ == "__main__":
    main()
