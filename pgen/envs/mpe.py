"""Batched NumPy MPE: mpe2's `simple_spread_v3` and `simple_tag_v3`, all E copies in one vectorised step.

`MPEVecEnv` has the interface and the semantics of `pettingzoo.VecEnv` and is exact against mpe2
(`tests/test_mpe_vector.py`: bit-identical), because it repeats mpe2's arithmetic, not only its
equations:

- float64 state, observations cast to float32 (mpe2's `observe`), float64 rewards;
- every sum in mpe2's order: its Python loops add contact forces and rewards one term at a time, so
  we add term by term too (or with `np.add.accumulate`, which is sequential), never with `np.sum`
  over floats (pairwise: it rounds differently);
- resets draw the same numbers in the same order as `reset_world`, from one generator per copy
  seeded as gymnasium seeds mpe2's `np_random`, and continued (not reseeded) by later resets.

Read it like JaxMARL's MPE: the world's constants below, each scenario's constants at the top of its
class. Layout, copies last so that every NumPy operation runs over contiguous rows of E copies:
`pos [2, K, E]` (x/y, entity in mpe2's world order: agents then landmarks, copy), `vel [2, A, E]`
(landmarks never move in these scenarios), and for agent i and entity k
`rel[:, i, k] = pos[:, k] - pos[:, i]` with its length `dist[i, k]`. Only the arrays a step returns
are copy-first (`[E, n_agents, ...]`, as every vec env returns them).
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
from gymnasium.utils import seeding

from pgen.config import EnvConfig
from pgen.envs.base import GroupStep, VecStep, copy_seeds, episode_summaries
from pgen.envs.loading import EnvError, close_parallel_env, group_agents, load_env_module, make_parallel_env

MPE2_VERSION = "1.1.1"  # the mpe2 release this backend is verified against (another may change the rules)

# mpe2's World (_mpe_utils/core.py) and SimpleEnv._set_action (_mpe_utils/simple_env.py)
DT = 0.1
DAMPING = 0.25
CONTACT_FORCE = 1e2
CONTACT_MARGIN = 1e-3
MASS = 1.0  # Entity.initial_mass
ENTITY_SIZE = 0.05  # Entity.size unless the scenario sets it
DEFAULT_ACCEL = 5.0  # the "sensitivity" of an agent whose accel is None
MOVES = np.array([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])  # discrete action → u
N_ACTIONS = len(MOVES)  # the agents are silent: no communication part in an action
SPAWN = 1.0  # agents start uniform in [-SPAWN, SPAWN]²
# np.logaddexp(0, x) = log1p(exp(x)) is exactly 0.0 below this (exp underflows): skip computing it
SOFTPLUS_ZERO_BELOW = -746.0

# SimpleEnv kwargs every scenario supports; kwargs that change nothing a vec env returns (in any
# value): rendering and infos. Every other kwarg of a scenario is supported at its mpe2 default only.
COMMON_KWARGS = frozenset({"max_cycles", "continuous_actions"})
NO_EFFECT_KWARGS = frozenset({"dynamic_rescaling", "benchmark_data"})


@dataclass
class World:
    """The physical state of E copies (copies last), and its geometry (`update_geometry` after moves)."""

    pos: np.ndarray  # [2, K, E]
    vel: np.ndarray  # [2, A, E]
    rel: np.ndarray | None = None  # [2, A, K, E] pos[:, k] - pos[:, agent]
    dist: np.ndarray | None = None  # [A, K, E] |rel|

    def update_geometry(self) -> None:
        n_agents = self.vel.shape[1]
        self.rel = self.pos[:, None, :, :] - self.pos[:, :n_agents, None, :]
        # mpe2: np.sqrt(np.sum(np.square(delta))) of a 2-vector, i.e. sqrt(dx² + dy²)
        self.dist = np.sqrt(np.square(self.rel[0]) + np.square(self.rel[1]))


@functools.cache
def _others(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays `(rows [n, 1], cols [n, n-1])` picking, for each of n agents, the others in order."""
    cols = np.array([[j for j in range(n) if j != i] for i in range(n)], dtype=np.int64).reshape(n, n - 1)
    return np.arange(n)[:, None], cols


