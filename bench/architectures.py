"""Architectures as a condition (issue 17): one arch-family generator, trained on simple_spread
populations of several architectures, measured on those and on architectures it never saw.

1. Data (skipped when the store exists): `pgen populate` of `--members` members spread over
   `--train-archs`, for each `--inits` (population.arch_init: `grown` — one base network grown into
   every architecture — and `independent`), one store each under bench/results/runs/.
2. Per init and seed, `pgen train-generator generator=family` on that store (or, with
   `--reuse`, the version an earlier run registered), then `pgen evaluate` over the trained and the
   `--heldout` architectures: per architecture, R², Spearman, score at the top target, novelty, and in
   the same run on the same held-out fixed-seed episodes random init, Net2Net transfer of the best
   checkpoint and retrieval + transfer (`pgen/evaluation/evaluate.py`); and per training architecture the
   fit's reconstruction error on its validation runs beside predicting the centre and copying the
   nearest training row (`heldout_recon`: does the model generalise to a run it never saw?); and
   per held-out architecture of a depth never trained, the same metrics when the model decodes it
   directly (`direct_depth`) instead of decoding it cut to a trained depth and deepening it; and per
   architecture whose condition is clipped to its range, the same metrics conditioned on the targets
   as asked (`unclamped`); and per architecture of a calibrated version, the same metrics without
   the calibration (`uncalibrated`: conditioned on the target as asked); and per held-out architecture of widths never trained, the same metrics
   with the other handling of new widths than the version's (`other_widths`: decoded as the trained
   architecture it is widened from, or decoded directly).
   With `--single H`, also today's single-architecture generator on the training architecture H's
   slice of the same store, same generator overrides and evaluation settings (the baseline the
   family must not be worse than on trained architectures).
3. With `--seed-arch`, the seeding race for one held-out architecture: populations of it started
   from random init, from the best trained checkpoint transferred into it, and from the generator's
   policies for the top target, same PPO hyper-parameters and budget; env steps to each threshold.
   With `--seed-candidates K` (> 1), one more arm, `generated-best`: the best of K generated policies
   on selection episodes (`population.seed.candidates`' rule), its curve shifted by the env steps the
   choice played.

Writes bench/results/architectures.json (or `--out`; rows of other settings are kept), one PNG per
generator (`architectures-<init>-s<seed>.png`), `architectures-summary.png`, `architectures-seeding.png`
(named after `--out`'s stem), and prints the tables.

    python bench/architectures.py --inits grown independent --seeds 0 generator.epochs=150
    python bench/architectures.py --inits grown --reuse --seed-arch 96,96 --seed-steps 300000
    python bench/architectures.py --inits grown --reuse --single 64,64 generator.epochs=150   # the single-arch baseline
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pgen.generator.family.kind import FamilyGenerator

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RACE_ARMS = ["random", "transfer", "generated"]  # the seeding race's arms before --seed-candidates
sys.path.insert(0, str(ROOT / "bench"))
from generator import check_reused  # noqa: E402  (bench/generator.py: --reuse of a version fitted otherwise stops)
from seeding import steps_to  # noqa: E402  (bench/seeding.py: env steps to a threshold)

from pgen.config import DEFAULT_TEMPERATURE  # noqa: E402

KEYS = ("alignment_r2", "spearman", "normalised_score_top", "transfer_score", "transfer_alignment_r2",
        "retrieval_alignment_r2", "retrieval_spearman", "retrieval_normalised_score_top",
        "random_init_score", "novelty_median", "copies", "min_relative_l2", "agreement_mean", "transfer_source",
        "transfer_checkpoint")


def hidden_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def hidden_text(hidden: Sequence[int]) -> str:
    """`[64,64]`: hidden sizes as a Hydra override value."""
    return "[" + ",".join(map(str, hidden)) + "]"


def arch_override(archs: list[list[int]]) -> str:
    return "population.archs=[" + ",".join("{hidden:" + hidden_text(h) + "}" for h in archs) + "]"


def evaluate_config(store_path: Path, model: str, out_dir: Path, args: argparse.Namespace, *extra: str):
    """`pgen evaluate`'s config for `model` with the bench's episodes, samples and targets."""
    from pgen.config import compose_config

    return compose_config("evaluate", [f"store.uri={store_path}", f"model={model}", f"torch_threads={args.threads}",
                                       f"evaluate.episodes={args.episodes}", f"evaluate.samples={args.samples}",
                                       f"evaluate.targets={args.targets}", f"evaluate.temperature={args.temperature}",
                                       f"evaluate.out_dir={out_dir}", *extra])


def data_store(init: str, args: argparse.Namespace) -> Path:
    return RESULTS / "runs" / f"arch-{init}{args.data_tag}"


def populate(store: Path, init: str, args: argparse.Namespace) -> None:
    """The training populations of one init, unless the store already holds `--members` runs (then it
    is reused). A store with fewer runs is extended: its members resume, find their budget spent and
    stop, and the new members train from the same shared initial weights."""
    runs = store / "runs"
    if (store / "checkpoints").exists() and runs.exists() and len(list(runs.iterdir())) >= args.members:
        print(f"reusing the data in {store}")
        return
    cmd = [sys.executable, "-m", "pgen.cli", "populate", "env=simple_spread", f"population.size={args.members}",
           arch_override(args.train_archs), f"population.arch_init={init}", f"population.max_env_steps={args.steps}",
           f"population.cpus_per_worker={2.0 / args.members}", "population.checkpoint_every=5", f"run_id=arch-{init}",
           f"seed={args.data_seed}", f"store.uri={store}", "log_every_s=60"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def heldout_recon(store_path: Path, gen: FamilyGenerator) -> dict[str, dict]:
    """Per training architecture, the fit's reconstruction error (standardised units, layers weighted
    equally: the `val_recon` of its history) on its validation runs and its training rows, against two
    references that learn nothing: predicting the centre, and copying the nearest training row."""
    import torch

    from pgen.dataset.slices import load_slice
    from pgen.store import CheckpointStore

    ds = gen.info["dataset"]
    data = load_slice(CheckpointStore(str(store_path)), gen.info["env_key"], gen.info["group"], gen.trained_specs)
    out = {}
    for key, part in sorted(data.parts.items()):
        val, train = np.isin(part.run_ids, ds["val_runs"]), np.isin(part.run_ids, ds["train_runs"])
        if not val.any():
            continue
        spec = data.specs[key]
        x_val, x_train = (gen.standardise(part.params[rows], spec) for rows in (val, train))
        model_val, model_train = (gen.reconstruction_loss(gen.reconstruct(part.params[rows], part.returns[rows], spec),
                                                          x, spec) for rows, x in ((val, x_val), (train, x_train)))
        nearest = x_train[torch.cdist(torch.from_numpy(x_val), torch.from_numpy(x_train)).argmin(1).numpy()]
        out[key] = {"val_runs": sorted(set(part.run_ids[val].tolist())), "model_val": model_val,
                    "model_train": model_train, "centre_val": gen.reconstruction_loss(np.zeros_like(x_val), x_val, spec),
                    "nearest_train_row_val": gen.reconstruction_loss(nearest, x_val, spec)}
    return out


def measure(store_path: Path, init: str, seed: int, args: argparse.Namespace) -> dict:
    from pgen.commands.train_generator import train_generator
    from pgen.config import compose_config, to_dict
    from pgen.evaluation.baselines import measure_baselines
    from pgen.evaluation.evaluate import evaluate_generator
    from pgen.evaluation.report import format_result
    from pgen.generator.versions import load_generator
    from pgen.store import CheckpointStore

    store = CheckpointStore(str(store_path))
    name = f"bench-arch-{init}-s{seed}"
    out_dir = RESULTS / "runs" / "architectures"
    t0 = time.perf_counter()
    cfg = compose_config("train-generator", [
        f"store.uri={store_path}", "generator=family", f"generator.name={name}", f"seed={seed}",
        "generator.archs=[" + ",".join(map(hidden_text, args.train_archs)) + "]",
        f"torch_threads={args.threads}", f"out_dir={out_dir}", *args.overrides])
    if args.reuse:
        gen, train_s = load_generator(store, name), None
        check_reused(gen.model_id, gen.info["generator"], to_dict(cfg.generator))
    else:
        gen = train_generator(cfg, store)
        train_s = time.perf_counter() - t0
    set_unseen_widths(gen, args)
    ecfg = evaluate_config(store_path, gen.model_id, out_dir, args,
                           "evaluate.archs=[" + ",".join(map(hidden_text, args.heldout)) + "]")
    t0 = time.perf_counter()
    base = measure_baselines(store, gen.info, ecfg.evaluate, label=f"evaluate {gen.model_id}")
    result = evaluate_generator(ecfg, store, gen, base)
    print(format_result(result), flush=True)
    direct, asked, widths = direct_depth(gen, base), unclamped(gen, base), other_widths(gen, base)
    as_asked = uncalibrated(gen, base)
    recon = heldout_recon(store_path, gen)
    png = Path(args.out).with_name(f"{Path(args.out).stem}-{init}-s{seed}.png")
    shutil.copyfile(result["plot"], png)
    return {"init": init, "seed": seed, "model": gen.model_id, "train_s": train_s,
            "evaluate_s": time.perf_counter() - t0, "overrides": args.overrides, "temperature": args.temperature,
            "generator": gen.info["generator"],
            "plot": os.path.relpath(png, RESULTS.parent), "r_random": result["r_random"], "r_top10": result["r_top10"],
            "best_trained": result["best_trained"], "dataset": result["dataset"],
            "targets": [t["target"] for t in result["targets"]], "top_target": result["top_target"],
            "recon": recon, "direct_depth": direct, "unclamped": asked, "uncalibrated": as_asked,
            "calibration": gen.info.get("calibration"),
            "unseen_widths": "grown" if gen.grow_unseen_width else "decoded", "other_widths": widths,
            "archs": [{"arch": a["arch"], "hidden": a["hidden"], "trained": a["trained"],
                       **{k: a[k] for k in KEYS}, "per_target": a["targets"]} for a in result["archs"]]}


def set_unseen_widths(gen: FamilyGenerator, args: argparse.Namespace) -> None:
    """`--unseen-widths grown|decoded` over the version's own handling of widths never trained."""
    if args.unseen_widths != "version":
        gen.grow_unseen_width = args.unseen_widths == "grown"


