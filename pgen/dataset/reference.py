"""The other groups' fixed policies a group's returns are measured against (docs/design.md "Metrics").

In an env with several groups the return of a group's policy depends on who plays the other groups.
A generator's *reference* is the co-trained policies of the run with the best checkpoint of its
slice, at that checkpoint's step (`reference_policies`, recorded in the version's config.json);
`reference_actors` loads them from the store. One-group envs have none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pgen.config import EnvConfig
from pgen.dataset.slices import Slice
from pgen.envs import describe_env
from pgen.policies.nets import Actor, actor_from_flat
from pgen.policies.spec import PolicySpec
from pgen.store import CheckpointStore


def reference_policies(store: CheckpointStore, key: str, group: str, data: Slice) -> dict[str, Any]:
    """{run_id, step, groups: {group: {arch}}}: the co-trained policies of the run with the best
    checkpoint of `data` (by return), at that checkpoint's step."""
    best = int(np.argmax(data.returns))
    run, step = str(data.run_ids[best]), int(data.steps[best])
    rows = store.read_records(env_key=key, run_id=run, columns=["group", "arch", "step"]).table.to_pylist()
    others = {r["group"]: r for r in rows if r["group"] != group and r["step"] == step}
    return {"run_id": run, "step": step, "groups": {g: {"arch": r["arch"]} for g, r in sorted(others.items())}}


def reference_actors(store: CheckpointStore, info: dict[str, Any], env_cfg: EnvConfig) -> dict[str, Actor]:
    """The other groups' fixed policies named by a generator's `reference` (its config.json `info`,
    or anything with `reference` and `env_key`), loaded from the store. Empty for one-group envs."""
    ref = info.get("reference") or {}
    if not ref.get("groups"):
        return {}
    env = describe_env(env_cfg)
    rows = store.read_records(env_key=info["env_key"], run_id=ref["run_id"],
                              columns=["group", "arch", "step", "params"]).table.to_pylist()
    out = {}
    for group, meta in ref["groups"].items():
        row = next((r for r in rows if r["group"] == group and r["step"] == ref["step"]), None)
        if row is None:
            raise ValueError(f"reference checkpoint of group {group} (run {ref['run_id']}, step {ref['step']})"
                             f" is missing from {store.uri}")
        spec = PolicySpec.from_arch_key(meta["arch"])  # the reference run's own architecture
        g = env.group(group)
        if (spec.obs_dim, spec.action_dim, spec.discrete) != (g.obs_dim, g.action_dim, g.discrete):
            raise ValueError(f"reference group {group}: arch {meta['arch']} does not fit the env's group")
        out[group] = actor_from_flat(spec, np.asarray(row["params"], np.float32))
    return out