def _interleave(xy: np.ndarray) -> np.ndarray:
    """`[2, n, m, E]` (x/y, agent, item, copy) → `[2m, n, E]` rows x_0, y_0, x_1, y_1, … per agent."""
    _, n, m, E = xy.shape
    return xy.transpose(2, 0, 1, 3).reshape(2 * m, n, E)


def _copy_first(rows: np.ndarray) -> np.ndarray:
    """Observation rows `[D, n, E]` → the float32 `[E, n, D]` a vec env returns (mpe2's `.astype(float32)`)."""
    return np.ascontiguousarray(rows.transpose(2, 1, 0), dtype=np.float32)


class Scenario(ABC):
    """One mpe2 scenario, batched: its entities (constants per entity), observations and rewards.

    `blocks` are the runs of agents sharing an observation layout; each is one group of
    `group_agents` (checked by `MPEVecEnv`).
    """

    KWARGS: frozenset[str]  # the scenario's own kwargs this backend supports
    n_agents: int
    n_landmarks: int
    size: np.ndarray  # [K]
    collide: np.ndarray  # [K] bool
    accel: np.ndarray  # [A]
    max_speed: np.ndarray | None  # [A]; None: no speed limit
    landmark_spawn: float  # landmarks start uniform in [-landmark_spawn, landmark_spawn]²
    blocks: list[slice]

    @abstractmethod
    def observe(self, world: World) -> list[np.ndarray]:
        """Float32 observations `[E, block size, obs_dim]` of each block of `blocks`."""

    @abstractmethod
    def rewards(self, world: World) -> np.ndarray:
        """Float64 rewards `[A, E]` of the state after a world step."""

    def collisions(self, world: World, agents: slice, others: slice) -> np.ndarray:
        """`[|agents|, |others|, E]`: True where the agents overlap (mpe2's `is_collision`)."""
        return world.dist[agents, others] < (self.size[agents, None] + self.size[None, others])[..., None]

    def _head(self, world: World) -> np.ndarray:
        """Rows `[D, A, E]` every agent's observation starts with: vel, pos, landmark_k - pos,
        then pos_j - pos for the other agents j in order."""
        A = self.n_agents
        rows, cols = _others(A)
        return np.concatenate([world.vel, world.pos[:, :A], _interleave(world.rel[:, :, A:]),
                               _interleave(world.rel[:, rows, cols])])


class SimpleSpread(Scenario):
    """simple_spread_v3: N agents cover N landmarks; reward = global coverage and local collisions.

    Observation of agent i: [vel_i, pos_i, landmark_k - pos_i (k < N), pos_j - pos_i (j ≠ i),
    comm of j ≠ i (always 0: the agents are silent)].
    """

    AGENT_SIZE = 0.15
    LANDMARK_SPAWN = 1.0
    COLLISION_PENALTY = 1.0
    DIM_C = 2
    KWARGS = frozenset({"N", "local_ratio"})

    def __init__(self, N: int, local_ratio: float, **_: Any):
        self.n_agents = self.n_landmarks = N
        self.local_ratio = local_ratio
        self.size = np.array([self.AGENT_SIZE] * N + [ENTITY_SIZE] * N)
        self.collide = np.array([True] * N + [False] * N)  # landmarks do not collide
        self.accel = np.full(N, DEFAULT_ACCEL)
        self.max_speed = None
        self.landmark_spawn = self.LANDMARK_SPAWN
        self.blocks = [slice(0, N)]

    def observe(self, world: World) -> list[np.ndarray]:
        head = self._head(world)
        comm = np.zeros((self.DIM_C * (self.n_agents - 1), *head.shape[1:]))
        return [_copy_first(np.concatenate([head, comm]))]

    def rewards(self, world: World) -> np.ndarray:
        N = self.n_agents
        # global: -Σ_landmarks min_agents dist, landmark by landmark as mpe2's `rew -= min(dists)`
        nearest = world.dist[:, N:].min(axis=0)  # [L, E]
        global_reward = -np.add.accumulate(nearest, axis=0)[-1]
        hits = self.collisions(world, slice(0, N), slice(0, N))
        hits[np.arange(N), np.arange(N)] = False  # not with itself
        local = -self.COLLISION_PENALTY * hits.sum(axis=1)
        return global_reward * (1 - self.local_ratio) + local * self.local_ratio


