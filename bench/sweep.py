"""Tune: the best configuration a `pgen tune` sweep finds against the default configuration, on the
same dataset, with the same budget and the same evaluation.

1. Copies one slice's checkpoint parts from the benchmark store (read-only; by default the
   simple_spread slice of `bench/results/runs/gen-store`, made as bench/README.md says; `--runs`
   and `--max-step` select part of it) into a scratch store, so the versions this script
   registers never touch the benchmark store.
2. Runs the sweep (`pgen tune`'s code path, the profile and overrides given; the best trial is
   registered as `tune-best`) and trains the default configuration (`generator.*` defaults, the
   sweep's epochs and seed, hence the same validation runs) as `tune-default`.
3. Evaluates both as `pgen evaluate` does with `--episodes`, `--targets`, `--samples`, against one
   set of baselines: alignment R², Spearman, normalised score at the top target, their sum (the
   sweep's objective), novelty, copies; beside the final validation loss of each.

Writes `bench/results/<label>.json` (`--label`, default `tune`), copies the sweep's trial summary
to `bench/results/<label>-trials.png` and prints the table. (Not `bench/tune.py`: run as a script, that
name would shadow the `tune` package.)

    python bench/sweep.py --runs gen-spread-m000 gen-spread-m001 gen-spread-m002 --max-step 300000
    python bench/sweep.py tune.search=optuna tune.num_samples=16
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq

from pgen.commands.train_generator import train_generator
from pgen.config import EvaluateConfig, compose_config, config_from_dict, to_dict
from pgen.envs import env_key
from pgen.evaluation.baselines import measure_baselines
from pgen.evaluation.evaluate import evaluate_generator
from pgen.generator.versions import load_generator
from pgen.store import CheckpointStore
from pgen.util.progress import setup_logging
from tune.sweep import sweep
from tune.trainable import EVALUATION_KEYS, objective

RESULTS = Path(__file__).resolve().parent / "results"


def copy_slice(source: Path, scratch: Path, key: str, runs: list[str] | None, max_step: int | None) -> int:
    """Copy the checkpoint parts of env `key` (only `runs`, only steps ≤ `max_step`) into `scratch`
    (once); returns how many there are."""
    src = source / "checkpoints" / f"env={key}"
    if not src.is_dir():
        raise SystemExit(f"no checkpoints of env {key} in {source}; make them as bench/README.md says")
    n = 0
    for part in sorted(src.rglob("part-*.parquet")):
        if runs and part.parent.name.removeprefix("run=") not in runs:
            continue
        if max_step is not None and max(pq.read_table(part, columns=["step"])["step"].to_pylist()) > max_step:
            continue
        out = scratch / part.relative_to(source)
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(part, out)
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=str(RESULTS / "runs" / "gen-store"))
    ap.add_argument("--scratch", default=None, help="default runs/tune-store-<selection>")
    ap.add_argument("--runs", nargs="*", default=None, help="only these runs of the slice (default: all)")
    ap.add_argument("--max-step", type=int, default=None, help="only checkpoints up to this env step")
    ap.add_argument("--env", default="simple_spread")
    ap.add_argument("--group", default="agent")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--label", default="tune", help="results/<label>.json and results/<label>-trials.png")
    ap.add_argument("overrides", nargs="*", help="`pgen tune` overrides, e.g. profile=quick tune.search=optuna")
    args = ap.parse_args()
    setup_logging()
    selection = f"{len(args.runs) if args.runs else 'all'}runs-{args.max_step or 'all'}steps"
    scratch = Path(args.scratch or RESULTS / "runs" / f"tune-store-{selection}").resolve()
    name = f"bench-{args.env}-{time.strftime('%Y%m%dT%H%M%S')}"
    cfg = compose_config("tune", [f"env={args.env}", f"generator.group={args.group}", f"store.uri={scratch}",
                                  "generator.name=tune-best", f"tune.name={name}",
                                  f"tune.storage={RESULTS / 'runs' / 'tune'}", f"out_dir={RESULTS / 'runs' / 'tune'}",
                                  *args.overrides])
    parts = copy_slice(Path(args.source).resolve(), scratch, env_key(cfg.env), args.runs, args.max_step)
    store = CheckpointStore(str(scratch))

    t0 = time.perf_counter()
    summary = sweep(cfg)
    sweep_s = time.perf_counter() - t0
    if summary["interrupted"]:
        raise SystemExit(f"the sweep was interrupted; resume it with resume=true tune.name={name}")
    best = load_generator(store, summary["best"]["model"])

    default_cfg = compose_config("train-generator", [f"env={args.env}", f"store.uri={scratch}",
                                                     f"seed={cfg.seed}", f"torch_threads={args.threads}",
                                                     f"out_dir={RESULTS / 'runs' / 'tune' / name}"])
    default_cfg.generator = config_from_dict("train-generator", {"generator": {
        "group": args.group, "name": "tune-default", "epochs": cfg.generator.epochs}}).generator
    t0 = time.perf_counter()
    default = train_generator(default_cfg, store)
    default_s = time.perf_counter() - t0

    settings = config_from_dict("evaluate", {"evaluate": {
        "episodes": args.episodes, "targets": args.targets, "samples": args.samples,
        "out_dir": str(RESULTS / "runs" / "tune" / name / "evaluate")}}).evaluate
    baselines = measure_baselines(store, default.info, settings, label="bench tune")
    rows = []
    for label, gen in (("default", default), ("best", best)):
        result = evaluate_generator(EvaluateConfig(evaluate=settings, torch_threads=args.threads), store, gen,
                                    baselines)
        final = json.loads(store.get(f"generators/{gen.name}/{gen.version}/metrics.json"))["final"]
        rows.append({"config": label, "model": gen.model_id, "generator": gen.info["generator"],
                     "val_loss": final["val_loss"], "val_recon": final["val_recon"],
                     **{k: result[k] for k in EVALUATION_KEYS}, "objective": objective(result),
                     "plot": result["plot"]})
    stopped = summary["stopped_early"]
    report = {
        "machine": {"cpus": 2, "python": platform.python_version()}, "args": vars(args), "sweep": name,
        "profile": cfg.profile, "search": summary["search"], "epochs": cfg.generator.epochs,
        "dataset": {**summary["slice"], "parts": parts, "source": args.source},
        "trials": len(summary["trials"]), "stopped_early": stopped, "evaluated": summary["evaluated"],
        "failed": summary["failed"], "sweep_s": sweep_s, "default_train_s": default_s,
        "sweep_best": summary["best"], "default_trial": next((t for t in summary["trials"] if t["config"] == {
            k: to_dict(cfg.generator)[k] for k in t["config"]}), None),
        "rows": rows, "baselines": {"r_random": baselines.r_random, "r_top10": baselines.r_top},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.label}.json").write_text(json.dumps(report, indent=1, default=float))
    shutil.copyfile(summary["plot"], RESULTS / f"{args.label}-trials.png")
    print(f"\nsweep {name} ({cfg.profile}, {summary['search']} search): {len(summary['trials'])} trials of ≤"
          f" {cfg.generator.epochs} epochs in {sweep_s / 60:.1f} min, {stopped} stopped early by ASHA,"
          f" {summary['evaluated']} evaluated, {summary['failed']} failed; {summary['slice']['rows']} checkpoints,"
          f" validation runs {', '.join(summary['slice']['val_runs'])}")
    print(f"evaluation: {args.targets} targets + the maximum, {args.samples} samples each, {args.episodes} held-out"
          f" greedy episodes; random {baselines.r_random:.1f}, top-10 % {baselines.r_top:.1f}")
    print(f"{'config':<8} {'val_loss':>9} {'val_recon':>9} {'R²':>7} {'Spearman':>8} {'score':>6} {'objective':>9}  model")
    for r in rows:
        print(f"{r['config']:<8} {r['val_loss']:>9.4f} {r['val_recon']:>9.4f} {r['alignment_r2']:>7.3f}"
              f" {r['spearman']:>8.3f} {r['normalised_score_top']:>6.2f} {r['objective']:>9.3f}  {r['model']}")
    print(f"best configuration: {json.dumps(summary['best']['config'])}")


if __name__ == "__main__":
    main()
