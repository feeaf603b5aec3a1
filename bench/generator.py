"""Generator quality on simple_spread and simple_tag: alignment, normalised score, novelty.

For each slice (env, group) the script trains a generator with the given settings on the store's
checkpoints (`pgen train-generator`'s code path) and runs `pgen evaluate`'s measurement on it: a
grid of targets from the 5th to the 95th percentile of the training checkpoints' returns plus
their maximum, `--samples` generated policies per target, each rolled out on `--episodes`
held-out fixed-seed greedy episodes, with the baselines (uniform random, re-evaluated top-10 %
checkpoints, retrieval of the closest-return checkpoint) in the same run. Seeds of the generator
training are repeated with `--seeds`; `--reuse` evaluates the generator an earlier run of the same
settings registered (e.g. at another `--temperatures`) instead of training it again.

The data comes from `pgen populate` (the `profile=full` setting; the exact commands are in
bench/README.md). Writes `bench/results/generator.json` or `--out` (rows of other envs/seeds from
earlier runs are kept), copies each alignment plot beside it as
`<out name>-<env>-<group>-s<seed>[-<settings>]-t<τ>.png` (`bench/results/generator-simple_spread-agent-s0-t0.5.png`)
and prints the table.

    python bench/generator.py generator.epochs=200 --envs simple_spread simple_tag --seeds 0
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import time
from pathlib import Path

from pgen.commands.train_generator import train_generator
from pgen.config import DEFAULT_TEMPERATURE, compose_config, to_dict
from pgen.evaluation.evaluate import evaluate_generator
from pgen.evaluation.report import format_result
from pgen.generator.versions import load_generator
from pgen.store import CheckpointStore
from pgen.util.progress import setup_logging

RESULTS = Path(__file__).resolve().parent / "results"
SLICES = {"simple_spread": "agent", "simple_tag": "adversary"}
KEYS = ("alignment_r2", "spearman", "retrieval_alignment_r2", "retrieval_spearman", "normalised_score_top",
        "retrieval_normalised_score_top", "r_random", "r_top10", "best_trained", "novelty_median", "copies",
        "min_relative_l2", "agreement_mean")


def check_reused(model_id: str, fitted: dict, wanted: dict) -> None:
    """SystemExit naming the settings in which the generator --reuse found differs from this run's
    (the name carries the overrides but not the epochs, so an earlier run's version can be another fit)."""
    ignored = {"device", "log_every_s"}  # where and how chattily it ran, not what was fitted
    # a setting newer than the version is not in its config: nothing to compare
    differ = {k: (fitted[k], v) for k, v in wanted.items() if k not in ignored and k in fitted and fitted[k] != v}
    if differ:
        raise SystemExit(f"--reuse: {model_id} was fitted with other settings than this run asks for "
                         f"({', '.join(f'generator.{k}: {a!r} there, {b!r} here' for k, (a, b) in differ.items())});"
                         " run without --reuse to fit it")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=str(RESULTS / "runs" / "gen-store"))
    ap.add_argument("--envs", nargs="+", default=list(SLICES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--temperatures", nargs="+", type=float, default=[DEFAULT_TEMPERATURE],
                    help="evaluate each trained generator at these sampling temperatures (evaluate.temperature)")
    ap.add_argument("--reuse", action="store_true",
                    help="evaluate the generator these settings registered before (its LATEST) instead of training it"
                         " again; an error if that version was fitted with other generator.* settings")
    ap.add_argument("--out", default=str(RESULTS / "generator.json"), help="results JSON (rows of other settings are kept)")
    ap.add_argument("overrides", nargs="*", help="generator.* Hydra overrides, e.g. generator.epochs=200")
    args = ap.parse_args()
    setup_logging()
    store = CheckpointStore(args.store)
    out_dir = RESULTS / "runs" / "generator"
    out = Path(args.out).resolve()
    rows = []
    # settings beyond the epochs name the generator and the plots: bench-simple_spread-s0-return_balance1
    tag = "".join("-" + re.sub(r"[^A-Za-z0-9_]", "", o.split(".", 1)[-1]) for o in args.overrides if "epochs" not in o)
    for env in args.envs:
        for seed in args.seeds:
            name = f"bench-{env}-s{seed}{tag}"
            cfg = compose_config("train-generator", [f"env={env}", f"store.uri={args.store}", f"seed={seed}",
                                                     f"generator.group={SLICES[env]}", f"generator.name={name}",
                                                     f"torch_threads={args.threads}", f"out_dir={out_dir}",
                                                     *args.overrides])
            t0 = time.perf_counter()
            if args.reuse:
                gen = load_generator(store, name)
                check_reused(gen.model_id, gen.info["generator"], to_dict(cfg.generator))
                train_s = None  # trained by an earlier run (its rows in --out have the time)
            else:
                gen = train_generator(cfg, store)
                train_s = time.perf_counter() - t0
            for temperature in args.temperatures:
                ecfg = compose_config("evaluate", [f"store.uri={args.store}", f"model={gen.model_id}",
                                                  f"evaluate.episodes={args.episodes}", f"evaluate.samples={args.samples}",
                                                  f"evaluate.targets={args.targets}", f"evaluate.out_dir={out_dir}",
                                                  f"evaluate.temperature={temperature}", f"torch_threads={args.threads}"])
                t0 = time.perf_counter()
                result = evaluate_generator(ecfg, store, gen)
                eval_s = time.perf_counter() - t0
                print(format_result(result), flush=True)
                # beside the results JSON, named after it: another --out never overwrites these plots
                png = out.parent / f"{out.stem}-{env}-{SLICES[env]}-s{seed}{tag}-t{temperature:g}.png"
                shutil.copyfile(result["plot"], png)
                rows.append({"env": env, "group": SLICES[env], "seed": seed, "temperature": temperature,
                             "model": gen.model_id, "checkpoints": gen.info["dataset"]["rows"],
                             "runs": len(gen.info["dataset"]["runs"]), "train_s": train_s, "evaluate_s": eval_s,
                             "plot": str(png.relative_to(RESULTS.parent) if png.is_relative_to(RESULTS.parent) else png),
                             "overrides": args.overrides,
                             "generator": gen.info["generator"], "targets": result["targets"],
                             **{k: result[k] for k in KEYS}})
    previous = json.loads(out.read_text())["rows"] if out.exists() else []

    def key(r: dict) -> tuple:
        return r["env"], r["seed"], r["temperature"], tuple(r["overrides"])

    done = {key(r) for r in rows}  # rows of other settings from earlier runs are kept
    rows = [r for r in previous if key(r) not in done] + rows
    summary = {"host": platform.node(), "store": store.uri, "episodes": args.episodes, "samples": args.samples,
               "targets": args.targets, "rows": rows}
    out.write_text(json.dumps(summary, indent=1))
    print(f"\n{'env / group':<26} {'seed':>4} {'τ':>4} {'ckpts':>5} {'R²':>6} {'(retr.)':>7} {'ρ':>6} {'score@top':>9}"
          f" {'(retr.)':>7} {'novelty':>7} {'copies':>6} {'agree':>5} {'train s':>7}")
    for r in rows:
        train = "-" if r["train_s"] is None else f"{r['train_s']:.0f}"
        print(f"{r['env'] + ' / ' + r['group']:<26} {r['seed']:>4} {r['temperature']:>4g} {r['checkpoints']:>5} {r['alignment_r2']:>6.2f}"
              f" {r['retrieval_alignment_r2']:>7.2f} {r['spearman']:>6.2f} {r['normalised_score_top']:>9.2f}"
              f" {r['retrieval_normalised_score_top']:>7.2f} {r['novelty_median']:>7.2f} {r['copies']:>6}"
              f" {r['agreement_mean']:>5.2f} {train:>7}"
              f"  {' '.join(r['overrides'])}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
