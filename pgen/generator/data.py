"""The generator's data: one env/group/arch slice of the store as tensors, and how it is shaped.

- `load_slice` reads the checkpoint records of one slice with pyarrow (checksums verified by the
  store) into a `ParamDataset`: `[N, P]` float32 parameters, returns, run ids.
- `condition_returns`: the returns a trained generator conditioned on, for rows of its slice.
- `split_by_run` holds out whole runs for validation, never single rows.
- `Normalizer`: per-parameter mean, per-layer std of the residuals, and the return percentiles that
  scale the condition (saved with the model).
- `Tokenizer`: flat vector ⇄ per-layer token matrices (one token per output unit — its incoming
  weights and bias — or fixed-size chunks).
- `permutation_index`: a function-preserving random permutation of the hidden units, as an index
  into the flat vector (the augmentation of DESIGN.md "Generator").
- `reference_actors`: the other groups' fixed policies a generator's returns are measured against,
  read from the store.

A "layer" here is one module of the policy (`layers.0`, `gru`, `head`, `log_std`): the tensors
whose names share the prefix before the last dot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pgen.config import EnvConfig
from pgen.envs import describe_env
from pgen.policy import Actor, ParamLayout, PolicySpec
from pgen.rollout import actor_from_flat
from pgen.store import CheckpointStore

COLUMNS = ["run_id", "step", "return_mean", "return_std", "episodes", "params", "created_at"]


@dataclass
class ParamDataset:
    """Checkpoints of one (env, group, arch) slice, row-aligned."""

    params: np.ndarray  # [N, P] float32, ParamLayout order
    returns: np.ndarray  # [N] float64, the record's return_mean
    run_ids: np.ndarray  # [N] str
    steps: np.ndarray  # [N] int64
    return_std: np.ndarray  # [N] float64, std of the per-episode returns behind `returns`
    episodes: np.ndarray  # [N] int, how many episodes `returns` averages
    bad_rows: int = 0

    def __len__(self) -> int:
        return len(self.returns)

    def subset(self, idx: np.ndarray) -> "ParamDataset":
        return ParamDataset(self.params[idx], self.returns[idx], self.run_ids[idx], self.steps[idx],
                            self.return_std[idx], self.episodes[idx])


def load_slice(store: CheckpointStore, env_key: str, group: str, arch: str, num_params: int,
               run_ids: list[str] | None = None) -> ParamDataset:
    """Every verified checkpoint of the slice (optionally only of `run_ids`), sorted by run and step."""
    result = store.read_records(env_key=env_key, group=group, arch=arch, columns=COLUMNS)
    if result.rows == 0:
        raise ValueError(f"no checkpoints in {store.uri} for env={env_key} group={group} arch={arch}"
                         f" ({result.bad_rows} bad rows skipped); run `pgen populate` or `pgen dataset` to see what is there")
    table = result.table
    if run_ids is not None:
        table = table.filter(pa.compute.is_in(table["run_id"], pa.array(run_ids)))
    params_col = table["params"].combine_chunks()
    params = params_col.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if params.size != len(table) * num_params:
        raise ValueError(f"slice {env_key}/{group}/{arch}: rows do not have {num_params} params each")
    data = ParamDataset(params.reshape(len(table), num_params), table["return_mean"].to_numpy(),
                        np.asarray(table["run_id"].to_pylist()), table["step"].to_numpy(),
                        table["return_std"].to_numpy(), table["episodes"].to_numpy(), result.bad_rows)
    order = np.lexsort((data.steps, data.run_ids))
    out = data.subset(order)
    out.bad_rows = result.bad_rows
    return out


def condition_returns(data: ParamDataset, dataset_info: dict) -> ParamDataset:
    """`data` with the returns a generator conditioned on (`dataset_info` = its config.json "dataset"):
    the ones re-measured against the reference when it rescored its checkpoints, else the records'."""
    rescored = dataset_info.get("rescored")
    if not rescored:
        return data
    lookup = {(run, int(step)): float(value) for run, rows in rescored["returns"].items() for step, value in rows}
    keys = list(zip(data.run_ids.tolist(), data.steps.tolist()))
    missing = [k for k in keys if k not in lookup]
    if missing:
        raise ValueError(f"{len(missing)} checkpoints (e.g. run {missing[0][0]} step {missing[0][1]}) have no"
                         " rescored return in the generator's config.json")
    return replace(data, returns=np.array([lookup[k] for k in keys]))


def spread_ties(knots: np.ndarray, span: float) -> np.ndarray:
    """Non-decreasing `knots` made strictly increasing for `np.interp`: the i-th moved up by
    i × span × 1e-9 (`span`: their range, so the move is negligible at any scale)."""
    return knots + np.arange(len(knots)) * span * 1e-9


