"""Function-preserving maps between the architectures of one family (Net2Net, Chen et al. 2016).

An architecture *family* is every `PolicySpec` of one group with the same kind, activation and
output type (`family_key`, e.g. `mlp-18xHx5-tanh`): its members differ only in hidden sizes.
`grow` carries a policy's flat parameters into a wider and/or deeper member of its family:

- widening a hidden layer from n to m ≥ n units replicates unit `floor(i·n/m)` into new unit i
  (rank-aligned: the replicas of a unit are neighbours, so a unit's rank in its layer keeps its
  meaning across widths) and divides the outgoing weights of each replica by its unit's replica
  count, so the next layer sees the same sums; a GRU's recurrent units are replicated in each of its
  r, z, n gate blocks, and their recurrent columns split the same way;
- deepening an MLP appends hidden layers of the last hidden width initialised to ε·I (bias 0) and
  scales the head by 1/ε: exact for ReLU, and for tanh within O(ε²) (tanh(εh)/ε = h − ε²h³/3 + …).

`grow(..., identity_gain=g)` appends g·I layers without scaling the head (an initialisation, not
a transfer), and `noise` adds Gaussian noise of `noise` × each grown tensor's RMS to break the
replicas' symmetry. `can_grow` says whether `grow` applies; `transfer_source` picks, among
trained architectures, the one to carry into a requested architecture.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch

from pgen.policies.spec import PolicySpec

TRANSFER_EPSILON = 0.1  # ε of an appended identity layer in a function-preserving transfer


def family_key(spec: PolicySpec) -> str:
    """The arch key with the hidden sizes replaced by `H`: `mlp-18xHx5-tanh` (`...x2c-...` Gaussian)."""
    out = f"{spec.action_dim}{'' if spec.discrete else 'c'}"
    return f"{spec.kind}-{spec.obs_dim}xHx{out}-{spec.activation}"


def same_family(a: PolicySpec, b: PolicySpec) -> bool:
    return family_key(a) == family_key(b)


def growth_problem(src: PolicySpec, dst: PolicySpec) -> str | None:
    """Why `src` cannot be grown into `dst` (None when it can)."""
    if not same_family(src, dst):
        return f"{dst.arch_key} is not of the family {family_key(src)}"
    if src.kind == "gru":
        if any(b < a for a, b in zip(src.hidden, dst.hidden)):
            return f"{dst.arch_key} is narrower than {src.arch_key}"
        return None
    if len(dst.hidden) < len(src.hidden):
        return f"{dst.arch_key} is shallower than {src.arch_key}"
    widths = list(src.hidden) + [src.hidden[-1]] * (len(dst.hidden) - len(src.hidden))
    if any(b < a for a, b in zip(widths, dst.hidden)):
        return f"{dst.arch_key} is narrower than {src.arch_key} (grown layers keep at least the last hidden width)"
    return None


def can_grow(src: PolicySpec, dst: PolicySpec) -> bool:
    return growth_problem(src, dst) is None


def transfer_source(candidates: Iterable[PolicySpec], dst: PolicySpec) -> PolicySpec | None:
    """The candidate to carry into `dst`: of those that can grow into it, the largest (most
    parameters; ties to the deeper, then the arch key), or None when none can."""
    ok = [s for s in candidates if can_grow(s, dst)]
    if not ok:
        return None
    return max(ok, key=lambda s: (s.layout.num_params, len(s.hidden), s.arch_key))


def replica_map(n: int, m: int) -> torch.Tensor:
    """Source unit of each of m units widened from n: `floor(i·n/m)` (every source used, in order)."""
    if m < n:
        raise ValueError(f"cannot widen {n} units to {m}")
    return torch.div(torch.arange(m) * n, m, rounding_mode="floor")


def _widen_rows(t: torch.Tensor, src: torch.Tensor, gates: int = 1) -> torch.Tensor:
    """Rows of `t` (in `gates` equal blocks) taken from the source units `src`."""
    n = t.shape[0] // gates
    idx = torch.cat([src + g * n for g in range(gates)])
    return t[idx]


def _widen_cols(t: torch.Tensor, src: torch.Tensor, n: int) -> torch.Tensor:
    """Columns of `t` from the source units `src`, each divided by its unit's replica count."""
    counts = torch.bincount(src, minlength=n).to(t.dtype)
    return t[:, src] / counts[src]


