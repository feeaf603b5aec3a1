"""The registry of generator kinds: each entry a `kind.GeneratorKind`, chosen by `generator=<name>`.

| name | config | model | what one version generates |
|---|---|---|---|
| `single` (default) | `SingleGeneratorConfig` | `single/model.py` `ParamVAE` | one architecture |
| `family` | `FamilyGeneratorConfig` | `family/model.py` `FamilyVAE` | any architecture of a family (hidden sizes) |
"""

from __future__ import annotations

from typing import Any

from pgen.config import GeneratorConfig
from pgen.generator.family.kind import FamilyKind
from pgen.generator.kind import GeneratorKind
from pgen.generator.single.kind import SingleKind

KINDS: dict[str, GeneratorKind] = {kind.name: kind for kind in (SingleKind(), FamilyKind())}


def kind_for(cfg: GeneratorConfig) -> GeneratorKind:
    """The kind a generator config asks for (`generator=<name>`)."""
    kind = KINDS.get(cfg.kind)
    if kind is None or not isinstance(cfg, kind.config):
        raise ValueError(f"generator.kind {cfg.kind!r} with a {type(cfg).__name__}: choose the kind with"
                         f" generator=<{'|'.join(KINDS)}>")
    return kind


def kind_of(info: dict[str, Any]) -> GeneratorKind:
    """The kind of a registered version, from its config.json (`model.type`)."""
    model_type = info["model"].get("type")
    for kind in KINDS.values():
        if kind.model_type == model_type:
            return kind
    raise ValueError(f"unknown generator model type {model_type!r}")
