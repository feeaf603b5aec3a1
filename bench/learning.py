"""Learning benchmark: does `pgen train` move the team return from random to good, for several seeds?

Runs `pgen.train.train` for each seed in parallel processes (one torch thread each), then measures
in the same run the uniform-random level and the greedy return of each final policy over 100 fixed
evaluation episodes. Writes `bench/results/learning-<env>.json` and `learning-<env>.png`, and
prints a table: env steps to reach the threshold (trailing mean over 10 iterations of the training
episodes' return), return at the check point, final training return and final greedy return.

    python bench/learning.py --env simple_spread --seeds 0 1 2 --steps 2000000 --long-seed 0 --long-steps 5000000
    python bench/learning.py --env simple_tag --seeds 0 1 --steps 1000000 --threshold=-1e9
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def run_seed(args: tuple[str, int, int, list[str]]) -> dict:
    env, seed, steps, overrides = args
    import torch

    from pgen.config import compose_config
    from pgen.progress import setup_logging
    from pgen.train import train

    torch.set_num_threads(1)
    setup_logging()
    cfg = compose_config("train", [f"env={env}", f"seed={seed}", f"population.max_env_steps={steps}",
                                   f"run_dir={RESULTS / 'runs'}", f"run_id=learning-{env}-s{seed}-{steps}",
                                   "log_every_s=60", *overrides])
    result = train(cfg)
    return {"seed": seed, "steps": steps, "run_path": str(result.run_path), "curve": result.curve,
            "policy_files": {g: str(p) for g, p in result.policy_files.items()}}


def trailing(values: list[float], window: int = 10) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return np.array([np.nanmean(v[max(0, i - window + 1) : i + 1]) for i in range(len(v))])


def summarise(run: dict, group: str, threshold: float, check: int) -> dict:
    steps = np.array([r["env_steps"] for r in run["curve"]])
    smooth = trailing([r[f"return_{group}"] for r in run["curve"]])
    reached = np.nonzero(smooth >= threshold)[0]
    at_check = smooth[steps <= check][-1] if (steps <= check).any() else float("nan")
    return {"seed": run["seed"], "steps": run["steps"],
            "steps_to_threshold": int(steps[reached[0]]) if reached.size else None,
            "initial_return": float(smooth[min(9, len(smooth) - 1)]),
            f"return_at_{check}": float(at_check), "final_return": float(smooth[-1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="simple_spread")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=2_000_000, help="env steps per seed (also the check point)")
    p.add_argument("--long-seed", type=int, default=None, help="this seed runs --long-steps instead")
    p.add_argument("--long-steps", type=int, default=5_000_000)
    p.add_argument("--threshold", type=float, default=-40.0)
    p.add_argument("--group", default="agent", help="the group whose return is judged")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("overrides", nargs="*", help="extra pgen train overrides, e.g. algo=ippo")
    a = p.parse_args()

    from pgen.config import EnvConfig, compose_config
    from pgen.rollout import evaluate_returns
    from pgen.plots import plot_curves
    from pgen.policy import load_policies

    jobs = [(a.env, s, a.long_steps if s == a.long_seed else a.steps, a.overrides) for s in a.seeds]
    jobs.sort(key=lambda j: -j[2])  # longest first
    t0 = time.time()
    with mp.get_context("spawn").Pool(min(a.processes, len(jobs))) as pool:
        runs = pool.map(run_seed, jobs, chunksize=1)
    wall = time.time() - t0
    env_cfg: EnvConfig = compose_config("train", [f"env={a.env}"]).env
    random_level = {g: float(r.mean()) for g, r in evaluate_returns(env_cfg, {g: None for g in runs[0]["policy_files"]},
                                                                   a.eval_episodes).items()}
    rows = []
    for run in sorted(runs, key=lambda r: r["seed"]):
        row = summarise(run, a.group, a.threshold, a.steps)
        policies = {g: load_policies(f)[0] for g, f in run["policy_files"].items()}
        greedy = evaluate_returns(env_cfg, policies, a.eval_episodes)
        row["final_greedy_return"] = {g: float(v.mean()) for g, v in greedy.items()}
        row["final_training_return"] = {g: float(trailing([r[f"return_{g}"] for r in run["curve"]])[-1])
                                        for g in run["policy_files"]}
        rows.append(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"env": a.env, "group": a.group, "threshold": a.threshold, "check_steps": a.steps,
           "random_level": random_level, "eval_episodes": a.eval_episodes, "overrides": a.overrides,
           "wall_s": round(wall, 1), "seeds": rows,
           "curves": {r["seed"]: {"env_steps": [c["env_steps"] for c in r["curve"]],
                                  **{g: [c[f"return_{g}"] for c in r["curve"]] for g in r["policy_files"]}}
                      for r in runs}}
    (RESULTS / f"learning-{a.env}.json").write_text(json.dumps(out, indent=1))
    curves = {f"{g} seed {r['seed']}": ([c["env_steps"] for c in r["curve"]], [c[f"return_{g}"] for c in r["curve"]])
              for r in sorted(runs, key=lambda r: r["seed"]) for g in r["policy_files"]}
    hlines = {f"random {g}": v for g, v in random_level.items()}
    if a.threshold > -1e8:
        hlines[f"threshold {a.threshold:g}"] = a.threshold
    plot_curves(curves, RESULTS / f"learning-{a.env}.png", f"pgen train: {a.env} {' '.join(a.overrides) or 'mappo'}",
                ylabel="training episode return (sum over group)", hlines=hlines)
    print(f"\n{a.env} ({' '.join(a.overrides) or 'defaults'}); random level {random_level}; threshold {a.threshold} "
          f"on group {a.group!r}; wall {wall / 60:.1f} min")
    print(f"{'seed':>4} {'steps':>9} {'initial':>8} {'to thr.':>9} {'@check':>8} {'final':>8}  final greedy (100 eps)")
    for r in rows:
        thr = f"{r['steps_to_threshold']:,}" if r["steps_to_threshold"] else "-"
        greedy = " ".join(f"{g}={v:.1f}" for g, v in r["final_greedy_return"].items())
        print(f"{r['seed']:>4} {r['steps']:>9,} {r['initial_return']:>8.1f} {thr:>9} {r[f'return_at_{a.steps}']:>8.1f} {r['final_return']:>8.1f}  {greedy}")


if __name__ == "__main__":
    main()