def grow(flat: np.ndarray, src: PolicySpec, dst: PolicySpec, noise: float = 0.0,
         rng: np.random.Generator | None = None, identity_gain: float | None = None,
         epsilon: float = TRANSFER_EPSILON) -> np.ndarray:
    """`flat` (parameters of `src`, ParamLayout order) carried into `dst` (module doc)."""
    problem = growth_problem(src, dst)
    if problem:
        raise ValueError(f"cannot grow {src.arch_key} into {dst.arch_key}: {problem}")
    t = {k: v.double() for k, v in src.layout.unflatten(flat).items()}
    if src.kind == "mlp":
        t = _deepen_mlp(t, src.hidden, len(dst.hidden), identity_gain, epsilon)
        widths = list(src.hidden) + [src.hidden[-1]] * (len(dst.hidden) - len(src.hidden))
        names = [f"layers.{i}" for i in range(len(dst.hidden))] + ["head"]
        for i, (n, m) in enumerate(zip(widths, dst.hidden)):
            s = replica_map(n, m)
            t[f"{names[i]}.weight"], t[f"{names[i]}.bias"] = t[f"{names[i]}.weight"][s], t[f"{names[i]}.bias"][s]
            t[f"{names[i + 1]}.weight"] = _widen_cols(t[f"{names[i + 1]}.weight"], s, n)
    else:
        (e0, h0), (e1, h1) = src.hidden, dst.hidden
        s = replica_map(e0, e1)
        t["encoder.weight"], t["encoder.bias"] = t["encoder.weight"][s], t["encoder.bias"][s]
        t["gru.weight_ih"] = _widen_cols(t["gru.weight_ih"], s, e0)
        q = replica_map(h0, h1)
        for name in ("gru.weight_ih", "gru.weight_hh", "gru.bias_ih", "gru.bias_hh"):
            t[name] = _widen_rows(t[name], q, gates=3)
        t["gru.weight_hh"] = _widen_cols(t["gru.weight_hh"], q, h0)
        t["head.weight"] = _widen_cols(t["head.weight"], q, h0)
    if noise > 0:
        rng = rng or np.random.default_rng(0)
        changed = src.layout.entries != dst.layout.entries
        for name, shape in dst.layout.entries:
            if changed and name != "log_std" and t[name].numel() > 1:
                rms = float(t[name].pow(2).mean().sqrt())
                t[name] = t[name] + torch.from_numpy(rng.normal(0.0, noise * rms, shape))
    return dst.layout.flatten({k: v.float() for k, v in t.items()})


def _deepen_mlp(t: dict[str, torch.Tensor], hidden: Sequence[int], depth: int, identity_gain: float | None,
                epsilon: float) -> dict[str, torch.Tensor]:
    """Append `depth − len(hidden)` hidden layers of the last width: ε·I with the head scaled by
    1/ε (function-preserving), or `identity_gain`·I with the head as it is (an initialisation)."""
    width = hidden[-1]
    for i in range(len(hidden), depth):
        gain = epsilon if identity_gain is None else identity_gain
        t[f"layers.{i}.weight"] = gain * torch.eye(width, dtype=torch.float64)
        t[f"layers.{i}.bias"] = torch.zeros(width, dtype=torch.float64)
        if identity_gain is None:
            t["head.weight"] = t["head.weight"] / epsilon
    return t


def base_spec(specs: Sequence[PolicySpec]) -> PolicySpec:
    """The narrowest, shallowest member of one family that every spec can be grown from: depth the
    smallest depth, each width the smallest width (GRU: the smallest encoder and recurrent sizes)."""
    first = specs[0]
    if any(not same_family(first, s) for s in specs):
        raise ValueError(f"architectures of different families: {sorted({family_key(s) for s in specs})}")
    if first.kind == "gru":
        hidden = (min(s.hidden[0] for s in specs), min(s.hidden[1] for s in specs))
    else:
        hidden = (min(min(s.hidden) for s in specs),) * min(len(s.hidden) for s in specs)
    base = PolicySpec(first.kind, first.obs_dim, hidden, first.action_dim, first.discrete, first.activation)
    assert all(can_grow(base, s) for s in specs), "base_spec must reach every spec"
    return base


def orthogonal_gain(init_scale: float) -> float:
    """The gain `policy.Net` gives its hidden layers' orthogonal init."""
    return math.sqrt(2.0) * init_scale
