"""PettingZoo ParallelEnvs: loading by module name, agent groups, and vectorised stepping.

A group is the set of agents that share one policy network (agents with the same name prefix,
observation space and action space). A vec env steps E copies of an env and returns one batched
array per group (`[E, n_agents, ...]`), resets finished copies automatically, and masks agents that
finished early. Two backends (`env.backend`, see `backend.py`): the PettingZoo loop (`VecEnv`,
`SubprocVecEnv`, any env) and the batched NumPy MPE (`MPEVecEnv`, mpe2's simple_spread/simple_tag).

- `loading.py`: env loading, `env_key`, groups, `EnvSpec` / `describe_env`, `EnvError`
- `base.py`: the `VectorEnv` interface, `GroupStep` / `VecStep`, `copy_seeds`, `episode_summaries`
- `pettingzoo.py`: `VecEnv` and `SubprocVecEnv`
- `mpe.py`: `MPEVecEnv`, its scenarios, and `supports`
- `backend.py`: `make_vec_env` and `resolve_backend`
"""

from pgen.envs.backend import make_vec_env, resolve_backend
from pgen.envs.base import GroupStep, VecStep, VectorEnv, copy_seeds, episode_summaries
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
from pgen.envs.mpe import MPEVecEnv, supports
from pgen.envs.pettingzoo import SubprocVecEnv, VecEnv

__all__ = [
    "AgentGroup", "EnvError", "EnvSpec", "GroupStep", "MPEVecEnv", "SubprocVecEnv", "VecEnv", "VecStep",
    "VectorEnv", "copy_seeds", "describe_env", "env_key", "episode_summaries", "global_state", "group_agents",
    "load_env_module", "make_parallel_env", "make_vec_env", "obs_dim_of", "resolve_backend", "supports",
]
