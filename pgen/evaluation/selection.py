"""Generated policies chosen among candidates: the one whose played return is closest to the target.

A generator's samples for one condition spread over tens of return units where its data is thin
(the first checkpoints of each run: bench/README "Selection"). With `candidates` K > 1, every policy
handed out is the closest to the target of K generated for it: each candidate is played greedily on
`selection_episodes` episodes of their own seeds (SELECTION_SEED: neither the populations'
checkpoint evaluation, nor the calibration's, nor `pgen evaluate`'s held-out episodes, so the
evaluation does not grade the choice on the noise it was made on), and the one whose mean return is
nearest the target is kept. A target at or above the best return of the generator's data
(`return_range`'s top: the best any training checkpoint of that architecture recorded) asks for the
best ever seen, so there the candidate that played best is kept (the evaluation's top-10 %
checkpoints, re-measured on other episodes, can play above that best recorded return: quick profile
seed 0, top target −54.6, R_top10 −53.3). The parameters are still generated, not trained or copied:
choosing costs K · `selection_episodes` episodes per policy and no gradient step.

The first candidate of every slot is drawn with exactly the noise of `candidates=1` (the same call,
the same seed), so `first` is what the generator alone hands out, and an evaluation can report both
on the same draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pgen.config import DEFAULT_TEMPERATURE, ConfigError, EvaluateSettings
from pgen.generator.sample import Generator
from pgen.policies.spec import PolicySpec

CANDIDATE_NOISE_OFFSET = 1 << 40  # candidates 2…K draw their noise from the seed plus this (candidate 1: the seed)


@dataclass
class Selection:
    """`num` policies for one target: the ones handed out, each slot's first candidate, and what every
    candidate played on the selection episodes."""

    params: np.ndarray  # [num, P]: per slot, the chosen candidate (closest to the target; at the top, the best)
    first: np.ndarray  # [num, P]: per slot, the first candidate (what `candidates=1` gives)
    chosen: np.ndarray  # [num]: index of the chosen candidate per slot (0 … K-1)
    returns: np.ndarray  # [num, K]: each candidate's mean selection return (NaN: non-finite parameters); [num, 0] for K = 1


def closest(targets: np.ndarray, returns: np.ndarray) -> np.ndarray:
    """Per row of `returns` `[num, K]`, the index of the finite entry closest to that row's target
    (ties: the lowest index; a row with none finite: 0)."""
    distance = np.abs(np.asarray(returns, np.float64) - np.asarray(targets, np.float64)[:, None])
    distance[~np.isfinite(distance)] = np.inf
    return np.argmin(distance, axis=1)


def generate_selected(gen: Generator, target: float, num: int, candidates: int,
                      returns_of: Callable[[np.ndarray], np.ndarray], seed: int = 0,
                      temperature: float = DEFAULT_TEMPERATURE, spec: PolicySpec | None = None) -> Selection:
    """`num` policies of `spec` for `target`, each the closest to it of `candidates` generated ones (at
    a target ≥ the top of `gen.return_range(spec)`: the best one).

    `returns_of(params [N, P]) -> [N]` plays finite parameter rows on the selection episodes (it is
    not called for K = 1). Candidate 1 of every slot is `gen.generate(target, num, seed, …)` itself;
    candidates 2…K are `gen.generate(target, num · (K − 1), seed + CANDIDATE_NOISE_OFFSET, …)`."""
    check_selection(candidates, 1)
    first = gen.generate(target, num, seed=seed, temperature=temperature, spec=spec)
    if candidates == 1:
        return Selection(first, first, np.zeros(num, np.int64), np.empty((num, 0)))
    more = gen.generate(target, num * (candidates - 1), seed=seed + CANDIDATE_NOISE_OFFSET, temperature=temperature,
                        spec=spec)
    pool = np.concatenate([first[:, None], more.reshape(num, candidates - 1, -1)], axis=1)  # [num, K, P]
    flat = pool.reshape(num * candidates, -1)
    finite = np.isfinite(flat).all(axis=1)
    returns = np.full(num * candidates, np.nan)
    if finite.any():
        returns[finite] = returns_of(flat[finite])
    returns = returns.reshape(num, candidates)
    if target >= gen.return_range(spec)[1]:  # the best finite one (none: the first)
        chosen = np.argmax(np.where(np.isfinite(returns), returns, -np.inf), axis=1)
    else:
        chosen = closest(np.full(num, float(target)), returns)
    return Selection(pool[np.arange(num), chosen], first, chosen, returns)


def check_selection(candidates: int, episodes: int, prefix: str = "") -> None:
    """ConfigError naming `<prefix>candidates` / `<prefix>selection_episodes` when they cannot be used."""
    if candidates < 1:
        raise ConfigError(f"{prefix}candidates must be >= 1, got {candidates}")
    if candidates > 1 and episodes < 1:
        raise ConfigError(f"{prefix}selection_episodes must be >= 1 with {prefix}candidates > 1, got {episodes}")


def grid_points(gen: Generator, targets: list[float], in_range: list[bool], settings: EvaluateSettings,
                play: Callable[[np.ndarray], float], returns_of: Callable[[np.ndarray], np.ndarray],
                spec: PolicySpec | None = None, tick: Callable[[int], None] = lambda done: None
                ) -> tuple[list[dict[str, Any]], np.ndarray]:
    """(points, generated `[targets · samples, P]`): per target of the grid, `settings.samples`
    policies of the generator alone — each exactly what `pgen generate` hands out for that target at
    `evaluate.temperature` with the slot's seed — played by `play` (the held-out episodes) as
    `achieved`; `tick(policies done)` after each. With candidates > 1 a point also holds the slot's
    choice among `settings.candidates` (`generate_selected`): its `candidate`, `selection_return` and
    `achieved_chosen` on the same held-out episodes."""
    check_selection(settings.candidates, settings.selection_episodes, "evaluate.")
    points, generated = [], []
    for k, target in enumerate(targets):
        drawn = generate_selected(gen, target, settings.samples, settings.candidates, returns_of,
                                  seed=settings.seed * 100_003 + k, temperature=settings.temperature, spec=spec)
        for j, flat in enumerate(drawn.first):
            point = {"k": k, "target": target, "in_range": in_range[k], "sample": j, "achieved": play(flat)}
            if settings.candidates > 1:
                c = int(drawn.chosen[j])
                point.update(candidate=c, selection_return=float(drawn.returns[j, c]),
                             achieved_chosen=point["achieved"] if c == 0 else play(drawn.params[j]))
            points.append(point)
            generated.append(flat)
            tick(len(points))
    return points, np.stack(generated)
