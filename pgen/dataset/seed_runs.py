"""Seed runs: generated policies stored as the checkpoints a new population starts from.

`write_seed_run` takes K generated parameter vectors of one generator, measures each one's return
the way population checkpoints are measured (greedy, `EVAL_SEED` episodes; in envs with several
groups the other groups play the generator's reference), and writes them as one write-once Parquet
part of checkpoint records (member i, step 0, origin `seeded:<name>@<version>`) under a new run id,
then `runs/<run_id>/run.json`. `pgen populate population.seed_from=<run_id>` starts member m from
row m mod K. The part is whole or absent, and run.json comes last, so a half-written seed run is
never visible as one.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime, timezone
from typing import Any

import numpy as np

from pgen.config import DEFAULT_TEMPERATURE, config_from_dict
from pgen.dataset.reference import reference_actors
from pgen.policies.rollout import reference_returns
from pgen.policies.spec import PolicySpec
from pgen.store import CheckpointStore, params_checksum

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RunExists(ValueError):
    """The requested run id is taken."""


def seed_origin(name: str, version: str) -> str:
    return f"seeded:{name}@{version}"


def new_seed_run_id(name: str, version: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"seed-{name}-{version}-{stamp}-{secrets.token_hex(3)}"[:128]


def write_seed_run(store: CheckpointStore, info: dict[str, Any], params: np.ndarray, target_return: float,
                   run_id: str | None = None, eval_episodes: int = 20, seed: int = 0,
                   temperature: float = DEFAULT_TEMPERATURE, spec: PolicySpec | None = None) -> dict[str, Any]:
    """Store K generated policies (`params` `[K, P]`) of the generator described by `info` (its
    config.json) as seed run `run_id` (a new id when None); returns a summary with measured returns.
    `spec`: the policies' architecture (an arch-family generator's request; default its `policy_spec`)."""
    name, version, group = info["name"], info["version"], info["group"]
    run_id = run_id or new_seed_run_id(name, version)
    if not RUN_ID_RE.match(run_id):
        raise ValueError(f"bad run_id {run_id!r}: 1-128 letters, digits, '.', '_', '-', starting with a letter or digit")
    if store.exists(f"runs/{run_id}/run.json"):
        raise RunExists(f"run {run_id!r} already exists in {store.uri}; choose another run_id")
    params = np.asarray(params, np.float32)
    spec = spec or PolicySpec.from_json(info["policy_spec"])
    env_cfg = config_from_dict("train", {"env": info["env"]}).env
    others = reference_actors(store, info, env_cfg)
    origin = seed_origin(name, version)
    now = datetime.now(timezone.utc)
    episodes = reference_returns(env_cfg, others, group, spec, params, eval_episodes, label=f"seed run {run_id}")
    returns = [float(r.mean()) for r in episodes]
    records = []
    for member, (flat, r) in enumerate(zip(params, episodes)):
        records.append({"run_id": run_id, "member": member, "env_id": info["env"]["id"], "env_key": info["env_key"],
                        "group": group, "arch": spec.arch_key, "step": 0, "update": 0, "return_mean": returns[member],
                        "return_std": float(r.std()), "episodes": int(r.size), "num_params": int(flat.size),
                        "params": flat, "checksum": params_checksum(flat), "created_at": now, "seed": int(seed),
                        "origin": origin})
    if not store.write_part(records, info["env_key"], group, spec.arch_key, run_id, 0):
        raise RunExists(f"run {run_id!r} already has checkpoints in {store.uri}; choose another run_id")
    summary = {"run_id": run_id, "origin": origin, "model": name, "version": version, "group": group,
               "arch": spec.arch_key, "env_id": info["env"]["id"], "env_key": info["env_key"],
               "target_return": float(target_return), "population_size": len(records), "seed": int(seed),
               "temperature": float(temperature), "returns": returns, "return_mean": float(np.mean(returns)),
               "eval_episodes": eval_episodes}
    run = {**summary, "status": "seed", "created_at": now.isoformat(), "env": info["env"]}
    store.put_once(f"runs/{run_id}/run.json", json.dumps(run, indent=1).encode())
    return summary
