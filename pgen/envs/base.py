"""What a vectorised env returns: the step dataclasses, and the seeds of its copies."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GroupStep:
    """One step of one group over E copies. Arrays are `[E, n_agents, ...]` unless noted."""

    obs: np.ndarray  # next observation (first obs of the new episode where a copy was reset)
    reward: np.ndarray  # [E, n]
    ended: np.ndarray  # [E, n] the agent's trajectory ended at this step (terminated or truncated)
    truncated: np.ndarray  # [E, n] ... because of a time limit (bootstrap from final_obs)
    alive: np.ndarray  # [E, n] the agent acts at the next observation
    final_obs: np.ndarray  # [E, n, obs_dim] last observation of an ended trajectory (else zeros)


@dataclass
class VecStep:
    """One step of every group over E copies, with the episodes that finished at it."""

    groups: dict[str, GroupStep]
    state: np.ndarray | None  # [E, state_dim] global state at the next observation
    final_state: np.ndarray | None  # [E, state_dim] global state at the end of an ended episode
    episodes: list[dict[str, float]]  # finished episodes: {"<group>": group return, ..., "length": T}


def copy_seeds(seed: int, num_envs: int) -> list[int]:
    """The first-reset seed of each of `num_envs` copies, drawn from `seed`."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(num_envs)]
