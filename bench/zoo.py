"""The generator against the number of runs it learns from: held-out behaviour and alignment.

For each seed: one population of `--members` members (the quick profile's member budget; `pgen
populate`, skipped when the store already has them), then for each size n of `--sizes` a store that
holds the first n members' runs (hard links: nothing is copied), on which `pgen train-generator`
fits a generator with the quick profile's settings and `pgen evaluate` measures it with the quick
profile's grid. Per (seed, n): the generator alone (one request, the defaults: R², Spearman, score
at the top, novelty, copies) beside retrieval and the memorisation audit (noisy retrieval,
interpolation), and the behavioural reconstruction of the held-out runs on the probe states (the
fit's `behaviour`: the reconstructions' greedy-action agreement against the nearest training
checkpoint's and the mean checkpoint's). Writes bench/results/zoo.json (or `--out`) and a PNG beside
it, and prints the table.

    python3 bench/zoo.py --seeds 0 1 2 --sizes 6 12 24 48 --root /tmp/zoo --out bench/results/zoo.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODEL = "simple_spread-agent-mlp-18x64x64x5-tanh"
# the quick profile's population member (pgen/conf/profile/quick.yaml)
MEMBER = ["population.max_env_steps=300000", "population.checkpoint_every=3", "population.cpus_per_worker=1"]
sys.path.insert(0, str(ROOT / "bench"))
from levers import EVALUATE, FIT, arms  # noqa: E402  (the quick profile's fit and evaluation, one summary)


def pgen(*args: str, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "pgen.cli", *args]
    print(" ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def populate(data: Path, members: int, seed: int) -> None:
    runs = data / "runs"
    if runs.exists() and len(list(runs.iterdir())) >= members:
        print(f"reusing the population in {data}")
        return
    pgen("populate", f"store.uri={data}", f"population.size={members}", f"seed={seed}", "run_id=zoo", "log_every_s=60",
         *MEMBER, cwd=data.parent)


def subset(data: Path, store: Path, n: int) -> None:
    """A store with the first n members' checkpoints and run records of `data` (hard links)."""
    keep = {f"zoo-m{m:03d}" for m in range(n)}
    for path in data.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        rel = path.relative_to(data)
        run = next((p[len("run="):] for p in rel.parts if p.startswith("run=")), None)
        if rel.parts[0] == "checkpoints" and run not in keep or rel.parts[0] == "runs" and rel.parts[1] not in keep:
            continue
        if rel.parts[0] not in ("checkpoints", "runs"):
            continue
        target = store / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)


