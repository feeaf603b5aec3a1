"""The policy file (docs/design.md "Policy file"): K policies of one architecture in one safetensors
file — a float32 tensor `params` `[K, num_params]` and string metadata (`layout`, `arch`, `env_id`,
`group`, `model`, `version`, `target_return`, `policy_spec`, and what the writer adds). `load_policies`
rebuilds torch modules from it; a reader without pgen can rebuild them from `layout` alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from pgen.policies.nets import Actor
from pgen.policies.spec import ParamLayout, PolicySpec
from pgen.util.fileio import atomic_write

POLICY_FILE_KEYS = ("layout", "arch", "env_id", "group", "model", "version", "target_return")


@dataclass
class PolicyFile:
    params: np.ndarray  # [K, num_params] float32, ParamLayout order
    layout: ParamLayout
    metadata: dict[str, str]

    @property
    def spec(self) -> PolicySpec:
        if "policy_spec" not in self.metadata:
            raise ValueError("policy file has no `policy_spec` metadata; rebuild it from `layout`")
        return PolicySpec.from_json(self.metadata["policy_spec"])


def policy_file_bytes(params: np.ndarray | Iterable[np.ndarray], spec: PolicySpec, env_id: str, group: str,
                      model: str, version: str, target_return: float | None = None,
                      extra: Mapping[str, str] | None = None) -> bytes:
    """K policies of one arch as the bytes of a policy file (docs/design.md)."""
    params = np.asarray(np.stack(list(params)) if not isinstance(params, np.ndarray) else params, np.float32)
    if params.ndim == 1:
        params = params[None]
    layout = spec.layout
    if params.shape[1] != layout.num_params:
        raise ValueError(f"params have {params.shape[1]} columns, {spec.arch_key} needs {layout.num_params}")
    metadata = {
        "layout": layout.to_json(),
        "arch": spec.arch_key,
        "env_id": env_id,
        "group": group,
        "model": model,
        "version": version,
        "target_return": "" if target_return is None else repr(float(target_return)),
        "policy_spec": spec.to_json(),
        **dict(extra or {}),
    }
    return save({"params": torch.from_numpy(np.ascontiguousarray(params))}, metadata=metadata)


def save_policy_file(path: str | os.PathLike, params: np.ndarray | Iterable[np.ndarray], spec: PolicySpec,
                     env_id: str, group: str, model: str, version: str,
                     target_return: float | None = None, extra: Mapping[str, str] | None = None) -> Path:
    """Write K policies of one arch as the policy file (docs/design.md) (atomically)."""
    data = policy_file_bytes(params, spec, env_id, group, model, version, target_return, extra)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)


def read_policy_file(path: str | os.PathLike) -> PolicyFile:
    """Read a policy file (no pickle); checks the metadata and shape against the layout."""
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        missing = [k for k in POLICY_FILE_KEYS if k not in metadata]
        if missing or "params" not in f.keys():
            raise ValueError(f"{path} is not a pgen policy file: missing {missing or ['params tensor']}")
        params = f.get_tensor("params").to(torch.float32).numpy()
    layout = ParamLayout.from_json(metadata["layout"])
    if params.ndim != 2 or params.shape[1] != layout.num_params:
        raise ValueError(f"{path}: params shape {params.shape} does not match layout ({layout.num_params} values)")
    return PolicyFile(params, layout, metadata)


def load_policies(path: str | os.PathLike) -> list[Actor]:
    """Rebuild the K torch policies stored in a policy file, in eval mode."""
    pf = read_policy_file(path)
    actors = []
    for row in pf.params:
        actor = Actor(pf.spec)
        if actor.layout != pf.layout:
            raise ValueError(f"{path}: layout does not match the architecture {pf.spec.arch_key}")
        actor.load_flat_params(row)
        actors.append(actor.eval())
    return actors
