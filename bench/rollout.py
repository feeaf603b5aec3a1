"""Throughput benchmark, all in one run on this machine (env steps/s; one env step = one `step()` of
one env copy with every agent acting):

  (a) raw PettingZoo loop over E copies with pre-sampled actions (no pgen code);
  (b) pgen rollout collection with batched policy inference (`PPOLearner.collect`), IPPO and MAPPO;
  (c) full pgen PPO training (collection + updates), in-process and with env worker processes;
  (d) RLlib PPO (Ray 2.60, `bench/rllib_ppo.py`), same env, shared policy, same batch sizes.

Prints the table and the ratios (b)/(a) (goal ≥ 0.8) and (c)/(d) (goal ≥ 3); writes
`bench/results/rollout.json`.

    python bench/rollout.py --seconds 30
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


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


def learner_rate(overrides: list[str], seconds: float, what: str) -> float:
    from pgen.config import compose_config
    from pgen.learner import PPOLearner

    cfg = compose_config("train", overrides)
    learner = PPOLearner(cfg.env, cfg.policy, cfg.algo, 0, max_env_steps=None)
    try:
        fn = learner.collect if what == "collect" else learner.iterate
        return timed(fn, learner.batch_env_steps, seconds)
    finally:
        learner.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--num-envs", type=int, default=32)
    p.add_argument("--rollout-steps", type=int, default=50)
    p.add_argument("--workers", type=int, default=2, help="env worker processes for the (c) variant")
    p.add_argument("--num-minibatches", type=int, default=4,
                   help="for (c) and (d) alike; RLlib rejects a minibatch larger than the env-step batch")
    p.add_argument("--skip-rllib", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)

    from pgen.config import compose_config

    # the PettingZoo loop, as (a) and RLlib step it (the batched backend: bench/mpe_vector.py)
    base = [f"algo.num_envs={a.num_envs}", f"algo.rollout_steps={a.rollout_steps}",
            f"algo.num_minibatches={a.num_minibatches}", "env.backend=pettingzoo"]
    env_cfg = compose_config("train", base).env
    algo = compose_config("train", base).algo
    rows: dict[str, float] = {}
    rows["(a) raw env loop"] = raw_env_loop(env_cfg, a.num_envs, a.seconds)
    rows["(b) collect, ippo"] = learner_rate(base + ["algo=ippo"], a.seconds, "collect")
    rows["(b) collect, mappo (state critic)"] = learner_rate(base, a.seconds, "collect")
    rows["(c) train, mappo, in-process"] = learner_rate(base, a.seconds, "iterate")
    rows[f"(c) train, mappo, {a.workers} env workers"] = learner_rate(base + [f"algo.env_workers={a.workers}"],
                                                                     a.seconds, "iterate")
    rllib = None
    if not a.skip_rllib:
        import os

        # Ray's env runners must import this folder's rllib_ppo module (for the env creator)
        here = str(Path(__file__).resolve().parent)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        from rllib_ppo import rllib_ppo_throughput

        for runners in (0, a.workers):
            r = rllib_ppo_throughput(num_envs=a.num_envs, rollout_steps=a.rollout_steps, num_epochs=algo.update_epochs,
                                     num_minibatches=algo.num_minibatches, seconds=a.seconds, num_env_runners=runners)
            rows[f"(d) RLlib PPO, {runners} env runners"] = r["env_steps_per_s"]
            rllib = r if rllib is None or r["env_steps_per_s"] > rllib["env_steps_per_s"] else rllib

    raw = rows["(a) raw env loop"]
    best_train = max(v for k, v in rows.items() if k.startswith("(c)"))
    ratios = {
        "(b) ippo / (a)": rows["(b) collect, ippo"] / raw,
        "(b) mappo / (a)": rows["(b) collect, mappo (state critic)"] / raw,
        "(c) in-process / (a)": rows["(c) train, mappo, in-process"] / raw,
    }
    if rllib:
        best_rllib = max(v for k, v in rows.items() if k.startswith("(d)"))
        ratios["(c) in-process / best (d)"] = rows["(c) train, mappo, in-process"] / best_rllib
        ratios["best (c) / best (d)"] = best_train / best_rllib
    out = {"env": env_cfg.id, "num_envs": a.num_envs, "rollout_steps": a.rollout_steps, "seconds": a.seconds,
           "update_epochs": algo.update_epochs, "num_minibatches": algo.num_minibatches,
           "env_steps_per_s": rows, "ratios": ratios, "rllib": rllib}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rollout.json").write_text(json.dumps(out, indent=1))
    print(f"\n{env_cfg.id}, E={a.num_envs} copies, T={a.rollout_steps}, {a.seconds:g} s per row")
    for name, value in rows.items():
        print(f"  {name:<40} {value:>9,.0f} env steps/s")
    for name, value in ratios.items():
        print(f"  {name:<40} {value:>9.2f}")


if __name__ == "__main__":
    main()
