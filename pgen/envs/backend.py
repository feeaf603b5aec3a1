"""Which backend steps the E copies of an env: `env.backend` = auto | vector | pettingzoo.

`vector` is the batched NumPy MPE (`mpe.MPEVecEnv`, exact against mpe2, for the scenarios and
kwargs `mpe.supports` accepts); `pettingzoo` is E copies of the PettingZoo env in a Python loop
(`VecEnv`, or `SubprocVecEnv` over `num_workers` processes); `auto` picks vector when it supports
the env, else pettingzoo, and says why once per process. The backend never changes the env itself,
nor its store partition (`env_key` hashes only `id` and `kwargs`).
"""

from __future__ import annotations

from pgen.config import EnvBackend, EnvConfig, enum_value
from pgen.envs.base import VectorEnv
from pgen.envs.loading import EnvError
from pgen.envs.mpe import MPEVecEnv, supports
from pgen.envs.pettingzoo import SubprocVecEnv, VecEnv
from pgen.util.progress import log

_logged: set[tuple[str, str]] = set()  # (env id, message) lines already logged by this process


def _log_once(env_id: str, message: str) -> None:
    if (env_id, message) not in _logged:
        _logged.add((env_id, message))
        log.info(message)


def resolve_backend(env_cfg: EnvConfig) -> str:
    """"vector" or "pettingzoo" for `env_cfg`: its `backend`, with `auto` resolved."""
    choice = enum_value(env_cfg.backend)
    if choice not in {b.value for b in EnvBackend}:
        raise EnvError(f"env.backend={choice!r} is not one of {[b.value for b in EnvBackend]}")
    if choice == EnvBackend.pettingzoo.value:
        return choice
    ok, reason = supports(env_cfg)
    if ok:
        return EnvBackend.vector.value
    if choice == EnvBackend.vector.value:
        raise EnvError(f"env.backend=vector cannot run {env_cfg.id} with kwargs {dict(env_cfg.kwargs)}: "
                       f"{reason}. Use env.backend=pettingzoo (or auto)")
    _log_once(env_cfg.id, f"env {env_cfg.id}: PettingZoo backend, the vector backend does not support it ({reason})")
    return EnvBackend.pettingzoo.value


def make_vec_env(env_cfg: EnvConfig, num_envs: int, seed: int, with_state: bool = True,
                 num_workers: int = 0) -> VectorEnv:
    """E copies of the env on the backend `env_cfg.backend` selects.

    pettingzoo: an in-process `VecEnv` for `num_workers` 0 or 1, else a `SubprocVecEnv` over that
    many processes. vector: an `MPEVecEnv`, which steps all copies at once in this process and
    ignores `num_workers`.
    """
    if resolve_backend(env_cfg) == EnvBackend.vector.value:
        if num_workers > 1:
            _log_once(env_cfg.id, f"env {env_cfg.id}: vector backend, algo.env_workers={num_workers} is ignored")
        return MPEVecEnv(env_cfg, num_envs, seed, with_state)
    if num_workers > 1:
        return SubprocVecEnv(env_cfg, num_envs, seed, with_state, num_workers)
    return VecEnv(env_cfg, num_envs, seed, with_state)