class SimpleTag(Scenario):
    """simple_tag_v3: slow adversaries chase fast good agents around obstacles.

    Every adversary gets +10 per adversary/good-agent contact; a good agent gets -10 per adversary
    touching it and a penalty for leaving [-0.9, 0.9]². Observation of agent i: [vel_i, pos_i,
    obstacle_k - pos_i, pos_j - pos_i (j ≠ i), vel_j of the good agents j ≠ i].
    """

    ADVERSARY_SIZE, GOOD_SIZE, OBSTACLE_SIZE = 0.075, 0.05, 0.2
    ADVERSARY_ACCEL, GOOD_ACCEL = 3.0, 4.0
    ADVERSARY_MAX_SPEED, GOOD_MAX_SPEED = 1.0, 1.3
    LANDMARK_SPAWN = 0.9
    CATCH_REWARD = 10.0
    BOUND_START, BOUND_EXP, BOUND_CAP = 0.9, 1.0, 10.0  # agent_reward's bound(x): linear, then exp, capped
    KWARGS = frozenset({"num_good", "num_adversaries", "num_obstacles"})

    def __init__(self, num_good: int, num_adversaries: int, num_obstacles: int, **_: Any):
        na, ng = num_adversaries, num_good
        self.n_agents, self.n_landmarks = na + ng, num_obstacles
        self.adversaries, self.good = slice(0, na), slice(na, na + ng)
        self.size = np.array([self.ADVERSARY_SIZE] * na + [self.GOOD_SIZE] * ng + [self.OBSTACLE_SIZE] * num_obstacles)
        self.collide = np.ones(na + ng + num_obstacles, bool)  # obstacles too
        self.accel = np.array([self.ADVERSARY_ACCEL] * na + [self.GOOD_ACCEL] * ng)
        self.max_speed = np.array([self.ADVERSARY_MAX_SPEED] * na + [self.GOOD_MAX_SPEED] * ng)
        self.landmark_spawn = self.LANDMARK_SPAWN
        self.blocks = [b for b in (self.adversaries, self.good) if b.stop > b.start]

    def observe(self, world: World) -> list[np.ndarray]:
        head = self._head(world)
        good_vel = world.vel[:, self.good]  # [2, ng, E]
        ng, E = good_vel.shape[1:]
        out = []
        if self.adversaries.stop:  # every good agent's velocity
            adv = head[:, self.adversaries]
            seen = _interleave(np.broadcast_to(good_vel[:, None], (2, adv.shape[1], ng, E)))
            out.append(_copy_first(np.concatenate([adv, seen])))
        if ng:  # the other good agents' velocities
            _, fellows = _others(ng)
            out.append(_copy_first(np.concatenate([head[:, self.good], _interleave(good_vel[:, fellows])])))
        return out

    def rewards(self, world: World) -> np.ndarray:
        caught = self.collisions(world, self.adversaries, self.good)  # [na, ng, E]
        out = np.empty(world.dist[:, 0].shape)
        out[self.adversaries] = self.CATCH_REWARD * caught.sum(axis=(0, 1))
        x = np.abs(world.pos[:, self.good])  # [2, ng, E]
        with np.errstate(over="ignore"):
            far = np.minimum(np.exp(2 * x - 2), self.BOUND_CAP)
        bound = np.where(x < self.BOUND_START, 0.0, np.where(x < self.BOUND_EXP, (x - self.BOUND_START) * 10, far))
        # mpe2: rew = -10 per catch, then rew -= bound(|x|), then rew -= bound(|y|)
        out[self.good] = -self.CATCH_REWARD * caught.sum(axis=0) - bound[0] - bound[1]
        return out


SCENARIOS: dict[str, type[Scenario]] = {"mpe2.simple_spread_v3": SimpleSpread, "mpe2.simple_tag_v3": SimpleTag}