def variant(gen: FamilyGenerator, base, switch: str, specs: list, value: bool = False) -> dict:
    """The metrics of `specs` with the generator's boolean `switch` set to `value`, on the same
    baselines (every other setting the version's; the switch is restored after)."""
    from pgen.evaluation.evaluate import evaluate_arch

    before = getattr(gen, switch)
    setattr(gen, switch, value)
    try:
        return {s.arch_key: {k: v for k, v in evaluate_arch(gen, base, s, lambda _done: None).items() if k in KEYS}
                for s in specs}
    finally:
        setattr(gen, switch, before)


def direct_depth(gen: FamilyGenerator, base) -> dict:
    """Per held-out architecture of a depth never trained, the metrics of decoding it directly
    (`grow_unseen_depth=False`), beside the default (decoded cut and deepened)."""
    from pgen.evaluation.evaluate import evaluation_specs

    deeper = [s for s in evaluation_specs(gen, base.settings) if len(gen.decoded_as(s).hidden) != len(s.hidden)]
    return variant(gen, base, "grow_unseen_depth", deeper)


def unclamped(gen: FamilyGenerator, base) -> dict:
    """Per architecture whose condition the default clips (a target of the grid outside its
    `return_range`), the metrics of conditioning on every target as asked
    (`clamp_to_arch_range=False`), beside the default."""
    from pgen.evaluation.evaluate import evaluation_specs

    def clipped(s) -> bool:
        low, high = gen.return_range(s)
        return gen.clips_condition and not all(low <= t <= high for t in base.targets)

    return variant(gen, base, "clamp_to_arch_range", [s for s in evaluation_specs(gen, base.settings) if clipped(s)])


