"""Levers of the generator alone, against retrieval and the memorisation audit, on the same stores.

For each store of `--stores` (the quick profile's stores of several seeds: `pgen pipeline seed=s
store.uri=/tmp/q-s out_dir=/tmp/q-s-runs`) and each lever (`--lever NAME=OVERRIDES`, `default`
always first), fit a generator with the quick profile's settings and the lever's `generator.*`
overrides (`pgen train-generator`'s code path, the store's seed) and measure it with the quick
profile's evaluation grid and the lever's `evaluate.*` overrides (`pgen evaluate`'s code path):
the generator alone (one request) — R², Spearman, score at the top, novelty, copies — beside
retrieval, noisy retrieval and interpolation on the same held-out episodes, and the behavioural
reconstruction of the held-out runs (the fit's `behaviour`). A lever whose overrides are all
`evaluate.*` reuses the default's generator. Prints one row per (lever, store) and the means per
lever; writes bench/results/levers.json (or `--out`).

    python3 bench/levers.py --stores /tmp/q-0 /tmp/q-1 /tmp/q-2 --lever "functional=generator.functional_weight=1"
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from pgen.commands.train_generator import train_generator
from pgen.config import compose_config
from pgen.evaluation.evaluate import evaluate_generator
from pgen.generator.versions import load_generator
from pgen.store import CheckpointStore
from pgen.util.progress import setup_logging

RESULTS = Path(__file__).resolve().parent / "results"
FIT = ["generator.epochs=80"]  # the quick profile's (pgen/conf/profile/quick.yaml)
EVALUATE = ["evaluate.episodes=30", "evaluate.targets=6", "evaluate.samples=3"]
KEYS = ("alignment_r2", "spearman", "normalised_score_top", "novelty_median", "agreement_mean")
ARMS = ("noisy_retrieval", "interpolation")


def seed_of(store: Path) -> int:
    """The seed of a store's population (its run.json), which its fits use too, as the pipeline's."""
    run = next((store / "runs").glob("*/run.json"))
    return int(json.loads(run.read_text())["config"]["seed"])


def arms(r: dict) -> dict:
    """The generator alone, retrieval and the memorisation audit's arms of an evaluation result."""
    return {"generator": {**{k: r[k] for k in KEYS}, "copies": r["copies"]},
            "retrieval": {"alignment_r2": r["retrieval_alignment_r2"], "spearman": r["retrieval_spearman"],
                          "normalised_score_top": r["retrieval_normalised_score_top"]},
            **{arm: {k: r[arm][k] for k in KEYS} for arm in ARMS}}


