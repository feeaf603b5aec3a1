"""The arch-family normaliser: a standardisation that works for architectures the generator never saw.

A checkpoint is standardised as (x − centre) / scale. The centre of a trained architecture is its
mean checkpoint; of any other, the centre of the largest trained architecture that grows into it,
carried over by `pgen.policies.growth.grow` (function-preserving). The scale of each block
(`archgraph.Block`) is a law of its fan-in and fan-out, log std = a + b·log fan-in + c·log fan-out,
fitted per block role on the residuals of the trained architectures, so it extends to widths and
depths never seen. The return condition is the `ReturnScale` of all architectures' returns. Saved
with the model (`normalizer.safetensors`: `law`, `return_knots`, `mean.<arch key>` per trained one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from pgen.dataset.slices import Slice
from pgen.generator.condition import ReturnScale
from pgen.generator.family.archgraph import ROLES, arch_graph
from pgen.policies.growth import grow, transfer_source
from pgen.policies.spec import PolicySpec


@dataclass
class FamilyNormalizer:
    """(x − centre) / scale for any architecture of the family (module doc)."""

    kind: str  # mlp | gru: which ROLES the law's rows are
    means: dict[str, torch.Tensor]  # arch key → [P] mean checkpoint of a trained architecture
    law: torch.Tensor  # [roles, 3] float64: a, b, c of log std = a + b·log fan-in + c·log fan-out
    returns: ReturnScale
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # (what, arch key) → [P]

    @classmethod
    def fit(cls, data: Slice) -> "FamilyNormalizer":
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
        return cls(kind, {k: v.float() for k, v in means.items()}, law, ReturnScale.fit(data.returns))

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

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"law": self.law, "return_knots": self.returns.knots, **{f"mean.{k}": v for k, v in self.means.items()}}

    @classmethod
    def from_tensors(cls, kind: str, t: dict[str, torch.Tensor]) -> "FamilyNormalizer":
        means = {k[len("mean."):]: v.float() for k, v in t.items() if k.startswith("mean.")}
        return cls(kind, means, t["law"].double(), ReturnScale(t["return_knots"].double()))


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
