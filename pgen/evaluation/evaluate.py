"""`pgen evaluate`'s measurement: a generator's policies over a grid of target returns, against the baselines.

Targets: `evaluate.targets` points from the 5th to the 95th percentile of the training checkpoints'
returns, plus their maximum (the top target), plus `evaluate.extra_targets` (flagged when outside
the dataset's range; alignment is computed over the in-range targets only). Every architecture the
generator was trained on, and each of `evaluate.archs` (hidden sizes, held out: an arch-family
generator's), is measured on its own: for each target `evaluate.samples` generated policies (each
chosen among `evaluate.candidates`, `selection.py`) are rolled out on the same fixed-seed held-out
episodes as the baselines (`baselines.py`), which per architecture are:

- retrieval: per target, the training checkpoint whose return is closest, of the architecture itself
  or of a trained architecture that grows into it, carried over function-preservingly
  (`pgen.policies.growth.grow`, Net2Net);
- transfer: the best training checkpoint that grows into it, carried over the same way (one policy,
  whatever the target: its R² is that of a constant);
- random init: `evaluate.random_inits` freshly initialised policies of the architecture.

Novelty is measured against the checkpoints an architecture has, in the generator's standardised
space: its own when it was trained, else those of its transfer source grown into it.

The result holds every architecture's block (`archs`) and, at its top level, the block of the
generator's default architecture (`default_arch`) beside what is common: the headline figures.
In envs with several groups the other groups play the generator's reference, the same for every
policy compared. A checkpoint's return is the one the generator conditioned on.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pgen.config import EvaluateConfig, EvaluateSettings
from pgen.evaluation.baselines import Baselines, measure_baselines, slice_id
from pgen.evaluation.metrics import (COPY_THRESHOLD, action_agreement, alignment_r2, cross_run_nn_median,
                                     learning_signal, min_relative_l2, nearest, normalised_score, spearman)
from pgen.evaluation.report import plot_alignment
from pgen.evaluation.selection import grid_points
from pgen.generator.sample import ArchNotSupported, Generator
from pgen.generator.versions import load_generator
from pgen.policies.growth import grow, transfer_source
from pgen.policies.nets import actor_from_flat
from pgen.policies.rollout import selection_returns
from pgen.policies.spec import PolicySpec
from pgen.store import CheckpointStore, open_store
from pgen.util.fileio import atomic_write
from pgen.util.progress import Progress

def evaluation_specs(gen: Generator, settings: EvaluateSettings) -> list[PolicySpec]:
    """The default architecture, the other trained ones, then `evaluate.archs` (each checked:
    ArchNotSupported when the generator cannot produce it)."""
    specs = [gen.spec, *[s for s in gen.trained_specs if s != gen.spec]]
    for hidden in settings.archs:
        try:
            spec = gen.check_spec(replace(gen.spec, hidden=tuple(hidden)))
        except ArchNotSupported as err:
            raise ArchNotSupported(f"evaluate.archs: {err}") from None
        if spec not in specs:
            specs.append(spec)
    return specs


def arm_metrics(points: list[dict[str, Any]], top_k: int, r_random: float, r_top: float,
                key: str = "achieved") -> dict[str, float]:
    """Alignment R² and Spearman over the in-range finite points, the normalised score at the top
    target, and (where the points have them) the median novelty and the mean action agreement of an
    arm's points, read from `key` (`achieved`, or `achieved_chosen`)."""
    inr = [p for p in points if p["in_range"] and np.isfinite(p[key])]
    t, a = np.array([p["target"] for p in inr]), np.array([p[key] for p in inr])
    top = np.array([p[key] for p in points if p["k"] == top_k])
    out = {"alignment_r2": alignment_r2(t, a), "spearman": spearman(t, a),
           "normalised_score_top": float(np.nanmean(normalised_score(top, r_random, r_top)))}
    if points and "novelty" in points[0]:
        out.update(novelty_median=float(np.median([p["novelty"] for p in points])),
                   agreement_mean=float(np.mean([p["agreement"] for p in points])))
    return out


