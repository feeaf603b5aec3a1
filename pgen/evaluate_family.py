"""`pgen evaluate` of an arch-family generator: every metric per architecture, trained or held out.

The target grid, R_random and R_top10 are the family's (pooled over the training architectures:
R_top10 is the mean of the best `top_fraction` of *their* checkpoints, at most `max_top`,
re-evaluated), the same for every architecture; each architecture's generated policies are rolled
out on the same held-out fixed-seed episodes as the baselines of that architecture:

- random init: `evaluate.random_inits` freshly initialised policies of the architecture;
- transfer: the best training checkpoint (by the return the generator conditioned on) among the
  trained architectures that grow into it, carried over function-preservingly (`growth.grow`,
  Net2Net) — one policy, whatever the target, so its R² is that of a constant;
- retrieval + transfer: per target, the training checkpoint of those architectures whose return is
  closest, carried over the same way (for a trained architecture, including its own checkpoints).

Novelty is measured against the checkpoints an architecture has, in its standardised space: its own
when it was trained, else those of its transfer source (`growth.transfer_source`) grown into it; the
median cross-run nearest-neighbour distance is over the same set. Writes
`<out_dir>/<model>@<version>/evaluation.json` and `alignment.png` (one panel per architecture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pgen.config import EnvConfig, EvaluateSettings, config_from_dict  # noqa: E402
from pgen.evaluate import COPY_THRESHOLD, _achieved, target_grid, write_evaluation  # noqa: E402
from pgen.fileio import atomic_write  # noqa: E402
from pgen.generator.data import condition_returns, reference_actors  # noqa: E402
from pgen.generator.family_data import FamilyData, load_family  # noqa: E402
from pgen.generator.sample import FamilyGenerator  # noqa: E402
from pgen.growth import can_grow, grow, transfer_source  # noqa: E402
from pgen.metrics import (action_agreement, alignment_r2, cross_run_nn_median, min_relative_l2, nearest,  # noqa: E402
                          normalised_score, spearman)
from pgen.policy import Actor, PolicySpec  # noqa: E402
from pgen.progress import Progress  # noqa: E402
from pgen.rollout import HELDOUT_EVAL_SEED, actor_from_flat, evaluate_returns, selection_returns  # noqa: E402
from pgen.selection import first_candidate_metrics, grid_points, selection_line  # noqa: E402
from pgen.store import CheckpointStore  # noqa: E402

Row = tuple[str, int]  # (arch key, row of that architecture's training data)


@dataclass
class FamilyBaselines:
    """What every architecture of one family generator is measured against (module doc)."""

    settings: EvaluateSettings
    env_cfg: EnvConfig
    group: str
    slice_id: tuple
    everything: FamilyData  # every row the generator saw or held out
    data: FamilyData  # the training rows
    others: dict[str, Actor]
    targets: list[float]
    in_range: list[bool]
    top_rows: list[Row]
    achieved: dict[Row, float]  # of the top rows
    r_random: float
    r_top: float
    states: tuple[torch.Tensor, torch.Tensor]

    def achieved_return(self, actor: Actor | None) -> float:
        return _achieved(self.env_cfg, self.others, self.group, self.settings, actor)

    def params(self, row: Row) -> np.ndarray:
        return self.data.parts[row[0]].params[row[1]]

    def spec(self, row: Row) -> PolicySpec:
        return self.data.specs[row[0]]


def family_slice_id(info: dict[str, Any]) -> tuple:
    return (info["env_key"], info["group"], info["arch"], tuple(info["archs"]), tuple(info["dataset"]["train_runs"]))


def measure_family_baselines(store: CheckpointStore, info: dict[str, Any], settings: EvaluateSettings,
                             label: str = "evaluate") -> FamilyBaselines:
    """The family's rows, target grid, R_random and the re-evaluated top-10 % checkpoints."""
    env_cfg = config_from_dict("train", {"env": info["env"]}).env
    ds = info["dataset"]
    specs = [PolicySpec.from_arch_key(k) for k in info["archs"]]
    everything = load_family(store, info["env_key"], info["group"], specs, run_ids=ds["runs"])
    everything = everything.map(lambda _k, p: condition_returns(
        p.subset(np.flatnonzero([step <= ds["max_step"][run] for run, step in zip(p.run_ids, p.steps)])), ds))
    data = everything.subset({k: np.flatnonzero(np.isin(p.run_ids, ds["train_runs"])) for k, p in everything.parts.items()})
    others = reference_actors(store, info, env_cfg)
    targets, in_range = target_grid(data.returns, settings)
    rows = [(k, i) for k, p in data.parts.items() for i in range(len(p))]
    top_n = min(settings.max_top, max(1, math.ceil(settings.top_fraction * len(rows))))
    top = [rows[i] for i in np.argsort(-data.returns, kind="stable")[:top_n]]
    group = info["group"]
    progress = Progress(f"{label} baselines", 1 + len(top), unit="policies", every_s=10.0)
    r_random = _achieved(env_cfg, others, group, settings, None)
    achieved = {}
    for n, (k, i) in enumerate(top):
        progress.update(n + 1)
        achieved[(k, i)] = _achieved(env_cfg, others, group, settings, actor_from_flat(data.specs[k], data.parts[k].params[i]))
    progress.update(1 + len(top), force=True)
    observations: dict[str, list] = {}
    best = top[0]
    evaluate_returns(env_cfg, {**others, group: actor_from_flat(data.specs[best[0]], data.parts[best[0]].params[best[1]])},
                     settings.states, seed=HELDOUT_EVAL_SEED + 7919, observations=observations)
    states = (torch.from_numpy(np.stack([o for o, _ in observations[group]])),
              torch.from_numpy(np.stack([st for _, st in observations[group]])))
    return FamilyBaselines(settings, env_cfg, group, family_slice_id(info), everything, data, others, targets, in_range,
                           top, achieved, r_random, float(np.mean(list(achieved.values()))), states)