def measure(store_path: Path, lever: str, overrides: list[str], out: Path) -> dict:
    store = CheckpointStore(str(store_path))
    seed = seed_of(store_path)
    fit_overrides = [o for o in overrides if not o.startswith("evaluate.")]
    name = f"lever-{lever}" if fit_overrides else "lever-default"
    t0 = time.perf_counter()
    if not store.exists(f"generators/{name}/LATEST"):
        cfg = compose_config("train-generator", [f"store.uri={store_path}", f"seed={seed}", f"generator.name={name}",
                                                 f"out_dir={out / 'generators'}", *FIT, *fit_overrides])
        train_generator(cfg, store)
    fit_s = time.perf_counter() - t0
    gen = load_generator(store, name)
    ecfg = compose_config("evaluate", [f"store.uri={store_path}", f"model={gen.model_id}",
                                       f"evaluate.out_dir={out / 'evaluate' / lever}", *EVALUATE,
                                       *[o for o in overrides if o.startswith("evaluate.")]])
    r = evaluate_generator(ecfg, store, gen)
    behaviour = json.loads(store.get(f"generators/{name}/{gen.version}/metrics.json")).get("behaviour")
    return {"lever": lever, "overrides": overrides, "store": str(store_path), "seed": seed, "model": gen.model_id,
            "fit_s": fit_s, **arms(r), "behaviour": behaviour,
            "targets": [{k: t[k] for k in ("target", "conditioned_on", "achieved_mean", "retrieval")}
                        for t in r["targets"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stores", nargs="+", required=True)
    ap.add_argument("--lever", action="append", default=[], metavar="NAME=OVERRIDES")
    ap.add_argument("--out", default=str(RESULTS / "levers.json"))
    args = ap.parse_args()
    setup_logging()
    levers = {"default": []}
    for text in args.lever:
        name, _, overrides = text.partition("=")
        if not name or not overrides:
            ap.error(f"--lever {text!r}: expected NAME=OVERRIDES")
        levers[name] = overrides.split()
    path = Path(args.out)
    previous = json.loads(path.read_text())["rows"] if path.exists() else []
    rows = []
    for lever, overrides in levers.items():
        for store in args.stores:
            rows.append(measure(Path(store).resolve(), lever, overrides, Path(store).resolve().parent /
                                f"{Path(store).name}-levers"))
            done = {(r["lever"], r["store"]) for r in rows}
            kept = [r for r in previous if (r["lever"], r["store"]) not in done]
            path.write_text(json.dumps({"host": platform.node(), "rows": kept + rows}, indent=1))
    summary = {"host": platform.node(), "command": "python3 bench/levers.py " + shlex.join(sys.argv[1:]),
               "fit": FIT, "evaluate": EVALUATE, "rows": [r for r in previous if (r["lever"], r["store"]) not in
                                                            {(x["lever"], x["store"]) for x in rows}] + rows}
    path.write_text(json.dumps(summary, indent=1))
    head = (f"{'lever':<16} {'seed':>4} | generator: {'R²':>6} {'ρ':>6} {'score':>6} {'nov.':>5} {'cop.':>4} |"
            f" retrieval: {'R²':>6} {'score':>6} | noisy: {'R²':>6} {'score':>6} | interp.: {'R²':>6} {'score':>6}"
            f" | held-out actions: {'model':>5} {'nearest':>7} {'mean':>5}")
    print("\n" + head)

    def line(name: str, seed: str, g: dict, t: dict, n: dict, i: dict, b: dict) -> str:
        return (f"{name:<16} {seed:>4} | {'':>10} {g['alignment_r2']:>6.3f} {g['spearman']:>6.3f}"
                f" {g['normalised_score_top']:>6.2f} {g['novelty_median']:>5.2f} {g.get('copies', 0):>4} | {'':>10}"
                f" {t['alignment_r2']:>6.3f} {t['normalised_score_top']:>6.2f} | {'':>6} {n['alignment_r2']:>6.3f}"
                f" {n['normalised_score_top']:>6.2f} | {'':>8} {i['alignment_r2']:>6.3f} {i['normalised_score_top']:>6.2f}"
                f" | {'':>17} {b.get('model_agreement', float('nan')):>5.3f}"
                f" {b.get('nearest_train_agreement', float('nan')):>7.3f} {b.get('mean_agreement', float('nan')):>5.3f}")

    for r in rows:
        print(line(r["lever"], str(r["seed"]), r["generator"], r["retrieval"], r["noisy_retrieval"],
                   r["interpolation"], r["behaviour"] or {}))
    print()
    for lever in levers:
        mine = [r for r in rows if r["lever"] == lever]
        mean = {part: {k: float(np.mean([r[part][k] for r in mine])) for k in mine[0][part]}
                for part in ("generator", "retrieval", *ARMS)}
        behaviour = {k: float(np.mean([r["behaviour"][k] for r in mine if r["behaviour"]]))
                     for k in ("model_agreement", "nearest_train_agreement", "mean_agreement")} if mine[0]["behaviour"] else {}
        print(line(lever, "mean", mean["generator"], mean["retrieval"], mean["noisy_retrieval"], mean["interpolation"],
                   behaviour))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