def supports(env_cfg: EnvConfig) -> tuple[bool, str]:
    """Whether `MPEVecEnv` runs `env_cfg` exactly as mpe2 does; if not, the reason (else "")."""
    scenario = SCENARIOS.get(env_cfg.id)
    if scenario is None:
        return False, f"{env_cfg.id} is not one of its scenarios ({', '.join(SCENARIOS)})"
    try:
        installed = metadata.version("mpe2")
    except metadata.PackageNotFoundError:
        return False, "mpe2 is not installed"
    if installed != MPE2_VERSION:
        return False, f"it is verified against mpe2 {MPE2_VERSION}, not the installed {installed}"
    params = inspect.signature(load_env_module(env_cfg.id).raw_env).parameters
    for key, value in env_cfg.kwargs.items():
        if key not in params:
            return False, f"{env_cfg.id} has no kwarg {key!r}"
        if key in COMMON_KWARGS or key in scenario.KWARGS or key in NO_EFFECT_KWARGS:
            continue
        if value != params[key].default:
            return False, f"kwarg {key}={value!r} is not implemented (only its default {params[key].default!r})"
    return True, ""


class ContactPairs:
    """The pairs of entities that push each other, and the order mpe2 adds their forces in.

    Pairs (a, b), a < b, both colliding, a an agent (forces between landmarks move nothing).
    mpe2 adds the forces on agent i partner by partner in ascending entity order; slot s holds, for
    every agent, the pair of its s-th partner (or the extra zero pair `P`) and that push's sign on it.
    """

    def __init__(self, sc: Scenario):
        K = sc.n_agents + sc.n_landmarks
        pairs = [(a, b) for a in range(sc.n_agents) for b in range(a + 1, K) if sc.collide[a] and sc.collide[b]]
        self.a = np.array([a for a, _ in pairs], dtype=np.int64)
        self.b = np.array([b for _, b in pairs], dtype=np.int64)
        self.dist_min = (sc.size[self.a] + sc.size[self.b])[:, None]  # mpe2: entity_a.size + entity_b.size
        partners = [[(p, -1.0 if a == i else 1.0) for p, (a, b) in enumerate(pairs) if i in (a, b)]
                    for i in range(sc.n_agents)]  # in ascending partner order, since pairs are sorted
        slots = max((len(x) for x in partners), default=0)
        table = [[x[s] if s < len(x) else (len(pairs), 0.0) for x in partners] for s in range(slots)]
        self.slot_pair = [np.array([p for p, _ in row], dtype=np.int64) for row in table]  # [slots][A]
        self.slot_sign = [np.array([g for _, g in row])[:, None] for row in table]  # [slots][A, 1]