def evaluation_specs(gen: FamilyGenerator, settings: EvaluateSettings) -> list[PolicySpec]:
    """The trained architectures, then `evaluate.archs` (each checked: ArchNotSupported if the
    generator cannot produce it)."""
    specs = list(gen.trained_specs)
    for hidden in settings.archs:
        spec = gen.check_spec(replace(gen.spec, hidden=tuple(hidden)))
        if spec not in specs:
            specs.append(spec)
    return specs


def evaluate_arch(gen: FamilyGenerator, base: FamilyBaselines, spec: PolicySpec, tick: Callable[[], None]
                  ) -> dict[str, Any]:
    """Every metric of `gen` for one architecture (module doc); `tick()` after each generated policy."""
    s, data, targets = base.settings, base.data, base.targets
    trained = spec.arch_key in data.parts
    sources = [k for k, sp in data.specs.items() if k in data.parts and can_grow(sp, spec)]
    candidates = [(k, i) for k in sources for i in range(len(data.parts[k]))]
    returns = np.array([data.parts[k].returns[i] for k, i in candidates])

    def carried(row: Row) -> np.ndarray:
        return grow(base.params(row), base.spec(row), spec) if row[0] != spec.arch_key else base.params(row)

    def play(flat: np.ndarray) -> float:
        return base.achieved_return(actor_from_flat(spec, flat)) if np.isfinite(flat).all() else float("nan")

    points, generated = grid_points(gen, targets, base.in_range, s, play,
                                    selection_returns(base.env_cfg, base.others, base.group, spec, s.selection_episodes),
                                    spec=spec, tick=lambda done: tick())
    best = candidates[int(np.argmax(returns))]
    transfer = play(carried(best))
    retrieval_rows = [candidates[int(np.argmin(np.abs(returns - t)))] for t in targets]
    retrieved = {row: play(carried(row)) for row in set(retrieval_rows)}
    random_init = []
    for i in range(s.random_inits):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed * 7_919 + i)
            random_init.append(base.achieved_return(Actor(spec).eval()))

    # novelty against the checkpoints this architecture has (its own, or its transfer source's grown into it)
    ref_key = spec.arch_key if trained else transfer_source(gen.trained_specs, spec).arch_key
    ref_all = base.everything.parts[ref_key]
    grow_all = (lambda x: x) if trained else (lambda x: np.stack([grow(r, data.specs[ref_key], spec) for r in x]))
    std = lambda x: gen.normalizer.standardise(torch.from_numpy(x), spec).numpy()  # noqa: E731
    refs = grow_all(data.parts[ref_key].params)
    nn_dist, nn_idx = nearest(std(generated), std(refs))
    median_cross = cross_run_nn_median(std(grow_all(ref_all.params)), ref_all.run_ids)
    rel_l2 = min_relative_l2(generated, refs)
    obs, starts = base.states
    agreement = [action_agreement(actor_from_flat(spec, g), actor_from_flat(spec, refs[i]), obs, starts)
                 for g, i in zip(generated, nn_idx)]
    for p, d, ag in zip(points, nn_dist, agreement):
        p.update(novelty=float(d / median_cross) if median_cross > 0 else float("nan"), agreement=float(ag))

    r_random, r_top = base.r_random, base.r_top
    rows = []
    for k, target in enumerate(targets):
        ach = np.array([p["achieved"] for p in points if p["k"] == k])
        rows.append({"target": target, "in_range": base.in_range[k],
                     "conditioned_on": float(gen.conditioning([target], spec)[0]), "achieved_mean": float(np.nanmean(ach)),
                     "achieved_std": float(np.nanstd(ach)), "retrieval_transfer": retrieved[retrieval_rows[k]],
                     "retrieval_arch": retrieval_rows[k][0],
                     "normalised_score": float(normalised_score(np.nanmean(ach), r_random, r_top))})
    inr = [p for p in points if p["in_range"] and np.isfinite(p["achieved"])]
    t_in, a_in = np.array([p["target"] for p in inr]), np.array([p["achieved"] for p in inr])
    rt = np.array([r["target"] for r in rows if r["in_range"]])
    ra = np.array([r["retrieval_transfer"] for r in rows if r["in_range"]])
    top_k = len(targets) - 1 - len(s.extra_targets)
    return {
        "arch": spec.arch_key, "hidden": list(spec.hidden), "trained": trained, "num_params": spec.layout.num_params,
        "calibrated": bool(gen.calibration_for(spec)) and gen.calibrated,
        "transfer_source": best[0], "transfer_checkpoint": {
            "arch": best[0], "run_id": str(data.parts[best[0]].run_ids[best[1]]),
            "step": int(data.parts[best[0]].steps[best[1]]), "return": float(data.parts[best[0]].returns[best[1]])},
        "alignment_r2": alignment_r2(t_in, a_in), "spearman": spearman(t_in, a_in),
        "normalised_score_top": float(np.nanmean(normalised_score(
            np.array([p["achieved"] for p in points if p["k"] == top_k]), r_random, r_top))),
        "transfer": transfer, "transfer_score": float(normalised_score(transfer, r_random, r_top)),
        "transfer_alignment_r2": alignment_r2(rt, np.full(len(rt), transfer)),
        "retrieval_transfer_alignment_r2": alignment_r2(rt, ra), "retrieval_transfer_spearman": spearman(rt, ra),
        "retrieval_transfer_score_top": float(normalised_score(rows[top_k]["retrieval_transfer"], r_random, r_top)),
        "random_init": float(np.mean(random_init)),
        "random_init_score": float(normalised_score(np.mean(random_init), r_random, r_top)),
        "novelty_median": float(np.median([p["novelty"] for p in points])), "novelty_reference": ref_key,
        "min_relative_l2": float(rel_l2.min()), "copies": int((rel_l2 < COPY_THRESHOLD).sum()),
        "agreement_mean": float(np.mean(agreement)), "non_finite_policies": int(sum(not np.isfinite(p["achieved"])
                                                                                    for p in points)),
        "first_candidates": first_candidate_metrics(points, top_k, r_random, r_top),
        "targets": rows, "points": points,
    }


