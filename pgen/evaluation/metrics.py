"""The metrics of docs/design.md ("Metrics"), as pure functions shared by `pgen evaluate`, Tune and benches.

- alignment R² against the identity: `1 − Σ(a_i − t_i)² / Σ(t_i − mean t)²`, and Spearman ρ beside it;
- normalised score `(a − R_random) / (R_top10 − R_random)`;
- novelty: nearest-neighbour distance to the training checkpoints (standardised parameter space)
  over the median nearest-neighbour distance between checkpoints of different runs, and the
  relative L2 distance `‖g − x‖ / ‖x‖` to the nearest training vector (copy check);
- behavioural agreement: the fraction of greedy actions equal to the nearest neighbour's;
- learning signal: whether a slice's checkpoints show anything a generator could learn to aim at.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from pgen.policies.nets import Actor

COPY_THRESHOLD = 0.01  # relative L2 below which a generated vector counts as a copy of a training vector


def alignment_r2(targets: np.ndarray, achieved: np.ndarray) -> float:
    """R² of achieved against the identity line (not a fitted line): bias is penalised."""
    t, a = np.asarray(targets, np.float64), np.asarray(achieved, np.float64)
    spread = ((t - t.mean()) ** 2).sum()
    if t.size < 2 or spread == 0:
        return float("nan")
    return float(1.0 - ((a - t) ** 2).sum() / spread)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ (`scipy.stats.spearmanr`, ties at their average rank); NaN for fewer than two
    points or a constant side."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def isotonic_increasing(y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The non-decreasing sequence closest to `y` in weighted least squares (pool adjacent violators)."""
    y = np.asarray(y, np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, np.float64)
    means, wsum, counts = [], [], []
    for v, wi in zip(y, w):
        means.append(v), wsum.append(wi), counts.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            m, n, c = means.pop(), wsum.pop(), counts.pop()
            means[-1] = (means[-1] * wsum[-1] + m * n) / (wsum[-1] + n)
            wsum[-1] += n
            counts[-1] += c
    return np.repeat(means, counts)


def target_percentiles(returns: np.ndarray, n: int) -> list[float]:
    """The alignment grid of docs/design.md "Metrics": `n` evenly spaced percentiles 5–95 of the training
    returns, then their maximum (`pgen evaluate`'s grid before its extra targets, and the
    calibration's validation grid)."""
    returns = np.asarray(returns, np.float64)
    return [float(np.percentile(returns, q)) for q in np.linspace(5, 95, n)] + [float(returns.max())]


