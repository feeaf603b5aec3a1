"""The single-architecture normaliser: what the VAE sees of a checkpoint and of a return.

Each parameter has the dataset mean subtracted (`param_mean`, `[P]`); the residuals are then
divided by one standard deviation per layer (`layer_std`, `[L]`, a layer as `tokens.Tokenizer`
groups them), so the model sees how checkpoints differ from the typical one, on a comparable scale
in every layer. The return condition is the training returns' `ReturnScale`. Saved with the model
(`normalizer.safetensors`: `param_mean`, `layer_std`, `return_knots`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pgen.generator.condition import ReturnScale
from pgen.generator.single.tokens import Tokenizer


@dataclass
class Normalizer:
    param_mean: torch.Tensor  # [P]
    layer_std: torch.Tensor  # [L]
    returns: ReturnScale

    @classmethod
    def fit(cls, params: np.ndarray, returns: np.ndarray, tokenizer: Tokenizer) -> "Normalizer":
        x = torch.from_numpy(params).double()
        mean = x.mean(0)
        resid = x - mean
        which = tokenizer.layer_of_param
        std = torch.stack([resid[:, which == i].pow(2).mean().sqrt() for i in range(len(tokenizer.layers))])
        return cls(mean.float(), std.clamp_min(1e-8).float(), ReturnScale.fit(returns))

    def standardise(self, flat: torch.Tensor, tokenizer: Tokenizer) -> torch.Tensor:
        which = tokenizer.layer_of_param.to(flat.device)
        return (flat - self.param_mean.to(flat.device)) / self.layer_std.to(flat.device)[which]

    def unstandardise(self, flat: torch.Tensor, tokenizer: Tokenizer) -> torch.Tensor:
        which = tokenizer.layer_of_param.to(flat.device)
        return flat * self.layer_std.to(flat.device)[which] + self.param_mean.to(flat.device)

    def condition(self, returns: torch.Tensor) -> torch.Tensor:
        return self.returns.condition(returns)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"param_mean": self.param_mean, "layer_std": self.layer_std, "return_knots": self.returns.knots}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "Normalizer":
        return cls(t["param_mean"].float(), t["layer_std"].float(), ReturnScale(t["return_knots"].double()))
