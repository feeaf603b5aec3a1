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
    """Population members and their budget (`pgen train` runs one member in-process)."""

    size: int = 2
    max_env_steps: Optional[int] = 2_000_000  # per member; null = no step limit
    duration_s: Optional[float] = None  # wall-clock limit of the whole population
    checkpoint_every: int = 10  # PPO updates between checkpoints (evaluate, write record, save state)
    eval_episodes: int = 20  # fixed-seed greedy episodes per checkpoint
    seed_from: Optional[str] = None  # run id whose checkpoints initialise the members' policies
    cpus_per_worker: float = 1.0
    max_restarts: int = 20  # Ray restarts of a crashed worker (each resumes from its saved state)
    # per-member hyper-parameters: algo.<key> drawn from [low, high] (log-uniform when low > 0)
    hparams: Dict[str, List[float]] = field(
        default_factory=lambda: {"lr": [1.5e-4, 1.5e-3], "ent_coef": [0.002, 0.03], "init_scale": [0.5, 1.5]}
    )


@dataclass
class StoreConfig:
    """Where checkpoints, runs and generators live: a local path, file:// URI or s3://bucket/prefix."""

    uri: str = "pgen-store"
    endpoint_url: Optional[str] = None  # else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS
    retry_s: float = 120.0  # how long transient store errors are retried before giving up


@dataclass
class LearnerSetup:
    """What every training command shares: the env, the networks, PPO, the budget and the seed."""

    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    seed: int = 0
    torch_threads: int = 1


@dataclass
class TrainConfig(LearnerSetup):
    """`pgen train`: one population member trained in-process, without Ray."""

    run_id: Optional[str] = None  # default: train-<env>-<algo>-s<seed>-<utc time>
    run_dir: str = "pgen-runs"  # outputs go to <run_dir>/<run_id>/
    log_every_s: float = 5.0
    resume: bool = False  # continue from <run_dir>/<run_id>/state if it exists


@dataclass
class PopulateConfig(LearnerSetup):
    """`pgen populate`: population.size Ray actors that train and stream checkpoints to the store."""

    store: StoreConfig = field(default_factory=StoreConfig)
    run_id: Optional[str] = None  # prefix of the members' run ids; default pop-<env>-<utc time>
    log_every_s: float = 10.0


@dataclass
class DatasetConfig:
    """`pgen dataset`: summarise the checkpoints in a store."""

    store: StoreConfig = field(default_factory=StoreConfig)
    env_key: Optional[str] = None
    group: Optional[str] = None
    arch: Optional[str] = None
    run_id: Optional[str] = None
    out_dir: str = "pgen-runs/dataset"  # where the return histogram PNG and summary JSON go


SCHEMAS: Dict[str, type] = {"train": TrainConfig, "populate": PopulateConfig, "dataset": DatasetConfig}

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


def config_from_dict(command: str, data: Dict[str, Any]) -> Any:
    """Rebuild a command's typed config from `to_dict` output (how configs reach Ray actors)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SCHEMAS[command]), data)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad config for `pgen {command}`: {err}") from err
