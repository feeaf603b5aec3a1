"""What `pgen evaluate` shows: the table it prints and `alignment.png`.

The table gives, for the generator's default architecture, every target's conditioned-on return,
the generated policies' mean ± std, retrieval, noisy retrieval, interpolation, the normalised score,
novelty and action agreement; then the levels (R_random, R_top10) and one line per arm — the
generator alone (one request, the headline), retrieval, the audit's noisy retrieval and
interpolation, and the choice among candidates when asked — with alignment R², Spearman, score at
the top, novelty and agreement; with more than one architecture (an arch-family generator), a line
per architecture. The PNG has one panel per architecture: requested against achieved return, with the
identity line and the baselines.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pgen.evaluation.metrics import COPY_THRESHOLD, NO_LEARNING_ADVICE, learning_warning  # noqa: E402
from pgen.util.plots import save_figure  # noqa: E402


def arm_lines(r: dict[str, Any]) -> list[str]:
    """The generator alone and every baseline it is judged against, one line each (of one
    architecture's block `r`): alignment R², Spearman, score at the top, novelty, agreement."""
    fmt = lambda v, spec: "-" if v is None or v != v else format(v, spec)  # noqa: E731
    rows = [("generator (one request)", r["alignment_r2"], r["spearman"], r["normalised_score_top"],
             r["novelty_median"], r["agreement_mean"], r["copies"]),
            ("retrieval (closest checkpoint)", r["retrieval_alignment_r2"], r["retrieval_spearman"],
             r["retrieval_normalised_score_top"], 0.0, 1.0, None)]
    n, i = r["noisy_retrieval"], r["interpolation"]
    rows += [(f"noisy retrieval (σ {n['noise_std']:.3g})", n["alignment_r2"], n["spearman"], n["normalised_score_top"],
              n["novelty_median"], n["agreement_mean"], n["copies"]),
             (f"interpolation (k {i['k']})", i["alignment_r2"], i["spearman"], i["normalised_score_top"],
              i["novelty_median"], i["agreement_mean"], None)]
    if r.get("chosen"):
        c = r["chosen"]
        rows.append((f"chosen among {c['candidates']} ({c['selection_episodes']} sel. ep.)", c["alignment_r2"],
                     c["spearman"], c["normalised_score_top"], None, None, None))
    out = [f"{'':<34} {'R²':>7} {'Spearman':>8} {'score@top':>9} {'novelty':>7} {'agree':>6} {'copies':>6}"]
    for name, r2, rho, score, nov, agree, copies in rows:
        out.append(f"{name:<34} {fmt(r2, '7.3f')} {fmt(rho, '8.3f')} {fmt(score, '9.2f')} {fmt(nov, '7.2f')}"
                   f" {fmt(agree, '6.2f')} {'-' if copies is None else copies:>6}")
    return out


def format_result(r: dict[str, Any]) -> str:
    """The table of an evaluation (module doc)."""
    warning = learning_warning(r["learning_signal"], f"evaluate {r['model']}")
    lines = ([warning] if warning else []) + [
        f"{r['model']}: {r['env_id']} group {r['group']} ({r['default_arch']}), {r['episodes']} {r['mode']} episodes"
        f" per policy, {r['samples']} samples per target at τ {r['temperature']:g}; return = group sum, mean per episode",
        f"{'target':>9}{' conditioned on' if r.get('calibrated') else ''} {'generated':>16} {'retrieval':>10}"
        f" {'noisy ret.':>10} {'interp.':>8} {'norm score':>10} {'novelty':>8} {'agree':>6}"]
    for row in r["targets"]:
        flag = "" if row["in_range"] else "  (outside the dataset's range)"
        cond = f" {row['conditioned_on']:>14.1f}" if r.get("calibrated") else ""
        lines.append(f"{row['target']:>9.1f}{cond} {row['achieved_mean']:>9.1f} ± {row['achieved_std']:<4.1f}"
                     f" {row['retrieval']:>10.1f} {row['noisy_retrieval_mean']:>10.1f} {row['interpolation']:>8.1f}"
                     f" {row['normalised_score']:>10.2f} {row['novelty']:>8.2f} {row['agreement']:>6.2f}{flag}")
    top10 = f" of {', '.join(r['top10_archs'])}" if len(r["archs"]) > 1 else ""
    lines += [f"random {r['r_random']:.1f} | top-10% trained {r['r_top10']:.1f} ({r['top10_checkpoints']} checkpoints{top10})"
              f" | best trained {r['best_trained']:.1f} | top target {r['top_target']:.1f}",
              *arm_lines(r),
              f"novelty: distance to the nearest training checkpoint over the median distance between runs'"
              f" checkpoints; copies: within {COPY_THRESHOLD:.0%} relative L2 of one (closest {r['min_relative_l2']:.3f})"]
    if len(r["archs"]) > 1:
        lines += _arch_lines(r)
    lines.append(f"plot {r['plot']}\njson {r['json']}")
    if warning:
        lines.append(f"WARNING: the population learned nothing a generator can aim at (see above): {NO_LEARNING_ADVICE}")
    return "\n".join(lines)


def _arch_lines(r: dict[str, Any]) -> list[str]:
    """One line per architecture (trained or held out) of an evaluation with several."""
    lines = [f"per architecture (trained on {', '.join(r['trained_archs'])}):",
             f"{'architecture':<26} {'':>9} {'R²':>6} {'ρ':>6} {'score@top':>9} | {'transfer':>8} {'(R²)':>6} |"
             f" {'retrieval R²':>12} {'score':>6} | {'rand.init':>9} | {'novelty':>7} {'copies':>6} {'agree':>5}"]
    for a in r["archs"]:
        lines.append(f"{a['arch']:<26} {'trained' if a['trained'] else 'held out':>9} {a['alignment_r2']:>6.2f}"
                     f" {a['spearman']:>6.2f} {a['normalised_score_top']:>9.2f} | {a['transfer_score']:>8.2f}"
                     f" {a['transfer_alignment_r2']:>6.2f} | {a['retrieval_alignment_r2']:>12.2f}"
                     f" {a['retrieval_normalised_score_top']:>6.2f} | {a['random_init_score']:>9.2f} |"
                     f" {a['novelty_median']:>7.2f} {a['copies']:>6} {a['agreement_mean']:>5.2f}")
        if a.get("chosen"):
            c = a["chosen"]
            lines.append(f"{'  chosen among ' + str(c['candidates']):<26} {'':>9} {c['alignment_r2']:>6.2f}"
                         f" {c['spearman']:>6.2f} {c['normalised_score_top']:>9.2f}")
    lines.append("scores are normalised: (return − random) / (top-10 % trained − random); a held-out"
                 " architecture's retrieval and transfer are checkpoints grown into it")
    return lines


def _panel(ax: plt.Axes, result: dict[str, Any], a: dict[str, Any], title: str, legend: bool) -> None:
    """Requested vs achieved return of one architecture's block `a`, with the identity and the baselines."""
    pts, rows = a["points"], a["targets"]
    ax.scatter([p["target"] for p in pts], [p["achieved"] for p in pts], s=12, alpha=0.45, color="tab:blue",
               label="generated (each policy, one request)")
    if a.get("chosen"):
        ax.scatter([p["target"] for p in pts], [p["achieved_chosen"] for p in pts], s=14, marker="x", alpha=0.45,
                   color="tab:red", label=f"chosen among {a['chosen']['candidates']} (each)")
    ax.plot([r["target"] for r in rows], [r["achieved_mean"] for r in rows], "o-", color="tab:blue",
            label="generated (mean per target)")
    ax.plot([r["target"] for r in rows], [r["retrieval"] for r in rows], "s--", color="tab:orange", alpha=0.8,
            label="retrieval (closest training checkpoint)" + ("" if a["trained"] else ", grown into it"))
    ax.plot([r["target"] for r in rows], [r["noisy_retrieval_mean"] for r in rows], "v:", color="tab:grey", alpha=0.8,
            label="noisy retrieval (mean, novelty matched)")
    ax.plot([r["target"] for r in rows], [r["interpolation"] for r in rows], "d-.", color="tab:green", alpha=0.7,
            label=f"interpolation of {a['interpolation']['k']} checkpoints")
    if not a["trained"]:
        ax.axhline(a["transfer"], color="tab:purple", ls="-.", lw=1, label="transfer of the best checkpoint")
        ax.axhline(a["random_init"], color="tab:brown", ls=":", lw=1, label="random init")
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
    ax.set_title(f"{title}\nR² {a['alignment_r2']:.2f}, Spearman {a['spearman']:.2f},"
                 f" score at top {a['normalised_score_top']:.2f}", fontsize=9)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="lower right")


def plot_alignment(result: dict[str, Any], path: Path) -> Path:
    """alignment.png: one panel per architecture (module doc)."""
    archs = result["archs"]
    cols = min(3, len(archs))
    rows = math.ceil(len(archs) / cols)
    size = (6.2, 5.4) if len(archs) == 1 else (4.6 * cols, 4.3 * rows)
    fig, axes = plt.subplots(rows, cols, figsize=size, dpi=110 if len(archs) == 1 else 100, squeeze=False)
    for i, (ax, a) in enumerate(zip(axes.flat, archs)):
        title = result["model"] if len(archs) == 1 else f"{'' if a['trained'] else 'held out: '}{a['arch']}"
        _panel(ax, result, a, title, legend=i == 0)
    for ax in list(axes.flat)[len(archs):]:
        ax.axis("off")
    fig.supxlabel("requested return")
    fig.supylabel(f"achieved return ({result['mode']}, {result['episodes']} episodes)")
    if len(archs) > 1:
        fig.suptitle(f"{result['model']} ({result['arch']})", fontsize=10)
    return save_figure(fig, axes.flat[0], path)
