"""What every generator of one slice is measured against, rolled out once (docs/design.md "Metrics").

`measure_baselines` loads the slice a version was trained on (its runs, up to the step each had
when it was fitted; the returns it conditioned on), builds the target grid and rolls out, on the
held-out evaluation episodes (`HELDOUT_EVAL_SEED`, greedy unless `evaluate.stochastic`):

- random: uniform-random actions (R_random);
- top-10 %: the best `top_fraction` of the training checkpoints of every trained architecture by
  return (at most `max_top`), re-evaluated; their mean is R_top10 and their best "best trained";
- the checkpoints retrieval replays for every trained architecture, and its random initialisations,
  so that each generator compared with these baselines (a Tune trial, the loop's gate) plays only
  its own policies; other architectures' are played, once, when first asked for.

Any generator trained on the same slice and runs can be compared with them (`evaluate_generator`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pgen.config import EnvConfig, EvaluateSettings, config_from_dict
from pgen.dataset.reference import reference_actors
from pgen.dataset.slices import Slice, condition_returns, load_slice
from pgen.evaluation.metrics import target_percentiles
from pgen.generator.sample import trained_arch_keys
from pgen.policies.growth import can_grow, grow
from pgen.policies.nets import Actor, actor_from_flat
from pgen.policies.rollout import HELDOUT_EVAL_SEED, evaluate_returns
from pgen.policies.spec import PolicySpec
from pgen.store import CheckpointStore
from pgen.util.progress import Progress

Row = tuple[str, int]  # (arch key, row of that architecture's training data)


def target_grid(returns: np.ndarray, settings: EvaluateSettings) -> tuple[list[float], list[bool]]:
    """(targets, in_range): `evaluate.targets` percentiles 5–95 of `returns`, their maximum (the top
    target), then `evaluate.extra_targets` (in_range False outside the returns' range)."""
    if settings.targets < 2:
        raise ValueError(f"evaluate.targets must be >= 2, got {settings.targets}")
    targets = target_percentiles(returns, settings.targets) + [float(t) for t in settings.extra_targets]
    if not all(math.isfinite(t) for t in targets):
        raise ValueError(f"evaluate.extra_targets must be finite numbers, got {settings.extra_targets}")
    low, high = float(returns.min()), float(returns.max())
    return targets, [low <= t <= high for t in targets]


def slice_id(info: dict[str, Any]) -> tuple:
    """(env key, group, slice key, trained arch keys, training runs): what a compared generator must match."""
    return (info["env_key"], info["group"], info["arch"], tuple(trained_arch_keys(info)),
            tuple(info["dataset"]["train_runs"]))


@dataclass
class Baselines:
    """The baselines of one slice (module doc)."""

    settings: EvaluateSettings
    env_cfg: EnvConfig
    group: str
    slice_id: tuple
    everything: Slice  # every row the generator saw or held out (its runs, up to their recorded step)
    data: Slice  # the training rows
    others: dict[str, Actor]  # the other groups' fixed reference policies
    targets: list[float]
    in_range: list[bool]
    top_rows: list[Row]  # the best `top_fraction` training rows by return
    r_random: float
    states: tuple[torch.Tensor, torch.Tensor]  # (obs, starts) of behavioural agreement
    # achieved return of a training row played as an architecture, by (arch key played as, row)
    played: dict[tuple[str, Row], float] = field(default_factory=dict)
    random_inits: dict[tuple[str, int], float] = field(default_factory=dict)  # (arch key, seed) → their mean

    @property
    def top_target_index(self) -> int:
        """The grid index of the top target (the training returns' maximum)."""
        return len(self.targets) - 1 - len(self.settings.extra_targets)

    def top_return(self, row: Row) -> float:
        """The achieved return of a top-10 % row (played as its own architecture)."""
        return self.played[row[0], row]

    @property
    def r_top(self) -> float:
        return float(np.mean([self.top_return(row) for row in self.top_rows]))

    @property
    def best_trained(self) -> float:
        return float(max(self.top_return(row) for row in self.top_rows))

    def achieved_return(self, actor: Actor | None) -> float:
        """Mean group return of `actor` (None: uniform random) on the fixed held-out episodes."""
        returns = evaluate_returns(self.env_cfg, {**self.others, self.group: actor}, self.settings.episodes,
                                   seed=HELDOUT_EVAL_SEED, stochastic=self.settings.stochastic)[self.group]
        return float(returns.mean())

    def params(self, row: Row) -> np.ndarray:
        return self.data.parts[row[0]].params[row[1]]

    def carried(self, row: Row, spec: PolicySpec) -> np.ndarray:
        """Training row `row` as a policy of `spec`: itself, or grown into `spec` (function-preserving)."""
        source = self.data.specs[row[0]]
        return self.params(row) if source == spec else grow(self.params(row), source, spec)

    def checkpoint_return(self, row: Row, spec: PolicySpec) -> float:
        """The achieved return of training row `row` played as a policy of `spec` (measured once)."""
        key = (spec.arch_key, row)
        if key not in self.played:
            self.played[key] = self.achieved_return(actor_from_flat(spec, self.carried(row, spec)))
        return self.played[key]

    def sources(self, spec: PolicySpec) -> list[Row]:
        """The training rows of every trained architecture that grows into `spec` (itself included)."""
        return [(k, i) for k, sp in self.data.specs.items() if k in self.data.parts and can_grow(sp, spec)
                for i in range(len(self.data.parts[k]))]

    def retrieval_rows(self, spec: PolicySpec) -> list[Row]:
        """Per target, the training row (of `sources(spec)`) whose return is closest to it."""
        rows = self.sources(spec)
        returns = np.array([self.data.parts[k].returns[i] for k, i in rows])
        return [rows[int(np.argmin(np.abs(returns - t)))] for t in self.targets]

    def transfer_row(self, spec: PolicySpec) -> Row:
        """The best training row (by return) of `sources(spec)`: what transfer carries into `spec`."""
        rows = self.sources(spec)
        returns = np.array([self.data.parts[k].returns[i] for k, i in rows])
        return rows[int(np.argmax(returns))]

    def random_init(self, spec: PolicySpec) -> float:
        """Mean achieved return of `evaluate.random_inits` freshly initialised policies of `spec` (measured once)."""
        key = (spec.arch_key, self.settings.seed)
        if key not in self.random_inits:
            values = []
            for i in range(self.settings.random_inits):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.settings.seed * 7_919 + i)
                    values.append(self.achieved_return(Actor(spec).eval()))
            self.random_inits[key] = float(np.mean(values)) if values else float("nan")
        return self.random_inits[key]


