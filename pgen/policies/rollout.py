"""Rollouts of fixed policies: the returns they achieve (docs/design.md "achieved return").

Everything here takes policies (torch modules) and env configs; nothing reads the store.

`evaluate_returns` plays E evaluation episodes with fixed seeds: greedy actions (argmax for
discrete, the mean for continuous) unless `stochastic=True`. A group whose policy is `None` plays
uniformly random actions, which is how the random level R_random is measured.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch

from pgen.config import EnvConfig
from pgen.envs import make_vec_env
from pgen.policies.nets import Actor, actor_from_flat
from pgen.policies.spec import PolicySpec
from pgen.util.progress import Progress

EVAL_SEED = 10_000  # evaluation episodes never share seeds with training copies of seeds < 10000
# `pgen evaluate` plays other episodes than the populations' checkpoint evaluations (EVAL_SEED), so a
# checkpoint picked for its recorded return is not flattered by the noise of the episodes it was picked on
HELDOUT_EVAL_SEED = 60_000
# a generated policy chosen among candidates (a seeded member's best, `pgen.evaluation.selection`'s closest to a
# target) is chosen on these episodes, so what is measured afterwards (a first checkpoint's return on
# EVAL_SEED, `pgen evaluate` on HELDOUT_EVAL_SEED) is not flattered by the noise it was chosen on
SELECTION_SEED = 30_000
# a generator calibrating its return condition after its fit plays its policies on these episodes
# (`pgen.evaluation.calibration`), neither the populations' nor `pgen evaluate`'s
CALIBRATION_SEED = 45_000
# the probe states of a slice come from rollouts on these episodes (`pgen.evaluation.training_data`)
PROBE_SEED = 75_000


@torch.no_grad()
def evaluate_returns(env_cfg: EnvConfig, policies: Mapping[str, Actor | None], episodes: int = 100,
                     seed: int = EVAL_SEED, stochastic: bool = False, num_envs: int = 20,
                     observations: dict[str, list[tuple[np.ndarray, np.ndarray]]] | None = None,
                     env_steps: list[int] | None = None) -> dict[str, np.ndarray]:
    """Per-episode return of every group (sum over its agents) over exactly `episodes` episodes.

    Each env copy plays whole episodes from a fixed seed, so the same `seed` gives the same
    episodes for every set of policies compared, on either `env.backend`. With `observations` (a
    dict), every step's `(obs [copies · agents, obs_dim], starts [copies · agents])` of each group
    is appended to `observations[group]` (`starts` = 1 where a new trajectory begins). With
    `env_steps` (a list), the env steps played (every copy's, as the learner counts them) are appended.
    """
    num_envs = max(1, min(num_envs, episodes))
    vec = make_vec_env(env_cfg, num_envs, seed, with_state=False)
    rng = np.random.default_rng(seed)
    torch_rng = torch.Generator().manual_seed(seed)
    missing = [g.name for g in vec.groups if g.name not in policies]
    if missing:
        raise ValueError(f"no policy given for groups {missing} (use None for uniform random)")
    obs, alive, _ = vec.reset()
    hidden = {g.name: (policies[g.name].initial_state(num_envs * g.size)
                       if policies[g.name] is not None and policies[g.name].recurrent else None) for g in vec.groups}
    results: dict[str, list[float]] = {g.name: [] for g in vec.groups}
    finished = steps = 0
    starts = {g.name: np.ones(num_envs * g.size, np.float32) for g in vec.groups}
    while finished < episodes:
        if observations is not None:
            for g in vec.groups:
                observations.setdefault(g.name, []).append((obs[g.name].reshape(num_envs * g.size, -1).copy(),
                                                            starts[g.name]))
        actions = {}
        for g in vec.groups:
            policy = policies[g.name]
            if policy is None:
                if g.discrete:
                    actions[g.name] = rng.integers(0, g.action_dim, size=(num_envs, g.size))
                else:
                    low, high = g.action_space.low, g.action_space.high
                    actions[g.name] = rng.uniform(low, high, size=(num_envs, g.size, g.action_dim))
                continue
            x = torch.from_numpy(obs[g.name]).reshape(num_envs * g.size, -1)
            out, hidden[g.name] = policy(x, hidden[g.name])
            if stochastic:
                act = policy.sample(policy.distribution(out), torch_rng)
            else:
                act = out.argmax(-1) if g.discrete else out
            actions[g.name] = act.reshape(num_envs, g.size, *act.shape[1:]).numpy()
        step = vec.step(actions)
        steps += num_envs
        for g in vec.groups:
            starts[g.name] = step.groups[g.name].ended.reshape(-1).astype(np.float32)
            h = hidden[g.name]
            if h is not None:
                hidden[g.name] = h * (1.0 - torch.from_numpy(step.groups[g.name].ended).reshape(-1, 1))
        for ep in step.episodes[: episodes - finished]:
            for g in vec.groups:
                results[g.name].append(ep[g.name])
        finished += len(step.episodes)
        obs = {name: s.obs for name, s in step.groups.items()}
    vec.close()
    if env_steps is not None:
        env_steps.append(steps)
    return {name: np.asarray(r[:episodes]) for name, r in results.items()}


def reference_returns(env_cfg: EnvConfig, others: Mapping[str, Actor], group: str, spec: PolicySpec,
                      params: np.ndarray, episodes: int, label: str = "rescore", seed: int = EVAL_SEED,
                      env_steps: list[int] | None = None) -> np.ndarray:
    """Each parameter row's per-episode group returns `[N, episodes]` against the fixed `others`,
    over the same fixed-seed greedy episodes for every row (by default EVAL_SEED, the populations'
    evaluation episodes; never `pgen evaluate`'s held-out ones). `env_steps`: as in `evaluate_returns`."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    progress = Progress(label, len(params), unit="policies", every_s=10.0)
    out = np.empty((len(params), episodes), np.float64)
    for i, flat in enumerate(params):
        out[i] = evaluate_returns(env_cfg, {**others, group: actor_from_flat(spec, flat)}, episodes, seed=seed,
                                  env_steps=env_steps)[group]
        progress.update(i + 1, force=i + 1 == len(params))
    return out


def best_candidate(env_cfg: EnvConfig, others: Mapping[str, Actor], group: str, spec: PolicySpec,
                   params: np.ndarray, episodes: int) -> tuple[int, list[float], int]:
    """(index, mean returns, env steps) of the best of the candidate policies `params` `[K, P]` of
    `group`, each played greedily against `others` on `episodes` selection episodes (SELECTION_SEED)."""
    steps: list[int] = []
    means = selection_returns(env_cfg, others, group, spec, episodes, "seed candidates", steps)(params)
    return int(np.argmax(means)), [float(m) for m in means], sum(steps)


def selection_returns(env_cfg: EnvConfig, others: Mapping[str, Actor], group: str, spec: PolicySpec, episodes: int,
                      label: str = "selection", env_steps: list[int] | None = None
                      ) -> Callable[[np.ndarray], np.ndarray]:
    """`params [N, P] -> [N]`: each row's mean greedy group return against `others` on the `episodes`
    selection episodes (SELECTION_SEED). `env_steps`: as in `evaluate_returns`."""
    return lambda params: reference_returns(env_cfg, others, group, spec, params, episodes, label=label,
                                            seed=SELECTION_SEED, env_steps=env_steps).mean(axis=1)
