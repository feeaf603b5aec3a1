"""The data of an arch-family generator: the checkpoints of several architectures of one family,
and the standardisation that works for architectures it has not seen.

- `FamilyData`: one `ParamDataset` per architecture (arch key), row-aligned within each;
- `family_archs` lists the architectures of a family that a store holds for (env, group);
- `split_runs_per_arch` holds out whole runs of every architecture for validation;
- `FamilyNormalizer`: a checkpoint is standardised as (x − centre) / scale. The centre of a trained
  architecture is its mean checkpoint; of any other, the centre of the largest trained architecture
  that grows into it, carried over by `growth.grow` (function-preserving). The scale of each block
  (`archgraph.Block`) is a law of its fan-in and fan-out, log std = a + b·log fan-in + c·log fan-out,
  fitted per block role on the residuals of the trained architectures, so it extends to widths and
  depths never seen. The return condition is the empirical CDF over all architectures' returns,
  as in the single-architecture `Normalizer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from pgen.generator.archgraph import ROLES, arch_graph
from pgen.generator.data import Normalizer, ParamDataset, load_slice, split_by_run
from pgen.growth import family_key, grow, transfer_source
from pgen.policy import PolicySpec
from pgen.store import CheckpointStore


@dataclass
class FamilyData:
    """Checkpoints of one (env, group, arch family) slice, one dataset per architecture."""

    parts: dict[str, ParamDataset]  # arch key → its checkpoints
    specs: dict[str, PolicySpec]  # arch key → spec

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts.values())

    def _pooled(self, column: str) -> np.ndarray:
        return np.concatenate([getattr(p, column) for p in self.parts.values()])

    # every architecture's rows, concatenated in part order (what a single-arch ParamDataset offers)
    returns = property(lambda self: self._pooled("returns"))
    run_ids = property(lambda self: self._pooled("run_ids"))
    steps = property(lambda self: self._pooled("steps"))
    return_std = property(lambda self: self._pooled("return_std"))
    episodes = property(lambda self: self._pooled("episodes"))

    @property
    def bad_rows(self) -> int:
        return sum(p.bad_rows for p in self.parts.values())

    def subset(self, keep: dict[str, np.ndarray]) -> "FamilyData":
        return FamilyData({k: p.subset(keep[k]) for k, p in self.parts.items() if len(keep[k])}, self.specs)

    def map(self, fn) -> "FamilyData":
        """Each part replaced by `fn(arch key, part)`."""
        return FamilyData({k: fn(k, p) for k, p in self.parts.items()}, self.specs)

    def with_returns(self, returns: np.ndarray) -> "FamilyData":
        """The same rows with `returns` (concatenated in part order) as their returns."""
        ends = np.cumsum([len(p) for p in self.parts.values()])[:-1]
        return FamilyData({k: replace(p, returns=r) for (k, p), r in zip(self.parts.items(), np.split(returns, ends))},
                          self.specs)


def family_archs(store: CheckpointStore, env_key: str, group: str, family: str) -> list[PolicySpec]:
    """The architectures of `family` with checkpoints in the store for (env, group), by arch key."""
    prefix = f"checkpoints/env={env_key}/group={group}/"
    keys = {k[len(prefix):].split("/", 1)[0] for k in store.list(prefix)}
    specs = [PolicySpec.from_arch_key(k[len("arch="):]) for k in keys if k.startswith("arch=")]
    return sorted((s for s in specs if family_key(s) == family), key=lambda s: s.arch_key)


def load_family(store: CheckpointStore, env_key: str, group: str, specs: list[PolicySpec],
                run_ids: list[str] | None = None) -> FamilyData:
    """Every verified checkpoint of each architecture in `specs` (optionally only of `run_ids`)."""
    parts = {}
    for spec in specs:
        part = load_slice(store, env_key, group, spec.arch_key, spec.layout.num_params, run_ids)
        if len(part):
            parts[spec.arch_key] = part
    return FamilyData(parts, {s.arch_key: s for s in specs})


def split_runs_per_arch(data: FamilyData, val_fraction: float, seed: int
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Row indices (train, validation) per architecture: `split_by_run` within each, so every
    architecture keeps training runs and none is held out whole."""
    train, val = {}, {}
    for i, (key, part) in enumerate(sorted(data.parts.items())):
        train[key], val[key] = split_by_run(part.run_ids, val_fraction, seed + 7919 * i)
    return train, val


