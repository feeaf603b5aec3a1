"""Learning benchmark: how fast `pgen train` moves the team return from random to good, per env step
and per second of wall-clock time, for one or several configurations side by side.

Each `--variant NAME[:OVERRIDE,OVERRIDE...]` is a set of `pgen train` overrides (none: the defaults);
every (variant, seed) runs `pgen.train.train` in its own process (one torch thread), `--processes`
at a time, so variants measured in one run share the machine alike. The training return is smoothed
over a trailing window of `--window-steps` env steps (each iteration's mean episode return weighted
by its episodes), the same window for every variant whatever its batch size. Reported per run: env
steps and wall-clock seconds until the smoothed return reaches `--threshold`, the smoothed return at
`--steps`, and the greedy return of the final policy over `--eval-episodes` fixed evaluation
episodes, beside the uniform-random level measured in the same run. `--stop-at-threshold` ends a run
when it reaches the threshold (for comparing time to threshold quickly).

Writes `bench/results/learning-<env><--tag>.json` and `.png` (curves per env step and per second)
and prints a table per run and a summary per variant.

    python bench/learning.py --env simple_spread --seeds 0 1 2 --steps 2000000
    python bench/learning.py --seeds 0 --steps 1500000 --stop-at-threshold --tag -sweep \\
        --variant before:env.backend=pettingzoo --variant after
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


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`name:key=v,key=v` → (name, overrides); `name` alone: no overrides."""
    name, _, rest = text.partition(":")
    return name, [o for o in rest.split(",") if o]


def run_job(job: dict) -> dict:
    import torch

    from pgen.commands.train import train
    from pgen.config import compose_config
    from pgen.util.progress import setup_logging

    torch.set_num_threads(1)
    setup_logging()
    run_id = f"learning-{job['env']}-{job['variant']}-s{job['seed']}-{job['steps']}"
    cfg = compose_config("train", [f"env={job['env']}", f"seed={job['seed']}", f"population.max_env_steps={job['steps']}",
                                   f"run_dir={RESULTS / 'runs'}", f"run_id={run_id}", "log_every_s=60",
                                   *job["overrides"]])
    curve: list[dict] = []

    def reached(stats) -> bool:
        curve.append({"env_steps": stats.env_steps, "returns": stats.episode_returns[job["group"]]})
        return job["stop"] and smoothed(curve, job["window_steps"])[-1] >= job["threshold"]

    t0 = time.monotonic()
    result = train(cfg, on_iteration=reached)
    return {**job, "wall_s": time.monotonic() - t0, "run_path": str(result.run_path), "curve": result.curve,
            "policy_files": {g: str(p) for g, p in result.policy_files.items()}}


def smoothed(curve: list[dict], window_steps: int) -> np.ndarray:
    """Per iteration, the mean of the episode returns of the iterations in the trailing window."""
    steps = np.array([c["env_steps"] for c in curve])
    out = np.full(len(curve), np.nan)
    for i in range(len(curve)):
        returns = [r for c in curve[np.searchsorted(steps, steps[i] - window_steps, side="right"): i + 1]
                   for r in c["returns"]]
        if returns:
            out[i] = float(np.mean(returns))
    return out


