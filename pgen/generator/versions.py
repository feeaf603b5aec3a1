"""Generator versions in the store: register, promote, list, resolve and load them.

Store layout (docs/design.md): `generators/<name>/<version>/` holds `model.safetensors` (the VAE's
weights), `normalizer.safetensors` (the kind's normaliser: parameter statistics, return
percentiles), `metrics.json` (training history and final figures) and `config.json` (model config,
policy spec, layout, env, dataset summary); `config.json` is written last of the four and marks the
version complete. Versions are `v0001`, `v0002`, … claimed with write-once puts, so two trainers
registering at once get different versions. Nothing is unpickled.

Which version `<name>` means: `promote` writes `<version>/promoted.json` (write-once), then moves
`generators/<name>/LATEST` forward only (`advance_pointer`: a slower trainer that registered v0002
never replaces a LATEST that already says v0003). Readers take the newest complete version that is
promoted or that LATEST names, so they agree with that rule even on a store that ignores
conditional writes (where the pointer itself could lose such a race). `save_generator` promotes
what it registers; under `pgen loop` only versions that pass the gate are promoted.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Callable

from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from pgen.config import EnvConfig, GeneratorConfig
from pgen.dataset.slices import slice_spec
from pgen.generator.kinds import kind_for, kind_of
from pgen.generator.sample import Generator, pick_device, trained_arch_keys
from pgen.store import CheckpointStore, StoreError

VERSION_RE = re.compile(r"^v(\d{4,})$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")
FILES = ("model.safetensors", "normalizer.safetensors", "metrics.json", "config.json")
PROMOTED = "promoted.json"  # written once into a version's folder when it becomes what <name> means


class GeneratorNotFound(ValueError):
    """No generator (or version) of that name in the store; the message lists what there is."""


def default_name(env_cfg: EnvConfig, policy_cfg: Any, gen_cfg: GeneratorConfig) -> str:
    """The generator's name in the store: `generator.name`, else <env>-<group>-<slice key> (the arch
    key of a single-architecture generator, the family key of an arch-family one)."""
    if gen_cfg.name:
        return gen_cfg.name
    group, spec = slice_spec(env_cfg, policy_cfg, gen_cfg.group)
    return f"{env_cfg.name}-{group}-{kind_for(gen_cfg).slice_key(spec)}"


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
    """Every complete version in the store: name, version, latest flag, env, group, arch (the slice
    key), archs (the trained arch keys), return range, creation time."""
    names = sorted({k.split("/")[1] for k in store.list("generators/") if k.count("/") >= 2})
    out = []
    for name in names:
        versions, latest = _version_index(store, name)
        for version in versions:
            info = json.loads(store.get(f"generators/{name}/{version}/config.json"))
            ds = info["dataset"]
            out.append({"name": name, "version": version, "latest": version == latest, "env_id": info["env"]["id"],
                        "env_key": info["env_key"], "group": info["group"], "arch": info["arch"],
                        "archs": trained_arch_keys(info), "return_min": ds["return_min"],
                        "return_max": ds["return_max"], "created_at": info["created_at"]})
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


def read_generator(read: Callable[[str], bytes], what: str, device: str = "auto") -> Generator:
    """A generator from the files of a version (`read(file name)` → bytes), safetensors + JSON only."""
    try:
        info = json.loads(read("config.json"))
        gen = kind_of(info).load(info, load_tensors(read("model.safetensors")), load_tensors(read("normalizer.safetensors")))
    except StoreError:
        raise
    except Exception as err:  # noqa: BLE001 - untrusted bytes: any decoding failure is "unreadable"
        raise GeneratorNotFound(f"{what} is unreadable: {err}") from err
    gen.model.to(pick_device(device)).eval()
    return gen


def load_generator(store: CheckpointStore, model: str | None, device: str = "auto") -> Generator:
    """Load a registered version (safetensors + JSON only) onto `device`."""
    name, version = resolve_model(store, model)
    prefix = f"generators/{name}/{version}"
    return read_generator(lambda file: store.get(f"{prefix}/{file}"), f"generator {name}@{version} in {store.uri}",
                          device)


def generator_files(generator: Generator, metrics: dict[str, Any]) -> dict[str, bytes]:
    """The files of a version, `config.json` (the generator's info) last: what marks it complete."""
    weights = {k: v.detach().to("cpu").contiguous() for k, v in generator.model.state_dict().items()}
    return {"model.safetensors": save_tensors(weights),
            "normalizer.safetensors": save_tensors(generator.normalizer.tensors()),
            "metrics.json": json.dumps(metrics, indent=1, default=float).encode(),
            "config.json": json.dumps(generator.info, indent=1).encode()}


def save_generator(store: CheckpointStore, generator: Generator, metrics: dict[str, Any],
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