def evaluate_family(gen: FamilyGenerator, base: FamilyBaselines, settings: EvaluateSettings) -> dict[str, Any]:
    """`pgen evaluate` of a family generator over its trained architectures and `evaluate.archs`."""
    if family_slice_id(gen.info) != base.slice_id:
        raise ValueError(f"{gen.model_id} was trained on {family_slice_id(gen.info)}, the baselines are of {base.slice_id}")
    if replace(base.settings, out_dir="", archs=[]) != replace(settings, out_dir="", archs=[]):
        raise ValueError("the baselines were measured with other evaluate settings than these")
    specs = evaluation_specs(gen, settings)
    progress = Progress(f"evaluate {gen.model_id}", len(specs) * len(base.targets) * settings.samples, unit="policies",
                        every_s=10.0)
    done = [0]

    def tick() -> None:
        done[0] += 1
        progress.update(done[0])

    archs = [evaluate_arch(gen, base, spec, tick) for spec in specs]
    progress.update(done[0], force=True)
    result = {
        "model": gen.model_id, "env_id": base.env_cfg.id, "group": base.group, "family": gen.family,
        "trained_archs": gen.info["archs"], "episodes": settings.episodes,
        "mode": "stochastic" if settings.stochastic else "greedy", "samples": settings.samples,
        "temperature": settings.temperature, "candidates": settings.candidates,
        "selection_episodes": settings.selection_episodes if settings.candidates > 1 else 0, "targets": base.targets, "in_range": base.in_range,
        "r_random": base.r_random, "r_top10": base.r_top, "top10_checkpoints": len(base.top_rows),
        "top10_archs": sorted({k for k, _ in base.top_rows}), "best_trained": float(max(base.achieved.values())),
        "dataset": {"checkpoints": int(len(base.data)), "arch_rows": {k: len(p) for k, p in base.data.parts.items()},
                    "return_min": float(base.data.returns.min()), "return_max": float(base.data.returns.max())},
        "archs": archs,
    }
    return write_evaluation(result, Path(settings.out_dir) / gen.model_id, plot_family)