def matched_noise(base: np.ndarray, noise: np.ndarray, target: float, novelty: Callable[[np.ndarray], np.ndarray],
                  steps: int = 40) -> float:
    """The scale σ for which `base + σ · noise` (standardised rows) has median novelty `target`
    (bisection: novelty grows with σ); 0 when the target is 0 or not finite."""
    if not np.isfinite(target) or target <= 0:
        return 0.0
    median = lambda sigma: float(np.median(novelty(base + sigma * noise)))  # noqa: E731
    high = 1.0
    while median(high) < target and high < 1e6:
        high *= 2.0
    low = 0.0
    for _ in range(steps):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if median(mid) < target else (low, mid)
    return 0.5 * (low + high)


def evaluate_arch(gen: Generator, base: Baselines, spec: PolicySpec, tick: Callable[[int], None]) -> dict[str, Any]:
    """Every metric of `gen` for the architecture `spec` (module doc); `tick(done)` after each policy."""
    s, data, targets = base.settings, base.data, base.targets
    trained = spec.arch_key in data.parts
    r_random, r_top, top_k = base.r_random, base.r_top, base.top_target_index

    def play(flat: np.ndarray) -> float:
        return base.achieved_return(actor_from_flat(spec, flat)) if np.isfinite(flat).all() else float("nan")

    # novelty against the checkpoints this architecture has (its own, or its transfer source's grown into it)
    ref_key = spec.arch_key if trained else transfer_source(gen.trained_specs, spec).arch_key
    ref_spec = data.specs[ref_key]
    grow_all = (lambda x: x) if trained else (lambda x: np.stack([grow(r, ref_spec, spec) for r in x]))
    refs = grow_all(data.parts[ref_key].params)
    refs_std = gen.standardise(refs, spec)
    ref_all = base.everything.parts[ref_key]
    median_cross = cross_run_nn_median(gen.standardise(grow_all(ref_all.params), spec), ref_all.run_ids)
    obs, starts = base.states

    def novelty(std_rows: np.ndarray) -> np.ndarray:
        """Each standardised row's distance to its nearest training checkpoint over the median cross-run one."""
        dist = nearest(std_rows, refs_std)[0]
        return dist / median_cross if median_cross > 0 else np.full(len(std_rows), np.nan)

    def describe(points: list[dict[str, Any]], params: np.ndarray) -> None:
        """Novelty, the relative L2 distance to the nearest training vector, and action agreement with
        the nearest checkpoint, added to each point of `params`' policies."""
        std = gen.standardise(params, spec)
        nn_idx = nearest(std, refs_std)[1]
        rel_l2 = min_relative_l2(params, refs)
        for p, nov, rl, flat, i in zip(points, novelty(std), rel_l2, params, nn_idx):
            p.update(novelty=float(nov), min_relative_l2=float(rl),
                     agreement=action_agreement(actor_from_flat(spec, flat), actor_from_flat(spec, refs[i]), obs, starts))

    # the generator alone (the headline), and its choice among candidates when asked
    points, generated = grid_points(gen, targets, base.in_range, s, play,
                                    selection_returns(base.env_cfg, base.others, base.group, spec, s.selection_episodes),
                                    spec=spec, tick=tick)
    describe(points, generated)
    gen_metrics = arm_metrics(points, top_k, r_random, r_top)

    # baselines: retrieval, transfer, random init
    retrieval_rows = base.retrieval_rows(spec)
    retrieved = [base.checkpoint_return(row, spec) for row in retrieval_rows]
    best = base.transfer_row(spec)
    transfer = base.checkpoint_return(best, spec)
    random_init = base.random_init(spec)

    # the memorisation audit: noisy retrieval at the generator's median novelty, and interpolation
    retrieved_std = gen.standardise(np.stack([base.carried(retrieval_rows[p["k"]], spec) for p in points]), spec)
    noise = np.random.default_rng([s.seed, 0xA0D17]).standard_normal(retrieved_std.shape).astype(np.float32)
    sigma = matched_noise(retrieved_std, noise, gen_metrics["novelty_median"], novelty)
    noisy = gen.unstandardise(retrieved_std + sigma * noise, spec)
    noisy_points = [{"k": p["k"], "target": p["target"], "in_range": p["in_range"], "sample": p["sample"],
                     "achieved": play(flat)} for p, flat in zip(points, noisy)]
    describe(noisy_points, noisy)
    sources = base.sources(spec)
    source_returns = np.array([data.parts[k].returns[i] for k, i in sources])
    averaged, interp_points = [], []
    for k, target in enumerate(targets):
        nearest_rows = [sources[i] for i in np.argsort(np.abs(source_returns - target), kind="stable")[:s.interpolation_k]]
        averaged.append(np.mean([base.carried(row, spec) for row in nearest_rows], axis=0).astype(np.float32))
        interp_points.append({"k": k, "target": target, "in_range": base.in_range[k], "sample": 0,
                              "achieved": play(averaged[-1])})
    describe(interp_points, np.stack(averaged))

    rows = []
    for k, target in enumerate(targets):
        pts = [p for p in points if p["k"] == k]
        ach = np.array([p["achieved"] for p in pts])
        arch, i = retrieval_rows[k]
        rows.append({"target": target, "in_range": base.in_range[k],
                     "conditioned_on": float(gen.conditioning([target], spec)[0]),
                     "achieved_mean": float(np.nanmean(ach)), "achieved_std": float(np.nanstd(ach)),
                     "retrieval": retrieved[k], "retrieval_arch": arch,
                     "retrieval_return_recorded": float(data.parts[arch].returns[i]),
                     "noisy_retrieval_mean": float(np.nanmean([p["achieved"] for p in noisy_points if p["k"] == k])),
                     "interpolation": interp_points[k]["achieved"],
                     "normalised_score": float(normalised_score(np.nanmean(ach), r_random, r_top)),
                     "novelty": float(np.mean([p["novelty"] for p in pts])),
                     "agreement": float(np.mean([p["agreement"] for p in pts]))})
    retrieval_points = [{"k": k, "target": t, "in_range": base.in_range[k], "achieved": a}
                        for k, (t, a) in enumerate(zip(targets, retrieved))]
    retrieval = arm_metrics(retrieval_points, top_k, r_random, r_top)
    ret_t = np.array([p["target"] for p in retrieval_points if p["in_range"]])
    rel_l2 = np.array([p["min_relative_l2"] for p in points])
    best_arch, best_i = best
    chosen = None
    if s.candidates > 1:
        chosen = {**arm_metrics(points, top_k, r_random, r_top, key="achieved_chosen"), "candidates": s.candidates,
                  "selection_episodes": s.selection_episodes}
    return {
        "arch": spec.arch_key, "hidden": list(spec.hidden), "trained": trained, "num_params": spec.layout.num_params,
        "calibrated": bool(gen.calibration_for(spec)) and gen.calibrated,
        **{k: gen_metrics[k] for k in ("alignment_r2", "spearman", "normalised_score_top", "novelty_median",
                                       "agreement_mean")},
        "retrieval_alignment_r2": retrieval["alignment_r2"], "retrieval_spearman": retrieval["spearman"],
        "retrieval_normalised_score_top": retrieval["normalised_score_top"],
        "noisy_retrieval": {**arm_metrics(noisy_points, top_k, r_random, r_top), "noise_std": sigma,
                            "copies": int(sum(p["min_relative_l2"] < COPY_THRESHOLD for p in noisy_points))},
        "interpolation": {**arm_metrics(interp_points, top_k, r_random, r_top), "k": s.interpolation_k},
        "transfer": transfer, "transfer_score": float(normalised_score(transfer, r_random, r_top)),
        "transfer_alignment_r2": alignment_r2(ret_t, np.full(len(ret_t), transfer)),
        "transfer_source": best_arch, "transfer_checkpoint": {
            "arch": best_arch, "run_id": str(data.parts[best_arch].run_ids[best_i]),
            "step": int(data.parts[best_arch].steps[best_i]), "return": float(data.parts[best_arch].returns[best_i])},
        "random_init": random_init, "random_init_score": float(normalised_score(random_init, r_random, r_top)),
        "novelty_reference": ref_key, "median_cross_run_nn_distance": median_cross,
        "min_relative_l2": float(rel_l2.min()), "copies": int((rel_l2 < COPY_THRESHOLD).sum()),
        "non_finite_policies": int(sum(not np.isfinite(p["achieved"]) for p in points if p["in_range"])),
        "chosen": chosen,
        "targets": rows, "points": points, "noisy_retrieval_points": noisy_points, "interpolation_points": interp_points,
    }