def measure(root: Path, seed: int, n: int) -> dict:
    data = root / f"s{seed}" / "data"
    store = root / f"s{seed}" / f"n{n:03d}"
    subset(data, store, n)
    runs = root / f"s{seed}" / f"n{n:03d}-runs"
    t0 = time.perf_counter()
    if not (store / "generators" / MODEL / "LATEST").exists():
        pgen("train-generator", f"store.uri={store}", f"seed={seed}", f"out_dir={runs / 'generators'}", *FIT, cwd=root)
    fit_s = time.perf_counter() - t0
    pgen("evaluate", f"store.uri={store}", f"model={MODEL}@v0001", f"evaluate.out_dir={runs / 'evaluate'}", *EVALUATE,
         cwd=root)
    result = json.loads((runs / "evaluate" / f"{MODEL}@v0001" / "evaluation.json").read_text())
    metrics = json.loads((store / "generators" / MODEL / "v0001" / "metrics.json").read_text())
    return {"seed": seed, "runs": n, "train_runs": len(result["dataset"]["runs"]),
            "checkpoints": result["dataset"]["checkpoints"], "fit_s": fit_s, **arms(result),
            "behaviour": metrics.get("behaviour"), "val_recon": metrics["final"].get("val_recon")}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["runs"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=110)
    series = [("generator", "generator (one request)", "tab:blue"), ("retrieval", "retrieval", "tab:orange"),
              ("noisy_retrieval", "noisy retrieval", "tab:grey"), ("interpolation", "interpolation", "tab:green")]
    for ax, key, title in ((axes[0], "alignment_r2", "alignment R²"), (axes[1], "normalised_score_top",
                                                                        "normalised score at the top target")):
        for arm, label, colour in series:
            values = [[r[arm][key] for r in rows if r["runs"] == n] for n in sizes]
            ax.errorbar(sizes, [np.mean(v) for v in values], [np.std(v) for v in values], marker="o", capsize=3,
                        label=label, color=colour)
        ax.set(xscale="log", xticks=sizes, xticklabels=sizes, xlabel="runs in the store", title=title)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    ax = axes[2]
    for key, label, colour in (("model_agreement", "reconstruction", "tab:blue"),
                               ("nearest_train_agreement", "nearest training checkpoint", "tab:orange"),
                               ("mean_agreement", "mean checkpoint", "tab:grey")):
        values = [[r["behaviour"][key] for r in rows if r["runs"] == n and r["behaviour"]] for n in sizes]
        ax.errorbar(sizes, [np.mean(v) for v in values], [np.std(v) for v in values], marker="o", capsize=3,
                    label=label, color=colour)
    ax.set(xscale="log", xticks=sizes, xticklabels=sizes, xlabel="runs in the store",
           title="held-out runs: greedy actions reproduced")
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=[6, 12, 24, 48])
    ap.add_argument("--members", type=int, help="members per population (default: the largest size)")
    ap.add_argument("--root", default="/tmp/zoo", help="where the stores go")
    ap.add_argument("--out", default=str(RESULTS / "zoo.json"))
    args = ap.parse_args()
    members = args.members or max(args.sizes)
    if members < max(args.sizes) or min(args.sizes) < 2:
        ap.error("every size must be between 2 and --members")
    root = Path(args.root).resolve()
    path = Path(args.out)
    rows = []
    for seed in args.seeds:
        data = root / f"s{seed}" / "data"
        data.mkdir(parents=True, exist_ok=True)
        populate(data, members, seed)
        for n in sorted(args.sizes):
            rows.append(measure(root, seed, n))
            path.write_text(json.dumps({"host": platform.node(), "rows": rows}, indent=1))
    summary = {"host": platform.node(), "command": "python3 bench/zoo.py " + " ".join(sys.argv[1:]),
               "member": MEMBER, "fit": FIT, "evaluate": EVALUATE, "rows": rows}
    path.write_text(json.dumps(summary, indent=1))
    plot(rows, path.with_suffix(".png"))
    print(f"\n{'seed':>4} {'runs':>4} {'rows':>5} | generator: {'R²':>6} {'ρ':>6} {'score':>6} {'nov.':>5} {'cop.':>4} |"
          f" retrieval: {'R²':>6} {'score':>6} | noisy: {'R²':>6} {'score':>6} | interp.: {'R²':>6} {'score':>6} |"
          f" held-out actions: {'model':>5} {'nearest':>7} {'mean':>5}")
    for r in rows:
        g, t, n, i, b = r["generator"], r["retrieval"], r["noisy_retrieval"], r["interpolation"], r["behaviour"] or {}
        print(f"{r['seed']:>4} {r['runs']:>4} {r['checkpoints']:>5} | {'':>10} {g['alignment_r2']:>6.3f}"
              f" {g['spearman']:>6.3f} {g['normalised_score_top']:>6.2f} {g['novelty_median']:>5.2f} {g['copies']:>4} |"
              f" {'':>10} {t['alignment_r2']:>6.3f} {t['normalised_score_top']:>6.2f} | {'':>6}"
              f" {n['alignment_r2']:>6.3f} {n['normalised_score_top']:>6.2f} | {'':>8} {i['alignment_r2']:>6.3f}"
              f" {i['normalised_score_top']:>6.2f} | {'':>17} {b.get('model_agreement', float('nan')):>5.3f}"
              f" {b.get('nearest_train_agreement', float('nan')):>7.3f} {b.get('mean_agreement', float('nan')):>5.3f}")
    print(f"\nwrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