def plot_family(result: dict[str, Any], path: Path) -> Path:
    """One panel per architecture: requested vs achieved (samples, mean), retrieval + transfer,
    transfer of the best checkpoint, the identity line and the random / top-10 % levels."""
    archs = result["archs"]
    cols = min(4, len(archs))
    rows = math.ceil(len(archs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.9 * rows), dpi=100, squeeze=False)
    lo = min([result["r_random"], *result["targets"]] + [p["achieved"] for a in archs for p in a["points"]
                                                         if np.isfinite(p["achieved"])])
    hi = max([result["r_top10"], *result["targets"]])
    for ax, a in zip(axes.flat, archs):
        pts = a["points"]
        ax.scatter([p["target"] for p in pts], [p["achieved"] for p in pts], s=9, alpha=0.4, color="tab:blue")
        ax.plot([r["target"] for r in a["targets"]], [r["achieved_mean"] for r in a["targets"]], "o-", color="tab:blue",
                ms=4, label="generated (mean)")
        ax.plot([r["target"] for r in a["targets"]], [r["retrieval_transfer"] for r in a["targets"]], "s--",
                color="tab:orange", ms=3, alpha=0.8, label="retrieval + transfer")
        ax.axhline(a["transfer"], color="tab:purple", ls="-.", lw=1, label="transfer of the best")
        ax.axhline(a["random_init"], color="tab:brown", ls=":", lw=1, label="random init")
        ax.plot([lo, hi], [lo, hi], color="black", lw=1)
        ax.axhline(result["r_top10"], ls=":", color="green", lw=1)
        ax.set_title(f"{'' if a['trained'] else 'held out: '}{a['hidden']}\nR² {a['alignment_r2']:.2f}, ρ"
                     f" {a['spearman']:.2f}, score {a['normalised_score_top']:.2f}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(archs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="lower right")
    fig.supxlabel("requested return")
    fig.supylabel(f"achieved return ({result['mode']}, {result['episodes']} episodes)")
    fig.suptitle(f"{result['model']} ({result['family']})", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def format_family_result(r: dict[str, Any]) -> str:
    lines = [f"{r['model']}: {r['env_id']} group {r['group']} (family {r['family']}, trained on"
             f" {', '.join(r['trained_archs'])}), {r['episodes']} {r['mode']} episodes per policy, {r['samples']} samples"
             " per target; return = group sum, mean per episode",
             f"random {r['r_random']:.1f} | top-10% trained {r['r_top10']:.1f} ({r['top10_checkpoints']} checkpoints of"
             f" {', '.join(r['top10_archs'])}) | best trained {r['best_trained']:.1f}",
             f"{'architecture':<26} {'':>9} {'R²':>6} {'ρ':>6} {'score@top':>9} | {'transfer':>8} {'(R²)':>6} |"
             f" {'retr.+tr. R²':>12} {'score':>6} | {'rand.init':>9} | {'novelty':>7} {'copies':>6} {'agree':>5}"]
    for a in r["archs"]:
        lines.append(f"{a['arch']:<26} {'trained' if a['trained'] else 'held out':>9} {a['alignment_r2']:>6.2f}"
                     f" {a['spearman']:>6.2f} {a['normalised_score_top']:>9.2f} | {a['transfer_score']:>8.2f}"
                     f" {a['transfer_alignment_r2']:>6.2f} | {a['retrieval_transfer_alignment_r2']:>12.2f}"
                     f" {a['retrieval_transfer_score_top']:>6.2f} | {a['random_init_score']:>9.2f} |"
                     f" {a['novelty_median']:>7.2f} {a['copies']:>6} {a['agreement_mean']:>5.2f}")
        if a.get("first_candidates"):
            f = a["first_candidates"]
            lines.append(f"{'  first candidates':<26} {'':>9} {f['alignment_r2']:>6.2f} {f['spearman']:>6.2f}"
                         f" {f['normalised_score_top']:>9.2f}")
    if r.get("candidates", 1) > 1:
        lines.append(selection_line(r))
    lines.append("scores are normalised: (return − random) / (top-10 % trained − random)")
    lines.append(f"plot {r['plot']}\njson {r['json']}")
    return "\n".join(lines)
