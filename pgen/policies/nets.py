"""The policy networks: `Net` (an MLP or GRU trunk with a linear head, shared by actors and critics)
and `Actor`, a group's policy, whose parameters are the `ParamLayout` of its `PolicySpec`.

Orthogonal initialisation (hidden gain √2 × `init_scale`, policy head 0.01, value head 1), as CleanRL.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Normal

from pgen.policies.spec import ParamLayout, PolicySpec

ACTIVATION_MODULES = {"tanh": nn.Tanh, "relu": nn.ReLU}


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
        self.activation_fn = ACTIVATION_MODULES[activation]()
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


def actor_from_flat(spec: PolicySpec, flat: np.ndarray) -> Actor:
    """A policy of `spec` with the flat parameters `flat`, in eval mode."""
    actor = Actor(spec)
    actor.load_flat_params(flat)
    return actor.eval()
