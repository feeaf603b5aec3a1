"""The return a generator is conditioned on: its scale, and the calibration curve a request goes through.

- `ReturnScale`: a return's position in the training returns' distribution — the empirical CDF
  through the 0th, 1st, …, 100th percentiles, piecewise linear, so [min, max] maps to [0, 1] with
  equal resolution for every percentile (a few very low returns of initial policies do not squash
  the top of the range); beyond the range it continues linearly with slope 1 / (max − min), so
  out-of-range targets map outside [0, 1]. Every kind's normaliser holds one.
- `condition_for`: a calibration curve (measured by `pgen.evaluation.calibration` after a fit:
  which return the policies conditioned on c achieve) inverted — a request for t is conditioned on
  the return whose policies achieved t; `adopted` says whether a version's curve is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch


def spread_ties(knots: np.ndarray, span: float) -> np.ndarray:
    """Non-decreasing `knots` made strictly increasing for `np.interp`: the i-th moved up by
    i × span × 1e-9 (`span`: their range, so the move is negligible at any scale)."""
    return knots + np.arange(len(knots)) * span * 1e-9


@dataclass
class ReturnScale:
    """The empirical-CDF scale of the return condition (module doc)."""

    knots: torch.Tensor  # [101] float64, non-decreasing: the 0th … 100th percentiles of the training returns

    @classmethod
    def fit(cls, returns: np.ndarray) -> "ReturnScale":
        return cls(torch.from_numpy(np.percentile(np.asarray(returns, np.float64), np.arange(101))))

    @property
    def low(self) -> float:
        return float(self.knots[0])

    @property
    def high(self) -> float:
        return float(self.knots[-1])

    def condition(self, returns: torch.Tensor) -> torch.Tensor:
        """Return → its empirical-CDF position in [0, 1]; linear continuation outside the range."""
        r = returns.double().cpu().numpy()
        knots = self.knots.numpy()
        span = max(self.high - self.low, 1e-8)
        xs = spread_ties(knots, span)
        c = np.interp(r, xs, np.linspace(0.0, 1.0, len(knots)))
        c = np.where(r < xs[0], (r - xs[0]) / span, c)
        c = np.where(r > xs[-1], 1.0 + (r - xs[-1]) / span, c)
        return torch.from_numpy(c).to(returns.device)


def adopted(curve: Mapping[str, Any] | None) -> bool:
    """Whether requests go through `curve`: a curve its validation rejected is kept in config.json
    (and calibration.png) but not used; curves of versions fitted before the validation are."""
    return bool(curve) and bool(curve.get("adopted", True))


def condition_for(calibration: Mapping[str, Any], targets: np.ndarray) -> np.ndarray:
    """The return to condition on for each requested return `targets`: where the fitted curve of
    `calibration` reaches each target (flat stretches of the fit too); a target beyond the curve's
    end asks for the condition at that end (conditioned beyond the data the model extrapolates and
    plays worse)."""
    t = np.asarray(targets, np.float64)
    c = np.asarray(calibration["conditions"], np.float64)
    f = np.asarray(calibration["fitted"], np.float64)
    return np.interp(t, spread_ties(f, max(float(f[-1] - f[0]), 1e-8)), c)