class MPEVecEnv:
    """E copies of an mpe2 scenario held as NumPy arrays and stepped in one vectorised step.

    The `VecEnv` interface and semantics: copy i is first reset from seed `copy_seeds(seed, E)[i]`,
    later resets continue its generator, a copy resets automatically at `max_cycles` (truncated,
    with `final_obs`/`final_state`), a group's episode return is the sum over its agents. For the
    same seeds and actions it returns what `VecEnv` over mpe2 returns. `groups` are mpe2's own
    (`group_agents` of one mpe2 env, which also checks the kwargs' values).
    """

    def __init__(self, env_cfg: EnvConfig, num_envs: int, seed: int, with_state: bool = True):
        if num_envs < 1:
            raise EnvError(f"num_envs must be >= 1, got {num_envs}")
        ok, reason = supports(env_cfg)
        if not ok:
            raise EnvError(f"the vector backend cannot run {env_cfg.id}: {reason}")
        probe = make_parallel_env(env_cfg)
        self.groups = group_agents(probe, env_cfg.id)
        agents = list(probe.possible_agents)
        close_parallel_env(probe)
        arguments = inspect.signature(load_env_module(env_cfg.id).raw_env).bind(**env_cfg.kwargs)
        arguments.apply_defaults()
        params = arguments.arguments
        self.scenario = SCENARIOS[env_cfg.id](**params)
        self.max_cycles = int(params["max_cycles"])
        self.continuous = bool(params["continuous_actions"])
        self.num_envs, self.env_id, self.with_state = num_envs, env_cfg.id, with_state
        self.state_dim: int | None = None
        self._check_layout(agents)
        self._pairs = ContactPairs(self.scenario)
        self._world: World | None = None
        self._rngs: list[np.random.Generator] = []
        self._returns = np.zeros((num_envs, self.scenario.n_agents))  # [E, A], agents in group order
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self.reseed(seed)

    def _check_layout(self, agents: list[str]) -> None:
        """The groups must be the scenario's blocks, in world order, with its observation sizes."""
        sc = self.scenario
        probe = World(np.zeros((2, sc.n_agents + sc.n_landmarks, 1)), np.zeros((2, sc.n_agents, 1)))
        probe.update_geometry()
        layout = [(b.stop - b.start, o.shape[-1]) for b, o in zip(sc.blocks, sc.observe(probe))]
        if [a for g in self.groups for a in g.agents] != agents or layout != [(g.size, g.obs_dim) for g in self.groups]:
            raise EnvError(f"{self.env_id}: mpe2's agents {agents} / groups "
                           f"{[(g.name, g.size, g.obs_dim) for g in self.groups]} do not match the vector "
                           f"backend's layout {layout}: use env.backend=pettingzoo")

    def reseed(self, seed: int) -> None:
        """Draw each copy's reset seed from `seed`; takes effect at the next `reset()`."""
        self.set_seeds(copy_seeds(seed, self.num_envs))

    def set_seeds(self, seeds: list[int]) -> None:
        if len(seeds) != self.num_envs:
            raise EnvError(f"{len(seeds)} seeds for {self.num_envs} env copies")
        self._seeds = list(seeds)

    def reset(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
        """Reset every copy from its seed: (obs per group, alive mask per group, global state or None)."""
        sc, E = self.scenario, self.num_envs
        self._rngs = [seeding.np_random(s)[0] for s in self._seeds]  # mpe2's SimpleEnv._seed
        self._world = World(np.zeros((2, sc.n_agents + sc.n_landmarks, E)), np.zeros((2, sc.n_agents, E)))
        self._spawn(np.arange(E))
        self._returns[:] = 0.0
        self._lengths[:] = 0
        obs = sc.observe(self._world)
        state = self._state(obs) if self.with_state else None
        self.state_dim = None if state is None else state.shape[1]
        alive = {g.name: np.ones((E, g.size), np.float32) for g in self.groups}
        return self._by_name(obs), alive, state

    def _spawn(self, copies: np.ndarray) -> None:
        """`reset_world` for `copies`: agents, then landmarks, each position drawn x then y.

        Generator.uniform(low, high) is low + (high - low) · random(), so one random() call per copy
        consumes its generator as mpe2's per-entity uniform calls do (tests/test_mpe_vector.py).
        """
        sc, world = self.scenario, self._world
        draws = np.empty((len(copies), sc.n_agents + sc.n_landmarks, 2))
        for row, e in enumerate(copies):
            self._rngs[e].random(out=draws[row])
        half = np.array([SPAWN] * sc.n_agents + [sc.landmark_spawn] * sc.n_landmarks)[None, :, None]
        world.pos[:, :, copies] = (-half + (half - -half) * draws).transpose(2, 1, 0)
        world.vel[:, :, copies] = 0.0
        world.update_geometry()

    def _state(self, obs: list[np.ndarray]) -> np.ndarray:
        """mpe2's `state()`: every agent's observation, concatenated in agent order."""
        return np.concatenate([o.reshape(self.num_envs, -1) for o in obs], axis=1)

    def _by_name(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {g.name: a for g, a in zip(self.groups, arrays)}

    def _controls(self, actions: dict[str, np.ndarray]) -> np.ndarray:
        """Each agent's force `u [2, A, E]` from the groups' actions, decoded as mpe2's `_set_action`."""
        E = self.num_envs
        parts = []
        for g in self.groups:
            a = np.asarray(actions[g.name])
            want = (E, g.size, N_ACTIONS) if self.continuous else (E, g.size)
            if a.shape != want:
                raise EnvError(f"{self.env_id} group {g.name}: actions of shape {a.shape}, expected {want}")
            parts.append(a)
        a = np.concatenate(parts, axis=1).T  # [A, E] or [5, A, E]
        if self.continuous:
            a = np.clip(a, 0.0, 1.0).astype(np.float32)  # VecEnv's conversion (mpe2 clips again: a no-op)
            # u = [right - left, up - down], the differences in float32 as mpe2 computes them
            u = np.stack([a[2] - a[1], a[4] - a[3]]).astype(np.float64)
        else:
            a = a.astype(np.int64)  # VecEnv's int(a)
            if a.size and (a.min() < 0 or a.max() >= N_ACTIONS):
                raise EnvError(f"{self.env_id}: discrete actions must be in [0, {N_ACTIONS}), got {a.min()}..{a.max()}")
            u = MOVES.T[:, a]
        return u * self.scenario.accel[:, None]

    def _forces(self, u: np.ndarray) -> np.ndarray:
        """Each agent's total force: its control u plus the contact forces (mpe2's `world.step`)."""
        pairs, world = self._pairs, self._world
        dist = world.dist[pairs.a, pairs.b]  # [P, E]
        k = CONTACT_MARGIN
        x = -(dist - pairs.dist_min) / k
        softplus = np.zeros_like(x)
        near = x > SOFTPLUS_ZERO_BELOW
        softplus[near] = np.logaddexp(0, x[near])
        penetration = softplus * k
        # the force on b from a, CONTACT_FORCE·(p_b − p_a)/d·penetration; on a it is −push exactly
        # (IEEE rounding is symmetric in sign), as mpe2's f_a = +force, f_b = −force
        push = np.zeros((2, len(pairs.a) + 1, self.num_envs))  # the extra pair: no partner
        push[:, :-1] = CONTACT_FORCE * world.rel[:, pairs.a, pairs.b] / dist * penetration
        force = u
        for pair, sign in zip(pairs.slot_pair, pairs.slot_sign):  # partners in ascending order, as mpe2
            force = force + sign * push[:, pair]
        return force

    def _integrate(self, force: np.ndarray) -> None:
        """mpe2's `integrate_state` for the agents (the only movable entities)."""
        world, n = self._world, self.scenario.n_agents
        world.pos[:, :n] += world.vel * DT
        world.vel *= 1 - DAMPING
        world.vel += (force / MASS) * DT
        max_speed = self.scenario.max_speed
        if max_speed is not None:
            speed = np.sqrt(np.square(world.vel[0]) + np.square(world.vel[1]))  # [A, E]
            fast = speed > max_speed[:, None]
            if fast.any():
                limit = np.broadcast_to(max_speed[:, None], speed.shape)[fast]
                world.vel[:, fast] = world.vel[:, fast] / speed[fast] * limit

    def step(self, actions: dict[str, np.ndarray]) -> VecStep:
        """Step every copy with `actions[group]` of shape `[E, n]` (Discrete) or `[E, n, 5]` (Box)."""
        if self._world is None:
            raise EnvError(f"{self.env_id}: call reset() before step()")
        sc, world, E = self.scenario, self._world, self.num_envs
        self._integrate(self._forces(self._controls(actions)))
        world.update_geometry()
        reward = sc.rewards(world).T  # [E, A]
        self._returns += reward
        self._lengths += 1
        obs = sc.observe(world)
        state = self._state(obs) if self.state_dim is not None else None
        done = self._lengths >= self.max_cycles  # mpe2 truncates every agent; it never terminates here
        copies = np.flatnonzero(done)
        final_obs = [np.zeros_like(o) for o in obs]
        final_state = None if state is None else np.zeros_like(state)
        episodes: list[dict[str, float]] = []
        if len(copies):
            for f, o in zip(final_obs, obs):
                f[copies] = o[copies]
            if state is not None:
                final_state[copies] = state[copies]
            episodes = episode_summaries(self.groups, self._returns[copies], self._lengths[copies])
            self._returns[copies] = 0.0
            self._lengths[copies] = 0
            self._spawn(copies)
            obs = sc.observe(world)
            state = self._state(obs) if state is not None else None
        ended = done.astype(np.float32)[:, None]
        steps = {}
        for g, b, o, f in zip(self.groups, sc.blocks, obs, final_obs):
            flags = np.broadcast_to(ended, (E, g.size))
            steps[g.name] = GroupStep(o, reward[:, b].astype(np.float32), flags.copy(), flags.copy(),
                                      np.ones((E, g.size), np.float32), f)
        return VecStep(steps, state, final_state, episodes)

    def close(self) -> None:
        """Nothing to release (no env objects, no processes)."""
