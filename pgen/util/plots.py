"""PNG plots a person would rather look at than a table (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pgen.util.fileio import atomic_write  # noqa: E402


def save_figure(fig: plt.Figure, ax: plt.Axes, path: str | Path, legend: Mapping[str, object] | None = None) -> Path:
    """Grid, legend (`legend`: its keyword arguments; None: none), tight layout; the PNG written
    atomically (a reader never sees half a file); the figure closed."""
    ax.grid(alpha=0.3)
    if legend is not None:
        ax.legend(**legend)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average that ignores NaNs (iterations with no finished episode)."""
    v = np.asarray(values, dtype=float)
    out = np.full_like(v, np.nan)
    for i in range(len(v)):
        chunk = v[max(0, i - window + 1) : i + 1]
        chunk = chunk[~np.isnan(chunk)]
        if chunk.size:
            out[i] = chunk.mean()
    return out


def plot_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, title: str,
                xlabel: str = "env steps", ylabel: str = "return", hlines: Mapping[str, float] | None = None,
                window: int = 10) -> Path:
    """One line per label (x, y), smoothed over `window` points; dashed reference lines."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, (x, y) in curves.items():
        ax.plot(x, smooth(y, window), label=label, linewidth=1.4)
    for label, value in (hlines or {}).items():
        ax.axhline(value, linestyle="--", linewidth=1, color="grey")
        ax.annotate(label, (0.01, value), xycoords=("axes fraction", "data"), fontsize=8, color="grey",
                    va="bottom")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return save_figure(fig, ax, path, {"fontsize": 8} if curves else None)
