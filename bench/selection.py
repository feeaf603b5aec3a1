"""Generated policies chosen among candidates (`evaluate.candidates`, pgen.evaluation.selection) against the
generator alone, on the same noise draws (per architecture).

For one registered version, `--draws` noise draws (`evaluate.seed` = 0 … draws − 1: the same baselines,
target grid and held-out episodes each time) at each K of `--candidates`. Every evaluation plays the
generator alone — each slot's first candidate, exactly the K = 1 policy of that draw — and with K > 1
the choice among K on the same held-out episodes, so "first" is the generator alone and "chosen" the
closest of K, paired. Per K it prints the
mean ± standard deviation (min … max) of R², Spearman ρ and the score at the top over the draws, the
copies, the median novelty and what the choice cost (selection env steps per handed-out policy, and the
evaluation's seconds beside K = 1's); writes bench/results/selection.json (or `--out`; rows of other
models or settings are kept).

    pgen pipeline profile=quick seed=$s store.uri=/tmp/quick-$s out_dir=/tmp/quick-$s-runs     # s = 0, 1, 2
    python3 bench/selection.py --store /tmp/quick-$s --model simple_spread-agent-mlp-18x64x64x5-tanh@v0001 \
        --candidates 1 4 8 16 --draws 4 evaluate.episodes=30 evaluate.targets=6 evaluate.samples=3
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pgen.config import compose_config
from pgen.evaluation.baselines import measure_baselines
from pgen.evaluation.evaluate import evaluate_generator
from pgen.generator.versions import load_generator
from pgen.store import open_store
from pgen.util.progress import setup_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluation_noise import write_models  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("alignment_r2", "spearman", "normalised_score_top")
EPISODE_STEPS = 25  # simple_spread's max_cycles: env steps of one selection episode


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "min": float(np.min(values)),
            "max": float(np.max(values))}


def per_arch(result: dict) -> list[dict]:
    """The metrics of one evaluation, one row per architecture (one row for a single-architecture version)."""
    return [{"arch": a["arch"], "trained": a["trained"], **{k: (a["chosen"] or a)[k] for k in KEYS},
             "first": {k: a[k] for k in KEYS} if a["chosen"] else None, "copies": a["copies"],
             "novelty_median": a["novelty_median"]}
            for a in result["archs"]]


def measure(store_uri: str, model: str, ks: list[int], n: int, overrides: list[str]) -> dict:
    cfg = compose_config("evaluate", [f"store.uri={store_uri}", f"model={model}", *overrides])
    store = open_store(cfg.store)
    gen = load_generator(store, model)
    base = measure_baselines(store, gen.info, cfg.evaluate, label=f"evaluate {gen.model_id}")
    rows = []
    for seed in range(n):
        for k in ks:
            settings = replace(cfg.evaluate, seed=seed, candidates=k)
            t0 = time.perf_counter()
            result = evaluate_generator(replace(cfg, evaluate=settings), store, gen, replace(base, settings=settings))
            rows.append({"seed": seed, "candidates": k, "seconds": time.perf_counter() - t0, "archs": per_arch(result)})
    summary = {}
    for k in ks:
        mine = [r for r in rows if r["candidates"] == k]
        for i, arch in enumerate(mine[0]["archs"]):
            one = [r["archs"][i] for r in mine]
            entry = {"arch": arch["arch"], "trained": arch["trained"], "candidates": k,
                     "chosen": {key: stats([a[key] for a in one]) for key in KEYS},
                     "copies": int(sum(a["copies"] for a in one)),
                     "novelty_median": float(np.median([a["novelty_median"] for a in one])),
                     "seconds": float(np.mean([r["seconds"] for r in mine])),
                     "selection_env_steps_per_policy": (k * cfg.evaluate.selection_episodes * EPISODE_STEPS
                                                        if k > 1 else 0)}
            if k > 1:
                entry["first"] = {key: stats([a["first"][key] for a in one]) for key in KEYS}
                entry["chosen_r2_higher"] = float(np.mean([a["alignment_r2"] > a["first"]["alignment_r2"] for a in one]))
            summary[f"{arch['arch']}|{k}"] = entry
    return {"model": gen.model_id, "store": store.uri, "draws": n, "candidates": ks, "overrides": overrides,
            "episodes": cfg.evaluate.episodes, "targets": cfg.evaluate.targets, "samples": cfg.evaluate.samples,
            "selection_episodes": cfg.evaluate.selection_episodes, "rows": rows, "summary": list(summary.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="store URI (a folder or s3://…)")
    ap.add_argument("--model", required=True, nargs="+", help="name or name@version, one or more")
    ap.add_argument("--candidates", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--out", default=str(RESULTS / "selection.json"))
    ap.add_argument("overrides", nargs="*", help="evaluate.* Hydra overrides (the grid of the profile measured)")
    args = ap.parse_args()
    if args.draws < 1 or min(args.candidates) < 1:
        ap.error("--draws and every --candidates must be >= 1")
    setup_logging()
    path = Path(args.out)
    fresh = [measure(args.store, m, sorted(set(args.candidates)), args.draws, args.overrides) for m in args.model]
    write_models(path, fresh, "bench/selection.py")
    print(f"\n{'model':<46} {'arch':<24} {'K':>3} {'arm':<7} {'R² mean ± std':>15} {'min … max':>15}"
          f" {'ρ mean ± std':>14} {'score':>6} {'copies':>6} {'novelty':>7} {'s':>6} {'sel. steps':>10}")
    for r in fresh:
        for e in r["summary"]:
            arms = [("chosen", e["chosen"])] + ([("first", e["first"])] if "first" in e else [])
            for arm, m in arms:
                a, p, sc = m["alignment_r2"], m["spearman"], m["normalised_score_top"]
                print(f"{r['model']:<46} {e['arch']:<24} {e['candidates']:>3} {arm if e['candidates'] > 1 else '-':<7}"
                      f" {a['mean']:>8.3f} ± {a['std']:.3f} {a['min']:>7.3f} … {a['max']:.3f}"
                      f" {p['mean']:>7.3f} ± {p['std']:.3f} {sc['mean']:>6.2f} {e['copies']:>6}"
                      f" {e['novelty_median']:>7.2f} {e['seconds']:>6.1f} {e['selection_env_steps_per_policy']:>10,}")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
