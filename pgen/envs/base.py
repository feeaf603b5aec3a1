"""What every vectorised env backend shares: its interface, the step dataclasses, the copy seeds and
the episode summaries. Backends: `pettingzoo.VecEnv` / `SubprocVecEnv` (any ParallelEnv) and
`mpe.MPEVecEnv` (batched NumPy MPE)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from pgen.envs.loading import AgentGroup


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


def episode_summaries(groups: Sequence[AgentGroup], returns: np.ndarray, lengths: np.ndarray) -> list[dict[str, float]]:
    """Finished episodes, one per row of `returns [n, agents]` (the groups' agents in order) and
    `lengths [n]`: each group's return (the sum of its agents' returns) and the episode's length."""
    columns: dict[str, list[float]] = {}
    offset = 0
    for g in groups:
        columns[g.name] = returns[:, offset : offset + g.size].sum(axis=1).tolist()
        offset += g.size
    columns["length"] = np.asarray(lengths, dtype=np.float64).tolist()
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


class VectorEnv(Protocol):
    """E copies of an env stepped in lockstep with automatic reset (what `make_vec_env` returns).

    Copy i is first reset with seed `copy_seeds(seed, E)[i]`; later resets continue its own RNG.
    `state_dim` is known after `reset()` (None without `with_state` or without a global state).
    """

    num_envs: int
    groups: list[AgentGroup]
    env_id: str
    state_dim: int | None
    with_state: bool

    def reseed(self, seed: int) -> None: ...

    def set_seeds(self, seeds: list[int]) -> None: ...

    def reset(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]: ...

    def step(self, actions: dict[str, np.ndarray]) -> VecStep: ...

    def close(self) -> None: ...
