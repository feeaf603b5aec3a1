"""A trained generator: policies for a target return. `Generator` is what every kind's trained
generator offers the rest of pgen; a kind (`single/kind.py`, `family/kind.py`) says how it decodes.

Generation: z = μ_p(c) + σ_p(c)·ε with ε ~ N(0, τ²I) drawn from a CPU generator seeded with `seed`
(μ_p = 0, σ_p = 1 without a conditional prior; with a mixture prior, μ_p and σ_p of the component a
uniform draw after ε picks by the components' weights), the condition c the requested return (through the
version's calibration curve when it has an adopted one, `condition.condition_for`) on the
normaliser's `ReturnScale`; the decoded parameters are un-standardised into ParamLayout order.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from pgen.config import DEFAULT_TEMPERATURE
from pgen.generator.condition import adopted, condition_for
from pgen.policies.growth import transfer_source
from pgen.policies.spec import ParamLayout, PolicySpec
from pgen.util.checks import check_target


class ArchNotSupported(ValueError):
    """A requested architecture that the generator cannot produce; the message says why."""


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def trained_arch_keys(info: dict[str, Any]) -> list[str]:
    """The arch keys of the architectures a version (its config.json `info`) was trained on
    (`archs`; versions fitted before every version recorded it: their one `arch`)."""
    return list(info.get("archs") or [info["arch"]])


class Generator:
    """What every trained generator offers: identity, the architectures it produces, the return
    condition and `generate`. A kind's subclass implements `check_spec`, `decoded_as`, `decode` and
    `standardise`.

    `spec` is the architecture a generator produces by default; `check_spec` says which one a
    request means (`ArchNotSupported` when it cannot produce it)."""

    info: dict[str, Any]  # config.json: name, version, model, generator, policy_spec, layout, env, dataset …
    model: torch.nn.Module
    normalizer: Any
    # False: a version with a `calibration` is conditioned on each target as asked (what `decode` did
    # before calibration; bench/pipeline.py's uncalibrated rows)
    calibrated: bool = True

    @property
    def spec(self) -> PolicySpec:
        return PolicySpec.from_json(self.info["policy_spec"])

    @property
    def layout(self) -> ParamLayout:
        return ParamLayout.from_json(self.info["layout"])

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def version(self) -> str:
        return self.info.get("version", "unregistered")

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def latent_dim(self) -> int:
        return self.model.cfg.latent_dim

    @property
    def guidance(self) -> float:
        """The classifier-free guidance w the version decodes with (`generator.guidance`; 1: none)."""
        return float(self.info.get("generator", {}).get("guidance", 1.0))

    def guided(self, decode: Callable[[torch.Tensor], list[torch.Tensor]], c: torch.Tensor) -> list[torch.Tensor]:
        """`decode(condition)` of the model's parts, with the version's guidance w: dec(none) + w ·
        (dec(c) − dec(none)); plain `decode(c)` for w = 1."""
        parts = decode(c)
        w = self.guidance
        if w == 1.0:
            return parts
        free = decode(torch.full_like(c, float("nan")))
        return [f + w * (p - f) for p, f in zip(parts, free)]

    @property
    def trained_specs(self) -> list[PolicySpec]:
        """The architectures the generator was trained on (the default `spec` among them)."""
        return [PolicySpec.from_arch_key(k) for k in trained_arch_keys(self.info)]

    # --- what a kind implements -------------------------------------------------------------------

    def check_spec(self, spec: PolicySpec | None) -> PolicySpec:
        """The architecture to produce for a request (`spec`, None: the default) or ArchNotSupported."""
        raise NotImplementedError

    def decoded_as(self, spec: PolicySpec) -> PolicySpec:
        """The architecture the model decodes for `spec` (`decode` carries it into `spec`)."""
        raise NotImplementedError

    def decode(self, returns: np.ndarray, noise: torch.Tensor, spec: PolicySpec | None = None) -> np.ndarray:
        """Parameter vectors `[n, P]` of `spec` for n (return, ε) pairs in one forward pass; rows are
        independent, so requests batched together get what each would get alone (up to float rounding)."""
        raise NotImplementedError

    def standardise(self, flat: np.ndarray, spec: PolicySpec) -> np.ndarray:
        """Parameter vectors of `spec` in the generator's standardised space (where novelty is measured)."""
        raise NotImplementedError

    def unstandardise(self, flat: np.ndarray, spec: PolicySpec) -> np.ndarray:
        """The inverse of `standardise`: parameter vectors of `spec` from the standardised space."""
        raise NotImplementedError

    def reconstruct(self, params: np.ndarray, returns: np.ndarray, spec: PolicySpec | None = None) -> np.ndarray:
        """Each row of `params` (of `spec`) encoded, and decoded from its posterior mean conditioned on
        its own return `returns` (as the fit's validation does): `[N, P]` in standardised units."""
        raise NotImplementedError

    def reconstruction_loss(self, predicted: np.ndarray, target: np.ndarray, spec: PolicySpec | None = None) -> float:
        """The fit's reconstruction loss of standardised rows `predicted` against `target` (mean squared
        error of each of the model's parts — tokens of a layer, or blocks — averaged over parts)."""
        raise NotImplementedError

    # --- the return condition ---------------------------------------------------------------------

    def source_key(self, spec: PolicySpec | None = None) -> str:
        """The arch key of the trained architecture `spec`'s policies come from: `spec` itself when
        trained, else the trained architecture it is decoded from and grown out of."""
        return transfer_source(self.trained_specs, self.decoded_as(self.check_spec(spec))).arch_key

    def return_range(self, spec: PolicySpec | None = None) -> tuple[float, float]:
        """The returns the training rows behind `spec` span: those of the trained architecture its
        policies come from (`source_key`) when the version recorded them per architecture, else the
        dataset's; replies report a target outside them as not `in_range`."""
        ranges = self.info.get("arch_return_range")
        if ranges:
            low, high = ranges[self.source_key(spec)]
        else:
            ds = self.info["dataset"]
            low, high = ds["return_min"], ds["return_max"]
        return float(low), float(high)

    def calibration_curves(self) -> dict[str, dict[str, Any]]:
        """The version's calibration curves by trained arch key (empty without calibration)."""
        raise NotImplementedError

    def set_calibration(self, curves: dict[str, dict[str, Any]]) -> None:
        """Make `curves` (by trained arch key; empty: none) the version's calibration."""
        raise NotImplementedError

    def calibration_for(self, spec: PolicySpec | None = None) -> dict[str, Any] | None:
        """The calibration curve requests for `spec` are conditioned through: the one of the trained
        architecture its policies come from (`source_key`); None without one, or when its validation
        did not adopt it."""
        curves = self.calibration_curves()
        curve = curves.get(self.source_key(spec)) if curves else None
        return curve if adopted(curve) else None

    @property
    def clips_condition(self) -> bool:
        """Whether the return a policy is conditioned on is clipped to `return_range(spec)`."""
        return False

    def conditioning(self, returns: np.ndarray, spec: PolicySpec | None = None) -> np.ndarray:
        """The return the model is conditioned on for each requested return (of `spec`): through
        `calibration_for(spec)` when the version has one, else the request itself; clipped to
        `return_range(spec)` when `clips_condition`."""
        calibration = self.calibration_for(spec)
        returns = np.asarray(returns, np.float64)
        returns = condition_for(calibration, returns) if calibration and self.calibrated else returns
        return np.clip(returns, *self.return_range(spec)) if self.clips_condition else returns

    def conditioned_on(self, target: float, spec: PolicySpec | None = None) -> float | None:
        """The return the model is conditioned on for `target`, None when that is `target` itself
        (no adopted calibration curve and no clipping): what `pgen generate`'s policy file and
        Serve's replies report as `conditioned_on`."""
        condition = float(self.conditioning(np.array([target]), spec)[0])
        return None if condition == float(target) else condition

    # --- generation -------------------------------------------------------------------------------

    def generate(self, target_returns: float | Sequence[float], num: int = 1, seed: int = 0,
                 temperature: float = DEFAULT_TEMPERATURE, spec: PolicySpec | None = None) -> np.ndarray:
        """`num` parameter vectors of `spec` (default: `self.spec`) per target, `[len(targets) · num, P]`
        float32, target-major; the same call gives the same vectors on any device (up to the
        device's float arithmetic)."""
        targets = [check_target(t) for t in np.atleast_1d(np.asarray(target_returns, dtype=object))]
        noise = self.noise(len(targets) * num, seed, temperature)
        return self.decode(np.repeat(np.asarray(targets, np.float64), num), noise, spec)

    def noise(self, num: int, seed: int, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
        """The generation noise of `num` policies, from a CPU generator seeded with `seed`: ε ~ N(0, τ²I)
        `[num, latent_dim]`, and for a mixture prior a last column u ~ U(0, 1) that picks its component."""
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        temperature = check_target(temperature, "temperature")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        rng = torch.Generator().manual_seed(int(seed))
        eps = torch.randn(num, self.latent_dim, generator=rng) * temperature
        if self.model.cfg.prior_components > 1:
            eps = torch.cat([eps, torch.rand(num, 1, generator=rng)], dim=1)
        return eps


def requested_spec(gen: Generator, arch: str | None = None, kind: str | None = None,
                   hidden: Sequence[int] | None = None, activation: str | None = None) -> PolicySpec:
    """The architecture a request names for `gen`'s group — an arch key `arch`, or `kind` / `hidden` /
    `activation` over the generator's default — checked against what it can produce (ArchNotSupported)."""
    base = gen.spec
    try:
        if arch:
            spec = PolicySpec.from_arch_key(arch)
            asked = {"kind": kind, "hidden": tuple(hidden) if hidden else None, "activation": activation}
            clash = [k for k, v in asked.items() if v is not None and v != getattr(spec, k)]
            if clash:
                raise ValueError(f"arch={arch} and the {', '.join(clash)} asked beside it disagree")
            if (spec.obs_dim, spec.action_dim, spec.discrete) != (base.obs_dim, base.action_dim, base.discrete):
                raise ValueError(f"arch={arch} does not fit group {gen.info['group']}: its policies are"
                                 f" {base.obs_dim} observations → {base.action_dim} actions ({base.arch_key})")
        else:
            spec = PolicySpec(kind or base.kind, base.obs_dim, tuple(hidden) if hidden else base.hidden,
                              base.action_dim, base.discrete, activation or base.activation)
    except ValueError as err:
        raise ArchNotSupported(str(err)) from None
    return gen.check_spec(spec)
