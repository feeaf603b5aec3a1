"""The arch-family kind (`generator=family`): one VAE for every architecture of a family — a group's
policies of one kind, activation and output type, any hidden sizes (`pgen.policies.growth.family_key`)
— conditioned on the architecture beside the return (`model.FamilyVAE`, `archgraph.ArchGraph`,
`normalize.FamilyNormalizer`). Its versions have `model.type: "arch-family"` in config.json.

Every batch of a fit holds rows of one architecture (their tensors share a shape); with several
architectures the batches of all of them are shuffled together, so an epoch sees every training row
once. The permutation augmentation permutes each architecture's own hidden units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from pgen.config import FamilyGeneratorConfig
from pgen.dataset.slices import Slice, archs_in_store
from pgen.generator.augment import permutations
from pgen.generator.family.archgraph import arch_graph, check_arch
from pgen.generator.family.model import MODEL_TYPE, ArchInputs, FamilyModelConfig, FamilyVAE, arch_inputs
from pgen.generator.family.normalize import FamilyNormalizer
from pgen.generator.kind import ArchTensors, FitSetup, GeneratorKind
from pgen.generator.sample import ArchNotSupported, Generator
from pgen.generator.vae import reconstruction_loss
from pgen.policies.growth import can_grow, family_key, grow, transfer_source
from pgen.policies.spec import PolicySpec
from pgen.store import CheckpointStore

PERMUTATIONS = 64  # per architecture: the pool of hidden-unit permutations drawn for augmentation


def family_model_config(cfg: FamilyGeneratorConfig, spec: PolicySpec) -> FamilyModelConfig:
    return FamilyModelConfig(spec.kind, spec.obs_dim, spec.action_dim, cfg.d_model, cfg.n_layers, cfg.n_heads,
                             cfg.latent_dim, cfg.fourier_features, cfg.readout_dim, cfg.dropout, cfg.conditional_prior,
                             cfg.linear_readout, cfg.condition_dropout > 0, cfg.prior_components)


@dataclass
class FamilyGenerator(Generator):
    """An arch-family VAE: parameters of any architecture of its family, within
    `archgraph.MAX_WIDTH` / `MAX_DEPTH`, that a trained architecture grows into."""

    model: FamilyVAE
    normalizer: FamilyNormalizer
    info: dict[str, Any]
    # an MLP deeper than every depth it was trained on is decoded cut to the deepest trained depth
    # and deepened by `growth.grow` (function-preserving; `decoded_as`); False decodes it directly
    grow_unseen_depth: bool = True
    # an architecture of widths never trained (at its, or its cut's, depth) is decoded as its transfer
    # source, the largest trained architecture that grows into it, and widened by `growth.grow`
    # (function-preserving; `decoded_as`); False decodes the new widths directly. None: as the
    # version's config says (`unseen_widths`: "grown" or "decoded"; versions without it decode them)
    grow_unseen_width: bool | None = None
    # the return a policy is conditioned on is clipped to the range its architecture's training rows
    # span (`return_range`); False conditions on the target as asked
    clamp_to_arch_range: bool = True
    _inputs: dict[str, ArchInputs] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.grow_unseen_width is None:
            self.grow_unseen_width = self.info.get("unseen_widths", "decoded") == "grown"

    @property
    def family(self) -> str:
        return self.info["arch"]

    def check_spec(self, spec: PolicySpec | None) -> PolicySpec:
        spec = spec or self.spec
        check_arch(spec, self.family)
        if transfer_source(self.trained_specs, spec) is None:
            raise ArchNotSupported(f"{spec.arch_key} is narrower or shallower than every architecture"
                                   f" {self.model_id} was trained on ({', '.join(self.info['archs'])}); it produces"
                                   " architectures that one of them grows into")
        return spec

    def decoded_as(self, spec: PolicySpec) -> PolicySpec:
        """`spec` itself when trained; an MLP deeper than every depth it was trained on (with
        `grow_unseen_depth`) is cut to the deepest trained depth that grows into it (no checkpoint
        says what a layer at a new depth holds, and decoding it directly gives policies worse than
        random); widths no trained architecture has (with `grow_unseen_width`) are decoded as the
        transfer source of that architecture, so a held-out width plays as the trained one it is
        widened from (decoded directly by the model, `[96, 96]` and `[256, 256]` had lower alignment
        and score on average: bench/README "Architectures")."""
        trained = self.trained_specs
        at = spec
        depths = {len(s.hidden) for s in trained}
        if spec.kind == "mlp" and len(spec.hidden) not in depths and self.grow_unseen_depth:
            for depth in sorted((d for d in depths if d < len(spec.hidden)), reverse=True):
                cut = replace(spec, hidden=spec.hidden[:depth])
                if can_grow(cut, spec) and transfer_source(trained, cut) is not None:
                    at = cut
                    break
        if self.grow_unseen_width and at not in trained and (at.kind != "mlp" or len(at.hidden) in depths):
            at = transfer_source(trained, at) or at
        return at

    @property
    def clips_condition(self) -> bool:
        """With `clamp_to_arch_range`, for versions that recorded their architectures' ranges: asked
        for a return beyond an architecture's own best, the model extrapolated the condition and its
        policies played worse than at that best (bench/README "Architectures")."""
        return self.clamp_to_arch_range and "arch_return_range" in self.info

    def calibration_curves(self) -> dict[str, dict[str, Any]]:
        return dict(self.info.get("calibration") or {})

    def set_calibration(self, curves: dict[str, dict[str, Any]]) -> None:
        self.info.pop("calibration", None)
        if curves:
            self.info["calibration"] = dict(curves)

    def inputs(self, spec: PolicySpec) -> ArchInputs:
        if spec.arch_key not in self._inputs:
            self._inputs[spec.arch_key] = arch_inputs(spec, self.normalizer.centre_standardised(spec)).to(self.device)
        return self._inputs[spec.arch_key]

    @torch.no_grad()
    def decode(self, returns: np.ndarray, noise: torch.Tensor, spec: PolicySpec | None = None) -> np.ndarray:
        spec = self.check_spec(spec)
        at = self.decoded_as(spec)
        self.model.eval()
        a = self.inputs(at)
        c = self.normalizer.condition(torch.as_tensor(self.conditioning(returns, spec))).float().to(self.device)
        z = self.model.sample_latent(c, noise.to(self.device), a)
        blocks = self.guided(lambda cond: self.model.decode(z, cond, a), c)
        flat = self.normalizer.unstandardise(a.graph.flat(blocks), at).cpu().numpy().astype(np.float32)
        return flat if at == spec else np.stack([grow(row, at, spec) for row in flat])

    def standardise(self, flat: np.ndarray, spec: PolicySpec) -> np.ndarray:
        return self.normalizer.standardise(torch.from_numpy(flat), spec).numpy()

    def unstandardise(self, flat: np.ndarray, spec: PolicySpec) -> np.ndarray:
        return self.normalizer.unstandardise(torch.as_tensor(flat, dtype=torch.float32), spec).numpy()

    @torch.no_grad()
    def reconstruct(self, params: np.ndarray, returns: np.ndarray, spec: PolicySpec | None = None) -> np.ndarray:
        spec = self.check_spec(spec)
        self.model.eval()
        a = self.inputs(spec)
        x = self.normalizer.standardise(torch.from_numpy(np.asarray(params, np.float32)), spec).to(self.device)
        c = self.normalizer.condition(torch.as_tensor(np.asarray(returns, np.float64))).float().to(self.device)
        blocks = a.graph.blocks_of(x)
        return a.graph.flat(self.model.decode(self.model.encode(blocks, c, a)[0], c, a)).cpu().numpy()

    def reconstruction_loss(self, predicted: np.ndarray, target: np.ndarray, spec: PolicySpec | None = None) -> float:
        graph = arch_graph(self.check_spec(spec))
        p, t = (graph.blocks_of(torch.as_tensor(x, dtype=torch.float32)) for x in (predicted, target))
        return float(reconstruction_loss(p, t, [torch.ones(b.shape[1:]) for b in t]))


class FamilyKind(GeneratorKind):
    name = "family"
    config = FamilyGeneratorConfig
    model_type = MODEL_TYPE

    def slice_key(self, spec: PolicySpec) -> str:
        return family_key(spec)

    def slice_specs(self, store: CheckpointStore, env_key: str, group: str, spec: PolicySpec,
                    cfg: FamilyGeneratorConfig) -> list[PolicySpec]:
        """Every architecture of `spec`'s family that the store holds for (env, group), or `generator.archs`."""
        family = family_key(spec)
        specs = archs_in_store(store, env_key, group, family)
        if cfg.archs:
            wanted = [replace(spec, hidden=tuple(h)) for h in cfg.archs]
            missing = [s.arch_key for s in wanted if s not in specs]
            if missing:
                raise ValueError(f"generator.archs: no checkpoints of {missing} in {store.uri} for env={env_key}"
                                 f" group={group}; the store has"
                                 f" {[s.arch_key for s in specs] or 'none of the family ' + family}")
            specs = wanted
        if not specs:
            raise ValueError(f"no checkpoints of the family {family} in {store.uri} for env={env_key} group={group};"
                             " run `pgen populate population.archs=[...]` or `pgen dataset` to see what is there")
        return specs

    def setup(self, cfg: FamilyGeneratorConfig, train: Slice, val: Slice, spec: PolicySpec, device: torch.device,
              rng: torch.Generator) -> FitSetup:
        normalizer = FamilyNormalizer.fit(train)
        mcfg = family_model_config(cfg, spec)
        model = FamilyVAE(mcfg)
        archs = {}
        for key in sorted(train.parts):
            arch_spec = train.specs[key]
            inputs = arch_inputs(arch_spec, normalizer.centre_standardised(arch_spec)).to(device)

            def tensors(part, spec=arch_spec) -> tuple[torch.Tensor, torch.Tensor]:
                return (normalizer.standardise(torch.from_numpy(part.params), spec).to(device),
                        normalizer.condition(torch.from_numpy(part.returns)).float().to(device))

            x, c = tensors(train.parts[key])
            x_val, c_val = tensors(val.parts[key]) if key in val.parts else (None, None)
            archs[key] = ArchTensors(
                arch_spec, train.parts[key].params, val.parts[key].params if key in val.parts else None,
                lambda parts, graph=inputs.graph, spec=arch_spec: normalizer.unstandardise(graph.flat(parts), spec),
                x, c, x_val, c_val, inputs.graph.blocks_of,
                [torch.ones(t.shape[1:], device=device) for t in inputs.centre], (inputs,),
                permutations(arch_spec, PERMUTATIONS, cfg, rng))
        info = {"model": asdict(mcfg), "policy_spec": spec.to_json(), "layout": spec.layout.to_json(),
                "arch": family_key(spec), "archs": sorted(train.parts),
                # the returns each architecture's training rows span: what it conditions on (Generator.return_range)
                "arch_return_range": {k: [float(p.returns.min()), float(p.returns.max())]
                                      for k, p in sorted(train.parts.items())},
                # widths never trained are decoded as their transfer source and widened (FamilyGenerator.decoded_as)
                "unseen_widths": "grown"}
        return FitSetup(model, normalizer, archs, info, lambda m, n, i: FamilyGenerator(m, n, i),
                        lambda key: normalizer.centre(train.specs[key]))

    def load(self, info: dict[str, Any], weights: dict[str, torch.Tensor], normalizer: dict[str, torch.Tensor]
             ) -> Generator:
        model = FamilyVAE(FamilyModelConfig(**info["model"]))
        model.load_state_dict(weights, strict=True)
        return FamilyGenerator(model, FamilyNormalizer.from_tensors(info["model"]["kind"], normalizer), info)