def evaluate_generator(cfg: EvaluateConfig, store: CheckpointStore | None = None, gen: Generator | None = None,
                       baselines: Baselines | None = None, same_slice: bool = True) -> dict[str, Any]:
    """Every metric of docs/design.md for `gen` (default: `cfg.model` from the store) against
    `baselines` (default: measured now), per architecture (module doc); writes evaluation.json and
    alignment.png to `<evaluate.out_dir>/<model>@<version>/`.

    `same_slice=False` measures a generator of the same env, group and slice key on baselines of
    other training runs (an older version on a newer version's grid and episodes: `pgen loop`'s gate)."""
    torch.set_num_threads(cfg.torch_threads)
    if gen is None or baselines is None:
        store = store or open_store(cfg.store)
    gen = gen or load_generator(store, cfg.model)
    s = cfg.evaluate
    specs = evaluation_specs(gen, s)  # ArchNotSupported before any rollout
    base = baselines or measure_baselines(store, gen.info, s, label=f"evaluate {gen.model_id}")
    mine = slice_id(gen.info)
    if (mine if same_slice else mine[:3]) != (base.slice_id if same_slice else base.slice_id[:3]):
        raise ValueError(f"{gen.model_id} was trained on {mine}, the baselines are of {base.slice_id}")
    if replace(base.settings, out_dir="", archs=[]) != replace(s, out_dir="", archs=[]):
        raise ValueError("the baselines were measured with other evaluate settings than these")
    progress = Progress(f"evaluate {gen.model_id}", len(specs) * len(base.targets) * s.samples, unit="policies",
                        every_s=10.0)
    done = [0]

    def tick(_: int) -> None:
        done[0] += 1
        progress.update(done[0])

    archs = [evaluate_arch(gen, base, spec, tick) for spec in specs]
    progress.update(done[0], force=True)
    data = base.data
    signal = learning_signal(data.returns, float(np.median(data.return_std)), s.episodes, base.r_random, base.r_top)
    default = archs[0]
    result = {
        "model": gen.model_id, "env_id": base.env_cfg.id, "group": base.group, "arch": gen.info["arch"],
        "default_arch": default["arch"], "trained_archs": sorted(data.parts),
        "episodes": s.episodes, "mode": "stochastic" if s.stochastic else "greedy", "samples": s.samples,
        "temperature": s.temperature, "candidates": s.candidates,
        "selection_episodes": s.selection_episodes if s.candidates > 1 else 0, "reference": gen.info.get("reference"),
        "dataset": {"checkpoints": int(len(data)), "runs": sorted(set(data.run_ids.tolist())),
                    "arch_rows": {k: len(p) for k, p in data.parts.items()},
                    "return_min": float(data.returns.min()), "return_max": float(data.returns.max())},
        "r_random": base.r_random, "r_top10": base.r_top, "top10_checkpoints": len(base.top_rows),
        "top10_archs": sorted({k for k, _ in base.top_rows}), "best_trained": base.best_trained,
        "top_target": base.targets[base.top_target_index],
        "learning_signal": signal, "learned_nothing": not signal["learned"],
        **{k: v for k, v in default.items() if k not in ("arch", "hidden")},
        "archs": archs,
    }
    return write_evaluation(result, Path(s.out_dir) / gen.model_id, plot_alignment)


def write_evaluation(result: dict[str, Any], folder: Path, plot: Callable[[dict[str, Any], Path], Path]
                     ) -> dict[str, Any]:
    """`result` with its `plot` (`folder`/alignment.png, drawn by `plot`) and `json`
    (`folder`/evaluation.json, written last) paths."""
    out = folder.expanduser().resolve()
    result["plot"] = str(plot(result, out / "alignment.png"))
    result["json"] = str(out / "evaluation.json")
    atomic_write(out / "evaluation.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    return result