def uncalibrated(gen: FamilyGenerator, base) -> dict:
    """Per architecture of a calibrated version, the metrics of conditioning through no calibration
    curve (`calibrated=False`: the target as asked, still clipped to its range), beside the default."""
    from pgen.evaluation.evaluate import evaluation_specs

    return variant(gen, base, "calibrated", [s for s in evaluation_specs(gen, base.settings) if gen.calibration_for(s)])


def other_widths(gen: FamilyGenerator, base) -> dict:
    """Per held-out architecture of widths never trained, the metrics with the other handling of
    new widths than the version's (`grow_unseen_width`: decoded as its transfer source and widened,
    or decoded directly), beside the version's own: {"setting": "grown" | "decoded", "archs": {...}}."""
    from pgen.evaluation.evaluate import evaluation_specs

    other = not gen.grow_unseen_width
    specs = evaluation_specs(gen, base.settings)
    before = [gen.decoded_as(s) for s in specs]
    gen.grow_unseen_width = other
    try:
        changed = [s for s, b in zip(specs, before) if gen.decoded_as(s) != b]
    finally:
        gen.grow_unseen_width = not other
    return {"setting": "grown" if other else "decoded",
            "archs": variant(gen, base, "grow_unseen_width", changed, value=other)}


def measure_single(store_path: Path, init: str, seed: int, hidden: list[int], args: argparse.Namespace) -> dict:
    """Today's single-architecture generator on one training architecture's slice of the same data, same
    generator overrides and evaluation settings: the "no worse than single-arch" baseline."""
    from pgen.commands.train_generator import train_generator
    from pgen.config import compose_config
    from pgen.evaluation.evaluate import evaluate_generator
    from pgen.store import CheckpointStore

    store = CheckpointStore(str(store_path))
    name, out_dir = f"bench-single-{init}-{'x'.join(map(str, hidden))}-s{seed}", RESULTS / "runs" / "architectures"
    t0 = time.perf_counter()
    cfg = compose_config("train-generator", [f"store.uri={store_path}", f"policy.hidden={hidden_text(hidden)}",
                                             f"generator.name={name}", f"seed={seed}", f"torch_threads={args.threads}",
                                             f"out_dir={out_dir}", *args.overrides])
    gen = train_generator(cfg, store)
    train_s = time.perf_counter() - t0
    result = evaluate_generator(evaluate_config(store_path, gen.model_id, out_dir, args), store, gen)
    return {"init": init, "seed": seed, "model": gen.model_id, "arch": gen.info["arch"], "hidden": hidden,
            "overrides": args.overrides, "train_s": train_s, "r_random": result["r_random"], "r_top10": result["r_top10"],
            **{k: result[k] for k in ("alignment_r2", "spearman", "normalised_score_top", "novelty_median", "copies")}}


