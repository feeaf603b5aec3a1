"""The search space of a sweep: `tune.space` (Hydra config) → Ray Tune domains, checked first.

Each entry names a `generator.*` setting and exactly one range: `choice: [...]`, `uniform: [low,
high]`, `loguniform: [low, high]` (low > 0) or `randint: [low, high]` (integers, both inclusive).
A setting not in the space (or set to null) keeps its `generator.*` value in every trial. The
settings are those of the generator kind swept (`generator=<kind>`): an entry that is a setting of
another kind only (a profile's `tokenisation` in a sweep of `generator=family`) is left out, with a
log line. Bad entries raise ConfigError naming the key, before Ray starts.
"""

from __future__ import annotations

import itertools
from dataclasses import fields
from typing import Any, get_type_hints

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from ray import tune

from pgen.config import GENERATOR_KINDS, ConfigError, GeneratorConfig, SearchParam, enum_value
from pgen.util.progress import log

# settings every trial must share: the ASHA budget, the validation runs that make val_loss comparable,
# where and how it runs, and the store name the best trial is registered under
FIXED = {"kind": "choose the generator kind with generator=<kind>", "epochs": "it is ASHA's budget (max_t); set generator.epochs",
         "val_fraction": "every trial must be validated on the same held-out runs",
         "name": "the best trial is registered under generator.name", "group": "a sweep is of one group",
         "device": "set generator.device", "log_every_s": "set generator.log_every_s"}
KINDS = ("choice", "uniform", "loguniform", "randint")


def _check_value(key: str, value: Any, where: str, kind: type) -> Any:
    """`value` as the typed generator setting `key` (of the config class `kind`) would hold it, or ConfigError."""
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(kind), {key: value}))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {value!r} is not a valid generator.{key}: {err.msg}") from None
    return enum_value(getattr(typed, key))


def _entries(space: dict[str, SearchParam | None], base: GeneratorConfig) -> dict[str, tuple[str, list]]:
    """{key: (kind, values)} of the non-null entries that are settings of `base`'s generator kind, validated."""
    cls = type(base)
    sweepable = sorted(f.name for f in fields(cls) if f.name not in FIXED)
    of_other_kinds = {f.name for other in GENERATOR_KINDS.values() for f in fields(other)} - {f.name for f in fields(cls)}
    out = {}
    for key, param in space.items():
        if param is None:
            continue
        where = f"tune.space.{key}"
        if key in FIXED:
            raise ConfigError(f"{where}: cannot be swept: {FIXED[key]}")
        if key in of_other_kinds:
            log.info(f"{where}: not a setting of generator={base.kind}; not swept")
            continue
        if key not in sweepable:
            raise ConfigError(f"{where}: not a generator setting; sweepable: {', '.join(sweepable)}")
        given = [(kind, getattr(param, kind)) for kind in KINDS if getattr(param, kind) is not None]
        if len(given) != 1:
            raise ConfigError(f"{where}: give exactly one of {', '.join(KINDS)}, got {[k for k, _ in given] or 'none'}"
                              f" (a profile's range merges with yours: change its values, e.g. {where}.choice=[...],"
                              " or start from ~profile)")
        kind, values = given[0]
        values = list(values)
        if kind == "choice":
            if not values:
                raise ConfigError(f"{where}.choice: empty list")
            values = [_check_value(key, v, f"{where}.choice", cls) for v in values]
        else:
            if len(values) != 2 or not values[0] < values[1]:
                raise ConfigError(f"{where}.{kind}: expected [low, high] with low < high, got {values}")
            if kind == "loguniform" and values[0] <= 0:
                raise ConfigError(f"{where}.loguniform: low must be > 0, got {values[0]}")
            kind_type = get_type_hints(cls)[key]
            if kind_type not in (int, float) or (kind_type is int and kind != "randint"):
                use = "randint or choice" if kind_type is int else "choice"
                raise ConfigError(f"{where}: generator.{key} is not a float; use {use}")
            values = [_check_value(key, v, f"{where}.{kind}", cls) for v in values]
        out[key] = (kind, values)
    if not out:
        raise ConfigError("tune.space is empty: give at least one generator setting to sweep, "
                          "e.g. tune.space.lr={loguniform:[1e-3,1e-2]}")
    return out


def _candidates(key: str, entries: dict[str, tuple[str, list]], base: GeneratorConfig) -> list:
    """The values a setting can take when it is a choice or fixed (None for a continuous range)."""
    if key not in entries:
        return [enum_value(getattr(base, key))]
    kind, values = entries[key]
    return values if kind == "choice" else list(range(values[0], values[1] + 1)) if kind == "randint" else None


def search_space(space: dict[str, SearchParam | None], base: GeneratorConfig) -> dict[str, Any]:
    """Ray Tune domains for the swept settings (`param_space` of the Tuner)."""
    entries = _entries(space, base)
    heads, widths = _candidates("n_heads", entries, base), _candidates("d_model", entries, base)
    bad = [(d, h) for d, h in itertools.product(widths or [], heads or []) if d % h]
    if bad:
        raise ConfigError(f"tune.space: d_model must be divisible by n_heads in every trial; {bad[0][0]} is not"
                          f" divisible by {bad[0][1]}")
    makers = {"choice": lambda v: tune.choice(v), "uniform": lambda v: tune.uniform(*v),
              "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(v[0], v[1] + 1)}
    return {key: makers[kind](values) for key, (kind, values) in entries.items()}


def default_point(space: dict[str, SearchParam | None], base: GeneratorConfig) -> dict[str, Any]:
    """The base configuration's values of the swept settings (the first trial with include_default)."""
    point = {}
    for key, (kind, values) in _entries(space, base).items():
        value = enum_value(getattr(base, key))
        inside = value in values if kind == "choice" else values[0] <= value <= values[1]
        if not inside:
            raise ConfigError(f"tune.include_default: generator.{key}={value!r} is outside tune.space.{key}"
                              f" ({kind} {values}); widen the range or set tune.include_default=false")
        point[key] = value
    return point
