"""E copies of a PettingZoo ParallelEnv stepped in lockstep, in-process (`VecEnv`) or over worker
processes (`SubprocVecEnv`): one batched array per group (`[E, n_agents, ...]`), automatic reset of
finished copies, and masks for agents that finished early.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from pgen.config import EnvConfig
from pgen.envs.base import GroupStep, VecStep, copy_seeds, episode_summaries
from pgen.envs.loading import AgentGroup, EnvError, close_parallel_env, global_state, group_agents, make_parallel_env


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
            states.append(global_state(env) if self.with_state else None)
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
                    final_state[e] = global_state(env)
                episodes.append(self._finish_episode(e))
                next_obs, _ = env.reset()
            else:
                next_obs = {a: o for a, o in next_obs.items() if a in env.agents}
            self._write_obs(obs, alive, e, next_obs)
            if has_state:
                state[e] = global_state(env)
        steps = {
            g.name: GroupStep(obs[i], reward[i], ended[i], truncated[i], alive[i], final_obs[i])
            for i, g in enumerate(groups)
        }
        return VecStep(steps, state, final_state, episodes)

    def _finish_episode(self, e: int) -> dict[str, float]:
        (result,) = episode_summaries(self.groups, self._returns[e : e + 1], self._lengths[e : e + 1])
        self._returns[e] = 0.0
        self._lengths[e] = 0
        return result

    def close(self) -> None:
        for env in self.envs:
            close_parallel_env(env)


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
        probe = make_parallel_env(env_cfg)
        self.groups = group_agents(probe, env_cfg.id)
        close_parallel_env(probe)
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
