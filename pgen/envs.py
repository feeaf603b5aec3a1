"""PettingZoo ParallelEnvs: loading by module name, agent groups, and vectorised stepping.

A group is the set of agents that share one policy network (parameter sharing, as MAPPO/IPPO do
for homogeneous agents): agents with the same name prefix (`adversary_*`, `agent_*`), observation
space and action space. `VecEnv` steps E copies of an env and returns one batched array per group
(`[E, n_agents, ...]`), resets finished copies automatically, and masks agents that finished early.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import inspect
import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
from gymnasium import spaces

from pgen.config import EnvConfig


class EnvError(ValueError):
    """An env that cannot be loaded or used; the message says what and why."""


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
        return module.parallel_env(**kwargs)
    except Exception as err:  # deprecated envs, bad values: the env's own words, with context
        raise EnvError(f"{env_cfg.id}.parallel_env(**{kwargs}) failed: {type(err).__name__}: {err}") from err


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


def _flat_obs(space: spaces.Space, value: Any) -> np.ndarray:
    if isinstance(space, spaces.Discrete):
        out = np.zeros(space.n, dtype=np.float32)
        out[int(value) - space.start] = 1.0
        return out
    return np.asarray(value, dtype=np.float32).reshape(-1)


def _action_converter(space: spaces.Space):
    """Batch entry → the env's action: an int for Discrete, clipped to the bounds for Box."""
    if isinstance(space, spaces.Discrete):
        start = int(space.start)
        return lambda a: int(a) + start
    low, high, dtype = space.low, space.high, space.dtype
    return lambda a: np.clip(a, low, high).astype(dtype)


def _global_state(env: Any) -> np.ndarray | None:
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
    state = _global_state(env)
    spec.state_dim = None if state is None else int(state.size)
    env.close()
    return spec


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
    groups: dict[str, GroupStep]
    state: np.ndarray | None  # [E, state_dim] global state at the next observation
    final_state: np.ndarray | None  # [E, state_dim] global state at the end of an ended episode
    episodes: list[dict[str, float]]  # finished episodes: {"<group>": group return, ..., "length": T}


