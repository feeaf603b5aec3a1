"""What a sweep shows when it ends: one row per trial, a table, and a PNG of the objective against
the swept hyper-parameters beside every trial's validation curve."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from pgen.util.fileio import atomic_write  # noqa: E402

SCORES = ("objective", "alignment_r2", "spearman", "normalised_score_top")


def trial_rows(analysis: Any, epochs: int, metric: str) -> list[dict[str, Any]]:
    """One dict per trial of a Tune ExperimentAnalysis: id, status, config, epochs reached, failures,
    the metric's curve and last value, the scores of the final evaluation."""
    rows = []
    for trial in analysis.trials:
        m = trial.last_result or {}
        df = analysis.trial_dataframes.get(trial.trial_id)
        curve = ([] if df is None or metric not in df else
                 [(int(e), float(v)) for e, v in zip(df["epoch"], df[metric]) if not math.isnan(v)])
        epoch = int(m.get("epoch", 0))
        rows.append({
            "trial_id": trial.trial_id, "status": trial.status, "config": dict(trial.config), "epoch": epoch,
            "failures": trial.num_failures, "stopped_early": trial.status == "TERMINATED" and epoch < epochs,
            metric: m.get(metric), f"best_{metric}": min((v for _, v in curve), default=None), "curve": curve,
            **{k: m.get(k) for k in SCORES},
            "error": str(trial.get_error())[:500] if trial.status == "ERROR" else None,
        })
    return rows


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, float) else str(value)


def format_trials(summary: dict[str, Any]) -> str:
    """The trials best first (objective, then the per-epoch metric), the counts and the best."""
    metric, rows = summary["metric"], summary["trials"]
    order = sorted(rows, key=lambda r: (-(r["objective"] if r["objective"] is not None else -math.inf),
                                        r[metric] if r[metric] is not None else math.inf))
    lines = [f"sweep {summary['name']}: {len(rows)} trials of ≤ {summary['epochs']} epochs on {summary['slice']['env_key']}"
             f" / {summary['slice']['group']} / {summary['slice']['arch']} ({summary['slice']['rows']} checkpoints;"
             f" validation runs {', '.join(summary['slice']['val_runs'])})",
             f"{'trial':<12} {'status':<10} {'epochs':>6} {metric:>10} {'R²':>7} {'score':>6} {'objective':>9}  config"]
    for r in order:
        status = "stopped" if r["stopped_early"] else r["status"].lower()
        config = " ".join(f"{k}={_fmt(v, '.3g')}" for k, v in sorted(r["config"].items()))
        lines.append(f"{r['trial_id']:<12} {status:<10} {r['epoch']:>6} {_fmt(r[metric], '.4f'):>10}"
                     f" {_fmt(r['alignment_r2']):>7} {_fmt(r['normalised_score_top'], '.2f'):>6}"
                     f" {_fmt(r['objective']):>9}  {config}")
    lines.append(f"{summary['evaluated']} evaluated by rollouts, {summary['stopped_early']} stopped early by ASHA,"
                 f" {summary['failed']} failed; objective = alignment R² + normalised score at the top target"
                 f" (random {summary['baselines']['r_random']:.1f}, top-10 % {summary['baselines']['r_top10']:.1f})")
    best = summary.get("best")
    if best:
        lines.append(f"best: trial {best['trial_id']} (objective {best['objective']:.3f})"
                     + (f", registered as {best['model']}" if best.get("model") else ", not registered"))
    elif summary["interrupted"]:
        lines.append("interrupted: resume=true continues it")
    lines.append(f"TensorBoard: tensorboard --logdir {summary['storage']}")
    return "\n".join(lines)


def _positions(values: list[Any]) -> tuple[np.ndarray, list[str] | None]:
    """x positions for a hyper-parameter's values: numbers as they are, anything else as categories."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=float), None
    labels = sorted({str(v) for v in values})
    return np.array([labels.index(str(v)) for v in values], dtype=float), labels


def plot_trials(rows: list[dict[str, Any]], space: dict[str, Any], metric: str, path: Path, title: str) -> Path:
    """The objective of the evaluated trials against each swept hyper-parameter (trials ASHA stopped
    marked × at the bottom), and every trial's validation curve."""
    keys = sorted(space)
    ncols = 4
    nrows = math.ceil((len(keys) + 1) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.9 * nrows), dpi=100, squeeze=False)
    scored = [r for r in rows if r["objective"] is not None and math.isfinite(r["objective"])]
    others = [r for r in rows if r not in scored]
    low = min([r["objective"] for r in scored], default=0.0)
    high = max([r["objective"] for r in scored], default=1.0)
    floor = low - 0.15 * max(high - low, 0.1)
    best = max(scored, key=lambda r: r["objective"], default=None)
    for ax, key in zip(axes.flat, keys):
        present = [r for r in rows if key in r["config"]]
        x, labels = _positions([r["config"][key] for r in present])
        y = np.array([r["objective"] if r in scored else floor for r in present], dtype=float)
        hit = np.array([r in scored for r in present], dtype=bool)
        ax.scatter(x[hit], y[hit], color="tab:blue", s=22)
        ax.scatter(x[~hit], y[~hit], color="grey", marker="x", s=22)
        if best is not None and best in present:
            i = present.index(best)
            ax.scatter([x[i]], [y[i]], s=90, facecolors="none", edgecolors="red")
        if labels:
            ax.set_xticks(range(len(labels)), labels)
        if (space[key] or {}).get("loguniform"):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    first = axes.flat[0]
    first.set_ylabel("objective (R² + score)", fontsize=8)
    curves = axes.flat[len(keys)]
    for r in rows:
        if r["curve"]:
            e, v = zip(*r["curve"])
            style = "-" if r in scored else ":"
            curves.plot(e, v, style, linewidth=2.2 if r is best else 1, color="black" if r is best else None)
    curves.set(title=f"{metric} per epoch (black: best; dotted: stopped)", xlabel="epoch")
    curves.title.set_fontsize(9)
    curves.grid(alpha=0.3)
    curves.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys) + 1:]:
        ax.axis("off")
    fig.suptitle(f"{title}: objective of the {len(scored)} evaluated trials (best circled red); × = stopped early"
                 f" or failed ({len(others)})", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