@dataclass
class FamilyNormalizer:
    """(x − centre) / scale for any architecture of the family (module doc)."""

    kind: str  # mlp | gru: which ROLES the law's rows are
    means: dict[str, torch.Tensor]  # arch key → [P] mean checkpoint of a trained architecture
    law: torch.Tensor  # [roles, 3] float64: a, b, c of log std = a + b·log fan-in + c·log fan-out
    returns: Normalizer  # its return_knots and `condition` (its parameter fields are unused, empty)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # (what, arch key) → [P]

    @classmethod
    def fit(cls, data: FamilyData) -> "FamilyNormalizer":
        kind = next(iter(data.specs.values())).kind
        roles = ROLES[kind]
        means, points = {}, {r: [] for r in roles}
        for key, part in data.parts.items():
            x = torch.from_numpy(part.params).double()
            means[key] = x.mean(0)
            graph = arch_graph(data.specs[key])
            for block, (fan_in, fan_out), values in zip(graph.blocks, graph.block_fans(),
                                                        graph.blocks_of(x - means[key])):
                rms = float(values.pow(2).mean().sqrt())
                points[block.role].append((math.log(fan_in), math.log(fan_out), math.log(max(rms, 1e-8))))
        law = torch.zeros(len(roles), 3, dtype=torch.float64)
        for i, role in enumerate(roles):
            if points[role]:
                law[i] = torch.from_numpy(_fit_law(np.array(points[role])))
        knots = torch.from_numpy(np.percentile(data.returns.astype(np.float64), np.arange(101)))
        empty = torch.zeros(0)
        return cls(kind, {k: v.float() for k, v in means.items()}, law, Normalizer(empty, empty, knots))

    @property
    def specs(self) -> list[PolicySpec]:
        return [PolicySpec.from_arch_key(k) for k in sorted(self.means)]

    def centre(self, spec: PolicySpec) -> torch.Tensor:
        """`[P]`: the mean checkpoint of `spec`, or of the largest trained arch grown into it."""
        if ("centre", spec.arch_key) not in self._cache:
            self._cache["centre", spec.arch_key] = self._centre(spec)
        return self._cache["centre", spec.arch_key]

    def _centre(self, spec: PolicySpec) -> torch.Tensor:
        if spec.arch_key in self.means:
            return self.means[spec.arch_key]
        src = transfer_source(self.specs, spec)
        if src is None:
            raise ValueError(f"no trained architecture of {[s.arch_key for s in self.specs]} grows into {spec.arch_key}")
        return torch.from_numpy(grow(self.means[src.arch_key].numpy(), src, spec))

    def scale(self, spec: PolicySpec) -> torch.Tensor:
        """`[P]`: each parameter's block std from the law."""
        if ("scale", spec.arch_key) not in self._cache:
            self._cache["scale", spec.arch_key] = self._scale(spec)
        return self._cache["scale", spec.arch_key]

    def _scale(self, spec: PolicySpec) -> torch.Tensor:
        graph = arch_graph(spec)
        roles = ROLES[self.kind]
        stds = torch.tensor([math.exp(float(self.law[roles.index(b.role)] @ torch.tensor([1.0, math.log(fi), math.log(fo)],
                                                                                           dtype=torch.float64)))
                             for b, (fi, fo) in zip(graph.blocks, graph.block_fans())])
        return stds.float()[graph.param_block()]

    def centre_standardised(self, spec: PolicySpec) -> torch.Tensor:
        """`[P]`: the centre in units of the scale (what the model's queries read)."""
        return self.centre(spec) / self.scale(spec)

    def standardise(self, flat: torch.Tensor, spec: PolicySpec) -> torch.Tensor:
        return (flat - self.centre(spec).to(flat.device)) / self.scale(spec).to(flat.device)

    def unstandardise(self, flat: torch.Tensor, spec: PolicySpec) -> torch.Tensor:
        return flat * self.scale(spec).to(flat.device) + self.centre(spec).to(flat.device)

    def condition(self, returns: torch.Tensor) -> torch.Tensor:
        return self.returns.condition(returns)

    @property
    def return_low(self) -> float:
        return self.returns.return_low

    @property
    def return_high(self) -> float:
        return self.returns.return_high

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"law": self.law, "return_knots": self.returns.return_knots,
                **{f"mean.{k}": v for k, v in self.means.items()}}

    @classmethod
    def from_tensors(cls, kind: str, t: dict[str, torch.Tensor]) -> "FamilyNormalizer":
        means = {k[len("mean."):]: v.float() for k, v in t.items() if k.startswith("mean.")}
        empty = torch.zeros(0)
        return cls(kind, means, t["law"].double(), Normalizer(empty, empty, t["return_knots"].double()))


def _fit_law(points: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """(a, b, c) of log std = a + b·log fan-in + c·log fan-out by ridge-regularised least squares on
    the (log fan-in, log fan-out, log std) rows; a fan that never varies gets slope 0."""
    fans, y = points[:, :2], points[:, 2]
    centre = fans.mean(0)
    x = fans - centre
    varies = x.std(0) > 1e-9
    slopes = np.zeros(2)
    if varies.any():
        xv = x[:, varies]
        slopes[varies] = np.linalg.solve(xv.T @ xv + ridge * np.eye(xv.shape[1]), xv.T @ (y - y.mean()))
    return np.array([y.mean() - slopes @ centre, *slopes])
