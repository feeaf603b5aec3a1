"""Probe states: fixed observations of one (env, group) slice, from rollouts across its return range.

They are what a generator's behaviour is measured on: a decoded policy's actions on them against the
original checkpoint's (`pgen.generator.behaviour`). Written once per slice, beside its checkpoints
(docs/design.md "Layout under the store"):

    probes/env=<env_key>/group=<group>/probes.safetensors      obs [T, S, obs_dim], starts [T, S]

with string metadata `made_from` (JSON: the checkpoints played, the episodes and seed). The first fit
of a slice makes them (`pgen.evaluation.training_data.open_slice`); every later one reads them, so
versions of one slice are compared on the same states.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from pgen.store import CheckpointStore


@dataclass
class Probes:
    """Fixed states of one slice: `obs` `[T, S, obs_dim]` (S sequences of T steps), `starts` `[T, S]`
    (1 where a new episode begins, so a recurrent policy resets there)."""

    obs: torch.Tensor
    starts: torch.Tensor
    made_from: dict[str, Any] = field(default_factory=dict)

    @property
    def states(self) -> int:
        return self.obs.shape[0] * self.obs.shape[1]

    def columns(self, idx: torch.Tensor) -> "Probes":
        """The sequences `idx` of these probes."""
        return Probes(self.obs[:, idx], self.starts[:, idx], self.made_from)


def probes_key(env_key: str, group: str) -> str:
    return f"probes/env={env_key}/group={group}/probes.safetensors"


def read_probes(store: CheckpointStore, env_key: str, group: str) -> Probes | None:
    """The slice's probe states, or None when it has none yet (ValueError when they are unreadable)."""
    key = probes_key(env_key, group)
    if not store.exists(key):
        return None
    data = store.get(key)
    try:
        tensors = load_tensors(data)
        # the metadata: the JSON header after the 8-byte header length (the safetensors format)
        meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
        return Probes(tensors["obs"].float(), tensors["starts"].float(), json.loads(meta.get("made_from", "{}")))
    except Exception as err:  # noqa: BLE001 - untrusted bytes
        raise ValueError(f"probe states {key} in {store.uri} are unreadable: {err}") from err


def write_probes(store: CheckpointStore, env_key: str, group: str, probes: Probes) -> Probes:
    """Store `probes` for the slice unless it has some already (write-once); returns the stored ones."""
    blob = save_tensors({"obs": probes.obs.contiguous().float(), "starts": probes.starts.contiguous().float()},
                        metadata={"made_from": json.dumps(probes.made_from)})
    if store.put_once(probes_key(env_key, group), blob):
        return probes
    return read_probes(store, env_key, group)  # another fit wrote them first
