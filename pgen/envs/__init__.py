"""PettingZoo ParallelEnvs: loading by module name, agent groups, and vectorised stepping.

A group is the set of agents that share one policy network (agents with the same name prefix,
observation space and action space). A vec env steps E copies of an env and returns one batched
array per group (`[E, n_agents, ...]`), resets finished copies automatically, and masks agents that
finished early.

- `loading.py`: env loading, `env_key`, groups, `EnvSpec` / `describe_env`, `EnvError`
- `base.py`: `GroupStep` / `VecStep`, `copy_seeds`
- `pettingzoo.py`: `VecEnv`, `SubprocVecEnv` and `make_vec_env`
"""

from pgen.envs.base import GroupStep, VecStep, copy_seeds
from pgen.envs.loading import (
    AgentGroup,
    EnvError,
    EnvSpec,
    describe_env,
    env_key,
    global_state,
    group_agents,
    load_env_module,
    make_parallel_env,
    obs_dim_of,
)
from pgen.envs.pettingzoo import SubprocVecEnv, VecEnv, make_vec_env

__all__ = [
    "AgentGroup", "EnvError", "EnvSpec", "GroupStep", "SubprocVecEnv", "VecEnv", "VecStep", "copy_seeds",
    "describe_env", "env_key", "global_state", "group_agents", "load_env_module", "make_parallel_env",
    "make_vec_env", "obs_dim_of",
]