def copy_seeds(seed: int, num_envs: int) -> list[int]:
    """The first-reset seed of each of `num_envs` copies, drawn from `seed`."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(num_envs)]


class VecEnv:
    """E copies of a ParallelEnv stepped in lockstep with automatic reset.

    Copy i is first reset with a seed drawn from `seed`; later resets continue its own RNG, so
    a run is reproducible. The return of a group in an episode is the sum over its agents.
    """

    def __init__(self, env_cfg: EnvConfig, num_envs: int, seed: int, with_state: bool = True):
        if num_envs < 1:
            raise EnvError(f"num_envs must be >= 1, got {num_envs}")
        self.envs = [make_parallel_env(env_cfg) for _ in range(num_envs)]
        self.num_envs = num_envs
        self.groups = group_agents(self.envs[0], env_cfg.id)
        self.env_id = env_cfg.id
        self.reseed(seed)
        self._index = {a: (gi, j) for gi, g in enumerate(self.groups) for j, a in enumerate(g.agents)}
        self._flat = {a: k for k, a in enumerate(a for g in self.groups for a in g.agents)}
        self._convert = {a: _action_converter(g.action_space) for g in self.groups for a in g.agents}
        self._returns = np.zeros((num_envs, len(self._index)), dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self.with_state = with_state  # env.state() costs a full observation pass in MPE: only when used
        self.state_dim: int | None = None

    def reseed(self, seed: int) -> None:
        """Draw each copy's reset seed from `seed`; takes effect at the next `reset()`."""
        self.set_seeds(copy_seeds(seed, self.num_envs))

    def set_seeds(self, seeds: list[int]) -> None:
        self._seeds = list(seeds)

    def _blank(self, g: AgentGroup, width: int | None = None) -> np.ndarray:
        shape = (self.num_envs, g.size) if width is None else (self.num_envs, g.size, width)
        return np.zeros(shape, dtype=np.float32)

    def _write_obs(self, obs_arrays: list[np.ndarray], alive: list[np.ndarray], e: int, obs: dict) -> None:
        for agent, value in obs.items():
            gi, j = self._index[agent]
            obs_arrays[gi][e, j] = _flat_obs(self.groups[gi].observation_space, value)
            alive[gi][e, j] = 1.0

    def reset(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
        """Reset every copy: (obs per group, alive mask per group, global state or None)."""
        obs = [self._blank(g, g.obs_dim) for g in self.groups]
        alive = [self._blank(g) for g in self.groups]
        states = []
        for e, env in enumerate(self.envs):
            first, _ = env.reset(seed=self._seeds[e])
            self._write_obs(obs, alive, e, first)
            states.append(_global_state(env) if self.with_state else None)
        self._returns[:] = 0.0
        self._lengths[:] = 0
        state = None if states[0] is None else np.stack(states)
        self.state_dim = None if state is None else state.shape[1]
        return self._by_name(obs), self._by_name(alive), state

    def _by_name(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {g.name: a for g, a in zip(self.groups, arrays)}

    def step(self, actions: dict[str, np.ndarray]) -> VecStep:
        """Step every copy with `actions[group]` of shape `[E, n]` (Discrete) or `[E, n, dim]` (Box)."""
        groups = self.groups
        obs = [self._blank(g, g.obs_dim) for g in groups]
        alive = [self._blank(g) for g in groups]
        reward = [self._blank(g) for g in groups]
        ended = [self._blank(g) for g in groups]
        truncated = [self._blank(g) for g in groups]
        final_obs = [self._blank(g, g.obs_dim) for g in groups]
        has_state = self.state_dim is not None
        state = np.zeros((self.num_envs, self.state_dim), np.float32) if has_state else None
        final_state = np.zeros_like(state) if has_state else None
        episodes: list[dict[str, float]] = []
        group_actions = [actions[g.name] for g in groups]
        index, convert = self._index, self._convert
        for e, env in enumerate(self.envs):
            act = {}
            for agent in env.agents:
                gi, j = index[agent]
                act[agent] = convert[agent](group_actions[gi][e, j])
            next_obs, rew, term, trunc, _ = env.step(act)
            self._lengths[e] += 1
            for agent, r in rew.items():
                gi, j = index[agent]
                reward[gi][e, j] = r
                self._returns[e, self._flat[agent]] += r
            episode_over = not env.agents or all(term.get(a, False) or trunc.get(a, False) for a in act)
            for agent in act:
                gi, j = index[agent]
                if term.get(agent, False) or trunc.get(agent, False) or episode_over:
                    ended[gi][e, j] = 1.0
                    if not term.get(agent, False):
                        truncated[gi][e, j] = 1.0
                        if agent in next_obs:
                            final_obs[gi][e, j] = _flat_obs(groups[gi].observation_space, next_obs[agent])
            if episode_over:
                if has_state:
                    final_state[e] = _global_state(env)
                episodes.append(self._finish_episode(e))
                next_obs, _ = env.reset()
            else:
                next_obs = {a: o for a, o in next_obs.items() if a in env.agents}
            self._write_obs(obs, alive, e, next_obs)
            if has_state:
                state[e] = _global_state(env)
        steps = {
            g.name: GroupStep(obs[i], reward[i], ended[i], truncated[i], alive[i], final_obs[i])
            for i, g in enumerate(groups)
        }
        return VecStep(steps, state, final_state, episodes)

    def _finish_episode(self, e: int) -> dict[str, float]:
        result: dict[str, float] = {}
        offset = 0
        for g in self.groups:
            result[g.name] = float(self._returns[e, offset : offset + g.size].sum())
            offset += g.size
        result["length"] = float(self._lengths[e])
        self._returns[e] = 0.0
        self._lengths[e] = 0
        return result

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _merge_steps(parts: list[VecStep]) -> VecStep:
    cat = np.concatenate
    groups = {
        name: GroupStep(*(cat([getattr(p.groups[name], f) for p in parts]) for f in GroupStep.__dataclass_fields__))
        for name in parts[0].groups
    }
    state = None if parts[0].state is None else cat([p.state for p in parts])
    final_state = None if parts[0].final_state is None else cat([p.final_state for p in parts])
    return VecStep(groups, state, final_state, [ep for p in parts for ep in p.episodes])


def _vec_worker(conn: Any, env_cfg: EnvConfig, num_envs: int, with_state: bool) -> None:
    """Runs in a child process: an in-process VecEnv over a slice of the copies, driven by commands."""
    import traceback

    try:
        vec = VecEnv(env_cfg, num_envs, 0, with_state)
        conn.send(("ok", None))
        while True:
            cmd, arg = conn.recv()
            if cmd == "step":
                conn.send(("ok", vec.step(arg)))
            elif cmd == "reset":
                conn.send(("ok", vec.reset()))
            elif cmd == "seeds":
                vec.set_seeds(arg)
                conn.send(("ok", None))
            elif cmd == "close":
                vec.close()
                conn.send(("ok", None))
                return
    except (KeyboardInterrupt, EOFError):
        return
    except Exception:
        conn.send(("error", traceback.format_exc()))


class SubprocVecEnv:
    """The `VecEnv` interface with the copies split over `num_workers` processes stepped in parallel.

    Copy i gets the same seed as in a `VecEnv`, so results do not depend on the number of workers.
    Actions and observations cross process boundaries through pipes between our own processes.
    """

    def __init__(self, env_cfg: EnvConfig, num_envs: int, seed: int, with_state: bool = True, num_workers: int = 2):
        import multiprocessing as mp

        num_workers = max(1, min(num_workers, num_envs))
        self.num_envs, self.env_id, self.with_state = num_envs, env_cfg.id, with_state
        self.groups = group_agents(make_parallel_env(env_cfg), env_cfg.id)
        bounds = np.linspace(0, num_envs, num_workers + 1).astype(int)
        self._slices = [(int(a), int(b)) for a, b in zip(bounds, bounds[1:])]
        ctx = mp.get_context("forkserver")
        self._conns, self._procs = [], []
        for lo, hi in self._slices:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_vec_worker, args=(child, env_cfg, hi - lo, with_state), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._gather()
        self.state_dim: int | None = None
        self.reseed(seed)

    def _gather(self) -> list[Any]:
        results = []
        for conn in self._conns:
            try:
                status, value = conn.recv()
            except EOFError as err:
                raise EnvError(f"an env worker process of {self.env_id} died") from err
            if status == "error":
                raise EnvError(f"env worker of {self.env_id} failed:\n{value}")
            results.append(value)
        return results

    def _broadcast(self, cmd: str, args: list[Any]) -> list[Any]:
        for conn, arg in zip(self._conns, args):
            conn.send((cmd, arg))
        return self._gather()

    def reseed(self, seed: int) -> None:
        seeds = copy_seeds(seed, self.num_envs)
        self._broadcast("seeds", [seeds[lo:hi] for lo, hi in self._slices])

    def reset(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
        parts = self._broadcast("reset", [None] * len(self._conns))
        obs = {g.name: np.concatenate([p[0][g.name] for p in parts]) for g in self.groups}
        alive = {g.name: np.concatenate([p[1][g.name] for p in parts]) for g in self.groups}
        state = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
        self.state_dim = None if state is None else state.shape[1]
        return obs, alive, state

    def step(self, actions: dict[str, np.ndarray]) -> VecStep:
        args = [{name: a[lo:hi] for name, a in actions.items()} for lo, hi in self._slices]
        return _merge_steps(self._broadcast("step", args))

    def close(self) -> None:
        try:
            self._broadcast("close", [None] * len(self._conns))
        except (EnvError, OSError, BrokenPipeError):
            pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


def make_vec_env(env_cfg: EnvConfig, num_envs: int, seed: int, with_state: bool = True,
                 num_workers: int = 0) -> VecEnv | SubprocVecEnv:
    """In-process `VecEnv` for `num_workers` 0 or 1, else a `SubprocVecEnv` over that many processes."""
    if num_workers > 1:
        return SubprocVecEnv(env_cfg, num_envs, seed, with_state, num_workers)
    return VecEnv(env_cfg, num_envs, seed, with_state)
