"""A trained generator: sample policies for a target return; save and load versions in the store.

Store layout (DESIGN.md): `generators/<name>/<version>/` holds `model.safetensors` (the VAE's
weights), `normalizer.safetensors` (per-layer mean/std, return range), `metrics.json` (training
history and final figures) and `config.json` (model config, policy spec, layout, env, dataset
summary); `config.json` is written last of the four and marks the version complete. Versions are
`v0001`, `v0002`, … claimed with write-once puts, so two trainers registering at once get
different versions. Nothing is unpickled.

Which version `<name>` means: `promote` writes `<version>/promoted.json` (write-once), then moves
`generators/<name>/LATEST` forward only (`advance_pointer`: a slower trainer that registered v0002
never replaces a LATEST that already says v0003). Readers take the newest complete version that is
promoted or that LATEST names, so they agree with that rule even on a store that ignores
conditional writes (where the pointer itself could lose such a race). `save_generator` promotes
what it registers; under `pgen loop` only versions that pass the gate are promoted.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from pgen.config import DEFAULT_TEMPERATURE, config_from_dict, enum_value
from pgen.generator.archgraph import ArchNotSupported, check_arch
from pgen.generator.calibration import adopted, condition_for
from pgen.generator.data import Normalizer, Tokenizer, reference_actors
from pgen.generator.family_data import FamilyNormalizer
from pgen.generator.family_model import MODEL_TYPE, ArchInputs, FamilyModelConfig, FamilyVAE, arch_inputs
from pgen.generator.model import ModelConfig, ParamVAE
from pgen.growth import can_grow, grow, transfer_source
from pgen.policy import ParamLayout, PolicySpec, save_policy_file
from pgen.rollout import selection_returns
from pgen.store import CheckpointStore, StoreError, open_store

VERSION_RE = re.compile(r"^v(\d{4,})$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")
FILES = ("model.safetensors", "normalizer.safetensors", "metrics.json", "config.json")
PROMOTED = "promoted.json"  # written once into a version's folder when it becomes what <name> means


class GeneratorNotFound(ValueError):
    """No generator (or version) of that name in the store; the message lists what there is."""


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_target(value: Any, what: str = "target_return") -> float:
    """A finite float, or ValueError naming the problem."""
    try:
        target = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(target):
        raise ValueError(f"{what} must be a finite number, got {target}")
    return target


class BaseGenerator:
    """What every generator offers: identity, generation noise and `generate`; subclasses `decode`.

    `spec` is the architecture a generator produces by default; `specs_for` says which one a
    request means (`ArchNotSupported` when it cannot produce it)."""

    info: dict[str, Any]  # config.json: name, version, model, generator, policy_spec, layout, env, dataset …
    model: torch.nn.Module
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

    def check_spec(self, spec: PolicySpec | None) -> PolicySpec:
        """The architecture to produce for a request (`spec`, None: the default) or ArchNotSupported."""
        if spec is not None and spec != self.spec:
            raise ArchNotSupported(f"{self.model_id} generates only {self.spec.arch_key} (a single-architecture"
                                   f" generator), not {spec.arch_key}")
        return self.spec

    def return_range(self, spec: PolicySpec | None = None) -> tuple[float, float]:
        """The returns the training rows behind `spec` span: the dataset's (a single-architecture
        generator); replies report a target outside them as not `in_range`."""
        ds = self.info["dataset"]
        return float(ds["return_min"]), float(ds["return_max"])

    def calibration_for(self, spec: PolicySpec | None = None) -> dict[str, Any] | None:
        """The calibration curve (`pgen.generator.calibration`) requests for `spec` are conditioned
        through: the version's own; None for a version without one or whose curve was not adopted."""
        curve = self.info.get("calibration")
        return curve if adopted(curve) else None

    def conditioning(self, returns: np.ndarray, spec: PolicySpec | None = None) -> np.ndarray:
        """The return the model is conditioned on for each requested return (of `spec`): through
        `calibration_for(spec)` when the version has one, else the request itself."""
        calibration = self.calibration_for(spec)
        returns = np.asarray(returns, np.float64)
        return condition_for(calibration, returns) if calibration and self.calibrated else returns

    def conditioned_on(self, target: float, spec: PolicySpec | None = None) -> float | None:
        """The return the model is conditioned on for `target`, None when that is `target` itself
        (no adopted calibration curve and no clipping): what `pgen generate`'s policy file and
        Serve's replies report as `conditioned_on`."""
        condition = float(self.conditioning(np.array([target]), spec)[0])
        return None if condition == float(target) else condition

    def generate(self, target_returns: float | Sequence[float], num: int = 1, seed: int = 0,
                 temperature: float = DEFAULT_TEMPERATURE, spec: PolicySpec | None = None) -> np.ndarray:
        """`num` parameter vectors of `spec` (default: `self.spec`) per target, `[len(targets) · num, P]`
        float32, target-major.

        z = μ_p(c) + σ_p(c)·ε with ε ~ N(0, temperature² I) drawn from a CPU generator seeded with
        `seed` (μ_p = 0, σ_p = 1 without a conditional prior), so the same call gives the same
        vectors on any device (up to the device's float arithmetic).
        """
        targets = [check_target(t) for t in np.atleast_1d(np.asarray(target_returns, dtype=object))]
        noise = self.noise(len(targets) * num, seed, temperature)
        return self.decode(np.repeat(np.asarray(targets, np.float64), num), noise, spec)

    def noise(self, num: int, seed: int, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
        """ε for `num` policies: `[num, latent_dim]`, from a CPU generator seeded with `seed`."""
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        temperature = check_target(temperature, "temperature")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        rng = torch.Generator().manual_seed(int(seed))
        return torch.randn(num, self.latent_dim, generator=rng) * temperature

    def decode(self, returns: np.ndarray, noise: torch.Tensor, spec: PolicySpec | None = None) -> np.ndarray:
        raise NotImplementedError


@dataclass
class Generator(BaseGenerator):
    """A single-architecture VAE with everything needed to turn (target return, z) into policy parameters."""

    model: ParamVAE
    tokenizer: Tokenizer
    normalizer: Normalizer
    info: dict[str, Any]

    @torch.no_grad()
    def decode(self, returns: np.ndarray, noise: torch.Tensor, spec: PolicySpec | None = None) -> np.ndarray:
        """Parameter vectors `[n, P]` for n (return, ε) pairs in one forward pass; rows are independent,
        so requests batched together get what each would get alone (up to float rounding)."""
        self.check_spec(spec)
        if self.model.training:  # eval() walks every module: not on each request of a server
            self.model.eval()
        c = self.normalizer.condition(torch.as_tensor(self.conditioning(returns))).float().to(self.device)
        tokens = self.model.decode(self.model.sample_latent(c, noise.to(self.device)), c)
        flat = self.normalizer.unstandardise(self.tokenizer.flat(tokens), self.tokenizer)
        return flat.cpu().numpy().astype(np.float32)


@dataclass
class FamilyGenerator(BaseGenerator):
    """An arch-family VAE (`family_model`): parameters of any architecture of its family, within
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

    @property
    def trained_specs(self) -> list[PolicySpec]:
        return [PolicySpec.from_arch_key(k) for k in self.info["archs"]]

    def check_spec(self, spec: PolicySpec | None) -> PolicySpec:
        spec = spec or self.spec
        check_arch(spec, self.family)
        if transfer_source(self.trained_specs, spec) is None:
            raise ArchNotSupported(f"{spec.arch_key} is narrower or shallower than every architecture"
                                   f" {self.model_id} was trained on ({', '.join(self.info['archs'])}); it produces"
                                   " architectures that one of them grows into")
        return spec

    def decoded_as(self, spec: PolicySpec) -> PolicySpec:
        """The architecture the model decodes for `spec`; `decode` grows the result into `spec`
        (`growth.grow`, function-preserving). `spec` itself when trained; an MLP deeper than every
        depth it was trained on (with `grow_unseen_depth`) is cut to the deepest trained depth that
        grows into it (no checkpoint says what a layer at a new depth holds, and decoding it directly
        gives policies worse than random); widths no trained architecture has (with
        `grow_unseen_width`) are decoded as the transfer source of that architecture, so a held-out
        width plays as the trained one it is widened from (decoded directly by the model, `[96, 96]`
        and `[256, 256]` had lower alignment and score on average: bench/README "Architectures")."""
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
        """Whether `decode` clips the return it conditions on to `return_range(spec)`: with
        `clamp_to_arch_range`, for versions that recorded their architectures' ranges."""
        return self.clamp_to_arch_range and "arch_return_range" in self.info

    def return_range(self, spec: PolicySpec | None = None) -> tuple[float, float]:
        """The returns the training rows of the trained architecture `spec` is decoded from span:
        `spec` itself when trained, else its transfer source (the largest trained architecture that
        grows into what it decodes); the dataset's for versions fitted before these were recorded.
        Asked for a return beyond an architecture's own best, the model extrapolates the condition
        and its policies play worse than at that best (bench/README "Architectures"), so `decode`
        clips the condition to this range (`clips_condition`)."""
        ranges = self.info.get("arch_return_range")
        if not ranges:
            return super().return_range(spec)
        low, high = ranges[self.source_key(spec)]
        return float(low), float(high)

    def source_key(self, spec: PolicySpec | None = None) -> str:
        """The arch key of the trained architecture `spec`'s policies come from: `spec` itself when
        trained, else the largest trained architecture that grows into what it decodes."""
        return transfer_source(self.trained_specs, self.decoded_as(self.check_spec(spec))).arch_key

    def calibration_for(self, spec: PolicySpec | None = None) -> dict[str, Any] | None:
        """The calibration curve of the trained architecture `spec`'s policies come from
        (`source_key`): a held-out architecture is conditioned through its source's curve, as its
        condition is clipped to its source's range; None for versions without calibration."""
        curves = self.info.get("calibration")
        curve = curves.get(self.source_key(spec)) if curves else None
        return curve if adopted(curve) else None

    def conditioning(self, returns: np.ndarray, spec: PolicySpec | None = None) -> np.ndarray:
        """The calibrated condition (`BaseGenerator.conditioning`), clipped to `return_range(spec)`
        when `clips_condition`."""
        returns = super().conditioning(returns, spec)
        return np.clip(returns, *self.return_range(spec)) if self.clips_condition else returns

    def inputs(self, spec: PolicySpec) -> ArchInputs:
        if spec.arch_key not in self._inputs:
            self._inputs[spec.arch_key] = arch_inputs(spec, self.normalizer.centre_standardised(spec)).to(self.device)
        return self._inputs[spec.arch_key]

    @torch.no_grad()
    def decode(self, returns: np.ndarray, noise: torch.Tensor, spec: PolicySpec | None = None) -> np.ndarray:
        """Parameter vectors `[n, P]` of `spec` for n (return, ε) pairs in one forward pass."""
        spec = self.check_spec(spec)
        at = self.decoded_as(spec)
        self.model.eval()
        a = self.inputs(at)
        c = self.normalizer.condition(torch.as_tensor(self.conditioning(returns, spec))).float().to(self.device)
        blocks = self.model.decode(self.model.sample_latent(c, noise.to(self.device), a), c, a)
        flat = self.normalizer.unstandardise(a.graph.flat(blocks), at).cpu().numpy().astype(np.float32)
        return flat if at == spec else np.stack([grow(row, at, spec) for row in flat])


def requested_spec(gen: BaseGenerator, arch: str | None = None, kind: str | None = None,
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


def build_generator(model: torch.nn.Module, normalizer: Any, info: dict[str, Any]) -> BaseGenerator:
    if info["model"].get("type") == MODEL_TYPE:
        return FamilyGenerator(model, normalizer, info)
    g = info["generator"]
    tokenizer = Tokenizer(ParamLayout.from_json(info["layout"]), g["tokenisation"], g["chunk_size"])
    return Generator(model, tokenizer, normalizer, info)


# --- the store -----------------------------------------------------------------------------------


def version_number(version: str) -> int:
    """The number of `vNNNN`; -1 for anything else (so it ranks below every version)."""
    m = VERSION_RE.match(version)
    return int(m[1]) if m else -1


def _version_index(store: CheckpointStore, name: str) -> tuple[list[str], str | None]:
    """(complete versions oldest first, the version `name` means or None), from one listing and at
    most one read of LATEST: the newest complete version that is promoted or that LATEST names."""
    keys = store.list(f"generators/{name}/")
    complete, promoted = set(), set()
    for key in keys:
        parts = key.split("/")
        if len(parts) == 4 and VERSION_RE.match(parts[2]):
            if parts[3] == "config.json":
                complete.add(parts[2])
            elif parts[3] == PROMOTED:
                promoted.add(parts[2])
    latest = promoted & complete
    if f"generators/{name}/LATEST" in keys:
        try:
            pointer = store.get(f"generators/{name}/LATEST").decode().strip()
        except KeyError:  # removed between the listing and the read
            pointer = None
        if pointer in complete:
            latest.add(pointer)
    return sorted(complete, key=version_number), max(latest, key=version_number, default=None)


def list_generators(store: CheckpointStore) -> list[dict[str, Any]]:
    """Every complete version in the store: name, version, latest flag, env, group, arch, return range,
    and the promotion gate's decision about it when `pgen loop` made one (else None)."""
    from pgen.gate import gate_records

    names = sorted({k.split("/")[1] for k in store.list("generators/") if k.count("/") >= 2})
    gates = gate_records(store)
    out = []
    for name in names:
        versions, latest = _version_index(store, name)
        for version in versions:
            info = json.loads(store.get(f"generators/{name}/{version}/config.json"))
            ds = info["dataset"]
            gate = gates.get(f"{name}@{version}")
            out.append({"name": name, "version": version, "latest": version == latest, "env_id": info["env"]["id"],
                        "env_key": info["env_key"], "group": info["group"], "arch": info["arch"],
                        "archs": info.get("archs", [info["arch"]]),  # a family version: the trained architectures
                        "return_min": ds["return_min"], "return_max": ds["return_max"],
                        "created_at": info["created_at"],
                        "gate": None if gate is None else {k: gate[k] for k in ("promoted", "why", "metrics", "served")}})
    return out


def _names(store: CheckpointStore) -> list[str]:
    """Generator names with a version that LATEST or a promotion names."""
    return sorted({k.split("/")[1] for k in store.list("generators/")
                   if k.endswith("/LATEST") or k.endswith(f"/{PROMOTED}")})


def promote(store: CheckpointStore, name: str, version: str, why: str = "registered") -> bool:
    """Make `name` mean `version` unless a newer version already is what it means; returns whether
    LATEST moved. The promotion record comes first, so readers see it even if the pointer write
    is lost to a concurrent writer on a store that ignores conditions."""
    record = {"name": name, "version": version, "why": why, "promoted_at": datetime.now(timezone.utc).isoformat()}
    store.put_once(f"generators/{name}/{version}/{PROMOTED}", json.dumps(record, indent=1).encode())
    return store.advance_pointer(f"generators/{name}/LATEST", version, version_number)


def resolve_model(store: CheckpointStore, model: str | None) -> tuple[str, str]:
    """`name`, `name@version` or None (the store's only generator) → (name, version)."""
    if model is None:
        names = _names(store)
        if len(names) != 1:
            raise GeneratorNotFound(f"model= is required: the store {store.uri} has "
                                    f"{'no generators' if not names else 'generators ' + ', '.join(names)}")
        model = names[0]
    name, _, version = model.partition("@")
    if not NAME_RE.match(name) or (version and not VERSION_RE.match(version)):
        raise GeneratorNotFound(f"bad model id {model!r}: expected <name> or <name>@v<NNNN>")
    if not version:
        version = _version_index(store, name)[1]
        if version is None:
            raise GeneratorNotFound(f"no generator {name!r} in {store.uri}; there are: {', '.join(_names(store)) or 'none'}")
    elif not store.exists(f"generators/{name}/{version}/config.json"):
        have = _version_index(store, name)[0]
        raise GeneratorNotFound(f"no complete version {version} of generator {name!r} in {store.uri};"
                                f" versions: {', '.join(have) or 'none'}")
    return name, version


def read_generator(read: Callable[[str], bytes], what: str, device: str = "auto") -> BaseGenerator:
    """A generator from the files of a version (`read(file name)` → bytes), safetensors + JSON only."""
    try:
        info = json.loads(read("config.json"))
        weights = load_tensors(read("model.safetensors"))
        norm_tensors = load_tensors(read("normalizer.safetensors"))
        if info["model"].get("type") == MODEL_TYPE:  # an arch-family version; single-arch ones have no type
            normalizer = FamilyNormalizer.from_tensors(info["model"]["kind"], norm_tensors)
            model_obj = FamilyVAE(FamilyModelConfig(**info["model"]))
        else:
            normalizer = Normalizer.from_tensors(norm_tensors)
            model_obj = ParamVAE(ModelConfig(**info["model"]))
        model_obj.load_state_dict(weights, strict=True)
    except StoreError:
        raise
    except Exception as err:  # noqa: BLE001 - untrusted bytes: any decoding failure is "unreadable"
        raise GeneratorNotFound(f"{what} is unreadable: {err}") from err
    return build_generator(model_obj.to(pick_device(device)).eval(), normalizer, info)


def load_generator(store: CheckpointStore, model: str | None, device: str = "auto") -> BaseGenerator:
    """Load a registered version (safetensors + JSON only) onto `device`."""
    name, version = resolve_model(store, model)
    prefix = f"generators/{name}/{version}"
    return read_generator(lambda file: store.get(f"{prefix}/{file}"), f"generator {name}@{version} in {store.uri}",
                          device)


def generator_files(generator: BaseGenerator, metrics: dict[str, Any]) -> dict[str, bytes]:
    """The files of a version, `config.json` (the generator's info) last: what marks it complete."""
    weights = {k: v.detach().to("cpu").contiguous() for k, v in generator.model.state_dict().items()}
    return {"model.safetensors": save_tensors(weights),
            "normalizer.safetensors": save_tensors(generator.normalizer.tensors()),
            "metrics.json": json.dumps(metrics, indent=1, default=float).encode(),
            "config.json": json.dumps(generator.info, indent=1).encode()}


def save_generator(store: CheckpointStore, generator: BaseGenerator, metrics: dict[str, Any],
                   promoted: bool = True) -> str:
    """Register `generator` as the next version of its name; returns the version. With `promoted`
    it is then promoted (LATEST moves to it unless a newer version is already promoted); without,
    it stays servable only as `name@version` until `promote` is called."""
    name = generator.info["name"]
    if not NAME_RE.match(name):
        raise ValueError(f"bad generator name {name!r}: letters, digits, '.', '_', '=', '-' only")
    blobs = generator_files(generator, metrics)
    existing = _version_index(store, name)[0]
    number = int(existing[-1][1:]) + 1 if existing else 1
    while True:
        version = f"v{number:04d}"
        # the first write-once put claims the version; losing the race means another trainer has it
        if store.put_once(f"generators/{name}/{version}/model.safetensors", blobs["model.safetensors"]):
            break
        number += 1
    info = {**generator.info, "version": version, "created_at": datetime.now(timezone.utc).isoformat()}
    for file in ("normalizer.safetensors", "metrics.json"):
        store.put_once(f"generators/{name}/{version}/{file}", blobs[file])
    store.put_once(f"generators/{name}/{version}/config.json", json.dumps(info, indent=1).encode())
    generator.info = info
    if promoted:
        promote(store, name, version)
    return version


def generate_file(cfg: Any, store: CheckpointStore | None = None) -> Path:
    """`pgen generate`: `cfg.num` policies for `cfg.target_return` as a DESIGN.md policy file."""
    if cfg.target_return is None:
        raise ValueError("target_return=<number> is required")
    target = check_target(cfg.target_return)
    if not 1 <= cfg.num <= cfg.max_num:
        raise ValueError(f"num must be between 1 and {cfg.max_num}, got {cfg.num}")
    from pgen.selection import check_selection, generate_selected  # pgen.selection imports this module

    check_selection(cfg.candidates, cfg.selection_episodes)
    store = store or open_store(cfg.store)
    gen = load_generator(store, cfg.model)
    p = cfg.policy
    spec = requested_spec(gen, cfg.arch, enum_value(p.kind) if p.kind else None, p.hidden,
                          enum_value(p.activation) if p.activation else None)
    extra = {"seed": str(cfg.seed), "temperature": repr(float(cfg.temperature)),
             "dataset_return_range": json.dumps(list(gen.return_range(spec)))}
    if cfg.candidates > 1:  # each policy the closest to the target of `candidates`, played on the selection episodes
        env_cfg = config_from_dict("train", {"env": gen.info["env"]}).env
        returns_of = selection_returns(env_cfg, reference_actors(store, gen.info, env_cfg), gen.info["group"], spec,
                                       cfg.selection_episodes)
        drawn = generate_selected(gen, target, cfg.num, cfg.candidates, returns_of, seed=cfg.seed,
                                  temperature=cfg.temperature, spec=spec)
        params = drawn.params
        extra.update(candidates=str(cfg.candidates), selection_episodes=str(cfg.selection_episodes),
                     selection_returns=json.dumps([float(r[c]) for r, c in zip(drawn.returns, drawn.chosen)]))
    else:
        params = gen.generate(target, cfg.num, seed=cfg.seed, temperature=cfg.temperature, spec=spec)
    arch = "" if spec == gen.spec else f"-{spec.arch_key}"
    out = Path(cfg.out or f"generated-{gen.name}-{gen.version}{arch}-{target:g}.safetensors").expanduser().resolve()
    condition = gen.conditioned_on(target, spec)
    if condition is not None:
        extra["conditioned_on"] = repr(condition)
    return save_policy_file(out, params, spec, gen.info["env"]["id"], gen.info["group"], gen.name, gen.version,
                            target_return=target, extra=extra)
