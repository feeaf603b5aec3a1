"""The data of a fit: a slice of the store with the returns the generator conditions on.

`open_slice` reads the checkpoints of (env, generator.group, policy) for the configured generator
kind (one architecture, or every architecture of its family), chooses the reference the group's
returns are measured against (`pgen.dataset.reference`), and, in an env with several groups,
re-measures every checkpoint's return against that reference (docs/design.md "achieved return": the
other groups play one fixed reference; the recorded return was measured against co-trained policies,
which change as they train). It also checks that the population learned something a generator can
aim at (`metrics.learning_signal`, against uniform random play on the same episodes), and reads the
slice's probe states, or makes them on its first fit (`make_probes`): the observations of greedy
rollouts of PROBE_CHECKPOINTS checkpoints at evenly spaced quantiles of its returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from pgen.config import EnvConfig, GeneratorConfig, to_dict
from pgen.dataset.probes import Probes, read_probes, write_probes
from pgen.dataset.reference import reference_actors, reference_policies
from pgen.dataset.slices import ParamDataset, Slice, load_slice, slice_spec
from pgen.envs import env_key
from pgen.evaluation.metrics import learning_signal, learning_warning
from pgen.generator.kinds import kind_for
from pgen.generator.versions import default_name
from pgen.policies.nets import Actor, actor_from_flat
from pgen.policies.rollout import PROBE_SEED, evaluate_returns, reference_returns
from pgen.policies.spec import PolicySpec
from pgen.store import CheckpointStore
from pgen.util.progress import log

PROBE_CHECKPOINTS = 6  # checkpoints whose rollouts give a slice's probe states, at evenly spaced return quantiles
PROBE_EPISODES = 4  # greedy episodes of each


@dataclass
class TrainingSlice:
    """One slice of the store, loaded for `fit`, and what a version records about it.

    `data.returns` are what the generator conditions on: in a multi-group env each checkpoint's
    return re-measured against `reference` over `rescore_episodes` episodes, else the records'
    own `return_mean`.
    """

    store: CheckpointStore
    env: EnvConfig
    key: str  # env_key
    group: str
    spec: PolicySpec  # the architecture the generator produces by default
    slice_key: str  # what the slice is named by: the arch key, or an arch-family generator's family key
    name: str  # the generator's name in the store
    data: Slice
    reference: dict[str, Any]  # the other groups' fixed policies (`reference_policies`)
    others: dict[str, Actor]  # `reference` loaded: the actors the group's returns are measured against
    rescore_episodes: int = 0  # 0: data.returns are the records' own
    learning: dict[str, Any] = field(default_factory=dict)  # `metrics.learning_signal` of the slice
    probes: Probes | None = None  # the slice's probe states

    def info(self, seed: int, train_runs: list[str], val_runs: list[str]) -> dict[str, Any]:
        """The slice's part of a version's config.json: env, group, policy, dataset summary, reference."""
        data = self.data
        train_rows = np.isin(data.run_ids, train_runs)
        returns = data.returns[train_rows]
        top = np.sort(returns)[::-1][: max(1, int(math.ceil(0.1 * len(returns))))]
        runs = sorted(set(data.run_ids.tolist()))
        dataset = {"store": self.store.uri, "rows": int(len(data)), "train_rows": int(train_rows.sum()),
                   "runs": runs, "train_runs": list(train_runs), "val_runs": list(val_runs),
                   "max_step": {r: int(data.steps[data.run_ids == r].max()) for r in runs},
                   "return_min": float(returns.min()), "return_max": float(returns.max()),
                   "return_p5": float(np.percentile(returns, 5)), "return_p95": float(np.percentile(returns, 95)),
                   "return_top10_recorded": float(top.mean()), "learning_signal": self.learning,
                   "arch_rows": {k: int(len(p)) for k, p in sorted(data.parts.items())}}
        if self.rescore_episodes:
            dataset["rescored"] = {"episodes": self.rescore_episodes, "returns": {
                r: [[int(st), float(v)] for st, v in zip(data.steps[data.run_ids == r], data.returns[data.run_ids == r])]
                for r in runs}}
        return {"name": self.name, "env": to_dict(self.env), "env_key": self.key, "group": self.group, "seed": seed,
                "policy_spec": self.spec.to_json(), "layout": self.spec.layout.to_json(), "arch": self.slice_key,
                "archs": sorted(data.parts), "dataset": dataset, "reference": self.reference}


def rescored(env_cfg: EnvConfig, others: dict[str, Actor], group: str, spec: PolicySpec, data: ParamDataset,
             episodes: int, label: str) -> ParamDataset:
    """`data` with each checkpoint's return re-measured against the reference over `episodes` episodes."""
    per_episode = reference_returns(env_cfg, others, group, spec, data.params, episodes, label=label)
    returns = per_episode.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # nan when either side is constant
        corr = np.corrcoef(returns, data.returns)[0, 1]
    log.info(f"{label}: returns against the reference {returns.min():.1f} .. {returns.max():.1f}"
             f" (correlation with the recorded ones {corr:.2f})")
    return replace(data, returns=returns, return_std=per_episode.std(axis=1), episodes=np.full(len(returns), episodes))


