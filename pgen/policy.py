"""Policy networks, their flat parameter layout, and the policy file.

A group's policy is an `Actor` described by a `PolicySpec` (kind, sizes, activation and the
group's spaces). `ParamLayout` is the ordered list of its tensors `(name, shape)`; `flatten` and
`unflatten` round-trip exactly. The policy file (DESIGN.md) is one safetensors file with a float32
tensor `params` `[K, num_params]` and string metadata; `load_policies` rebuilds torch modules
from it, and a reader without pgen can rebuild them from the `layout` metadata alone.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn
from torch.distributions import Categorical, Normal

from pgen.fileio import atomic_write

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


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
        """The spec of an agent group's actor (`group`: an `envs.AgentGroup`) for a network shape."""
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
    def of(cls, module: nn.Module) -> "ParamLayout":
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
    with torch.random.fork_rng(devices=[]):  # asking for a layout must not move the caller's RNG
        return Actor(spec).layout


def _orthogonal(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class Net(nn.Module):
    """MLP or GRU trunk with a linear head; the shape shared by actors and critics.

    mlp: `layers.i` Linear + activation per hidden size, then `head`.
    gru: `encoder` Linear + activation, `gru` GRUCell, then `head`.
    """

    def __init__(self, kind: str, in_dim: int, hidden: Sequence[int], out_dim: int, activation: str,
                 head_gain: float, init_scale: float = 1.0):
        super().__init__()
        self.kind = kind
        self.activation_fn = ACTIVATIONS[activation]()
        gain = math.sqrt(2.0) * init_scale
        if kind == "mlp":
            sizes = [in_dim, *hidden]
            self.layers = nn.ModuleList(_orthogonal(nn.Linear(a, b), gain) for a, b in zip(sizes, sizes[1:]))
            self.hidden_size = 0
        else:
            self.encoder = _orthogonal(nn.Linear(in_dim, hidden[0]), gain)
            self.gru = nn.GRUCell(hidden[0], hidden[1])
            for name, p in self.gru.named_parameters():
                (nn.init.orthogonal_(p) if "weight" in name else nn.init.zeros_(p))
            self.hidden_size = hidden[1]
        self.head = _orthogonal(nn.Linear(hidden[-1], out_dim), head_gain)

    @property
    def recurrent(self) -> bool:
        return self.kind == "gru"

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.hidden_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step: x `[B, in]`, h `[B, H]` (gru) → (out `[B, out]`, new h)."""
        if self.kind == "mlp":
            for layer in self.layers:
                x = self.activation_fn(layer(x))
            return self.head(x), None
        h = self.gru(self.activation_fn(self.encoder(x)), h)
        return self.head(h), h

    def forward_sequence(self, x: torch.Tensor, h0: torch.Tensor | None, starts: torch.Tensor) -> torch.Tensor:
        """x `[T, B, in]`; `starts[t]` = 1 where a new trajectory begins at t (state reset to 0)."""
        if self.kind == "mlp":
            return self.forward(x)[0]
        h, outs = h0, []
        for t in range(x.shape[0]):
            h = h * (1.0 - starts[t]).unsqueeze(-1)
            out, h = self.forward(x[t], h)
            outs.append(out)
        return torch.stack(outs)


class Actor(Net):
    """A group's policy: logits (Discrete) or Gaussian mean plus a state-independent `log_std` (Box)."""

    def __init__(self, spec: PolicySpec, init_scale: float = 1.0):
        super().__init__(spec.kind, spec.obs_dim, spec.hidden, spec.action_dim, spec.activation,
                         head_gain=0.01, init_scale=init_scale)
        self.spec = spec
        if not spec.discrete:
            self.log_std = nn.Parameter(torch.zeros(spec.action_dim))

    @property
    def layout(self) -> ParamLayout:
        return ParamLayout.of(self)

    def distribution(self, out: torch.Tensor) -> torch.distributions.Distribution:
        if self.spec.discrete:
            return Categorical(logits=out, validate_args=False)
        return Normal(out, self.log_std.exp().expand_as(out), validate_args=False)

    def log_prob(self, dist: torch.distributions.Distribution, action: torch.Tensor) -> torch.Tensor:
        lp = dist.log_prob(action)
        return lp if self.spec.discrete else lp.sum(-1)

    def sample(self, dist: torch.distributions.Distribution, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample actions with an explicit generator, so each learner owns its randomness."""
        if self.spec.discrete:
            return torch.multinomial(dist.probs, 1, generator=generator).squeeze(-1)
        return dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=generator)

    def entropy(self, dist: torch.distributions.Distribution) -> torch.Tensor:
        ent = dist.entropy()
        return ent if self.spec.discrete else ent.sum(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, h: torch.Tensor | None = None, greedy: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Actions for a batch of observations: argmax / mean when `greedy`, else sampled."""
        out, h = self.forward(obs, h)
        if greedy:
            return (out.argmax(-1) if self.spec.discrete else out), h
        return self.sample(self.distribution(out)), h

    def flat_params(self) -> np.ndarray:
        return self.layout.flatten(dict(self.named_parameters()))

    def load_flat_params(self, flat: np.ndarray | torch.Tensor) -> None:
        tensors = self.layout.unflatten(flat)
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(tensors[name])


def critic_net(kind: str, in_dim: int, hidden: Sequence[int], activation: str) -> Net:
    return Net(kind, in_dim, hidden, 1, activation, head_gain=1.0)


# --- policy file -------------------------------------------------------------------------------

POLICY_FILE_KEYS = ("layout", "arch", "env_id", "group", "model", "version", "target_return")


@dataclass
class PolicyFile:
    params: np.ndarray  # [K, num_params] float32, ParamLayout order
    layout: ParamLayout
    metadata: dict[str, str]

    @property
    def spec(self) -> PolicySpec:
        if "policy_spec" not in self.metadata:
            raise ValueError("policy file has no `policy_spec` metadata; rebuild it from `layout`")
        return PolicySpec.from_json(self.metadata["policy_spec"])


def policy_file_bytes(params: np.ndarray | Iterable[np.ndarray], spec: PolicySpec, env_id: str, group: str,
                      model: str, version: str, target_return: float | None = None,
                      extra: Mapping[str, str] | None = None) -> bytes:
    """K policies of one arch as the bytes of a DESIGN.md policy file."""
    params = np.asarray(np.stack(list(params)) if not isinstance(params, np.ndarray) else params, np.float32)
    if params.ndim == 1:
        params = params[None]
    layout = spec.layout
    if params.shape[1] != layout.num_params:
        raise ValueError(f"params have {params.shape[1]} columns, {spec.arch_key} needs {layout.num_params}")
    metadata = {
        "layout": layout.to_json(),
        "arch": spec.arch_key,
        "env_id": env_id,
        "group": group,
        "model": model,
        "version": version,
        "target_return": "" if target_return is None else repr(float(target_return)),
        "policy_spec": spec.to_json(),
        **dict(extra or {}),
    }
    return save({"params": torch.from_numpy(np.ascontiguousarray(params))}, metadata=metadata)


def save_policy_file(path: str | os.PathLike, params: np.ndarray | Iterable[np.ndarray], spec: PolicySpec,
                     env_id: str, group: str, model: str, version: str,
                     target_return: float | None = None, extra: Mapping[str, str] | None = None) -> Path:
    """Write K policies of one arch as the DESIGN.md policy file (atomically)."""
    data = policy_file_bytes(params, spec, env_id, group, model, version, target_return, extra)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)


def read_policy_file(path: str | os.PathLike) -> PolicyFile:
    """Read a policy file (no pickle); checks the metadata and shape against the layout."""
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        missing = [k for k in POLICY_FILE_KEYS if k not in metadata]
        if missing or "params" not in f.keys():
            raise ValueError(f"{path} is not a pgen policy file: missing {missing or ['params tensor']}")
        params = f.get_tensor("params").to(torch.float32).numpy()
    layout = ParamLayout.from_json(metadata["layout"])
    if params.ndim != 2 or params.shape[1] != layout.num_params:
        raise ValueError(f"{path}: params shape {params.shape} does not match layout ({layout.num_params} values)")
    return PolicyFile(params, layout, metadata)


def load_policies(path: str | os.PathLike) -> list[Actor]:
    """Rebuild the K torch policies stored in a policy file, in eval mode."""
    pf = read_policy_file(path)
    actors = []
    for row in pf.params:
        actor = Actor(pf.spec)
        if actor.layout != pf.layout:
            raise ValueError(f"{path}: layout does not match the architecture {pf.spec.arch_key}")
        actor.load_flat_params(row)
        actors.append(actor.eval())
    return actors