def split_by_run(run_ids: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation) with whole runs held out: round(val_fraction × runs), at least
    one when there are two runs or more, none with a single run (then validation is empty)."""
    runs = sorted(set(run_ids.tolist()))
    n_val = 0 if len(runs) < 2 or val_fraction <= 0 else max(1, round(val_fraction * len(runs)))
    n_val = min(n_val, len(runs) - 1)
    rng = np.random.default_rng(seed)
    val_runs = set(rng.permutation(runs)[:n_val].tolist()) if n_val else set()
    is_val = np.array([r in val_runs for r in run_ids], dtype=bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def return_balance_weights(returns: np.ndarray, alpha: float, bins: int = 20) -> np.ndarray:
    """Sampling weights (summing to 1) ∝ density(return)^-alpha, the density a histogram of `bins`
    equal-width bins over the returns' range: alpha 0 is uniform over rows; alpha 1 gives every
    occupied return bin the same total weight, so rare returns (early checkpoints, the best ones)
    are seen as often as the common middle."""
    returns = np.asarray(returns, dtype=np.float64)
    if alpha < 0 or not np.isfinite(alpha):
        raise ValueError(f"generator.return_balance must be a finite number >= 0, got {alpha}")
    if len(returns) == 0 or alpha == 0 or np.ptp(returns) == 0:
        return np.full(len(returns), 1.0 / max(1, len(returns)))
    edges = np.linspace(returns.min(), returns.max(), bins + 1)
    which = np.clip(np.searchsorted(edges, returns, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(np.float64)
    w = counts[which] ** -alpha
    return w / w.sum()


def module_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _layer_entries(layout: ParamLayout) -> list[tuple[str, list[tuple[str, tuple[int, ...], int]]]]:
    """[(module, [(tensor name, shape, offset in flat vector)])] in layout order."""
    layers: list[tuple[str, list]] = []
    offset = 0
    for name, shape in layout.entries:
        mod = module_of(name)
        if not layers or layers[-1][0] != mod:
            layers.append((mod, []))
        layers[-1][1].append((name, shape, offset))
        offset += math.prod(shape)
    return layers


def _index_tensors(layout: ParamLayout) -> dict[str, torch.Tensor]:
    """Each tensor of the layout filled with the flat positions of its values."""
    flat = torch.arange(layout.num_params)
    out, offset = {}, 0
    for name, shape in layout.entries:
        size = math.prod(shape)
        out[name] = flat[offset : offset + size].reshape(shape)
        offset += size
    return out


@dataclass(frozen=True)
class TokenLayer:
    name: str
    index: torch.Tensor  # [tokens, width] flat positions; -1 = padding

    @property
    def tokens(self) -> int:
        return self.index.shape[0]

    @property
    def width(self) -> int:
        return self.index.shape[1]


class Tokenizer:
    """Flat `[B, P]` ⇄ per-layer tokens `[B, tokens_l, width_l]`.

    `neuron`: token r of a module is the concatenation of row r of each of its tensors (a Linear's
    output unit: incoming weights + bias; a GRUCell's gate unit: input and recurrent weights + biases).
    `chunk`, or a module whose tensors do not share their first dimension: runs of `chunk_size`.
    """

    def __init__(self, layout: ParamLayout, mode: str = "neuron", chunk_size: int = 64):
        if mode not in ("neuron", "chunk"):
            raise ValueError(f"tokenisation must be neuron or chunk, got {mode!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.num_params = layout.num_params
        index = _index_tensors(layout)
        self.layers: list[TokenLayer] = []
        for module, entries in _layer_entries(layout):
            rows = {shape[0] if shape else 1 for _, shape, _ in entries}
            if mode == "neuron" and len(rows) == 1:
                n = rows.pop()
                idx = torch.cat([index[name].reshape(n, -1) for name, _, _ in entries], dim=1)
            else:
                flat = torch.cat([index[name].reshape(-1) for name, _, _ in entries])
                n = -(-flat.numel() // chunk_size)
                idx = torch.full((n * chunk_size,), -1, dtype=torch.long)
                idx[: flat.numel()] = flat
                idx = idx.reshape(n, chunk_size)
            self.layers.append(TokenLayer(module, idx))
        self.layer_of_param = torch.empty(self.num_params, dtype=torch.long)
        for i, layer in enumerate(self.layers):
            self.layer_of_param[layer.index[layer.index >= 0]] = i

    @property
    def total_tokens(self) -> int:
        return sum(layer.tokens for layer in self.layers)

    def tokens(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """`[B, P]` → per-layer `[B, tokens, width]` (padding positions are 0)."""
        padded = torch.cat([flat, flat.new_zeros(flat.shape[0], 1)], dim=1)  # index -1 reads the zero column
        return [padded[:, layer.index.to(flat.device)] for layer in self.layers]

    def flat(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of `tokens` (padding dropped)."""
        batch = tokens[0].shape[0]
        out = tokens[0].new_empty(batch, self.num_params)
        for layer, t in zip(self.layers, tokens):
            idx = layer.index.to(t.device)
            keep = idx >= 0
            out[:, idx[keep]] = t[:, keep]
        return out

    def masks(self) -> list[torch.Tensor]:
        """Per layer `[tokens, width]` True where a token position holds a real parameter."""
        return [layer.index >= 0 for layer in self.layers]


@dataclass
class Normalizer:
    """Standardisation of parameters, and the scale of the return condition.

    Each parameter has the dataset mean subtracted (`param_mean`, `[P]`); the residuals are then
    divided by one standard deviation per layer (`layer_std`, `[L]`), so the model sees how
    checkpoints differ from the typical one, on a comparable scale in every layer.

    The return condition is the return's position in the dataset's return distribution: the
    empirical CDF through `return_knots` (the 0th, 1st, …, 100th percentiles), piecewise linear, so
    the range [min, max] maps to [0, 1] with equal resolution for every percentile (a few very low
    returns of initial policies do not squash the top of the range). Beyond the range it continues
    linearly with slope 1 / (max − min), so out-of-range targets map outside [0, 1].
    """

    param_mean: torch.Tensor  # [P]
    layer_std: torch.Tensor  # [L]
    return_knots: torch.Tensor  # [101] float64, non-decreasing

    @classmethod
    def fit(cls, params: np.ndarray, returns: np.ndarray, tokenizer: Tokenizer) -> "Normalizer":
        x = torch.from_numpy(params).double()
        mean = x.mean(0)
        resid = x - mean
        which = tokenizer.layer_of_param
        std = torch.stack([resid[:, which == i].pow(2).mean().sqrt() for i in range(len(tokenizer.layers))])
        knots = torch.from_numpy(np.percentile(np.asarray(returns, np.float64), np.arange(101)))
        return cls(mean.float(), std.clamp_min(1e-8).float(), knots)

    @property
    def return_low(self) -> float:
        return float(self.return_knots[0])

    @property
    def return_high(self) -> float:
        return float(self.return_knots[-1])

    def standardise(self, flat: torch.Tensor, tokenizer: Tokenizer) -> torch.Tensor:
        which = tokenizer.layer_of_param.to(flat.device)
        return (flat - self.param_mean.to(flat.device)) / self.layer_std.to(flat.device)[which]

    def unstandardise(self, flat: torch.Tensor, tokenizer: Tokenizer) -> torch.Tensor:
        which = tokenizer.layer_of_param.to(flat.device)
        return flat * self.layer_std.to(flat.device)[which] + self.param_mean.to(flat.device)

    def condition(self, returns: torch.Tensor) -> torch.Tensor:
        """Return → its empirical-CDF position in [0, 1]; linear continuation outside the range."""
        r = returns.double().cpu().numpy()
        knots = self.return_knots.numpy()
        span = max(self.return_high - self.return_low, 1e-8)
        xs = spread_ties(knots, span)
        c = np.interp(r, xs, np.linspace(0.0, 1.0, len(knots)))
        c = np.where(r < xs[0], (r - xs[0]) / span, c)
        c = np.where(r > xs[-1], 1.0 + (r - xs[-1]) / span, c)
        return torch.from_numpy(c).to(returns.device)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"param_mean": self.param_mean, "layer_std": self.layer_std, "return_knots": self.return_knots}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "Normalizer":
        return cls(t["param_mean"].float(), t["layer_std"].float(), t["return_knots"].double())


