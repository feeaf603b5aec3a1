"""What a policy is, as data: its architecture (`PolicySpec`, named by its `arch_key`) and the ordered
list of its tensors (`ParamLayout`), the order of every flat parameter vector in pgen.

A group's policy is an actor (`nets.Actor`) described by a `PolicySpec`: kind (mlp | gru), hidden
sizes, activation and the group's spaces. `flatten` and `unflatten` round-trip exactly. The layout
follows from the spec alone, so a reader can rebuild a policy from a policy file's `layout`.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

ACTIVATIONS = ("tanh", "relu")


@dataclass(frozen=True)
class PolicySpec:
    """Architecture of one group's actor: `kind` mlp | gru, layer sizes, output type."""

    kind: str
    obs_dim: int
    hidden: tuple[int, ...]
    action_dim: int
    discrete: bool
    activation: str = "tanh"

    def __post_init__(self) -> None:
        if self.kind not in ("mlp", "gru"):
            raise ValueError(f"policy kind must be mlp or gru, got {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive, got {self.hidden}")
        if self.kind == "gru" and len(self.hidden) != 2:
            raise ValueError(f"gru policies take hidden [encoder, gru], got {list(self.hidden)}")

    @property
    def arch_key(self) -> str:
        """Short stable name, e.g. `mlp-18x64x64x5-tanh` (`...x2c-...` for a Gaussian head)."""
        out = f"{self.action_dim}{'' if self.discrete else 'c'}"
        sizes = "x".join(str(s) for s in (self.obs_dim, *self.hidden))
        return f"{self.kind}-{sizes}x{out}-{self.activation}"

    @classmethod
    def from_arch_key(cls, key: str) -> "PolicySpec":
        """The spec an `arch_key` names (its inverse); ValueError for a string that is not one."""
        m = re.fullmatch(r"(mlp|gru)-(\d+(?:x\d+)+)(c?)-([a-z]+)", key)
        if not m:
            raise ValueError(f"{key!r} is not an arch key such as mlp-18x64x64x5-tanh")
        sizes = [int(v) for v in m[2].split("x")]
        if len(sizes) < 3:
            raise ValueError(f"{key!r} names no hidden layer")
        return cls(m[1], sizes[0], tuple(sizes[1:-1]), sizes[-1], not m[3], m[4])

    @classmethod
    def for_group(cls, group, kind: str, hidden: Sequence[int], activation: str) -> "PolicySpec":
        """The spec of an agent group's actor (`group`: a `pgen.envs.AgentGroup`) for a network shape."""
        return cls(kind, group.obs_dim, tuple(hidden), group.action_dim, group.discrete, activation)

    @property
    def layout(self) -> "ParamLayout":
        """The actor's ParamLayout (computed once per spec)."""
        return _layout_of(self)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PolicySpec":
        data = json.loads(text)
        data["hidden"] = tuple(data["hidden"])
        return cls(**data)


@dataclass(frozen=True)
class ParamLayout:
    """Ordered `(name, shape)` of a module's parameters; the order of the flat vector."""

    entries: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, module: torch.nn.Module) -> "ParamLayout":
        return cls(tuple((name, tuple(p.shape)) for name, p in module.named_parameters()))

    @property
    def num_params(self) -> int:
        return sum(math.prod(shape) for _, shape in self.entries)

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
        """Concatenate tensors in layout order into one float32 vector."""
        missing = [n for n, _ in self.entries if n not in tensors]
        if missing:
            raise KeyError(f"tensors missing from layout: {missing}")
        parts = []
        for name, shape in self.entries:
            t = tensors[name].detach().to("cpu", torch.float32)
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: shape {tuple(t.shape)} does not match layout {shape}")
            parts.append(t.reshape(-1))
        return torch.cat(parts).numpy()

    def unflatten(self, flat: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector back into named tensors (copies; float32)."""
        flat = torch.as_tensor(np.asarray(flat, dtype=np.float32)).reshape(-1)
        if flat.numel() != self.num_params:
            raise ValueError(f"flat vector has {flat.numel()} values, layout needs {self.num_params}")
        out, offset = {}, 0
        for name, shape in self.entries:
            size = math.prod(shape)
            out[name] = flat[offset : offset + size].reshape(shape).clone()
            offset += size
        return out

    def to_json(self) -> str:
        return json.dumps([[name, list(shape)] for name, shape in self.entries])

    @classmethod
    def from_json(cls, text: str) -> "ParamLayout":
        return cls(tuple((str(name), tuple(int(s) for s in shape)) for name, shape in json.loads(text)))


@functools.lru_cache(maxsize=64)
def _layout_of(spec: PolicySpec) -> ParamLayout:
    """The ordered tensors of the actor `spec` describes (`nets.Actor` registers exactly these, in
    this order: tests/test_policy.py checks it)."""
    entries = [] if spec.discrete else [("log_std", (spec.action_dim,))]  # the actor's own parameter comes first
    if spec.kind == "mlp":
        sizes = [spec.obs_dim, *spec.hidden]
        entries += [entry for i, (a, b) in enumerate(zip(sizes, sizes[1:]))
                    for entry in ((f"layers.{i}.weight", (b, a)), (f"layers.{i}.bias", (b,)))]
    else:
        enc, hid = spec.hidden
        entries += [("encoder.weight", (enc, spec.obs_dim)), ("encoder.bias", (enc,)),
                    ("gru.weight_ih", (3 * hid, enc)), ("gru.weight_hh", (3 * hid, hid)),
                    ("gru.bias_ih", (3 * hid,)), ("gru.bias_hh", (3 * hid,))]
    entries += [("head.weight", (spec.action_dim, spec.hidden[-1])), ("head.bias", (spec.action_dim,))]
    return ParamLayout(tuple(entries))


def layout_positions(layout: ParamLayout) -> dict[str, torch.Tensor]:
    """Each tensor of `layout` filled with the flat positions of its values (long tensors)."""
    flat = torch.arange(layout.num_params)
    out, offset = {}, 0
    for name, shape in layout.entries:
        size = math.prod(shape)
        out[name] = flat[offset : offset + size].reshape(shape)
        offset += size
    return out
