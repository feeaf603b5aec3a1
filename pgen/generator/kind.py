"""What a generator kind is to the rest of pgen.

A kind (`single/kind.py`, `family/kind.py`) is one entry of the registry in `kinds.py`, chosen by
config (`generator=<name>`, each a `pgen/conf/generator/<name>.yaml` backed by its dataclass in
`pgen.config`). It says which architectures a slice of the store holds for it, how the one fit loop
(`fit.py`) sees its data and model (`FitSetup`), and how a registered version of it loads. Code
outside `pgen/generator/` never asks which kind a generator is: it holds a `sample.Generator`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from pgen.config import GeneratorConfig
from pgen.dataset.slices import Slice
from pgen.generator.sample import Generator
from pgen.policies.spec import PolicySpec
from pgen.store import CheckpointStore


@dataclass
class ArchTensors:
    """One architecture's training rows as the fit loop sees them."""

    spec: PolicySpec
    params: np.ndarray  # [N, P] the training rows' parameters (float32, as stored)
    params_val: np.ndarray | None  # the validation rows'
    raw: Callable[[list[torch.Tensor]], torch.Tensor]  # what the model decodes → parameters [B, P] (differentiable)
    x: torch.Tensor  # [N, P] standardised training rows
    c: torch.Tensor  # [N] their conditions
    x_val: torch.Tensor | None  # validation rows (None: none of this architecture)
    c_val: torch.Tensor | None
    parts: Callable[[torch.Tensor], list[torch.Tensor]]  # standardised rows → what the model encodes
    masks: list[torch.Tensor]  # per part, 1 where a value is real (not padding)
    ctx: tuple  # what the model's methods take after the condition (the family model: the architecture)
    perms: torch.Tensor | None  # a pool of function-preserving permutations (`augment.permutations`)
    weights: torch.Tensor | None = None  # per-row sampling weights of an epoch (None: each row once)


@dataclass
class FitSetup:
    """What a kind builds for a fit: the model, its normaliser, each training architecture's tensors
    (by arch key, sorted), what the version records (`info`), how the fitted parts become a
    `Generator` (`generator(model, normalizer, info)`), and the mean checkpoint of a training
    architecture as the normaliser holds it (`centre(arch key)`: `[P]` parameters)."""

    model: nn.Module
    normalizer: Any
    archs: dict[str, ArchTensors]
    info: dict[str, Any]
    generator: Callable[[nn.Module, Any, dict[str, Any]], Generator]
    centre: Callable[[str], torch.Tensor]


class GeneratorKind(ABC):
    """One kind of generator (module doc)."""

    name: ClassVar[str]  # the config group option (`generator=<name>`) and `GeneratorConfig.kind`
    config: ClassVar[type]  # its dataclass in pgen.config
    model_type: ClassVar[str | None]  # config.json `model.type` of its versions (None: the key is absent)

    @abstractmethod
    def slice_key(self, spec: PolicySpec) -> str:
        """What a version of this kind names its slice by (`arch` in config.json and the default name)."""

    @abstractmethod
    def slice_specs(self, store: CheckpointStore, env_key: str, group: str, spec: PolicySpec,
                    cfg: GeneratorConfig) -> list[PolicySpec]:
        """The architectures a fit of `spec`'s slice reads (ValueError naming what is missing)."""

    def default_spec(self, spec: PolicySpec, data: Slice) -> PolicySpec:
        """The architecture the generator produces by default: `spec` when it was trained, else the first."""
        return spec if spec.arch_key in data.parts else data.specs[sorted(data.parts)[0]]

    @abstractmethod
    def setup(self, cfg: GeneratorConfig, train: Slice, val: Slice, spec: PolicySpec, device: torch.device,
              rng: torch.Generator) -> FitSetup:
        """The model (built with the global torch RNG, seeded by the fit), the normaliser fitted on
        `train`, and the tensors of every training architecture; `rng` draws augmentation pools."""

    def warm_start_plan(self, cfg: GeneratorConfig, spec: PolicySpec, previous: Generator | None) -> dict[str, Any]:
        """Whether a fit can start from `previous` (a registered version of the same slice); recorded
        in the new version's config.json (`warm_start`)."""
        return {"from": None, "why": "no previous version" if previous is None else f"{self.name} versions start cold"}

    @abstractmethod
    def load(self, info: dict[str, Any], weights: dict[str, torch.Tensor], normalizer: dict[str, torch.Tensor]
             ) -> Generator:
        """A registered version from its config.json, model and normaliser tensors (strict)."""