def summarise(run: dict, check: int) -> dict:
    group = run["group"]
    curve = [{"env_steps": r["env_steps"], "time_s": r["time_s"],
              "returns": [r[f"return_{group}"]] * int(r[f"episodes_{group}"])} for r in run["curve"]]
    steps = np.array([c["env_steps"] for c in curve])
    seconds = np.array([c["time_s"] for c in curve])
    smooth = smoothed(curve, run["window_steps"])
    hit = np.nonzero(smooth >= run["threshold"])[0]
    at_check = smooth[steps <= check][-1] if (steps <= check).any() else float("nan")
    return {"variant": run["variant"], "seed": run["seed"], "overrides": run["overrides"],
            "env_steps": int(steps[-1]), "wall_s": round(run["wall_s"], 1),
            "env_steps_per_s": float(steps[-1] / seconds[-1]),
            "steps_to_threshold": int(steps[hit[0]]) if hit.size else None,
            "seconds_to_threshold": float(seconds[hit[0]]) if hit.size else None,
            "return_at_check": float(at_check), "final_return": float(smooth[-1]),
            "curve": {"env_steps": steps.tolist(), "time_s": seconds.tolist(), "smoothed": smooth.tolist()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="simple_spread")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=2_000_000, help="env steps per run (also the check point)")
    p.add_argument("--variant", action="append", default=None, help="NAME[:OVERRIDE,...]; repeatable")
    p.add_argument("--threshold", type=float, default=-40.0)
    p.add_argument("--stop-at-threshold", action="store_true")
    p.add_argument("--window-steps", type=int, default=16_000, help="trailing smoothing window in env steps")
    p.add_argument("--group", default="agent", help="the group whose return is judged")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--tag", default="", help="suffix of the result files")
    a = p.parse_args()

    from pgen.config import EnvConfig, compose_config
    from pgen.policies.policy_file import load_policies
    from pgen.policies.rollout import evaluate_returns
    from pgen.util.plots import plot_curves

    variants = [parse_variant(v) for v in (a.variant or ["defaults"])]
    jobs = [{"env": a.env, "variant": name, "overrides": overrides, "seed": seed, "steps": a.steps, "group": a.group,
             "threshold": a.threshold, "stop": a.stop_at_threshold, "window_steps": a.window_steps}
            for seed in a.seeds for name, overrides in variants]
    t0 = time.time()
    with mp.get_context("spawn").Pool(min(a.processes, len(jobs))) as pool:
        runs = pool.map(run_job, jobs, chunksize=1)
    wall = time.time() - t0
    env_cfg: EnvConfig = compose_config("train", [f"env={a.env}"]).env
    random_level = {g: float(r.mean()) for g, r in evaluate_returns(
        env_cfg, {g: None for g in runs[0]["policy_files"]}, a.eval_episodes).items()}
    rows = []
    for run in runs:
        row = summarise(run, a.steps)
        policies = {g: load_policies(f)[0] for g, f in run["policy_files"].items()}
        row["final_greedy_return"] = {g: float(v.mean()) for g, v in evaluate_returns(env_cfg, policies,
                                                                                      a.eval_episodes).items()}
        rows.append(row)
    summary = {}
    for name, _ in variants:
        mine = [r for r in rows if r["variant"] == name]
        secs = [r["seconds_to_threshold"] for r in mine if r["seconds_to_threshold"] is not None]
        steps = [r["steps_to_threshold"] for r in mine if r["steps_to_threshold"] is not None]
        summary[name] = {"runs": len(mine), "reached": len(secs),
                         "median_seconds_to_threshold": float(np.median(secs)) if secs else None,
                         "median_steps_to_threshold": float(np.median(steps)) if steps else None,
                         "median_env_steps_per_s": float(np.median([r["env_steps_per_s"] for r in mine])),
                         "greedy_at_end": [r["final_greedy_return"][a.group] for r in mine]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"learning-{a.env}{a.tag}"
    out = {"env": a.env, "group": a.group, "threshold": a.threshold, "check_steps": a.steps,
           "window_steps": a.window_steps, "stop_at_threshold": a.stop_at_threshold, "random_level": random_level,
           "eval_episodes": a.eval_episodes, "variants": {n: o for n, o in variants}, "wall_s": round(wall, 1),
           "summary": summary, "runs": rows}
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    hlines = {f"random {g}": v for g, v in random_level.items()}
    if a.threshold > -1e8:
        hlines[f"threshold {a.threshold:g}"] = a.threshold
    for axis, label in (("env_steps", "env steps"), ("time_s", "wall-clock seconds")):
        curves = {f"{r['variant']} seed {r['seed']}": (r["curve"][axis], r["curve"]["smoothed"]) for r in rows}
        plot_curves(curves, RESULTS / f"{stem}{'' if axis == 'env_steps' else '-time'}.png",
                    f"pgen train on {a.env}: smoothed training return ({a.window_steps:,} env-step window)",
                    xlabel=label, ylabel="episode return (sum over the group)", hlines=hlines, window=1)
    print(f"\n{a.env}; random level {random_level}; threshold {a.threshold} on group {a.group!r};"
          f" wall {wall / 60:.1f} min; {a.processes} runs at a time")
    print(f"{'variant':<14} {'seed':>4} {'steps':>9} {'steps/s':>8} {'to thr. (steps)':>15} {'to thr. (s)':>11}"
          f" {'@check':>7} {'final':>7}  greedy ({a.eval_episodes} eps)")
    for r in rows:
        thr = f"{r['steps_to_threshold']:,}" if r["steps_to_threshold"] else "-"
        sec = f"{r['seconds_to_threshold']:.0f}" if r["seconds_to_threshold"] else "-"
        greedy = " ".join(f"{g}={v:.1f}" for g, v in r["final_greedy_return"].items())
        print(f"{r['variant']:<14} {r['seed']:>4} {r['env_steps']:>9,} {r['env_steps_per_s']:>8,.0f} {thr:>15}"
              f" {sec:>11} {r['return_at_check']:>7.1f} {r['final_return']:>7.1f}  {greedy}")
    for name, s in summary.items():
        sec = f"{s['median_seconds_to_threshold']:.0f} s" if s["median_seconds_to_threshold"] else "-"
        print(f"{name}: reached {s['reached']}/{s['runs']}, median {sec} to the threshold, "
              f"{s['median_env_steps_per_s']:,.0f} env steps/s")


if __name__ == "__main__":
    main()
