"""Loading PettingZoo ParallelEnvs by module name, and splitting their agents into groups.

A group is the set of agents that share one policy network (parameter sharing, as MAPPO/IPPO do
for homogeneous agents): agents with the same name prefix (`adversary_*`, `agent_*`), observation
space and action space. `describe_env` builds one copy of an env and reads its groups and state size.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
from gymnasium import spaces

from pgen.config import EnvConfig


class EnvError(ValueError):
    """An env that cannot be loaded or used; the message says what and why."""


# mpe2's envs start pygame's freetype and load a font when built and call pygame.quit() when closed;
# neither is thread-safe: two threads building envs at once corrupt the heap and abort the process
# (two /v1/seed calls on one Serve replica did). Every build and close of a ParallelEnv holds this lock.
_ENV_LIFECYCLE = threading.RLock()


def env_key(env_cfg: EnvConfig) -> str:
    """Store partition name of an env: module tail + hash of (id, kwargs), e.g. `simple_spread_v3-1f0c9a2e`."""
    canonical = json.dumps({"id": env_cfg.id, "kwargs": dict(env_cfg.kwargs)}, sort_keys=True, default=str)
    return f"{env_cfg.id.rsplit('.', 1)[-1]}-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def load_env_module(env_id: str) -> ModuleType:
    """Import `env_id` and check that it exposes PettingZoo's `parallel_env(**kwargs)`."""
    try:
        module = importlib.import_module(env_id)
    except ImportError as err:
        raise EnvError(
            f"env.id {env_id!r} is not an importable module ({err}); expected a module exposing "
            "PettingZoo's parallel_env(**kwargs), e.g. mpe2.simple_spread_v3"
        ) from err
    if not callable(getattr(module, "parallel_env", None)):
        raise EnvError(
            f"env.id {env_id!r} has no parallel_env(**kwargs): it is not a PettingZoo environment "
            "module (e.g. mpe2.simple_spread_v3, pettingzoo.sisl.pursuit_v5)"
        )
    return module


def make_parallel_env(env_cfg: EnvConfig) -> Any:
    """Build one ParallelEnv from `env.id` and `env.kwargs`, with clear errors for bad kwargs."""
    module = load_env_module(env_cfg.id)
    kwargs = dict(env_cfg.kwargs)
    try:
        inspect.signature(module.parallel_env).bind(**kwargs)
    except TypeError as err:
        raise EnvError(f"env.kwargs {kwargs} do not fit {env_cfg.id}.parallel_env: {err}") from err
    except ValueError:  # no introspectable signature: let the call decide
        pass
    try:
        with _ENV_LIFECYCLE:
            return module.parallel_env(**kwargs)
    except Exception as err:  # deprecated envs, bad values: the env's own words, with context
        raise EnvError(f"{env_cfg.id}.parallel_env(**{kwargs}) failed: {type(err).__name__}: {err}") from err


def close_parallel_env(env: Any) -> None:
    """`env.close()` under the lock `make_parallel_env` builds under (see `_ENV_LIFECYCLE`)."""
    with _ENV_LIFECYCLE:
        env.close()


def _agent_prefix(agent: str) -> str:
    return re.sub(r"[_-]?\d+$", "", agent) or agent


def obs_dim_of(space: spaces.Space, where: str) -> int:
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    raise EnvError(f"{where}: observation space {space} is not supported (Box or Discrete only)")


def _check_action_space(space: spaces.Space, where: str) -> None:
    if isinstance(space, spaces.Discrete):
        return
    if isinstance(space, spaces.Box) and len(space.shape) == 1:
        return
    raise EnvError(f"{where}: action space {space} is not supported (Discrete or 1-D Box only)")


@dataclass(frozen=True)
class AgentGroup:
    """Agents sharing one policy: same name prefix, observation space and action space."""

    name: str
    agents: tuple[str, ...]
    observation_space: spaces.Space = field(compare=False)
    action_space: spaces.Space = field(compare=False)

    @property
    def obs_dim(self) -> int:
        return obs_dim_of(self.observation_space, self.name)

    @property
    def discrete(self) -> bool:
        return isinstance(self.action_space, spaces.Discrete)

    @property
    def action_dim(self) -> int:
        """Number of logits (Discrete) or of action components (Box)."""
        return int(self.action_space.n) if self.discrete else int(self.action_space.shape[0])

    @property
    def size(self) -> int:
        return len(self.agents)


def group_agents(env: Any, env_id: str = "env") -> list[AgentGroup]:
    """Split `env.possible_agents` into groups (prefix + spaces), in first-appearance order.

    Agents with the same prefix but different spaces get suffixed group names (`agent`, `agent.1`).
    """
    keyed: dict[tuple, list[str]] = {}
    for agent in env.possible_agents:
        obs_space, act_space = env.observation_space(agent), env.action_space(agent)
        obs_dim_of(obs_space, f"{env_id} agent {agent}")
        _check_action_space(act_space, f"{env_id} agent {agent}")
        key = (_agent_prefix(agent), repr(obs_space), repr(act_space))
        keyed.setdefault(key, []).append(agent)
    groups: list[AgentGroup] = []
    seen: dict[str, int] = {}
    for (prefix, _, _), agents in keyed.items():
        count = seen.get(prefix, 0)
        seen[prefix] = count + 1
        name = prefix if count == 0 else f"{prefix}.{count}"
        groups.append(
            AgentGroup(name, tuple(agents), env.observation_space(agents[0]), env.action_space(agents[0]))
        )
    return groups


def global_state(env: Any) -> np.ndarray | None:
    """`env.state()` as a flat float32 array, or None when the env has no global state."""
    try:
        state = env.state()
    except (NotImplementedError, AttributeError):
        return None
    return None if state is None else np.asarray(state, dtype=np.float32).reshape(-1)


@dataclass
class EnvSpec:
    """What the learner needs to know about an env: its groups and global-state size."""

    env_id: str
    groups: list[AgentGroup]
    state_dim: int | None

    def group(self, name: str) -> AgentGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise EnvError(f"{self.env_id} has no group {name!r}; groups: {[g.name for g in self.groups]}")


def describe_env(env_cfg: EnvConfig) -> EnvSpec:
    """Build one copy of the env and read its groups and state size."""
    env = make_parallel_env(env_cfg)
    env.reset(seed=0)
    spec = EnvSpec(env_cfg.id, group_agents(env, env_cfg.id), None)
    state = global_state(env)
    spec.state_dim = None if state is None else int(state.size)
    close_parallel_env(env)
    return spec
