"""How the single-architecture VAE reads a policy: flat parameters ⇄ per-layer token matrices.

A "layer" here is one module of the policy (`layers.0`, `gru`, `head`, `log_std`): the tensors
whose names share the prefix before the last dot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pgen.policies.spec import ParamLayout, layout_positions


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
        index = layout_positions(layout)
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
