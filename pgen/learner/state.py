"""Trainer state for resume, without pickle: tensors in safetensors, everything else in JSON.

`encode_trainer_state` turns a `PPOLearner` into two files' bytes (`trainer.safetensors`,
`trainer.json`); `restore_trainer_state` puts them back. Where the bytes live (a run folder, the
object store) is the caller's business. Env copies cannot be snapshotted: a resumed learner
resets them with seeds derived from (seed, iteration), so a resume is itself reproducible.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

if TYPE_CHECKING:
    from pgen.learner.ppo import PPOLearner
    from pgen.store import CheckpointStore

STATE_FORMAT = 1
TENSORS_FILE, META_FILE = "trainer.safetensors", "trainer.json"


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as tensors named `<prefix>.<param index>.<slot>` plus JSON-able metadata."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, slots in sd["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{key}"] = value.detach().clone()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor],
                      meta: dict[str, Any]) -> None:
    """Inverse of `optimizer_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            idx, slot = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(idx), {})[slot] = value
    for key, value in meta["scalars"].items():
        idx, slot = key.split(".", 1)
        state.setdefault(int(idx), {})[slot] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def encode_trainer_state(learner: "PPOLearner") -> dict[str, bytes]:
    tensors: dict[str, torch.Tensor] = {"rng": learner.rng.get_state()}
    meta: dict[str, Any] = {
        "format": STATE_FORMAT,
        "iteration": learner.iteration,
        "env_steps": learner.env_steps,
        "seed": learner.seed,
        "groups": {},
    }
    for name, gl in learner.groups.items():
        for part, module in (("actor", gl.actor), ("critic", gl.critic), ("value_norm", gl.value_norm)):
            for key, value in module.state_dict().items():
                tensors[f"{name}/{part}.{key}"] = value.detach().clone().contiguous()
        opt_tensors, opt_meta = optimizer_tensors(f"{name}/optim", gl.optimizer)
        tensors.update(opt_tensors)
        meta["groups"][name] = {"optimizer": opt_meta, "arch": gl.actor.spec.arch_key}
    return {TENSORS_FILE: save_tensors(tensors), META_FILE: json.dumps(meta).encode()}


def restore_trainer_state(learner: "PPOLearner", files: dict[str, bytes]) -> None:
    """Load state written by `encode_trainer_state` into a learner built from the same config."""
    meta = json.loads(files[META_FILE])
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(f"trainer state format {meta.get('format')} is not {STATE_FORMAT}")
    tensors = load_tensors(files[TENSORS_FILE])
    if set(meta["groups"]) != set(learner.groups):
        raise ValueError(f"trainer state has groups {sorted(meta['groups'])}, learner has {sorted(learner.groups)}")
    for name, gl in learner.groups.items():
        if meta["groups"][name]["arch"] != gl.actor.spec.arch_key:
            raise ValueError(f"group {name}: state arch {meta['groups'][name]['arch']} != {gl.actor.spec.arch_key}")
        for part, module in (("actor", gl.actor), ("critic", gl.critic), ("value_norm", gl.value_norm)):
            prefix = f"{name}/{part}."
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        restore_optimizer(gl.optimizer, f"{name}/optim", tensors, meta["groups"][name]["optimizer"])
    learner.rng.set_state(tensors["rng"])
    learner.seed = int(meta["seed"])
    learner.iteration = int(meta["iteration"])
    learner.env_steps = int(meta["env_steps"])
    learner.reseed_envs(int(np.random.SeedSequence([learner.seed, learner.iteration]).generate_state(1)[0]))


def save_state(store: "CheckpointStore", prefix: str, learner: "PPOLearner",
               extra: dict[str, bytes] | None = None) -> None:
    """`<prefix>/<iteration>-<random>/` (trainer files + `extra`, each written once), then
    `<prefix>/latest`. The folder is new for every save, so a save redone after a crash never meets
    files of the lost one (whether or not the store enforces write-once)."""
    folder = f"{learner.iteration:08d}-{uuid.uuid4().hex[:8]}"
    for name, data in {**encode_trainer_state(learner), **(extra or {})}.items():
        store.put_once(f"{prefix}/{folder}/{name}", data)
    store.put_pointer(f"{prefix}/latest", folder.encode())


def load_state(store: "CheckpointStore", prefix: str, learner: "PPOLearner",
               extra: tuple[str, ...] = ()) -> dict[str, bytes] | None:
    """Restore the learner from what `<prefix>/latest` points to; returns the files read, or None."""
    if not store.exists(f"{prefix}/latest"):
        return None
    folder = f"{prefix}/{store.get(f'{prefix}/latest').decode().strip()}"
    files = {name: store.get(f"{folder}/{name}") for name in (TENSORS_FILE, META_FILE, *extra)}
    restore_trainer_state(learner, files)
    return files
