"""What a policy's parameters do on the probe states of its slice: the behaviour a generator can learn
and be validated on, beside the parameters themselves.

A slice's probe states (`pgen.dataset.probes`) are fixed observations from rollouts across its
return range. `PolicyOutputs` evaluates many parameter vectors of one architecture on them in one
batched, differentiable pass (`torch.func.functional_call` under `vmap`): the actor's outputs
(logits, or Gaussian means) per vector, state and action. `action_kl` is the divergence of a
decoded policy's action distribution from the original's, averaged over states — the functional
loss of a fit (`generator.functional_weight`) and its behavioural validation; `action_agreement`
the fraction of states where the greedy actions agree.
"""

from __future__ import annotations

import math
import torch
from torch import nn
from torch.func import functional_call, vmap

from pgen.dataset.probes import Probes
from pgen.policies.nets import Actor
from pgen.policies.spec import ParamLayout, PolicySpec


def split_flat(layout: ParamLayout, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """`[B, P]` flat parameters → {tensor name: `[B, *shape]`} (differentiable)."""
    out, offset = {}, 0
    for name, shape in layout.entries:
        size = math.prod(shape)
        out[name] = flat[:, offset:offset + size].reshape(flat.shape[0], *shape)
        offset += size
    return out


class _Sequence(nn.Module):
    """The actor over a sequence of states (what `functional_call` calls)."""

    def __init__(self, actor: Actor):
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        h0 = self.actor.initial_state(obs.shape[1]).to(obs) if self.actor.recurrent else None
        return self.actor.forward_sequence(obs, h0, starts)


class PolicyOutputs:
    """The actor outputs of many parameter vectors of `spec` on probe states: `[B, T, S, A]`."""

    def __init__(self, spec: PolicySpec):
        self.spec = spec
        self.layout = spec.layout
        with torch.random.fork_rng(devices=[]):  # a template only: its own weights are never used
            self.module = _Sequence(Actor(spec))

    def __call__(self, flat: torch.Tensor, probes: Probes) -> torch.Tensor:
        params = {f"actor.{k}": v for k, v in split_flat(self.layout, flat).items()}
        obs, starts = probes.obs.to(flat), probes.starts.to(flat)
        return vmap(lambda p: functional_call(self.module, p, (obs, starts)))(params)

    def log_std(self, flat: torch.Tensor) -> torch.Tensor | None:
        """`[B, A]` the Gaussian head's log standard deviations (None for discrete actions)."""
        return None if self.spec.discrete else split_flat(self.layout, flat)["log_std"]


def action_kl(spec: PolicySpec, original: torch.Tensor, decoded: torch.Tensor,
              original_log_std: torch.Tensor | None = None, decoded_log_std: torch.Tensor | None = None
              ) -> torch.Tensor:
    """KL(original ‖ decoded) of the action distributions, `[B]` means over the states of outputs
    `[B, T, S, A]` (categorical logits; Gaussian means with `[B, A]` log stds)."""
    if spec.discrete:
        p = torch.log_softmax(original, -1)
        q = torch.log_softmax(decoded, -1)
        return (p.exp() * (p - q)).sum(-1).mean(dim=(1, 2))
    lo, ld = original_log_std[:, None, None], decoded_log_std[:, None, None]
    kl = ld - lo + (torch.exp(2 * lo) + (original - decoded) ** 2) / (2 * torch.exp(2 * ld)) - 0.5
    return kl.sum(-1).mean(dim=(1, 2))


def action_agreement(spec: PolicySpec, original: torch.Tensor, decoded: torch.Tensor, tol: float = 0.1) -> torch.Tensor:
    """`[B]` the fraction of states where the greedy actions agree: the same argmax (discrete), or
    every action dimension's mean within `tol` (continuous)."""
    if spec.discrete:
        return (original.argmax(-1) == decoded.argmax(-1)).float().mean(dim=(1, 2))
    return ((original - decoded).abs().amax(-1) <= tol).float().mean(dim=(1, 2))
