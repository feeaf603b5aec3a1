"""Seeding speed-up (docs/design.md "Metrics"): env steps a random-init population needs to reach a return
threshold, divided by the env steps a generator-seeded population needs, same run, several seeds.

For each seed s, two populations of `--members` members train side by side on one local Ray with
the same config, the same per-member PPO hyper-parameters and the same budget:

- random: the default start (every member from the population's shared random initial policy);
- seeded: members start from a seed run written by `pgen.dataset.seed_runs.write_seed_run`, the function
  behind Serve's /v1/seed: `--members` policies the generator made for `--target` (seed s).

Steps to a threshold = env steps at the first checkpoint whose greedy return (population.eval_episodes
fixed-seed episodes) reaches it; a seeded population whose step-0 checkpoint already does needs 0.
Per threshold the speed-up is the ratio of the mean steps over seeds and members; a population that
never reaches it within the budget counts as the budget (a random arm that never does makes the speed-up a
lower bound, marked ≥; a seeded arm that never does, an upper bound, marked ≤).

Writes `bench/results/seeding.json`, `bench/results/seeding.png` (return vs env steps, both arms)
and prints the table.

    python bench/seeding.py --store bench/results/runs/gen-store --model bench-simple_spread-s0 \\
        --target -50 --thresholds -50 -45 --seeds 0 1 --members 1 --steps 600000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def steps_to(curve: list[tuple[int, float]], threshold: float) -> int | None:
    return next((step for step, ret in curve if ret >= threshold), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=str(RESULTS / "runs" / "gen-store"), help="holds the generator (read only)")
    ap.add_argument("--model", default="bench-simple_spread-s0")
    ap.add_argument("--target", type=float, default=-50.0)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[-50.0, -45.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--steps", type=int, default=600_000, help="env steps per member")
    ap.add_argument("--work", default=str(RESULTS / "runs" / "seeding"), help="scratch store of the populations")
    ap.add_argument("overrides", nargs="*", help="more `pgen populate` overrides for both arms")
    args = ap.parse_args()

    import ray

    from pgen.commands.populate import populate
    from pgen.config import compose_config
    from pgen.dataset.seed_runs import write_seed_run
    from pgen.generator.versions import load_generator
    from pgen.store import CheckpointStore
    from pgen.util.progress import setup_logging

    gen = load_generator(CheckpointStore(str(Path(args.store).resolve())), args.model, device="cpu")
    if gen.info["env"]["name"] != "simple_spread" and not args.overrides:
        print(f"note: the generator's env is {gen.info['env']['name']}; pass env=... overrides to match it")
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    store = CheckpointStore(str(work))
    spec = gen.spec
    common = [f"store.uri={work}", f"env={gen.info['env']['name']}", f"population.size={args.members}",
              f"population.max_env_steps={args.steps}", "population.checkpoint_every=4",
              f"population.cpus_per_worker={min(1.0, 2.0 / (2 * args.members))}",
              f"policy.hidden=[{','.join(map(str, spec.hidden))}]", f"policy.kind={spec.kind}",
              f"policy.activation={spec.activation}", "log_every_s=60", *args.overrides]
    setup_logging()  # each population's table of members, with rate and ETA, every log_every_s
    ray.init(include_dashboard=False, log_to_driver=False)
    t0 = time.time()
    runs = []
    for seed in args.seeds:
        cfg = compose_config("populate", common + [f"seed={seed}"])
        seed_run = f"seeds-s{seed}"
        params = gen.generate(args.target, args.members, seed=seed)
        summary = write_seed_run(store, gen.info, params, args.target, seed_run, cfg.population.eval_episodes, seed)
        print(f"seed {seed}: seed policies for target {args.target}: returns {np.round(summary['returns'], 1).tolist()}")
        arms = {"random": compose_config("populate", common + [f"seed={seed}", f"run_id=random-s{seed}"]),
                "seeded": compose_config("populate", common + [f"seed={seed}", f"run_id=seeded-s{seed}",
                                                                 f"population.seed_from={seed_run}"])}
        with ThreadPoolExecutor(len(arms)) as pool:  # both arms on the same Ray at the same time
            list(pool.map(populate, arms.values()))
        for arm, arm_cfg in arms.items():
            for m in range(args.members):
                rows = store.read_records(run_id=f"{arm_cfg.run_id}-m{m:03d}", columns=["step", "return_mean"]).table
                curve = sorted(zip(rows["step"].to_pylist(), rows["return_mean"].to_pylist()))
                runs.append({"seed": seed, "arm": arm, "member": m, "curve": curve,
                             "steps_to": {str(t): steps_to(curve, t) for t in args.thresholds}})
    ray.shutdown()

    table = []
    for t in args.thresholds:
        row = {"threshold": t}
        for arm in ("random", "seeded"):
            reached = [r["steps_to"][str(t)] for r in runs if r["arm"] == arm]
            row[arm] = {"steps": reached, "mean": float(np.mean([args.steps if s is None else s for s in reached])),
                        "all_reached": all(s is not None for s in reached)}
        random_mean, seeded_mean = row["random"]["mean"], row["seeded"]["mean"]
        row["speedup"] = None if seeded_mean == 0 else random_mean / seeded_mean
        # a random arm that never got there makes the ratio a lower bound; a seeded one, an upper bound
        row["bound"] = "≥ " if not row["random"]["all_reached"] else ("≤ " if not row["seeded"]["all_reached"] else "")
        table.append(row)
    result = {"bench": "seeding", "model": gen.model_id, "target": args.target, "seeds": args.seeds,
              "members": args.members, "steps": args.steps, "overrides": args.overrides, "wall_s": time.time() - t0,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "command": "python bench/seeding.py " + " ".join(sys.argv[1:]), "thresholds": table, "runs": runs}
    (RESULTS / "seeding.json").write_text(json.dumps(result, indent=1))
    plot(runs, args, gen.model_id)
    print("\n| threshold | random-init env steps (per run) | seeded env steps (per run) | speed-up |\n|---:|---|---|---:|")
    for row in table:
        fmt = lambda s: "never" if s is None else f"{s:,}"  # noqa: E731
        speed = "∞ (seeded start above it)" if row["speedup"] is None else f"{row['bound']}{row['speedup']:.1f}×"
        print(f"| {row['threshold']:g} | {', '.join(fmt(s) for s in row['random']['steps'])} (mean {row['random']['mean']:,.0f})"
              f" | {', '.join(fmt(s) for s in row['seeded']['steps'])} (mean {row['seeded']['mean']:,.0f}) | {speed} |")
    print(f"wrote {RESULTS / 'seeding.json'} and {RESULTS / 'seeding.png'}")


def plot(runs: list[dict], args, model_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        steps, rets = zip(*r["curve"])
        ax.plot(steps, rets, color="tab:blue" if r["arm"] == "random" else "tab:orange", alpha=0.8,
                label=f"{r['arm']} init" if r["seed"] == args.seeds[0] and r["member"] == 0 else None)
    for t in args.thresholds:
        ax.axhline(t, color="grey", ls=":", lw=1)
    ax.set_xlabel("env steps per member")
    ax.set_ylabel("greedy group return (sum over agents)")
    ax.set_title(f"random init vs seeded by {model_id} (target {args.target:g})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "seeding.png", dpi=120)


if __name__ == "__main__":
    main()
