"""Typed schemas of the Hydra config tree (`pgen/conf/`) and the one way to compose it.

Every command's YAML starts from a schema registered here, so a misspelt key or a value of the
wrong type fails at composition with Hydra's message naming the key. Code receives plain
dataclass objects (`compose_config`), never a live Hydra context: Ray workers have none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config or override that cannot be used; the message says which key and why."""


class PolicyKind(str, Enum):
    mlp = "mlp"
    gru = "gru"


class Activation(str, Enum):
    tanh = "tanh"
    relu = "relu"


class AlgoName(str, Enum):
    ippo = "ippo"
    mappo = "mappo"


class CriticInput(str, Enum):
    auto = "auto"  # ippo: the agent's own observation; mappo: env state if it has one, else joint obs
    obs = "obs"
    state = "state"
    joint_obs = "joint_obs"


@dataclass
class EnvConfig:
    """A PettingZoo ParallelEnv: `id` is a module exposing `parallel_env(**kwargs)`."""

    name: str = "simple_spread"
    id: str = "mpe2.simple_spread_v3"
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PolicyConfig:
    """Actor (and critic) architecture of every group."""

    kind: PolicyKind = PolicyKind.mlp
    hidden: List[int] = field(default_factory=lambda: [64, 64])
    activation: Activation = Activation.tanh


@dataclass
class AlgoConfig:
    """PPO hyper-parameters (CleanRL names). One iteration collects num_envs × rollout_steps env steps."""

    name: AlgoName = AlgoName.mappo
    num_envs: int = 32
    env_workers: int = 0  # 0: step the env copies in this process; N > 1: in N worker processes
    rollout_steps: int = 50
    lr: float = 7e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    update_epochs: int = 10
    num_minibatches: int = 2
    value_norm: bool = True
    clip_vloss: bool = False
    critic_input: CriticInput = CriticInput.auto
    init_scale: float = 1.0  # gain multiplier of the orthogonal init of hidden layers
    bootstrap_truncation: bool = True  # a time-limit end bootstraps from V(final obs)


@dataclass
class PopulationConfig:
    """Budget of one population member (the `pgen train` run is one member)."""

    size: int = 1
    max_env_steps: int = 2_000_000
    duration_s: Optional[float] = None


@dataclass
class TrainConfig:
    """`pgen train`: one population member trained in-process, without Ray."""

    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    seed: int = 0
    run_id: Optional[str] = None  # default: train-<env>-<algo>-s<seed>-<utc time>
    run_dir: str = "pgen-runs"  # outputs go to <run_dir>/<run_id>/
    log_every_s: float = 5.0
    torch_threads: int = 1
    resume: bool = False  # continue from <run_dir>/<run_id>/state if it exists


SCHEMAS: Dict[str, type] = {"train": TrainConfig}

_cs = ConfigStore.instance()
for _name, _node in SCHEMAS.items():
    _cs.store(name=f"{_name}_schema", node=_node)


def compose_config(command: str, overrides: List[str] | None = None) -> Any:
    """Compose `pgen/conf/<command>.yaml` with Hydra overrides into the command's dataclass.

    Never changes the working directory. Raises ConfigError with Hydra's message on a bad key,
    type or value.
    """
    if command not in SCHEMAS:
        raise ConfigError(f"unknown command {command!r}; known: {', '.join(sorted(SCHEMAS))}")
    try:
        with initialize_config_module(config_module="pgen.conf", version_base="1.3"):
            cfg = compose(config_name=command, overrides=list(overrides or []))
        return OmegaConf.to_object(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"bad config for `pgen {command}`: {err}") from err


def enum_value(value: Any) -> Any:
    """The plain value of a config enum (`AlgoName.mappo` → "mappo"); other values unchanged."""
    return value.value if isinstance(value, Enum) else value


def to_dict(cfg: Any) -> Dict[str, Any]:
    """A composed config as plain JSON-able types (enums as their values), for run.json and actors."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
