"""An architecture as a graph of units, the tokens of the arch-family generator.

A policy of a family (`pgen.policies.growth.family_key`) is a layered graph: the input units (one per
observation feature), the units of each hidden layer, the output units (one per action). Every
tensor of its ParamLayout is a *block*: edges between two unit layers (a weight matrix, or one gate's
rows of a GRU weight) or one value per unit (a bias, `log_std`). The generator's tokens are the
units; a token carries what it is — unit kind, its layer's position from the input and from the
output, the depth, its layer's width and fan-in, its rank in the layer, and for input/output
units which observation feature or action — never a position in a fixed table, so one model
reads and writes any width and depth of the family.

`ArchGraph(spec)` lists the unit layers and blocks and moves between a flat `[B, P]` vector and
per-block tensors (exactly); `arch_code` is a fixed-length vector of the architecture (the
condition beside the return) from which `spec_from_code` decodes the spec again; `check_arch`
says why the family generator cannot produce a spec (`ArchNotSupported`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from pgen.generator.sample import ArchNotSupported
from pgen.policies.growth import family_key
from pgen.policies.spec import PolicySpec, layout_positions

MAX_WIDTH = 512  # widest hidden layer a family generator produces
MAX_DEPTH = 4  # most hidden layers (mlp)
RANK_FREQUENCIES = 6  # Fourier features of a unit's rank: π·2^k, k < 6
ROLES = {
    "mlp": ("in.weight", "in.bias", "hid.weight", "hid.bias", "out.weight", "out.bias", "log_std"),
    "gru": ("enc.weight", "enc.bias", *(f"gru.{t}.{g}" for t in ("ih", "hh", "bih", "bhh") for g in "rzn"),
            "out.weight", "out.bias", "log_std"),
}
UNIT_FEATURES = 3 + (2 * RANK_FREQUENCIES + 1) + 3 + 3 + 4  # see ArchGraph.unit_features
ARCH_CODE = 5 + 1 + MAX_DEPTH + 1  # see arch_code


@dataclass(frozen=True)
class UnitLayer:
    kind: str  # input | hidden | output
    size: int
    from_input: int  # 0 for the first hidden layer (inputs: -1)
    from_output: int  # 0 for the last hidden layer (outputs: -1)
    fan_in: int  # units of the layer that feeds it (inputs: 0)
    offset: int  # index of its first unit among all units


@dataclass(frozen=True)
class Block:
    """One tensor of the layout, or one gate's rows of it."""

    name: str  # tensor name in the ParamLayout
    role: str  # one of ROLES[kind]
    rows: int  # index of the unit layer whose units are the rows
    cols: int | None  # index of the unit layer of the columns; None: one value per row unit
    index: torch.Tensor  # flat positions, [rows] or [rows, cols]

    @property
    def is_edges(self) -> bool:
        return self.cols is not None


def _mlp_blocks(spec: PolicySpec) -> list[tuple[str, str, int, int | None, int]]:
    """(tensor, role, row layer, col layer, gate) of an MLP; layers: 0 input, 1..L hidden, L+1 output."""
    depth = len(spec.hidden)
    out = []
    for i in range(depth):
        role = "in" if i == 0 else "hid"
        out += [(f"layers.{i}.weight", f"{role}.weight", i + 1, i, 0), (f"layers.{i}.bias", f"{role}.bias", i + 1, None, 0)]
    return out + [("head.weight", "out.weight", depth + 1, depth, 0), ("head.bias", "out.bias", depth + 1, None, 0)]


def _gru_blocks() -> list[tuple[str, str, int, int | None, int]]:
    """Layers: 0 input, 1 encoder, 2 recurrent, 3 output; each gate's rows of the GRU tensors a block."""
    out = [("encoder.weight", "enc.weight", 1, 0, 0), ("encoder.bias", "enc.bias", 1, None, 0)]
    for g, gate in enumerate("rzn"):
        out += [("gru.weight_ih", f"gru.ih.{gate}", 2, 1, g), ("gru.weight_hh", f"gru.hh.{gate}", 2, 2, g),
                ("gru.bias_ih", f"gru.bih.{gate}", 2, None, g), ("gru.bias_hh", f"gru.bhh.{gate}", 2, None, g)]
    return out + [("head.weight", "out.weight", 3, 2, 0), ("head.bias", "out.bias", 3, None, 0)]


