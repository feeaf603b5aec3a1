"""`pgen evaluate`: generated policies over a grid of target returns, against the baselines.

Targets: `evaluate.targets` points from the 5th to the 95th percentile of the training
checkpoints' returns, plus their maximum, plus `evaluate.extra_targets` (flagged when outside the
dataset's range; alignment is computed over the in-range targets only). For each target,
`evaluate.samples` generated policies are rolled out on the same `evaluate.episodes` fixed-seed
episodes (greedy unless `evaluate.stochastic`), as are, in the same run, the baselines:

Episodes use held-out seeds (`HELDOUT_EVAL_SEED`), not those the populations evaluated checkpoints on.

- random: uniform-random actions (R_random);
- top-10 %: the best `top_fraction` of training checkpoints by return (at most `max_top`),
  re-evaluated; their mean is R_top10 and their best is "best trained";
- retrieval: the training checkpoint whose return is closest to the target.

In envs with several groups the other groups play the generator's reference (the co-trained
policies of the best checkpoint's run at that step), the same for every policy compared. The
checkpoints' "return" is the one the generator conditioned on: there, by default, re-measured
against that reference (`generator.rescore_episodes`); in one-group envs the recorded one.

Writes `<out_dir>/<model>@<version>/evaluation.json` (every metric of DESIGN.md), `alignment.png`
(requested vs achieved with the identity line) and prints a table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pgen.config import EnvConfig, EvaluateConfig, EvaluateSettings, config_from_dict  # noqa: E402
from pgen.rollout import HELDOUT_EVAL_SEED, actor_from_flat, evaluate_returns, selection_returns  # noqa: E402
from pgen.generator.data import ParamDataset, condition_returns, load_slice, reference_actors  # noqa: E402
from pgen.generator.archgraph import ArchNotSupported  # noqa: E402
from pgen.generator.sample import FamilyGenerator, Generator, load_generator  # noqa: E402
from pgen.metrics import (NO_LEARNING_ADVICE, action_agreement, alignment_r2, cross_run_nn_median,  # noqa: E402
                          learning_signal, learning_warning, min_relative_l2, nearest, normalised_score, spearman,
                          target_percentiles)
from pgen.fileio import atomic_write  # noqa: E402
from pgen.plots import save_figure  # noqa: E402
from pgen.policy import Actor, ParamLayout, PolicySpec  # noqa: E402
from pgen.progress import Progress, log  # noqa: E402
from pgen.selection import first_candidate_metrics, grid_points, selection_line  # noqa: E402
from pgen.store import CheckpointStore, open_store  # noqa: E402

COPY_THRESHOLD = 0.01  # relative L2 below which a generated vector counts as a copy of a training vector


def target_grid(returns: np.ndarray, settings: EvaluateSettings) -> tuple[list[float], list[bool]]:
    """(targets, in_range): the percentile grid, the maximum, then the extra targets."""
    if settings.targets < 2:
        raise ValueError(f"evaluate.targets must be >= 2, got {settings.targets}")
    targets = target_percentiles(returns, settings.targets) + [float(t) for t in settings.extra_targets]
    if not all(math.isfinite(t) for t in targets):
        raise ValueError(f"evaluate.extra_targets must be finite numbers, got {settings.extra_targets}")
    low, high = float(returns.min()), float(returns.max())
    return targets, [low <= t <= high for t in targets]


@dataclass
class Baselines:
    """What every generator of one slice is measured against, rolled out once (DESIGN.md "Metrics").

    Built from a generator's `info` (its slice, training runs and reference) by `measure_baselines`;
    any generator trained on the same slice and runs can be compared with it (`evaluate_generator`),
    which is how a Tune sweep evaluates its trials without rolling the baselines out again.
    """

    settings: EvaluateSettings
    env_cfg: EnvConfig
    group: str
    spec: PolicySpec
    slice_id: tuple  # (env_key, group, arch, training runs): what a compared generator must match
    everything: ParamDataset  # every row the generator saw or held out (its runs, up to their recorded step)
    data: ParamDataset  # the training rows
    others: dict[str, Actor]  # the other groups' fixed reference policies
    targets: list[float]
    in_range: list[bool]
    top_rows: np.ndarray  # the best `top_fraction` training rows by recorded return
    achieved: dict[int, float]  # achieved return of the top and retrieval rows, by row of `data`
    retrieval_rows: list[int]  # per target, the training row whose recorded return is closest
    r_random: float
    r_top: float
    states: tuple[torch.Tensor, torch.Tensor]  # (obs, starts) of behavioural agreement

    def achieved_return(self, actor: Actor | None) -> float:
        """Mean group return of `actor` (None: uniform random) on the fixed held-out episodes."""
        return _achieved(self.env_cfg, self.others, self.group, self.settings, actor)


def _achieved(env_cfg: EnvConfig, others: dict[str, Actor], group: str, s: EvaluateSettings,
              actor: Actor | None) -> float:
    returns = evaluate_returns(env_cfg, {**others, group: actor}, s.episodes, seed=HELDOUT_EVAL_SEED,
                               stochastic=s.stochastic)[group]
    return float(returns.mean())


def _slice_id(info: dict[str, Any]) -> tuple:
    return (info["env_key"], info["group"], info["arch"], tuple(info["dataset"]["train_runs"]))


def measure_baselines(store: CheckpointStore, info: dict[str, Any], settings: EvaluateSettings,
                      label: str = "evaluate") -> Baselines:
    """Load the slice a generator (`info`) was trained on and roll out uniform random play, the
    top-10 % training checkpoints and retrieval for every target of the grid."""
    env_cfg = config_from_dict("train", {"env": info["env"]}).env
    spec = PolicySpec.from_json(info["policy_spec"])
    ds = info["dataset"]
    everything = load_slice(store, info["env_key"], info["group"], info["arch"],
                            ParamLayout.from_json(info["layout"]).num_params, run_ids=ds["runs"])
    # the rows the generator saw (train runs) and held out (validation runs), not ones written since
    keep = np.array([step <= ds["max_step"][run] for run, step in zip(everything.run_ids, everything.steps)])
    everything = condition_returns(everything.subset(np.flatnonzero(keep)), ds)
    data = everything.subset(np.flatnonzero(np.isin(everything.run_ids, ds["train_runs"])))
    others = reference_actors(store, info, env_cfg)
    group = info["group"]
    targets, in_range = target_grid(data.returns, settings)
    top_n = min(settings.max_top, max(1, math.ceil(settings.top_fraction * len(data))))
    top_rows = np.argsort(-data.returns, kind="stable")[:top_n]
    retrieval_rows = [int(np.argmin(np.abs(data.returns - t))) for t in targets]
    rows = [int(i) for i in top_rows] + sorted(set(retrieval_rows) - {int(i) for i in top_rows})
    progress = Progress(f"{label} baselines", 1 + len(rows), unit="policies", every_s=10.0)
    r_random = _achieved(env_cfg, others, group, settings, None)
    achieved = {}
    for n, i in enumerate(rows):
        progress.update(n + 1)
        achieved[i] = _achieved(env_cfg, others, group, settings, actor_from_flat(spec, data.params[i]))
    progress.update(1 + len(rows), force=True)
    observations: dict[str, list] = {}
    evaluate_returns(env_cfg, {**others, group: actor_from_flat(spec, data.params[int(top_rows[0])])}, settings.states,
                     seed=HELDOUT_EVAL_SEED + 7919, observations=observations)
    states = (torch.from_numpy(np.stack([o for o, _ in observations[group]])),
              torch.from_numpy(np.stack([st for _, st in observations[group]])))
    return Baselines(settings, env_cfg, group, spec, _slice_id(info), everything, data, others, targets, in_range,
                     top_rows, achieved, retrieval_rows, r_random, float(np.mean([achieved[int(i)] for i in top_rows])),
                     states)


def evaluate_generator(cfg: EvaluateConfig, store: CheckpointStore | None = None, gen: Generator | None = None,
                       baselines: Baselines | None = None, same_slice: bool = True) -> dict[str, Any]:
    """`pgen evaluate`: every metric of DESIGN.md for `gen` (default: `cfg.model` from the store)
    against `baselines` (default: measured now); writes evaluation.json and alignment.png to
    `<evaluate.out_dir>/<model>@<version>/`.

    `same_slice=False` measures a generator of the same env, group and architecture on baselines of
    other training runs (an older version on a newer version's grid and episodes: `pgen loop`'s gate)."""
    torch.set_num_threads(cfg.torch_threads)
    if gen is None or baselines is None:
        store = store or open_store(cfg.store)
    gen = gen or load_generator(store, cfg.model)
    if isinstance(gen, FamilyGenerator):  # an arch-family version: every metric per architecture
        from pgen.evaluate_family import evaluate_family, measure_family_baselines

        base = baselines or measure_family_baselines(store, gen.info, cfg.evaluate, label=f"evaluate {gen.model_id}")
        return evaluate_family(gen, base, cfg.evaluate)
    if cfg.evaluate.archs and [list(gen.spec.hidden)] != [list(h) for h in cfg.evaluate.archs]:
        raise ArchNotSupported(f"evaluate.archs: {gen.model_id} is a single-architecture generator of"
                               f" {gen.spec.arch_key}; only arch-family generators evaluate other architectures")
    base = baselines or measure_baselines(store, gen.info, cfg.evaluate, label=f"evaluate {gen.model_id}")
    mine = _slice_id(gen.info)
    if (mine if same_slice else mine[:3]) != (base.slice_id if same_slice else base.slice_id[:3]):
        raise ValueError(f"{gen.model_id} was trained on {mine}, the baselines are of {base.slice_id}")
    if replace(base.settings, out_dir="") != replace(cfg.evaluate, out_dir=""):
        raise ValueError("the baselines were measured with other evaluate settings than these")
    s, spec, data, targets, in_range = cfg.evaluate, base.spec, base.data, base.targets, base.in_range
    progress = Progress(f"evaluate {gen.model_id}", len(targets) * s.samples, unit="policies", every_s=10.0)

    def play(flat: np.ndarray) -> float:
        return base.achieved_return(actor_from_flat(spec, flat)) if np.isfinite(flat).all() else float("nan")

    points, generated = grid_points(gen, targets, in_range, s, play,
                                    selection_returns(base.env_cfg, base.others, base.group, spec, s.selection_episodes),
                                    tick=progress.update)
    progress.update(len(points), force=True)

    # novelty and copies, in the generator's standardised space
    std = lambda x: gen.normalizer.standardise(torch.from_numpy(x), gen.tokenizer).numpy()  # noqa: E731
    nn_dist, nn_idx = nearest(std(generated), std(data.params))
    median_cross = cross_run_nn_median(std(base.everything.params), base.everything.run_ids)  # all runs of the slice
    rel_l2 = min_relative_l2(generated, data.params)
    obs, starts = base.states
    agreement = [action_agreement(actor_from_flat(spec, g), actor_from_flat(spec, data.params[i]), obs, starts)
                 for g, i in zip(generated, nn_idx)]
    for p, d, rl, ag in zip(points, nn_dist, rel_l2, agreement):
        p.update(novelty=float(d / median_cross) if median_cross > 0 else float("nan"),
                 min_relative_l2=float(rl), agreement=float(ag))

    # per-target table and the metrics
    r_random, r_top = base.r_random, base.r_top
    top_achieved = [base.achieved[int(i)] for i in base.top_rows]
    rows = []
    for k, target in enumerate(targets):
        pts = [p for p in points if p["k"] == k]
        ach = np.array([p["achieved"] for p in pts])
        i = base.retrieval_rows[k]
        rows.append({"target": target, "in_range": in_range[k], "conditioned_on": float(gen.conditioning([target])[0]),
                     "achieved_mean": float(np.nanmean(ach)),
                     "achieved_std": float(np.nanstd(ach)), "retrieval": base.achieved[i],
                     "retrieval_return_recorded": float(data.returns[i]),
                     "normalised_score": float(normalised_score(np.nanmean(ach), r_random, r_top)),
                     "novelty": float(np.mean([p["novelty"] for p in pts])),
                     "agreement": float(np.mean([p["agreement"] for p in pts]))})
    inr = [p for p in points if p["in_range"]]
    t_in, a_in = np.array([p["target"] for p in inr]), np.array([p["achieved"] for p in inr])
    finite = np.isfinite(a_in)
    ret_t = np.array([r["target"] for r in rows if r["in_range"]])
    ret_a = np.array([r["retrieval"] for r in rows if r["in_range"]])
    top_k = len(targets) - 1 - len(s.extra_targets)  # index of the dataset-maximum target
    result = {
        "model": gen.model_id, "env_id": base.env_cfg.id, "group": base.group, "arch": gen.info["arch"],
        "episodes": s.episodes, "mode": "stochastic" if s.stochastic else "greedy", "samples": s.samples,
        "temperature": s.temperature, "candidates": s.candidates,
        "selection_episodes": s.selection_episodes if s.candidates > 1 else 0, "reference": gen.info.get("reference"),
        "calibrated": bool(gen.calibration_for()) and gen.calibrated,
        "dataset": {"checkpoints": int(len(data)), "runs": sorted(set(data.run_ids.tolist())),
                    "return_min": float(data.returns.min()), "return_max": float(data.returns.max())},
        "r_random": r_random, "r_top10": r_top, "top10_checkpoints": len(base.top_rows),
        "best_trained": float(max(top_achieved)),
        "alignment_r2": alignment_r2(t_in[finite], a_in[finite]),
        "spearman": spearman(t_in[finite], a_in[finite]),
        "retrieval_alignment_r2": alignment_r2(ret_t, ret_a), "retrieval_spearman": spearman(ret_t, ret_a),
        "top_target": targets[top_k],
        "normalised_score_top": float(np.nanmean(normalised_score(
            np.array([p["achieved"] for p in points if p["k"] == top_k]), r_random, r_top))),
        "retrieval_normalised_score_top": float(normalised_score(rows[top_k]["retrieval"], r_random, r_top)),
        "novelty_median": float(np.median([p["novelty"] for p in points])),
        "median_cross_run_nn_distance": median_cross,
        "min_relative_l2": float(rel_l2.min()), "copies": int((rel_l2 < COPY_THRESHOLD).sum()),
        "agreement_mean": float(np.mean(agreement)), "non_finite_policies": int((~np.isfinite(a_in)).sum()),
        "learning_signal": learning_signal(data.returns, float(np.median(data.return_std)), s.episodes, r_random,
                                           r_top),
        "first_candidates": first_candidate_metrics(points, top_k, r_random, r_top),
        "targets": rows, "points": points,
    }
    result["learned_nothing"] = not result["learning_signal"]["learned"]
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


def plot_alignment(result: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.2, 5.4), dpi=110)
    pts = result["points"]
    chosen = f", the closest of {result['candidates']}" if result.get("first_candidates") else ""
    ax.scatter([p["target"] for p in pts], [p["achieved"] for p in pts], s=12, alpha=0.45, color="tab:blue",
               label=f"generated (each sample{chosen})")
    if chosen:
        ax.scatter([p["target"] for p in pts], [p["achieved_first"] for p in pts], s=14, marker="x", alpha=0.45,
                   color="grey", label="generated (each sample's first candidate)")
    rows = result["targets"]
    ax.plot([r["target"] for r in rows], [r["achieved_mean"] for r in rows], "o-", color="tab:blue",
            label="generated (mean per target)")
    ax.plot([r["target"] for r in rows], [r["retrieval"] for r in rows], "s--", color="tab:orange", alpha=0.8,
            label="retrieval (closest training checkpoint)")
    out = [r for r in rows if not r["in_range"]]
    if out:
        ax.scatter([r["target"] for r in out], [r["achieved_mean"] for r in out], marker="x", s=80, color="red",
                   label="target outside the dataset's range")
    values = [p["achieved"] for p in pts if np.isfinite(p["achieved"])] + [r["target"] for r in rows]
    lo, hi = min(values + [result["r_random"]]), max(values + [result["r_top10"]])
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="identity")
    ax.axhline(result["r_random"], linestyle=":", color="grey")
    ax.annotate("uniform random", (0.01, result["r_random"]), xycoords=("axes fraction", "data"), fontsize=8)
    ax.axhline(result["r_top10"], linestyle=":", color="green")
    ax.annotate("top-10 % trained", (0.01, result["r_top10"]), xycoords=("axes fraction", "data"), fontsize=8,
                color="green")
    ax.set(title=f"{result['model']}\nR² {result['alignment_r2']:.2f}, Spearman {result['spearman']:.2f},"
                 f" score at top {result['normalised_score_top']:.2f}",
           xlabel="requested return", ylabel=f"achieved return ({result['mode']}, {result['episodes']} episodes)")
    return save_figure(fig, ax, path, {"fontsize": 7, "loc": "lower right"})


def format_result(r: dict[str, Any]) -> str:
    if "archs" in r:  # an arch-family evaluation
        from pgen.evaluate_family import format_family_result

        return format_family_result(r)
    warning = learning_warning(r["learning_signal"], f"evaluate {r['model']}")
    lines = ([warning] if warning else []) + [f"{r['model']}: {r['env_id']} group {r['group']} ({r['arch']}), {r['episodes']} {r['mode']} episodes"
             f" per policy, {r['samples']} samples per target; return = group sum, mean per episode",
             f"{'target':>9}{' conditioned on' if r.get('calibrated') else ''} {'generated':>16} {'retrieval':>10}"
             f" {'norm score':>10} {'novelty':>8} {'agree':>6}"]
    for row in r["targets"]:
        flag = "" if row["in_range"] else "  (outside the dataset's range)"
        cond = f" {row['conditioned_on']:>14.1f}" if r.get("calibrated") else ""
        lines.append(f"{row['target']:>9.1f}{cond} {row['achieved_mean']:>9.1f} ± {row['achieved_std']:<4.1f}"
                     f" {row['retrieval']:>10.1f} {row['normalised_score']:>10.2f} {row['novelty']:>8.2f}"
                     f" {row['agreement']:>6.2f}{flag}")
    lines += [
        f"random {r['r_random']:.1f} | top-10% trained {r['r_top10']:.1f} ({r['top10_checkpoints']} checkpoints)"
        f" | best trained {r['best_trained']:.1f}",
        f"alignment R² {r['alignment_r2']:.3f} (retrieval {r['retrieval_alignment_r2']:.3f}) | Spearman"
        f" {r['spearman']:.3f} (retrieval {r['retrieval_spearman']:.3f})",
        f"normalised score at the top target {r['top_target']:.1f}: {r['normalised_score_top']:.2f}"
        f" (retrieval {r['retrieval_normalised_score_top']:.2f})",
    ] + ([selection_line(r) + f"; the first candidates alone: R² {r['first_candidates']['alignment_r2']:.3f},"
          f" Spearman {r['first_candidates']['spearman']:.3f}, score at the top"
          f" {r['first_candidates']['normalised_score_top']:.2f}"] if r.get("first_candidates") else []) + [
        f"novelty median {r['novelty_median']:.2f} | copies (relative L2 < {COPY_THRESHOLD:.0%}): {r['copies']}"
        f" (min {r['min_relative_l2']:.3f}) | action agreement with nearest checkpoint {r['agreement_mean']:.2f}",
        f"plot {r['plot']}\njson {r['json']}",
    ] + ([f"WARNING: the population learned nothing a generator can aim at (see above): {NO_LEARNING_ADVICE}"]
         if warning else [])
    return "\n".join(lines)
