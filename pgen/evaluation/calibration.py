"""Calibrating a generator's return condition, so that asking for a return t gives a policy that plays t.

A fitted VAE's achieved return rises with the return it is conditioned on, but compressed: on the
quick profile's seed 1, conditioning on −111 (the 5th percentile of its data) played −85, and
conditioning on −133 played −102 (bench/README.md "The main job"). After the fit,
`calibrate` conditions on `points` returns (half at the quantiles of the training rows' returns,
half evenly over their range) and `refine` more (each midway between the neighbours whose policies
played most differently), generates `samples` policies for each (noise seeded from
CALIBRATION_SEED, the default temperature), plays them greedily on `episodes` calibration episodes
(CALIBRATION_SEED: neither the populations' checkpoint evaluation nor `pgen evaluate`'s held-out
episodes, so the evaluation does not grade the calibration on its own noise), starts the curve at
the condition whose policies played worst (below it the curve turns back up) and fits the
non-decreasing curve achieved(condition) through the rest (isotonic regression). `validation` then
checks it on a grid of its own noise and adopts it only if it aligns requested and achieved return
better than conditioning on the request, by more than that grid's noise. The curve (adopted or not) is the
version's `calibration` in config.json; `pgen.generator.condition.condition_for` inverts it: a request for t is conditioned
on the return whose policies achieved t, and a t beyond what any achieved on the curve's end
(conditioned beyond the data the model extrapolates and plays worse: on the quick profile's seed 0,
the data's best plus the curve's 4-point shortfall played −61 in the evaluation where the best
condition played −52).
An arch-family version is calibrated per trained architecture, over that architecture's training
rows: its `calibration` is {arch key: curve}, and a request for any architecture goes through the
curve of the trained architecture its policies come from (`Generator.source_key`: itself, or
the transfer source of a held-out one), then is clipped to that architecture's range as before.
Versions without `calibration` (fitted before it, or with `generator.calibration.points=0`) are
conditioned on the target as asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pgen.config import DEFAULT_TEMPERATURE, CalibrationSettings, ConfigError, EnvConfig  # noqa: E402
from pgen.dataset.slices import Slice  # noqa: E402
from pgen.evaluation.metrics import alignment_r2, isotonic_increasing, r2_gain, target_percentiles  # noqa: E402
from pgen.generator.condition import adopted, condition_for  # noqa: E402
from pgen.generator.sample import Generator  # noqa: E402
from pgen.policies.nets import Actor  # noqa: E402
from pgen.policies.rollout import CALIBRATION_SEED, reference_returns  # noqa: E402
from pgen.policies.spec import PolicySpec  # noqa: E402
from pgen.util.plots import save_figure  # noqa: E402
from pgen.util.progress import log  # noqa: E402


VALIDATION_TARGETS = 8  # percentiles of the validation grid (`validation`), besides the maximum
VALIDATION_ROUND = 1_000  # its noise seed's offset from CALIBRATION_SEED (refinement rounds use 1, 2, …)


def check_calibration_settings(settings: CalibrationSettings) -> None:
    """ConfigError naming the setting when `generator.calibration` cannot be run (`pgen pipeline` and
    `pgen loop` check it before Ray starts, `train-generator` before its fit)."""
    if settings.points != 0 and settings.points < 2:
        raise ConfigError(f"generator.calibration.points must be 0 (off) or >= 2, got {settings.points}")
    if settings.samples < 1 or settings.episodes < 1:
        raise ConfigError("generator.calibration.samples and .episodes must be >= 1, got"
                         f" {settings.samples} and {settings.episodes}")
    if settings.refine < 0 or settings.validation_samples < 0 or not settings.validation_margin >= 0:
        raise ConfigError("generator.calibration.refine, .validation_samples and .validation_margin must be"
                          f" >= 0, got {settings.refine}, {settings.validation_samples} and {settings.validation_margin}")


def calibrate(gen: Generator, env_cfg: EnvConfig, others: Mapping[str, Actor], data: Slice,
              settings: CalibrationSettings, train_runs: Sequence[str] | None = None,
              label: str = "calibrate") -> dict[str, dict[str, Any]]:
    """Measure a calibration curve of `gen` (module docstring) for each architecture of `data`, over
    the returns of that architecture's rows of `train_runs` (None: every row), its group played
    against the fixed `others`, and make them the version's (`gen.set_calibration`); logs each.
    Returns the curves by arch key: none when `settings.points` is 0, or where no curve could be
    measured (the returns are all one value, or fewer than two conditions gave finite policies)."""
    gen.set_calibration({})
    curves = {}
    for key, part in data.parts.items():
        spec = data.specs[key]
        rows = np.ones(len(part), bool) if train_runs is None else np.isin(part.run_ids, list(train_runs))
        play = lambda params, spec=spec: reference_returns(  # noqa: E731
            env_cfg, others, gen.info["group"], spec, params, settings.episodes, label=label,
            seed=CALIBRATION_SEED).mean(axis=1)
        where = f"{label} ({key})" if len(data.parts) > 1 else label
        if not rows.any():
            if settings.points:
                log.warning(f"{where}: not calibrated (no training rows of this architecture): requests are"
                            " conditioned on the target as asked")
            continue
        curve = calibration_curve(gen, part.returns[rows], settings, play, spec)
        if curve is not None:
            curves[key] = curve
            points = ", ".join(f"{c:.1f} → {f:.1f}" for c, f in zip(curve["conditions"], curve["fitted"]))
            check = curve.get("validation")
            verdict = "" if check is None else (
                f"; validation R² {check['r2_as_asked']:.3f} as asked, {check['r2_calibrated']:.3f} calibrated"
                f" (gain's standard error {check['gain_se']:.3f}): "
                + ("adopted" if check["adopted"] else "not adopted, requests are conditioned on the target as asked"))
            log.info(f"{where}: calibrated (conditioned on → achieved, fitted): {points}{verdict}")
        elif settings.points:
            log.warning(f"{where}: not calibrated (the training returns are one value, or the policies are not"
                        " finite): requests are conditioned on the target as asked")
    gen.set_calibration(curves)
    return curves


def calibration_curve(gen: Generator, returns: np.ndarray, settings: CalibrationSettings,
                      play: Callable[[np.ndarray], np.ndarray], spec: PolicySpec | None = None) -> dict[str, Any] | None:
    """The curve `calibrate` records for the architecture `spec` (default: the generator's), with
    `play(params [n, P]) -> [n]` measuring each policy's achieved return (finite rows only); None
    when there is nothing to calibrate."""
    check_calibration_settings(settings)
    if settings.points == 0:
        return None
    returns = np.asarray(returns, np.float64)
    # half at the returns' quantiles (where the rows are), half evenly over their range (where they are few)
    quantiles = np.percentile(returns, np.linspace(0, 100, settings.points - settings.points // 2))
    conditions = np.unique(np.concatenate([quantiles, np.linspace(returns.min(), returns.max(), settings.points // 2)]))
    if len(conditions) < 2:
        return None
    def measure(at: np.ndarray, round_: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean achieved return, finite policies) per condition of `at`."""
        achieved = played(gen, np.repeat(at, settings.samples), CALIBRATION_SEED + round_, play, spec)
        per_condition = achieved.reshape(len(at), settings.samples)
        counts = np.isfinite(per_condition).sum(axis=1)
        with np.errstate(invalid="ignore"):
            return np.where(counts > 0, np.nansum(per_condition, axis=1) / np.maximum(counts, 1), np.nan), counts

    means, counts = measure(conditions, 0)
    # refinement: one more condition between each of the neighbours whose achieved returns differ most
    # (a cliff: there the linear interpolation between two conditions is furthest off), in rounds of 4
    for round_ in range(1, 1 + -(-settings.refine // 4)):
        ok = np.isfinite(means)
        if ok.sum() < 2:
            break
        c_ok, m_ok = conditions[ok], means[ok]
        gaps = np.argsort(-np.abs(np.diff(m_ok)), kind="stable")[:min(4, settings.refine - 4 * (round_ - 1))]
        extra = (c_ok[gaps] + c_ok[gaps + 1]) / 2
        more, more_counts = measure(extra, round_)
        order = np.argsort(np.concatenate([conditions, extra]), kind="stable")
        conditions = np.concatenate([conditions, extra])[order]
        means, counts = np.concatenate([means, more])[order], np.concatenate([counts, more_counts])[order]
    keep = counts > 0
    if keep.sum() < 2:
        return None
    conditions, counts, means = conditions[keep], counts[keep], means[keep]
    # below the condition whose policies play worst the curve turns back up (the lowest rows, a run's
    # first checkpoints, are too few and too diverse to decode): the calibration starts there
    lowest = int(np.argmin(means))
    if len(means) - lowest < 2:
        return None
    conditions, counts, means = conditions[lowest:], counts[lowest:], means[lowest:]
    curve = {"conditions": conditions.tolist(), "achieved": means.tolist(),
             "fitted": isotonic_increasing(means, counts).tolist(), "samples": settings.samples,
             "episodes": settings.episodes, "temperature": DEFAULT_TEMPERATURE, "seed": CALIBRATION_SEED}
    if settings.validation_samples:
        curve["validation"] = validation(gen, curve, returns, settings.validation_samples, play, spec,
                                         settings.validation_margin)
        curve["adopted"] = curve["validation"]["adopted"]
    return curve


def played(gen: Generator, conditions: np.ndarray, seed: int, play: Callable[[np.ndarray], np.ndarray],
           spec: PolicySpec | None) -> np.ndarray:
    """The achieved return of one policy per row of `conditions` (noise from `seed`, the default
    temperature), decoded conditioned on exactly that return (not through a calibration); NaN for a
    policy that is not finite."""
    noise = gen.noise(len(conditions), seed, DEFAULT_TEMPERATURE)
    was, gen.calibrated = gen.calibrated, False
    try:
        params = gen.decode(np.asarray(conditions, np.float64), noise, spec)
    finally:
        gen.calibrated = was
    finite = np.isfinite(params).all(axis=1)
    achieved = np.full(len(params), np.nan)
    if finite.any():
        achieved[finite] = play(params[finite])
    return achieved


def validation(gen: Generator, curve: Mapping[str, Any], returns: np.ndarray, samples: int,
               play: Callable[[np.ndarray], np.ndarray], spec: PolicySpec | None = None,
               margin: float = 1.0) -> dict[str, Any]:
    """Does `curve` align requested and achieved return better than conditioning on the request? On
    a grid like `pgen evaluate`'s (`target_percentiles`: VALIDATION_TARGETS percentiles 5–95 of
    `returns` and their maximum), `samples` policies per target with noise of their own
    (CALIBRATION_SEED + VALIDATION_ROUND, the same for both), once conditioned through the curve and
    once on the target: the alignment R² (docs/design.md) of each over every finite policy, and the
    standard error of the curve's gain (`r2_gain`, over the policies finite in both). `adopted` when
    the gain is positive and at least `margin` standard errors. A generator that already plays what
    it is asked for gains only the noise of a curve measured on a few policies per condition
    (bench/README "Evaluation noise": on the quick profile's seed 0, R² 0.86 as asked and 0.75 through
    its curve, mean over 8 noise draws), and a gain within one grid's noise is not one (the full
    profile's seed 0: +0.006 on the validation grid, −0.056 over 8 draws of the evaluation's)."""
    targets = target_percentiles(returns, VALIDATION_TARGETS)
    t = np.repeat(targets, samples)
    achieved = {name: played(gen, conditions, CALIBRATION_SEED + VALIDATION_ROUND, play, spec)
                for name, conditions in (("as_asked", t), ("calibrated", condition_for(curve, t)))}
    r2 = {}
    for name, a in achieved.items():
        ok = np.isfinite(a)
        r2[name] = alignment_r2(t[ok], a[ok]) if ok.sum() >= 2 else float("nan")
    both = np.isfinite(achieved["as_asked"]) & np.isfinite(achieved["calibrated"])
    se = r2_gain(t[both], achieved["as_asked"][both], achieved["calibrated"][both], seed=CALIBRATION_SEED)[1]
    gain = r2["calibrated"] - r2["as_asked"]
    adopt = bool((gain > 0 and gain >= margin * (se if np.isfinite(se) else 0.0)) or (
        np.isnan(r2["as_asked"]) and not np.isnan(r2["calibrated"])))
    return {"targets": len(targets), "samples": samples, "r2_as_asked": r2["as_asked"],
            "r2_calibrated": r2["calibrated"], "gain_se": se, "margin": margin, "adopted": adopt}


def plot_calibration(curves: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> Path:
    """Achieved return over the conditioned-on return: the measured means, the fitted curve (one
    colour per architecture of an arch-family version), the identity."""
    fig, ax = plt.subplots(figsize=(6.2, 5.0), dpi=110)
    lo, hi = np.inf, -np.inf
    for i, (key, curve) in enumerate(curves.items()):
        c, a, f = (np.asarray(curve[k]) for k in ("conditions", "achieved", "fitted"))
        colour, arch = f"C{i}", f"{key}: " if len(curves) > 1 else ""
        arch += "" if adopted(curve) else "(not adopted) "
        ax.plot(c, a, "o", color=colour, label=f"{arch}achieved (mean of {curve['samples']} policies)")
        ax.plot(c, f, "-", color=colour, label=f"{arch}fitted (non-decreasing): a request for t is conditioned on f⁻¹(t)")
        lo, hi = min(lo, float(min(c.min(), a.min()))), max(hi, float(max(c.max(), a.max())))
        episodes = curve["episodes"]
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="identity")
    ax.set(title=title, xlabel="return conditioned on", ylabel=f"achieved return (greedy, {episodes} calibration episodes)")
    return save_figure(fig, ax, path, {"fontsize": 7, "loc": "lower right"})
