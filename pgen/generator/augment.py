"""Training augmentation of every generator kind: function-preserving permutations of hidden units
(`generator.permute_prob`) and Gaussian noise in standardised units (`generator.noise_std`)."""

from __future__ import annotations

import torch

from pgen.config import GeneratorConfig
from pgen.policies.spec import PolicySpec, layout_positions


def permutation_index(spec: PolicySpec, generator: torch.Generator) -> torch.Tensor:
    """A flat index `idx` such that `flat[idx]` is the same function with its hidden units permuted.

    mlp: each hidden layer's units (rows of its Linear, columns of the next). gru: the encoder's
    units, and the recurrent units (the same permutation in each of the r, z, n gate blocks; rows
    and columns of `weight_hh`; columns of the head).
    """
    layout = spec.layout
    t = layout_positions(layout)

    def perm(n: int) -> torch.Tensor:
        return torch.randperm(n, generator=generator)

    if spec.kind == "mlp":
        names = [f"layers.{i}" for i in range(len(spec.hidden))] + ["head"]
        for i, size in enumerate(spec.hidden):
            p = perm(size)
            t[f"{names[i]}.weight"] = t[f"{names[i]}.weight"][p]
            t[f"{names[i]}.bias"] = t[f"{names[i]}.bias"][p]
            t[f"{names[i + 1]}.weight"] = t[f"{names[i + 1]}.weight"][:, p]
    else:
        enc, hid = spec.hidden
        p = perm(enc)
        t["encoder.weight"], t["encoder.bias"] = t["encoder.weight"][p], t["encoder.bias"][p]
        t["gru.weight_ih"] = t["gru.weight_ih"][:, p]
        q = perm(hid)
        gates = torch.cat([q, q + hid, q + 2 * hid])
        for name in ("gru.weight_ih", "gru.weight_hh", "gru.bias_ih", "gru.bias_hh"):
            t[name] = t[name][gates]
        t["gru.weight_hh"] = t["gru.weight_hh"][:, q]
        t["head.weight"] = t["head.weight"][:, q]
    return torch.cat([t[name].reshape(-1) for name, _ in layout.entries])


def permutations(spec: PolicySpec, count: int, cfg: GeneratorConfig, rng: torch.Generator) -> torch.Tensor | None:
    """A pool of `count` permutation indices `[count, P]` of `spec` (None when `permute_prob` is 0)."""
    if cfg.permute_prob <= 0:
        return None
    return torch.stack([permutation_index(spec, rng) for _ in range(count)])


def augment(x: torch.Tensor, perms: torch.Tensor | None, cfg: GeneratorConfig, rng: torch.Generator) -> torch.Tensor:
    """Random hidden-unit permutations (drawn from the pool `perms`) and Gaussian noise."""
    if perms is not None and cfg.permute_prob > 0:
        which = torch.rand(x.shape[0], generator=rng) < cfg.permute_prob
        if which.any():
            pick = torch.randint(len(perms), (int(which.sum()),), generator=rng)
            x = x.clone()
            x[which] = torch.gather(x[which], 1, perms[pick].to(x.device))
    if cfg.noise_std > 0:
        x = x + cfg.noise_std * torch.randn(x.shape, generator=rng).to(x.device)
    return x
