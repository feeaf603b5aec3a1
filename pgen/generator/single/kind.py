"""The single-architecture kind (`generator=single`, the default): one VAE per (env, group, arch)
slice, over the tokens of that one architecture (`model.ParamVAE`, `tokens.Tokenizer`,
`normalize.Normalizer`). Its versions have no `model.type` in config.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from pgen.config import GeneratorConfig, SingleGeneratorConfig, enum_value
from pgen.dataset.slices import Slice
from pgen.generator.augment import permutations
from pgen.generator.kind import ArchTensors, FitSetup, GeneratorKind
from pgen.generator.sample import ArchNotSupported, Generator
from pgen.generator.single.model import ModelConfig, ParamVAE
from pgen.generator.single.normalize import Normalizer
from pgen.generator.single.tokens import Tokenizer
from pgen.generator.vae import reconstruction_loss
from pgen.policies.spec import ParamLayout, PolicySpec
from pgen.store import CheckpointStore

PERMUTATIONS = 256  # size of the pool of hidden-unit permutations drawn for augmentation


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


def model_config(cfg: SingleGeneratorConfig, tokenizer: Tokenizer) -> ModelConfig:
    return ModelConfig([layer.tokens for layer in tokenizer.layers], [layer.width for layer in tokenizer.layers],
                       cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.latent_dim, cfg.fourier_features, cfg.dropout,
                       cfg.conditional_prior, cfg.condition_dropout > 0, cfg.prior_components)


@dataclass
class SingleArchGenerator(Generator):
    """A single-architecture VAE with everything needed to turn (target return, z) into policy parameters."""

    model: ParamVAE
    tokenizer: Tokenizer
    normalizer: Normalizer
    info: dict[str, Any]

    def check_spec(self, spec: PolicySpec | None) -> PolicySpec:
        if spec is not None and spec != self.spec:
            raise ArchNotSupported(f"{self.model_id} generates only {self.spec.arch_key} (a single-architecture"
                                   f" generator), not {spec.arch_key}")
        return self.spec

    def decoded_as(self, spec: PolicySpec) -> PolicySpec:
        return spec

    def calibration_curves(self) -> dict[str, dict[str, Any]]:
        curve = self.info.get("calibration")  # a single-architecture version keeps its one curve as it is
        return {self.spec.arch_key: curve} if curve else {}

    def set_calibration(self, curves: dict[str, dict[str, Any]]) -> None:
        self.info.pop("calibration", None)
        if curves:
            self.info["calibration"] = curves[self.spec.arch_key]

    @torch.no_grad()
    def decode(self, returns: np.ndarray, noise: torch.Tensor, spec: PolicySpec | None = None) -> np.ndarray:
        self.check_spec(spec)
        if self.model.training:  # eval() walks every module: not on each request of a server
            self.model.eval()
        c = self.normalizer.condition(torch.as_tensor(self.conditioning(returns))).float().to(self.device)
        z = self.model.sample_latent(c, noise.to(self.device))
        tokens = self.guided(lambda cond: self.model.decode(z, cond), c)
        flat = self.normalizer.unstandardise(self.tokenizer.flat(tokens), self.tokenizer)
        return flat.cpu().numpy().astype(np.float32)

    def standardise(self, flat: np.ndarray, spec: PolicySpec) -> np.ndarray:
        self.check_spec(spec)
        return self.normalizer.standardise(torch.from_numpy(flat), self.tokenizer).numpy()

    def unstandardise(self, flat: np.ndarray, spec: PolicySpec) -> np.ndarray:
        self.check_spec(spec)
        return self.normalizer.unstandardise(torch.as_tensor(flat, dtype=torch.float32), self.tokenizer).numpy()

    @torch.no_grad()
    def reconstruct(self, params: np.ndarray, returns: np.ndarray, spec: PolicySpec | None = None) -> np.ndarray:
        self.check_spec(spec)
        self.model.eval()
        x = self.normalizer.standardise(torch.from_numpy(np.asarray(params, np.float32)), self.tokenizer)
        c = self.normalizer.condition(torch.as_tensor(np.asarray(returns, np.float64))).float().to(self.device)
        tokens = self.tokenizer.tokens(x.to(self.device))
        return self.tokenizer.flat(self.model.decode(self.model.encode(tokens, c)[0], c)).cpu().numpy()

    def reconstruction_loss(self, predicted: np.ndarray, target: np.ndarray, spec: PolicySpec | None = None) -> float:
        self.check_spec(spec)
        parts = lambda x: self.tokenizer.tokens(torch.as_tensor(x, dtype=torch.float32))  # noqa: E731
        return float(reconstruction_loss(parts(predicted), parts(target), self.tokenizer.masks()))


class SingleKind(GeneratorKind):
    name = "single"
    config = SingleGeneratorConfig
    model_type = None

    def slice_key(self, spec: PolicySpec) -> str:
        return spec.arch_key

    def slice_specs(self, store: CheckpointStore, env_key: str, group: str, spec: PolicySpec,
                    cfg: GeneratorConfig) -> list[PolicySpec]:
        return [spec]

    def setup(self, cfg: SingleGeneratorConfig, train: Slice, val: Slice, spec: PolicySpec, device: torch.device,
              rng: torch.Generator) -> FitSetup:
        tokenizer = Tokenizer(spec.layout, enum_value(cfg.tokenisation), cfg.chunk_size)
        rows, held_out = train.parts[spec.arch_key], val.parts.get(spec.arch_key)
        normalizer = Normalizer.fit(rows.params, rows.returns, tokenizer)

        def tensors(part) -> tuple[torch.Tensor, torch.Tensor]:
            return (normalizer.standardise(torch.from_numpy(part.params), tokenizer).to(device),
                    normalizer.condition(torch.from_numpy(part.returns)).float().to(device))

        x, c = tensors(rows)
        x_val, c_val = tensors(held_out) if held_out is not None else (None, None)
        mcfg = model_config(cfg, tokenizer)
        model = ParamVAE(mcfg)
        # an epoch is len(train) rows: a permutation, or with generator.return_balance > 0 a draw with
        # replacement that favours rows whose return is rare in the training set
        weights = (torch.from_numpy(return_balance_weights(rows.returns, cfg.return_balance))
                   if cfg.return_balance != 0 else None)  # the weights check the value (negative, NaN, inf)
        arch = ArchTensors(spec, rows.params, None if held_out is None else held_out.params,
                           lambda parts: normalizer.unstandardise(tokenizer.flat(parts), tokenizer),
                           x, c, x_val, c_val, tokenizer.tokens, [m.to(device) for m in tokenizer.masks()], (),
                           permutations(spec, PERMUTATIONS, cfg, rng), weights)
        info = {"model": asdict(mcfg), "policy_spec": spec.to_json(), "layout": spec.layout.to_json(),
                "arch": spec.arch_key}
        return FitSetup(model, normalizer, {spec.arch_key: arch}, info,
                        lambda m, n, i: SingleArchGenerator(m, tokenizer, n, i), lambda _key: normalizer.param_mean)

    def warm_start_plan(self, cfg: SingleGeneratorConfig, spec: PolicySpec, previous: Generator | None
                        ) -> dict[str, Any]:
        """Only from a version of this kind whose policy layout and model shape are the ones `cfg` builds."""
        if previous is None:
            return super().warm_start_plan(cfg, spec, previous)
        if not isinstance(previous, SingleArchGenerator):
            return {"from": None, "why": f"{previous.model_id} is a version of another generator kind"}
        tokenizer = Tokenizer(spec.layout, enum_value(cfg.tokenisation), cfg.chunk_size)
        if previous.info["layout"] != spec.layout.to_json():
            return {"from": None, "why": f"{previous.model_id} has another policy layout"}
        if asdict(model_config(cfg, tokenizer)) != previous.info["model"]:
            return {"from": None, "why": f"{previous.model_id} has another model configuration"}
        return {"from": previous.model_id, "weights": True, "normalizer": "refitted to this data"}

    def load(self, info: dict[str, Any], weights: dict[str, torch.Tensor], normalizer: dict[str, torch.Tensor]
             ) -> Generator:
        model = ParamVAE(ModelConfig(**info["model"]))
        model.load_state_dict(weights, strict=True)
        g = info["generator"]
        tokenizer = Tokenizer(ParamLayout.from_json(info["layout"]), g["tokenisation"], g["chunk_size"])
        return SingleArchGenerator(model, tokenizer, Normalizer.from_tensors(normalizer), info)