def open_slice(store: CheckpointStore, env_cfg: EnvConfig, policy_cfg: Any, gen_cfg: GeneratorConfig,
               label: str = "train-generator") -> TrainingSlice:
    """Read the store's checkpoints of (env, generator.group, policy) for the generator's kind, log
    what they are and, in a multi-group env, re-measure their returns against the reference
    (`generator.rescore_episodes`)."""
    if gen_cfg.rescore_episodes < 0:
        raise ValueError(f"generator.rescore_episodes must be >= 0, got {gen_cfg.rescore_episodes}")
    kind = kind_for(gen_cfg)
    group, spec = slice_spec(env_cfg, policy_cfg, gen_cfg.group)
    key = env_key(env_cfg)
    name = default_name(env_cfg, policy_cfg, gen_cfg)
    data = load_slice(store, key, group, kind.slice_specs(store, key, group, spec, gen_cfg))
    spec = kind.default_spec(spec, data)
    archs = ", ".join(f"{k} {len(p)}" for k, p in data.parts.items())
    log.info(f"{label} {name}: {len(data)} checkpoints ({archs}) from {len(set(data.run_ids))} runs"
             f" ({data.bad_rows} bad rows skipped), returns {data.returns.min():.1f} .. {data.returns.max():.1f}")
    reference = reference_policies(store, key, group, data)
    rescore = gen_cfg.rescore_episodes if reference["groups"] else 0
    others = reference_actors(store, {"reference": reference, "env_key": key}, env_cfg)
    if rescore:
        what = f"{label} {name}: rescore against {reference['run_id']}@{reference['step']}"
        where = (lambda k: f"{what} ({k})") if len(data.parts) > 1 else (lambda k: what)
        data = data.map(lambda k, part: rescored(env_cfg, others, group, data.specs[k], part, rescore, where(k)))
    # is there anything to learn? uniform random play on the episodes the returns were measured on
    n_episodes = int(np.median(data.episodes))
    r_random = float(evaluate_returns(env_cfg, {**others, group: None}, n_episodes)[group].mean())
    learning = learning_signal(data.returns, float(np.median(data.return_std)), n_episodes, r_random)
    if not learning["learned"]:
        log.warning(learning_warning(learning, f"{label} {name}"))
    probes = read_probes(store, key, group) or write_probes(store, key, group, make_probes(env_cfg, others, group, data))
    return TrainingSlice(store, env_cfg, key, group, spec, kind.slice_key(spec), name, data, reference, others,
                         rescore, learning, probes)


def make_probes(env_cfg: EnvConfig, others: dict[str, Actor], group: str, data: Slice) -> Probes:
    """The observations of `group` in PROBE_EPISODES greedy rollouts (PROBE_SEED, the other groups
    playing `others`) of each of PROBE_CHECKPOINTS checkpoints of `data` at evenly spaced quantiles of
    its returns, as sequences `[T, S, obs_dim]` (T the shortest rollout's steps)."""
    rows, returns = data.rows, data.returns
    order = np.argsort(returns, kind="stable")
    picks = sorted(set(order[np.round(np.linspace(0, len(order) - 1, PROBE_CHECKPOINTS)).astype(int)].tolist()))
    obs, starts, made = [], [], []
    for n, row in enumerate(picks):
        key, i = rows[row]
        part = data.parts[key]
        observed: dict[str, list] = {}
        evaluate_returns(env_cfg, {**others, group: actor_from_flat(data.specs[key], part.params[i])}, PROBE_EPISODES,
                         seed=PROBE_SEED + n, observations=observed)
        obs.append(np.stack([o for o, _ in observed[group]]))
        starts.append(np.stack([s for _, s in observed[group]]))
        made.append({"arch": key, "run_id": str(part.run_ids[i]), "step": int(part.steps[i]),
                     "return": float(part.returns[i])})
    steps = min(len(o) for o in obs)
    return Probes(torch.from_numpy(np.concatenate([o[:steps] for o in obs], axis=1)).float(),
                  torch.from_numpy(np.concatenate([s[:steps] for s in starts], axis=1)).float(),
                  {"checkpoints": made, "episodes": PROBE_EPISODES, "seed": PROBE_SEED})