def permutation_index(spec: PolicySpec, generator: torch.Generator) -> torch.Tensor:
    """A flat index `idx` such that `flat[idx]` is the same function with its hidden units permuted.

    mlp: each hidden layer's units (rows of its Linear, columns of the next). gru: the encoder's
    units, and the recurrent units (the same permutation in each of the r, z, n gate blocks; rows
    and columns of `weight_hh`; columns of the head).
    """
    actor = Actor(spec)
    layout = actor.layout
    t = _index_tensors(layout)

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


def reference_actors(store: CheckpointStore, info: dict[str, Any], env_cfg: EnvConfig) -> dict[str, Actor]:
    """The other groups' fixed policies named by a generator's `reference` (its config.json `info`):
    the co-trained policies of the best checkpoint's run at that step. Empty for one-group envs."""
    ref = info.get("reference") or {}
    if not ref.get("groups"):
        return {}
    env = describe_env(env_cfg)
    rows = store.read_records(env_key=info["env_key"], run_id=ref["run_id"],
                              columns=["group", "arch", "step", "params"]).table.to_pylist()
    out = {}
    for group, meta in ref["groups"].items():
        row = next((r for r in rows if r["group"] == group and r["step"] == ref["step"]), None)
        if row is None:
            raise ValueError(f"reference checkpoint of group {group} (run {ref['run_id']}, step {ref['step']})"
                             f" is missing from {store.uri}")
        spec = PolicySpec.from_arch_key(meta["arch"])  # the reference run's own architecture
        g = env.group(group)
        if (spec.obs_dim, spec.action_dim, spec.discrete) != (g.obs_dim, g.action_dim, g.discrete):
            raise ValueError(f"reference group {group}: arch {meta['arch']} does not fit the env's group")
        out[group] = actor_from_flat(spec, np.asarray(row["params"], np.float32))
    return out