def measure_baselines(store: CheckpointStore, info: dict[str, Any], settings: EvaluateSettings,
                      label: str = "evaluate") -> Baselines:
    """The baselines of the slice a generator (its config.json `info`) was trained on (module doc)."""
    env_cfg = config_from_dict("train", {"env": info["env"]}).env
    ds = info["dataset"]
    specs = [PolicySpec.from_arch_key(k) for k in trained_arch_keys(info)]
    everything = load_slice(store, info["env_key"], info["group"], specs, run_ids=ds["runs"])
    # the rows the generator saw (train runs) and held out (validation runs), not ones written since
    everything = everything.map(lambda _k, p: condition_returns(
        p.subset(np.flatnonzero([step <= ds["max_step"][run] for run, step in zip(p.run_ids, p.steps)])), ds))
    data = everything.subset({k: np.flatnonzero(np.isin(p.run_ids, ds["train_runs"])) for k, p in everything.parts.items()})
    others = reference_actors(store, info, env_cfg)
    group = info["group"]
    targets, in_range = target_grid(data.returns, settings)
    rows = data.rows
    top_n = min(settings.max_top, max(1, math.ceil(settings.top_fraction * len(rows))))
    top = [rows[i] for i in np.argsort(-data.returns, kind="stable")[:top_n]]
    base = Baselines(settings, env_cfg, group, slice_id(info), everything, data, others, targets, in_range, top,
                     float("nan"), (torch.empty(0), torch.empty(0)))
    trained = [data.specs[k] for k in sorted(data.parts)]
    plays = [(row, data.specs[row[0]]) for row in top]
    for spec in trained:
        plays += [(row, spec) for row in [*base.retrieval_rows(spec), base.transfer_row(spec)]]
    plays = list(dict.fromkeys((row, spec) for row, spec in plays))  # each once, in order
    progress = Progress(f"{label} baselines", 1 + len(plays) + len(trained) * settings.random_inits,
                        unit="policies", every_s=10.0)
    base.r_random = base.achieved_return(None)
    for n, (row, spec) in enumerate(plays):
        progress.update(n + 1)
        base.checkpoint_return(row, spec)
    for spec in trained:
        base.random_init(spec)
    progress.update(progress.total, force=True)
    observations: dict[str, list] = {}
    best = top[0]
    evaluate_returns(env_cfg, {**others, group: actor_from_flat(data.specs[best[0]], base.params(best))},
                     settings.states, seed=HELDOUT_EVAL_SEED + 7919, observations=observations)
    base.states = (torch.from_numpy(np.stack([o for o, _ in observations[group]])),
                   torch.from_numpy(np.stack([st for _, st in observations[group]])))
    return base