def seeding_race(store_path: Path, row: dict, args: argparse.Namespace) -> dict:
    """Populations of `--seed-arch` from random init, transfer of the best checkpoint, and the generator."""
    import ray

    from pgen.commands.populate import populate as run_population
    from pgen.config import compose_config
    from pgen.dataset.seed_runs import write_seed_run
    from pgen.generator.sample import requested_spec
    from pgen.generator.versions import load_generator
    from pgen.policies.growth import grow
    from pgen.policies.rollout import best_candidate
    from pgen.policies.spec import PolicySpec
    from pgen.store import CheckpointStore

    gen = load_generator(CheckpointStore(str(store_path)), row["model"], device="cpu")
    set_unseen_widths(gen, args)
    spec = requested_spec(gen, hidden=args.seed_arch)
    arch_row = next(a for a in row["archs"] if a["hidden"] == list(spec.hidden))
    best = arch_row["transfer_checkpoint"]  # the checkpoint `pgen evaluate` transferred: the best that grows into it
    src = PolicySpec.from_arch_key(best["arch"])
    data = CheckpointStore(str(store_path)).read_records(env_key=gen.info["env_key"], group=gen.info["group"],
                                                         arch=src.arch_key, run_id=best["run_id"],
                                                         columns=["step", "params"]).table.to_pylist()
    best_params = next(np.asarray(r["params"], np.float32) for r in data if r["step"] == best["step"])
    work = (RESULTS / "runs" / "architectures-seeding").resolve()
    shutil.rmtree(work, ignore_errors=True)
    store = CheckpointStore(str(work))
    common = [f"store.uri={work}", "env=simple_spread", f"policy.hidden={hidden_text(spec.hidden)}", "population.size=1",
              f"population.max_env_steps={args.seed_steps}", "population.checkpoint_every=4",
              "population.cpus_per_worker=0.66", "log_every_s=60", *args.race_overrides]
    ray.init(address="local", include_dashboard=False, log_to_driver=False)  # its own Ray, never another session's
    runs, t0 = [], time.time()
    top = row["top_target"]
    for seed in args.seeds_race:
        cfg = compose_config("populate", common + [f"seed={seed}"])
        transfer = grow(best_params, src, spec)[None]
        write_seed_run(store, {**gen.info, "name": "transfer", "version": "v0000"}, transfer, best["return"],
                       f"transfer-s{seed}", cfg.population.eval_episodes, seed, spec=spec)
        write_seed_run(store, gen.info, gen.generate(top, 1, seed=seed, spec=spec), top, f"generated-s{seed}",
                       cfg.population.eval_episodes, seed, spec=spec)
        offset = {arm: 0 for arm in arms_of(args)}
        if args.seed_candidates > 1:  # the rule of population.seed.candidates, on the same episodes
            candidates = gen.generate(top, args.seed_candidates, seed=seed, spec=spec)
            chosen, means, offset["generated-best"] = best_candidate(cfg.env, {}, gen.info["group"], spec, candidates,
                                                                     cfg.population.eval_episodes)
            print(f"seed {seed}: {args.seed_candidates} candidates return {min(means):.2f} … {max(means):.2f} on the"
                  f" selection episodes ({offset['generated-best']:,} env steps); starting from candidate {chosen + 1}")
            write_seed_run(store, gen.info, candidates[chosen][None], top, f"generated-best-s{seed}",
                           cfg.population.eval_episodes, seed, spec=spec)
        arms = {arm: compose_config("populate", common + [f"seed={seed}", f"run_id={arm}-pop-s{seed}"]
                                    + ([f"population.seed_from={arm}-s{seed}"] if arm != "random" else []))
                for arm in arms_of(args)}
        with ThreadPoolExecutor(len(arms)) as pool:  # the arms on one Ray at the same time
            list(pool.map(run_population, arms.values()))
        for arm, arm_cfg in arms.items():
            rows = store.read_records(run_id=f"{arm_cfg.run_id}-m000", columns=["step", "return_mean"]).table
            curve = sorted((step + offset[arm], ret) for step, ret in zip(rows["step"].to_pylist(),
                                                                           rows["return_mean"].to_pylist()))
            runs.append({"seed": seed, "arm": arm, "curve": curve, "selection_env_steps": offset[arm],
                         "steps_to": {str(t): steps_to(curve, t) for t in args.thresholds}})
    ray.shutdown()
    table = []
    for t in args.thresholds:
        entry = {"threshold": t}
        for arm in arms_of(args):
            reached = [r["steps_to"][str(t)] for r in runs if r["arm"] == arm]
            entry[arm] = {"steps": reached, "mean": float(np.mean([args.seed_steps if s is None else s for s in reached])),
                          "all_reached": all(s is not None for s in reached)}
        table.append(entry)
    return {"model": row["model"], "arch": spec.arch_key, "unseen_widths": "grown" if gen.grow_unseen_width else "decoded",
            "decoded_as": gen.decoded_as(spec).arch_key, "target": top, "transfer_from": best,
            "generated_at_top": measured_as(row, gen, arch_row)["normalised_score_top"],
            "steps": args.seed_steps, "seeds": args.seeds_race, "seed_candidates": args.seed_candidates,
            "race_overrides": args.race_overrides,
            "arms": arms_of(args), "wall_s": time.time() - t0, "thresholds": table,
            "runs": runs}