def r2_gain(targets: np.ndarray, base: np.ndarray, other: np.ndarray, rounds: int = 1000,
            seed: int = 0) -> tuple[float, float]:
    """(gain, standard error): the alignment R² of `other` minus that of `base`, paired achieved
    returns of the same policies' noise for the same `targets`, and the standard deviation of that
    gain over `rounds` bootstrap resamples of the pairs within each target (the grid stays fixed;
    NaN with fewer than two pairs)."""
    t, a, b = (np.asarray(x, np.float64) for x in (targets, base, other))
    gain = alignment_r2(t, b) - alignment_r2(t, a)
    if t.size < 2:
        return gain, float("nan")
    rng = np.random.default_rng(seed)
    picks = np.empty((rounds, t.size), np.int64)
    for value in np.unique(t):
        rows = np.flatnonzero(t == value)
        picks[:, rows] = rows[rng.integers(0, rows.size, (rounds, rows.size))]
    tt, sst = t[picks], ((t[picks] - t[picks].mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        gains = (((a[picks] - tt) ** 2).sum(axis=1) - ((b[picks] - tt) ** 2).sum(axis=1)) / sst
    return gain, float(np.std(gains[np.isfinite(gains)])) if np.isfinite(gains).any() else float("nan")


def normalised_score(achieved: np.ndarray | float, r_random: float, r_top: float) -> np.ndarray | float:
    """1.0 = on par with the best 10 % of training checkpoints, 0.0 = uniform random."""
    return (np.asarray(achieved, np.float64) - r_random) / (r_top - r_random)


def nearest(queries: np.ndarray, refs: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance to, and index of, the nearest row of `refs` for each row of `queries`."""
    r = torch.from_numpy(np.asarray(refs, np.float32))
    dist, idx = [], []
    for i in range(0, len(queries), chunk):
        d = torch.cdist(torch.from_numpy(np.asarray(queries[i : i + chunk], np.float32)), r)
        v, j = d.min(dim=1)
        dist.append(v.numpy())
        idx.append(j.numpy())
    return np.concatenate(dist), np.concatenate(idx)


def cross_run_nn_median(refs: np.ndarray, run_ids: np.ndarray) -> float:
    """Median over checkpoints of the distance to the nearest checkpoint of a *different* run."""
    r = torch.from_numpy(np.asarray(refs, np.float32))
    runs = np.asarray(run_ids)
    if len(set(runs.tolist())) < 2:
        return float("nan")
    out = []
    for i in range(0, len(r), 256):
        d = torch.cdist(r[i : i + 256], r).numpy()
        d[runs[i : i + 256, None] == runs[None, :]] = np.inf
        out.append(d.min(axis=1))
    return float(np.median(np.concatenate(out)))


def min_relative_l2(queries: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """For each query g: min over refs x of ‖g − x‖ / ‖x‖ (raw parameters)."""
    q = torch.from_numpy(np.asarray(queries, np.float32))
    r = torch.from_numpy(np.asarray(refs, np.float32))
    norms = r.norm(dim=1).clamp_min(1e-12)
    return (torch.cdist(q, r) / norms).min(dim=1).values.numpy()


@torch.no_grad()
def action_agreement(a: Actor, b: Actor, obs: torch.Tensor, starts: torch.Tensor, tol: float = 0.1) -> float:
    """Fraction of states where the greedy actions agree: same argmax (discrete), or every
    action dimension's mean within `tol` (continuous). `obs` `[T, B, obs_dim]`, `starts` `[T, B]`
    (recurrent state reset where 1)."""
    h0a = a.initial_state(obs.shape[1]) if a.recurrent else None
    h0b = b.initial_state(obs.shape[1]) if b.recurrent else None
    out_a, out_b = a.forward_sequence(obs, h0a, starts), b.forward_sequence(obs, h0b, starts)
    if a.spec.discrete:
        return float((out_a.argmax(-1) == out_b.argmax(-1)).float().mean())
    return float(((out_a - out_b).abs().amax(-1) <= tol).float().mean())


def learning_signal(returns: np.ndarray, episode_std: float, episodes: int, r_random: float,
                    r_top: float | None = None) -> dict[str, Any]:
    """Whether checkpoints with these `returns` (each a mean over `episodes` episodes whose returns
    have standard deviation `episode_std`) show learning a generator can aim at.

    Two failures, each a reason in the result: the best checkpoints (`r_top`, default the mean of
    the top 10 % of `returns`) are not better than uniform random play (`r_random`) by more than
    two standard errors of a mean over `episodes` episodes; or the returns span (max - min) less
    than one episode's noise (`episode_std`), so there is no return to tell apart. `learned` is
    True when neither holds.
    """
    returns = np.asarray(returns, np.float64)
    if r_top is None:
        r_top = float(np.sort(returns)[::-1][: max(1, math.ceil(0.1 * len(returns)))].mean())
    margin = 2.0 * episode_std / math.sqrt(max(1, episodes))
    spread = float(returns.max() - returns.min())
    reasons = []
    if r_top - r_random <= margin:
        reasons.append(f"the best checkpoints play {r_top:.1f}, no better than uniform random ({r_random:.1f})"
                       f" beyond the noise of {episodes} episodes (±{margin:.1f})")
    if spread < episode_std:
        reasons.append(f"the checkpoints' returns span {spread:.1f}, less than one episode's noise"
                       f" (std {episode_std:.1f}): there is no return to tell apart")
    return {"learned": not reasons, "reasons": reasons, "r_random": float(r_random), "r_top": float(r_top),
            "return_spread": spread, "episode_std": float(episode_std), "episodes": int(episodes),
            "noise_margin": float(margin)}


NO_LEARNING_ADVICE = ("give the population more to learn from: a larger population.max_env_steps (or"
                      " population.duration_s) and population.size, and check that the env rewards what you"
                      " expect (env.kwargs) and the PPO settings (algo.lr, algo.ent_coef, algo.num_envs)")


def learning_warning(signal: dict[str, Any], what: str) -> str:
    """A prominent multi-line warning for a `learning_signal` that failed ('' when it did not)."""
    if signal["learned"]:
        return ""
    bar = "!" * 100
    lines = [bar, f"WARNING: {what}: the population learned nothing a generator can aim at:"]
    lines += [f"  - {r}" for r in signal["reasons"]]
    lines += [f"  The generator's figures below measure noise, not conditioning. To fix it, {NO_LEARNING_ADVICE}.", bar]
    return "\n".join(lines)

