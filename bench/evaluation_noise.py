"""How much of `pgen evaluate`'s table is the draw of the generator's noise (issue 15's alignment goals).

A generator's R², Spearman ρ and score at the top target are measured on `evaluate.samples` policies
per target, each from its own ε ~ N(0, τ²I) seeded by `evaluate.seed`. This script evaluates one
registered version `--draws` times, `evaluate.seed` = 0 … draws − 1 (the same baselines, target grid
and held-out episodes each time: only ε changes), and — when the version has a calibration curve —
each draw both through the curve and conditioned on the target as asked (`calibrated=False`), on the
same ε. Per model and arm it prints the mean, standard deviation, minimum and maximum of each metric
over the draws, and the share of draws in which the calibrated arm's R² is the higher; writes
bench/results/evaluation-noise.json (or `--out`; rows of other models are kept).

    python bench/evaluation_noise.py --store pgen-store --model simple_spread-agent-mlp-18x64x64x5-tanh \
        --draws 8 evaluate.episodes=30 evaluate.targets=6 evaluate.samples=3      # profile=quick's grid
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from pgen.config import compose_config
from pgen.evaluation.baselines import measure_baselines
from pgen.evaluation.evaluate import evaluate_generator
from pgen.generator.versions import load_generator
from pgen.store import open_store
from pgen.util.progress import setup_logging

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("alignment_r2", "spearman", "normalised_score_top")


def draws(store_uri: str, model: str, n: int, overrides: list[str]) -> dict:
    """Every metric of `model` over `n` noise draws, through its calibration and as asked."""
    cfg = compose_config("evaluate", [f"store.uri={store_uri}", f"model={model}", *overrides])
    store = open_store(cfg.store)
    gen = load_generator(store, model)
    base = measure_baselines(store, gen.info, cfg.evaluate, label=f"evaluate {gen.model_id}")
    arms = ["calibrated", "as_asked"] if gen.calibration_for() is not None else ["as_asked"]  # an adopted curve
    rows = {arm: [] for arm in arms}
    for seed in range(n):
        settings = replace(cfg.evaluate, seed=seed)
        for arm in arms:
            gen.calibrated = arm == "calibrated"
            result = evaluate_generator(replace(cfg, evaluate=settings), store, gen, replace(base, settings=settings))
            rows[arm].append({"seed": seed, **{k: result[k] for k in KEYS}})
    gen.calibrated = True
    summary = {arm: {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "min": float(np.min(v)),
                         "max": float(np.max(v))}
                     for k in KEYS for v in [[r[k] for r in rs]]} for arm, rs in rows.items()}
    out = {"model": gen.model_id, "store": store.uri, "draws": n, "overrides": overrides,
           "episodes": cfg.evaluate.episodes, "targets": cfg.evaluate.targets, "samples": cfg.evaluate.samples,
           "rows": rows, "summary": summary}
    if len(arms) == 2:
        out["calibrated_r2_higher"] = float(np.mean([c["alignment_r2"] > a["alignment_r2"]
                                                     for c, a in zip(rows["calibrated"], rows["as_asked"])]))
    return out


def write_models(path: Path, fresh: list[dict], script: str) -> None:
    """`path`'s JSON with the `fresh` rows, keeping its rows of other (store, model, overrides)."""
    previous = json.loads(path.read_text()).get("models", []) if path.exists() else []
    done = {(r["store"], r["model"], tuple(r["overrides"])) for r in fresh}
    models = [r for r in previous if (r["store"], r["model"], tuple(r["overrides"])) not in done] + fresh
    path.write_text(json.dumps({"host": platform.node(), "command": f"python3 {script} " + " ".join(sys.argv[1:]),
                                "models": models}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="store URI (a folder or s3://…)")
    ap.add_argument("--model", required=True, nargs="+", help="name or name@version, one or more")
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--out", default=str(RESULTS / "evaluation-noise.json"))
    ap.add_argument("overrides", nargs="*", help="evaluate.* Hydra overrides (the grid of the profile measured)")
    args = ap.parse_args()
    if args.draws < 2:
        ap.error("--draws must be >= 2")
    setup_logging()
    path = Path(args.out)
    fresh = [draws(args.store, m, args.draws, args.overrides) for m in args.model]
    write_models(path, fresh, "bench/evaluation_noise.py")
    print(f"\n{'model':<48} {'arm':<11} {'R² mean ± std':>15} {'min … max':>15} {'ρ mean ± std':>14}"
          f" {'min … max':>15} {'score mean':>10}")
    for r in fresh:
        for arm, s in r["summary"].items():
            a, p, sc = s["alignment_r2"], s["spearman"], s["normalised_score_top"]
            print(f"{r['model']:<48} {arm:<11} {a['mean']:>8.3f} ± {a['std']:.3f} {a['min']:>7.3f} … {a['max']:.3f}"
                  f" {p['mean']:>7.3f} ± {p['std']:.3f} {p['min']:>7.3f} … {p['max']:.3f} {sc['mean']:>10.2f}")
        if "calibrated_r2_higher" in r:
            print(f"{r['model']:<48} calibrated R² higher in {r['calibrated_r2_higher']:.0%} of {r['draws']} draws")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
