"""A tiny real PettingZoo ParallelEnv for tests: `runner_1` terminates after 2 steps, the episode
is truncated after `max_cycles`. Rewards: +1 per step for action 1, else 0."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv


class EarlyExitEnv(ParallelEnv):
    metadata = {"name": "early_exit_v0"}

    def __init__(self, max_cycles: int = 5, action_space: str = "discrete"):
        self.possible_agents = ["runner_0", "runner_1"]
        self.max_cycles = max_cycles
        if action_space == "multidiscrete":
            self._action_space = spaces.MultiDiscrete([2, 2])
        else:
            self._action_space = spaces.Discrete(2)
        self._obs_space = spaces.Box(-1.0, 1.0, (3,), np.float32)

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return self._action_space

    def _obs(self, agent):
        return np.array([self.t / self.max_cycles, float(agent == "runner_1"), 1.0], dtype=np.float32)

    def reset(self, seed=None, options=None):
        self.agents = list(self.possible_agents)
        self.t = 0
        return {a: self._obs(a) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        self.t += 1
        rewards = {a: float(actions[a] == 1) for a in self.agents}
        terminations = {a: a == "runner_1" and self.t >= 2 for a in self.agents}
        truncations = {a: self.t >= self.max_cycles for a in self.agents}
        obs = {a: self._obs(a) for a in self.agents}
        infos = {a: {} for a in self.agents}
        self.agents = [a for a in self.agents if not (terminations[a] or truncations[a])]
        return obs, rewards, terminations, truncations, infos


def parallel_env(**kwargs) -> EarlyExitEnv:
    return EarlyExitEnv(**kwargs)