def arms_of(args: argparse.Namespace) -> list[str]:
    """The seeding race's arms: `generated-best` only with `--seed-candidates` > 1."""
    return RACE_ARMS + (["generated-best"] if args.seed_candidates > 1 else [])


def measured_as(row: dict, gen: FamilyGenerator, arch_row: dict) -> dict:
    """`arch_row`'s metrics as `gen` decodes it now: the row's own, or those of its other handling
    of new widths (`other_widths`) when `--unseen-widths` chose that one."""
    setting = "grown" if gen.grow_unseen_width else "decoded"
    other = row.get("other_widths") or {}
    if setting != row.get("unseen_widths", "decoded") and arch_row["arch"] in other.get("archs", {}):
        return other["archs"][arch_row["arch"]]
    return arch_row


def plot_summary(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), dpi=110)
    for ax, (key, title) in zip(axes, [("normalised_score_top", "normalised score at the top target"),
                                       ("alignment_r2", "alignment R² over the target grid")]):
        labels = [a["arch"].split("-")[1] + ("" if a["trained"] else "*") for a in rows[0]["archs"]]
        width = 0.8 / (2 * len(rows))
        for j, row in enumerate(rows):
            x = np.arange(len(row["archs"])) + (2 * j) * width
            ax.bar(x, [a[key] for a in row["archs"]], width, label=f"generated ({row['init']} init, seed {row['seed']})")
            base = "transfer_score" if key == "normalised_score_top" else "retrieval_alignment_r2"
            ax.bar(x + width, [a[base] for a in row["archs"]], width, alpha=0.5,
                   label=f"{'transfer of the best' if base == 'transfer_score' else 'retrieval + transfer'}"
                         f" ({row['init']}, s{row['seed']})")
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width, labels, rotation=30, fontsize=8)
        ax.axhline(1.0 if key == "normalised_score_top" else 0.8, color="grey", ls=":")
        ax.set_ylim(-0.5 if key == "alignment_r2" else 0, 1.25)
        ax.set_title(title + "  (* held out)", fontsize=10)
        ax.legend(fontsize=6)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_seeding(race: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"random": "tab:blue", "transfer": "tab:purple", "generated": "tab:orange", "generated-best": "tab:red"}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in race["runs"]:
        steps, rets = zip(*r["curve"])
        ax.plot(steps, rets, color=colours[r["arm"]], alpha=0.8,
                label=r["arm"] if r["seed"] == race["seeds"][0] else None)
    for t in race["thresholds"]:
        ax.axhline(t["threshold"], color="grey", ls=":", lw=1)
    ax.set(xlabel="env steps", ylabel="greedy group return (sum over agents)",
           title=f"{race['arch']}: random init vs transfer vs generated (target {race['target']:.1f})"
           + (f"\ngenerated-best: the best of {race['seed_candidates']} on selection episodes"
              if race.get("seed_candidates", 1) > 1 else "")
           + (f"\n{' '.join(race['race_overrides'])}" if race.get("race_overrides") else ""))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inits", nargs="+", default=["grown", "independent"])
    ap.add_argument("--train-archs", nargs="+", type=hidden_list, default=[[32, 32], [64, 64], [128, 128], [64]])
    ap.add_argument("--heldout", nargs="+", type=hidden_list, default=[[96, 96], [256, 256], [64, 64, 64]])
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--data-tag", default="", help="suffix of the data store's folder: runs/arch-<init><tag>")
    ap.add_argument("--steps", type=int, default=400_000, help="env steps per population member")
    ap.add_argument("--data-seed", type=int, default=300)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="generator seeds")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="τ of the generated policies evaluated")
    ap.add_argument("--single", action="append", type=hidden_list, default=[],
                    help="also fit today's single-architecture generator on this training architecture (repeatable)")
    ap.add_argument("--reuse", action="store_true", help="evaluate the generators an earlier run registered (an error"
                    " if one was fitted with other generator.* settings than the overrides ask for)")
    ap.add_argument("--unseen-widths", choices=["version", "grown", "decoded"], default="version",
                    help="how held-out widths are decoded: as the version says, or grown from their transfer"
                         " source's decoded policy, or decoded directly (FamilyGenerator.grow_unseen_width)")
    ap.add_argument("--seed-arch", type=hidden_list, help="run the seeding race for this held-out architecture")
    ap.add_argument("--seed-steps", type=int, default=300_000)
    ap.add_argument("--seeds-race", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--race-override", dest="race_overrides", action="append", default=[],
                    help="a `pgen populate` override for every arm of the race, e.g. population.seed_critic_warmup=8")
    ap.add_argument("--seed-candidates", type=int, default=1,
                    help="also race the best of this many generated policies (population.seed.candidates' rule)")
    ap.add_argument("--thresholds", nargs="+", type=float, default=[-60.0, -55.0, -50.0, -47.0])
    ap.add_argument("--out", default=str(RESULTS / "architectures.json"))
    ap.add_argument("overrides", nargs="*", help="generator.* Hydra overrides, e.g. generator.epochs=150")
    args = ap.parse_args()
    from pgen.util.progress import setup_logging

    setup_logging()
    path = Path(args.out)
    previous = json.loads(path.read_text()) if path.exists() else {"rows": []}
    rows, singles = [], []
    for init in args.inits:
        store = data_store(init, args)
        populate(store, init, args)
        if args.seed_arch and args.reuse:
            continue  # the race reuses the rows of the earlier run
        rows += [measure(store, init, seed, args) for seed in args.seeds]
        singles += [measure_single(store, init, seed, h, args) for seed in args.seeds for h in args.single]
    key = lambda r: (r["init"], r["seed"], tuple(r["overrides"]))  # noqa: E731
    done = {key(r) for r in rows}
    rows = [r for r in previous["rows"] if key(r) not in done] + rows
    single_key = lambda r: (*key(r), tuple(r["hidden"]))  # noqa: E731
    fresh = {single_key(r) for r in singles}
    singles = [r for r in previous.get("single", []) if single_key(r) not in fresh] + singles
    summary = {"host": platform.node(), "episodes": args.episodes, "samples": args.samples, "targets": args.targets,
               "train_archs": args.train_archs, "heldout": args.heldout, "members": args.members, "steps": args.steps,
               "command": "python bench/architectures.py " + " ".join(sys.argv[1:]), "rows": rows, "single": singles,
               "seeding": previous.get("seeding")}
    path.write_text(json.dumps(summary, indent=1))  # the measurements survive a race that fails or is stopped
    plot_summary(rows, path.with_name(f"{path.stem}-summary.png"))
    if args.seed_arch:
        # the generator of this command's settings (not an earlier row of other overrides)
        row = next(r for r in rows if key(r) == (args.inits[0], args.seeds[0], tuple(args.overrides)))
        summary["seeding"] = seeding_race(data_store(args.inits[0], args), row, args)
        plot_seeding(summary["seeding"], path.with_name(f"{path.stem}-seeding.png"))
        path.write_text(json.dumps(summary, indent=1))
    print(f"\n{'init':<12} {'seed':>4} {'architecture':<24} {'':>8} {'R²':>6} {'ρ':>6} {'score':>6} | {'transfer':>8}"
          f" {'R²':>6} | {'retr.+tr. R²':>12} | {'rand.':>6} | {'novelty':>7} {'copies':>6}")
    for r in rows:
        for a in r["archs"]:
            print(f"{r['init']:<12} {r['seed']:>4} {a['arch']:<24} {'trained' if a['trained'] else 'held out':>8}"
                  f" {a['alignment_r2']:>6.2f} {a['spearman']:>6.2f} {a['normalised_score_top']:>6.2f} |"
                  f" {a['transfer_score']:>8.2f} {a['transfer_alignment_r2']:>6.2f} |"
                  f" {a['retrieval_alignment_r2']:>12.2f} | {a['random_init_score']:>6.2f} |"
                  f" {a['novelty_median']:>7.2f} {a['copies']:>6}")
    for r in rows:
        for arch, c in r.get("recon", {}).items():
            print(f"{r['init']:<12} {r['seed']:>4} {arch:<24} recon of its validation runs {', '.join(c['val_runs'])}:"
                  f" model {c['model_val']:.2f} (its training rows {c['model_train']:.2f}) | centre {c['centre_val']:.2f}"
                  f" | nearest training row {c['nearest_train_row_val']:.2f}")
    for r in rows:
        for arch, a in (r.get("direct_depth") or {}).items():
            print(f"{r['init']:<12} {r['seed']:>4} {arch:<24} decoded directly (not cut and deepened):"
                  f" R² {a['alignment_r2']:.2f} ρ {a['spearman']:.2f} score {a['normalised_score_top']:.2f}")
    for r in rows:
        for arch, a in (r.get("unclamped") or {}).items():
            print(f"{r['init']:<12} {r['seed']:>4} {arch:<24} conditioned on the targets as asked (not clipped to its"
                  f" range): R² {a['alignment_r2']:.2f} ρ {a['spearman']:.2f} score {a['normalised_score_top']:.2f}")
    for r in rows:
        for arch, a in (r.get("uncalibrated") or {}).items():
            print(f"{r['init']:<12} {r['seed']:>4} {arch:<24} not calibrated (conditioned on the target as asked):"
                  f" R² {a['alignment_r2']:.2f} ρ {a['spearman']:.2f} score {a['normalised_score_top']:.2f}")
    for r in rows:
        other = r.get("other_widths") or {}
        for arch, a in other.get("archs", {}).items():
            print(f"{r['init']:<12} {r['seed']:>4} {arch:<24} new widths {other['setting']} (this run's:"
                  f" {r['unseen_widths']}): R² {a['alignment_r2']:.2f} ρ {a['spearman']:.2f}"
                  f" score {a['normalised_score_top']:.2f}")
    for r in singles:
        print(f"{r['init']:<12} {r['seed']:>4} {r['arch']:<24} {'single':>8} {r['alignment_r2']:>6.2f}"
              f" {r['spearman']:>6.2f} {r['normalised_score_top']:>6.2f} |   (single-architecture generator,"
              f" {' '.join(r['overrides'])}; its top 10 % is its own slice's)")
    race = summary.get("seeding")
    if race:
        print(f"\nseeding {race['arch']} ({race['steps']:,} env steps per run, seeds {race['seeds']}):")
        for t in race["thresholds"]:
            fmt = lambda s: "never" if s is None else f"{s:,}"  # noqa: E731
            print(f"  {t['threshold']:g}: " + " | ".join(
                f"{arm} {', '.join(fmt(s) for s in t[arm]['steps'])}" for arm in race.get("arms", RACE_ARMS)))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
