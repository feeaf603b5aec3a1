"""Checks of values that come from users and requests."""

from __future__ import annotations

import math
from typing import Any


def check_target(value: Any, what: str = "target_return") -> float:
    """A finite float, or ValueError naming the problem."""
    try:
        target = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(target):
        raise ValueError(f"{what} must be a finite number, got {target}")
    return target