class ArchGraph:
    """The units and blocks of one architecture (module doc); `blocks`/`flat` round-trip exactly."""

    def __init__(self, spec: PolicySpec):
        self.spec = spec
        sizes = [spec.obs_dim, *spec.hidden, spec.action_dim]
        depth = len(spec.hidden)
        self.layers: list[UnitLayer] = []
        offset = 0
        for i, size in enumerate(sizes):
            kind = "input" if i == 0 else "output" if i == len(sizes) - 1 else "hidden"
            hidden = kind == "hidden"
            self.layers.append(UnitLayer(kind, size, i - 1 if hidden else -1, depth - i if hidden else -1,
                                         sizes[i - 1] if i else 0, offset))
            offset += size
        self.num_units = offset
        positions = layout_positions(spec.layout)
        self.num_params = spec.layout.num_params
        table = _mlp_blocks(spec) if spec.kind == "mlp" else _gru_blocks()
        self.blocks: list[Block] = []
        for name, role, rows, cols, gate in table:
            n = sizes[rows]
            self.blocks.append(Block(name, role, rows, cols, positions[name][gate * n : (gate + 1) * n]))
        if not spec.discrete:
            self.blocks.append(Block("log_std", "log_std", len(sizes) - 1, None, positions["log_std"]))
        covered = torch.cat([b.index.reshape(-1) for b in self.blocks])
        assert torch.equal(covered.sort().values, torch.arange(self.num_params)), "blocks must cover the layout once"

    def unit_slice(self, layer: int) -> slice:
        u = self.layers[layer]
        return slice(u.offset, u.offset + u.size)

    def blocks_of(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """`[B, P]` → per block `[B, rows]` or `[B, rows, cols]`."""
        return [flat[:, b.index.to(flat.device)] for b in self.blocks]

    def flat(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of `blocks_of`."""
        out = blocks[0].new_empty(blocks[0].shape[0], self.num_params)
        for b, t in zip(self.blocks, blocks):
            out[:, b.index.reshape(-1).to(t.device)] = t.reshape(t.shape[0], -1)
        return out

    def block_fans(self) -> list[tuple[int, int]]:
        """(fan-in, fan-out) of each block: columns and rows of an edge block; for a per-unit block
        its units' fan-in and their count."""
        out = []
        for b in self.blocks:
            rows = self.layers[b.rows]
            out.append((self.layers[b.cols].size if b.is_edges else max(rows.fan_in, 1), rows.size))
        return out

    def param_block(self) -> torch.Tensor:
        """`[P]`: the block each parameter belongs to."""
        which = torch.empty(self.num_params, dtype=torch.long)
        for i, b in enumerate(self.blocks):
            which[b.index.reshape(-1)] = i
        return which

    def unit_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`[U, UNIT_FEATURES]` float features and `[U]` ids (0 hidden; 1 + observation feature;
        1 + obs_dim + action) of every unit: kind (3), rank in its layer and its Fourier features,
        position from the input and from the output (one-hot, clamped at 2), depth, log2 width,
        log2 fan-in, recurrent flag."""
        feats, ids = [], []
        depth = len(self.spec.hidden)
        freqs = math.pi * 2.0 ** torch.arange(RANK_FREQUENCIES)
        for li, u in enumerate(self.layers):
            rank = (torch.arange(u.size) + 0.5) / u.size
            angles = rank[:, None] * freqs
            kind = torch.zeros(u.size, 3)
            kind[:, ("input", "hidden", "output").index(u.kind)] = 1
            pos = torch.zeros(u.size, 6)
            if u.kind == "hidden":
                pos[:, min(u.from_input, 2)] = 1
                pos[:, 3 + min(u.from_output, 2)] = 1
            scalars = torch.tensor([depth / MAX_DEPTH, math.log2(u.size) / 9, math.log2(max(u.fan_in, 1)) / 9,
                                    float(self.spec.kind == "gru" and li == 2)]).expand(u.size, 4)
            feats.append(torch.cat([kind, rank[:, None], angles.sin(), angles.cos(), pos, scalars], dim=1))
            base = 0 if u.kind == "hidden" else 1 if u.kind == "input" else 1 + self.spec.obs_dim
            ids.append(torch.zeros(u.size, dtype=torch.long) if u.kind == "hidden" else base + torch.arange(u.size))
        return torch.cat(feats).float(), torch.cat(ids)


@functools.lru_cache(maxsize=64)
def arch_graph(spec: PolicySpec) -> ArchGraph:
    return ArchGraph(spec)


def arch_code(spec: PolicySpec) -> np.ndarray:
    """The architecture as a fixed-length float32 vector: kind (mlp, gru), activation (tanh, relu),
    discrete, depth / MAX_DEPTH, log2 of each hidden width / 16 (0 beyond the depth), log2 of the
    parameter count / 32. `spec_from_code` inverts it."""
    if len(spec.hidden) > MAX_DEPTH:
        raise ArchNotSupported(f"{spec.arch_key}: at most {MAX_DEPTH} hidden layers")
    widths = np.zeros(MAX_DEPTH)
    widths[: len(spec.hidden)] = [math.log2(h) / 16 for h in spec.hidden]
    head = [spec.kind == "mlp", spec.kind == "gru", spec.activation == "tanh", spec.activation == "relu",
            spec.discrete, len(spec.hidden) / MAX_DEPTH]
    return np.array([*head, *widths, math.log2(spec.layout.num_params) / 32], np.float32)


def spec_from_code(code: np.ndarray, obs_dim: int, action_dim: int) -> PolicySpec:
    """The spec `arch_code` encoded (the group's observation and action sizes are not in the code)."""
    depth = int(round(float(code[5]) * MAX_DEPTH))
    hidden = tuple(int(round(2.0 ** (16 * float(x)))) for x in code[6 : 6 + depth])
    return PolicySpec("mlp" if code[0] > 0.5 else "gru", obs_dim, hidden, action_dim, bool(code[4] > 0.5),
                      "tanh" if code[2] > 0.5 else "relu")


def check_arch(spec: PolicySpec, family: str) -> None:
    """ArchNotSupported naming why a family generator of `family` cannot produce `spec`."""
    if family_key(spec) != family:
        raise ArchNotSupported(f"{spec.arch_key} is not of this generator's family {family} (kind, activation,"
                               " observation and action sizes must match; only the hidden sizes may differ)")
    if spec.kind == "mlp" and len(spec.hidden) > MAX_DEPTH:
        raise ArchNotSupported(f"{spec.arch_key}: at most {MAX_DEPTH} hidden layers, got {len(spec.hidden)}")
    if max(spec.hidden) > MAX_WIDTH:
        raise ArchNotSupported(f"{spec.arch_key}: hidden sizes must be at most {MAX_WIDTH}, got {max(spec.hidden)}")
