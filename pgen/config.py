"""Typed schemas of the Hydra config tree (`pgen/conf/`) and the one way to compose it.

Every command's YAML starts from a schema registered here, so a misspelt key or a value of the
wrong type fails at composition with Hydra's message naming the key. Code receives plain
dataclass objects (`compose_config`), never a live Hydra context: Ray workers have none.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

# generation noise ε ~ N(0, τ²I) unless a request names τ: sampling nearer the prior's mean aligns
# achieved with requested return better than τ = 1 (bench/README.md "Generator"), still without copies
DEFAULT_TEMPERATURE = 0.5


class ConfigError(ValueError):
    """A config or override that cannot be used; the message says which key and why."""


class PolicyKind(str, Enum):
    mlp = "mlp"
    gru = "gru"


class Activation(str, Enum):
    tanh = "tanh"
    relu = "relu"


class ArchInit(str, Enum):
    grown = "grown"  # each arch's shared initial actor is one base network grown into it (pgen/policies/growth.py)
    independent = "independent"  # each arch draws its own shared initial actor


class AlgoName(str, Enum):
    ippo = "ippo"
    mappo = "mappo"


class Tokenisation(str, Enum):
    neuron = "neuron"  # one token per output unit: its incoming weights and bias
    chunk = "chunk"  # fixed-size chunks of each layer's flat parameters


class SearchAlgo(str, Enum):
    random = "random"  # Tune's random search (BasicVariantGenerator)
    optuna = "optuna"  # Optuna's TPE through ray.tune.search.optuna.OptunaSearch


class CriticInput(str, Enum):
    auto = "auto"  # ippo: the agent's own observation; mappo: env state if it has one, else joint obs
    obs = "obs"
    state = "state"
    joint_obs = "joint_obs"


class ServeLayout(str, Enum):
    single = "single"  # one deployment: the HTTP/gRPC ingress, batching and multiplexing in the same replica
    split = "split"  # an Ingress deployment calls the PolicyGenerator deployment through a DeploymentHandle


class ServeProxy(str, Enum):
    haproxy = "haproxy"  # Ray Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1) in front of the replicas
    python = "python"  # Ray Serve's Python proxy actor (Ray's default)


class EnvBackend(str, Enum):
    auto = "auto"  # vector when it supports env.id and env.kwargs, else pettingzoo (logged once)
    vector = "vector"  # pgen's batched NumPy MPE (pgen/envs/mpe.py), exact against mpe2; an error if unsupported
    pettingzoo = "pettingzoo"  # E copies of the PettingZoo env in a Python loop (any parallel_env module)


@dataclass
class EnvConfig:
    """A PettingZoo ParallelEnv: `id` is a module exposing `parallel_env(**kwargs)`.

    `backend` chooses how E copies are stepped; it does not change the env (nor its store `env_key`).
    """

    name: str = "simple_spread"
    id: str = "mpe2.simple_spread_v3"
    kwargs: Dict[str, Any] = field(default_factory=dict)
    backend: EnvBackend = EnvBackend.auto


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
    # defaults chosen by wall-clock time to -40 on simple_spread (bench/learning.py, bench/README.md)
    num_envs: int = 128
    # pettingzoo backend: 0 steps the env copies in this process, N > 1 in N worker processes;
    # ignored by the vector backend (one vectorised step of all copies in this process)
    env_workers: int = 0
    rollout_steps: int = 25
    lr: float = 2e-3
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    update_epochs: int = 5
    num_minibatches: int = 4
    value_norm: bool = True
    clip_vloss: bool = False
    critic_input: CriticInput = CriticInput.auto
    init_scale: float = 1.0  # gain multiplier of the orthogonal init of hidden layers
    bootstrap_truncation: bool = True  # a time-limit end bootstraps from V(final obs)


@dataclass
class SeedConfig:
    """Start the members from a served generator, through a DeploymentHandle (`serve/app.py`)."""

    model: Optional[str] = None  # <name> (its LATEST) or <name>@<version>; null: no seeding from Serve
    target_return: Optional[float] = None  # the return the generated initial policies should have
    temperature: float = DEFAULT_TEMPERATURE
    app: Optional[str] = None  # Serve application name; null: the one application with a PolicyGenerator
    timeout_s: float = 120.0
    # generated policies to choose from: with more than 1, each is played greedily on `population.eval_episodes`
    # selection episodes (not the checkpoint evaluation's) and the member starts from the best; those env
    # steps count as the member's
    candidates: int = 1


@dataclass
class PopulationConfig:
    """Population members and their budget (`pgen train` runs one member in-process)."""

    size: int = 2
    max_env_steps: Optional[int] = 2_000_000  # per member; null = no step limit
    duration_s: Optional[float] = None  # wall-clock limit of the whole population
    checkpoint_every: int = 10  # PPO updates between checkpoints (evaluate, write record, save state)
    eval_episodes: int = 20  # fixed-seed greedy episodes per checkpoint
    seed_from: Optional[str] = None  # run id whose checkpoints initialise the members' policies
    seed: SeedConfig = field(default_factory=SeedConfig)
    # PPO updates at the start of a member whose policies come from elsewhere (seed_from, seed.model, the
    # loop's reseeds) in which only the critics learn: the seeded policies play unchanged (their env steps
    # count) while the fresh critics learn their values, so the first policy updates are not steered by
    # a random critic's advantages
    seed_critic_warmup: int = 0
    # every member starts from the same initial policy weights (drawn from `seed`), so the population's
    # checkpoints share one basin of weight space and a generator can interpolate between members
    shared_init: bool = True
    # members spread over these architectures (member m: archs[m mod len]); empty: every member is `policy`
    archs: List[PolicyConfig] = field(default_factory=list)
    # with archs and shared_init: grown = the narrowest, shallowest arch's initial network grown into each
    # arch by a function-preserving map (rank-aligned unit replicas, identity layers), plus noise of
    # arch_init_noise × each tensor's RMS to break the replicas' symmetry; independent = one draw per arch
    arch_init: ArchInit = ArchInit.grown
    arch_init_noise: float = 0.1
    cpus_per_worker: float = 1.0
    # custom Ray resources each member also requests, e.g. {population: 1} so members run only on the
    # node types that offer `population` (cluster/*.yaml); empty: any node with free CPUs (local runs)
    resources: Dict[str, float] = field(default_factory=dict)
    max_restarts: int = 20  # Ray restarts of a crashed worker (each resumes from its saved state)
    # per-member hyper-parameters: algo.<key> drawn from [low, high] (log-uniform when low > 0)
    hparams: Dict[str, List[float]] = field(
        default_factory=lambda: {"lr": [4e-4, 4e-3], "ent_coef": [0.002, 0.03], "init_scale": [0.5, 1.5]}
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


@dataclass
class CalibrationSettings:
    """After a fit, how the return condition is calibrated (docs/generator.md "Calibration"): `samples` policies are
    generated for each of `points` returns (half at the training returns' quantiles, half evenly over
    their range) and `refine` more, and played greedily on `episodes` calibration episodes; a request
    for t is conditioned on the return whose policies achieved t, if the curve passes its validation."""

    points: int = 16  # 0: no calibration (a request for t is conditioned on t)
    samples: int = 4
    episodes: int = 30
    # more conditions, each midway between the two neighbours whose achieved returns differ most (in rounds of 4)
    refine: int = 8
    # the curve is adopted only if, with this many policies per target of a validation grid (noise of
    # their own), it aligns requested and achieved return better than conditioning on the request, by
    # at least `validation_margin` standard errors of that R² gain (a paired bootstrap); 0: adopted unchecked
    validation_samples: int = 24
    validation_margin: float = 1.0


@dataclass
class GeneratorConfig:
    """What every generator kind shares (docs/generator.md): the conditional transformer VAE's size,
    its training and the return condition's calibration. A kind's settings are its subclass below,
    chosen by `generator=<kind>` (`pgen/conf/generator/<kind>.yaml`; `pgen.generator.kinds`)."""

    kind: str = "single"  # set by the config group `generator=<kind>`, not by hand
    name: Optional[str] = None  # store name; default <env.name>-<group>-<arch key, or the family key>
    group: Optional[str] = None  # the env group whose weights it learns; default: every group (pipeline) / the first
    d_model: int = 64
    n_layers: int = 2  # transformer blocks in the encoder and in the decoder
    n_heads: int = 4
    latent_dim: int = 32
    fourier_features: int = 6  # frequencies π·2^k, k < n, of the return condition's Fourier features
    dropout: float = 0.0
    # weight of the KL term (KL summed over latent dims, recon = mean squared error); small, so that z
    # can tell checkpoints of one return apart (bench/README.md "Generator": 0.1 let it carry ~1 nat)
    beta: float = 0.01
    kl_warmup_epochs: int = 30  # β rises linearly from 0 over these epochs
    free_bits: float = 0.0  # nats per latent dim below which the KL is not penalised (0: plain β-VAE)
    conditional_prior: bool = True  # p(z | return) learned with the model; false: p(z) = N(0, I)
    # K of the conditional prior: a mixture of K Gaussians over z for one return (a return reached both
    # near the initial network and mid-training), 1: one Gaussian (docs/generator.md "Prior")
    prior_components: int = 1
    # classifier-free guidance: the share of training rows whose return condition is dropped (a learned
    # "no condition" takes its place), and the guidance w of generation: a policy is decoded as
    # dec(z, none) + w · (dec(z, return) − dec(z, none)), z from p(z | return); w 1 is plain conditioning
    condition_dropout: float = 0.0
    guidance: float = 1.0
    lr: float = 3e-3
    weight_decay: float = 0.01
    batch_size: int = 16
    epochs: int = 300
    permute_prob: float = 0.0  # chance a training vector's hidden units are randomly permuted
    noise_std: float = 0.005  # Gaussian noise added to standardised training vectors
    # weight of the functional loss beside the weights' reconstruction: the KL of a decoded policy's
    # action distribution from its source checkpoint's on the slice's probe states (0: weights only)
    functional_weight: float = 0.0
    functional_sequences: int = 16  # probe sequences (of T steps) each batch's functional loss reads
    # multi-group envs: each checkpoint's return is re-measured against the reference policies over
    # this many fixed-seed greedy episodes, and the generator conditions on that (the recorded return
    # was measured against co-trained policies, which change as they train); 0: the recorded return
    rescore_episodes: int = 50
    val_fraction: float = 0.2  # fraction of runs held out for validation (split by run, never by row)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    device: str = "auto"  # auto: cuda when present, else cpu
    log_every_s: float = 10.0


@dataclass
class SingleGeneratorConfig(GeneratorConfig):
    """`generator=single` (the default): one VAE per (env, group, arch) slice, over the tokens of that
    one architecture (`pgen/generator/single/`)."""

    kind: str = "single"
    tokenisation: Tokenisation = Tokenisation.neuron
    chunk_size: int = 64  # values per token when tokenisation=chunk
    return_balance: float = 0.0  # rows drawn ∝ density(return)^-return_balance (0: uniform; 1: each return bin equally)


@dataclass
class FamilyGeneratorConfig(GeneratorConfig):
    """`generator=family`: one VAE for every architecture of the family of `policy` (its kind and
    activation; any hidden sizes) in the store, or of `archs` when given (`pgen/generator/family/`)."""

    kind: str = "family"
    archs: List[List[int]] = field(default_factory=list)  # hidden sizes of the architectures to train on
    readout_dim: int = 64  # k of the bilinear read-out of each weight block
    # a per-unit read-out linear in (z, return) beside the transformer's (off: it reconstructs held-out
    # runs better but scores lower at the top target, bench/README "Architectures")
    linear_readout: bool = False


GENERATOR_KINDS: Dict[str, type] = {"single": SingleGeneratorConfig, "family": FamilyGeneratorConfig}


@dataclass
class EvaluateSettings:
    """How `pgen evaluate` measures a generator (docs/design.md "Metrics")."""

    episodes: int = 50  # fixed-seed evaluation episodes per policy
    stochastic: bool = False  # sample actions instead of greedy ones
    targets: int = 8  # grid points from the 5th to the 95th percentile of the dataset's returns (+ its maximum)
    extra_targets: List[float] = field(default_factory=list)  # more targets; outside the dataset's range is flagged
    samples: int = 5  # generated policies per target (and noisy-retrieval policies: the audit)
    temperature: float = DEFAULT_TEMPERATURE  # ε ~ N(0, temperature² I)
    # > 1: beside the generator alone (the headline), a row of policies each the closest to its target
    # of this many generated, played on `selection_episodes` selection episodes (pgen.evaluation.selection)
    candidates: int = 1
    selection_episodes: int = 100  # 30 chose on episode noise: chosen policies then played ~5 off on others
    top_fraction: float = 0.1  # R_top10: the best this fraction of training checkpoints ...
    max_top: int = 20  # ... at most this many, re-evaluated on the same episodes
    states: int = 20  # episodes whose observations are the fixed states of behavioural agreement
    seed: int = 0
    # arch-family generators: hidden sizes of more architectures to evaluate beside the trained ones
    # (held-out ones, e.g. [[96,96],[256,256]]); a single-architecture generator takes only its own
    archs: List[List[int]] = field(default_factory=list)
    random_inits: int = 5  # freshly initialised policies per architecture (the random-init baseline)
    # the memorisation audit (Zeng et al. 2025): interpolation averages the checkpoints whose returns
    # are the k nearest the target's; noisy retrieval adds Gaussian noise to the retrieved checkpoint
    interpolation_k: int = 4
    out_dir: str = "pgen-runs/evaluate"  # <out_dir>/<model>@<version>/{evaluation.json,alignment.png}


@dataclass
class TrainGeneratorConfig:
    """`pgen train-generator`: fit the VAE on one env/group/arch slice of the store; register a version."""

    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)  # the kind: generator=<kind>
    seed: int = 0
    torch_threads: int = 2
    out_dir: str = "pgen-runs/generators"  # TensorBoard events and loss-curve PNG: <out_dir>/<name>/<version>/


@dataclass
class ArchRequest:
    """The architecture a request asks an arch-family generator for; unset fields: the generator's default."""

    kind: Optional[PolicyKind] = None
    hidden: Optional[List[int]] = None
    activation: Optional[Activation] = None


@dataclass
class GenerateConfig:
    """`pgen generate`: write `num` policies for `target_return` to a policy file."""

    store: StoreConfig = field(default_factory=StoreConfig)
    model: Optional[str] = None  # <name> (its LATEST) or <name>@<version>; default: the store's only generator
    arch: Optional[str] = None  # an arch key (e.g. mlp-18x96x96x5-tanh), or `policy.*` below; default: the generator's
    policy: ArchRequest = field(default_factory=ArchRequest)
    target_return: Optional[float] = None
    num: int = 1
    seed: int = 0
    temperature: float = DEFAULT_TEMPERATURE
    # > 1: each policy is the closest to target_return of this many generated ones, played greedily on
    # `selection_episodes` selection episodes against the generator's reference (pgen.evaluation.selection)
    candidates: int = 1
    selection_episodes: int = 100
    out: Optional[str] = None  # default generated-<name>-<version>-<target>.safetensors
    max_num: int = 1024


@dataclass
class EvaluateConfig:
    """`pgen evaluate`: generated policies over a grid of targets against the baselines."""

    store: StoreConfig = field(default_factory=StoreConfig)
    model: Optional[str] = None  # as in `pgen generate`
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    torch_threads: int = 2


@dataclass
class PipelineConfig(LearnerSetup):
    """`pgen pipeline`: populate → train generator(s) → evaluate, on local Ray and store by default."""

    profile: str = "quick"
    store: StoreConfig = field(default_factory=StoreConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)  # the kind: generator=<kind>
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    run_id: Optional[str] = None  # population prefix; default pipe-<env>-<utc time>
    log_every_s: float = 30.0
    out_dir: str = "pgen-runs"  # generators/ and evaluate/ outputs go below it


@dataclass
class ServeSettings:
    """The Serve application (`serve/app.py`): limits, batching, replicas, resources, auth, and how
    `pgen serve` runs Ray Serve (bench/README.md "Serve" measured each choice)."""

    host: str = "127.0.0.1"  # `pgen serve` only; `serve run/deploy` take Serve's http_options
    port: int = 8000  # `pgen serve` only
    grpc_port: int = 9000  # `pgen serve` only: gRPC ingress (serve/pgen.proto); 0: HTTP only
    app_name: str = "pgen"  # `pgen serve` only
    # how Serve's processes run, for the local Ray `pgen serve` starts (environment variables read when
    # Serve starts; on a cluster, its nodes' environment decides: cluster/README.md)
    proxy: ServeProxy = ServeProxy.haproxy
    throughput_optimized: bool = True  # RAY_SERVE_THROUGHPUT_OPTIMIZED=1: buffered logs, no stderr (README)
    layout: ServeLayout = ServeLayout.single
    max_num: int = 64  # policies per /v1/generate request
    max_population: int = 256  # population_size limit of /v1/seed
    max_body_bytes: int = 16384  # larger request bodies get 413
    batching: bool = True  # @serve.batch across requests; false: one forward pass per request
    max_batch_size: int = 32  # requests per batch
    batch_wait_timeout_s: float = 0.002
    max_concurrent_batches: int = 1  # batches a replica decodes at once (each on its own thread)
    decode_rows: int = 64  # policies per forward pass: a larger batch is decoded in slices of this many
    max_ongoing_requests: int = 64  # generate requests a replica works on at once (caps the batch size too)
    max_queued_requests: int = 256  # more wait (per replica; split: per caller); beyond: 503 + Retry-After
    # what Serve lets into the replica that answers HTTP at once (split: Ingress; single: PolicyGenerator,
    # at least max_ongoing_requests + max_queued_requests) and queues before it; beyond: 503 + Retry-After
    ingress_max_ongoing_requests: int = 128
    ingress_max_queued_requests: int = 512
    retry_after_s: float = 1.0
    min_replicas: int = 1  # generator replicas (autoscaled on ongoing requests)
    max_replicas: int = 2
    target_ongoing_requests: float = 16.0
    ingress_replicas: int = 1  # split only
    num_cpus: float = 0.5  # per generator replica
    num_gpus: float = 0.0  # per generator replica; > 0 (e.g. 0.25) only where GPUs exist
    ingress_num_cpus: float = 0.25  # split only
    device: str = "auto"  # auto: cuda when the replica has a GPU, else cpu
    torch_threads: int = 1
    latest_ttl_s: float = 2.0  # how long a resolved `name` → LATEST version is reused
    token_env: str = "PGEN_SERVE_TOKEN"  # environment variable holding the bearer token of /v1/seed
    # /v1/seed without a token: false (default) answers 403 when no token is set; true is for local
    # development only (`pgen serve` on a loopback host sets it, with a log line, when no token is set)
    allow_unauthenticated_seed: bool = False
    seed_concurrency: int = 2  # /v1/seed calls in flight per client (token); more get 429 + Retry-After
    seed_workers: int = 2  # threads per ingress replica running /v1/seed's rollouts and store writes
    seed_eval_episodes: int = 20  # fixed-seed episodes measuring each seed policy's return


@dataclass
class ServeConfig:
    """`pgen serve` and `serve run serve.app:app [key=value ...]`: the generator endpoint."""

    store: StoreConfig = field(default_factory=StoreConfig)
    serve: ServeSettings = field(default_factory=ServeSettings)


@dataclass
class SearchParam:
    """One hyper-parameter's range in a sweep: exactly one of the four (bounds inclusive)."""

    choice: Optional[List[Any]] = None  # one of these values
    uniform: Optional[List[float]] = None  # [low, high]
    loguniform: Optional[List[float]] = None  # [low, high], both > 0
    randint: Optional[List[int]] = None  # [low, high], integers


@dataclass
class SweepSettings:
    """How `pgen tune` searches: the space over `generator.*`, the searcher, ASHA, storage, failures."""

    name: Optional[str] = None  # the sweep's folder under `storage`; default tune-<generator name>-<utc time>
    storage: str = "pgen-runs/tune"  # Tune's storage_path: a local path or s3://bucket/prefix
    search: SearchAlgo = SearchAlgo.random
    num_samples: int = 16  # trials
    max_concurrent: int = 2  # trials at once
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # > 0: trials wait for GPU nodes and train there (generator.device=auto picks CUDA)
    metric: str = "val_loss"  # per-epoch metric (minimised) of ASHA and of the searcher
    grace_period: int = 10  # epochs every trial runs before ASHA may stop it
    reduction_factor: int = 3  # ASHA keeps the best 1/reduction_factor at each rung
    checkpoint_every: int = 5  # epochs between a trial's checkpoints (what a retry or resume continues from)
    max_failures: int = 2  # retries of a failed trial, each from its last checkpoint
    include_default: bool = True  # the first trial is the base `generator.*` configuration
    register: bool = True  # register the best trial as a generator version in the store
    # generator.<key>: its range; a key not here (or null) keeps its generator.* value in every trial
    space: Dict[str, Optional[SearchParam]] = field(default_factory=dict)


@dataclass
class SweepConfig:
    """`pgen tune`: a Ray Tune sweep of the generator's hyper-parameters on one store slice."""

    profile: str = "default"
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)  # the base configuration; its kind: generator=<kind>
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)  # the final objective's rollouts
    tune: SweepSettings = field(default_factory=SweepSettings)
    seed: int = 0
    resume: bool = False  # continue the interrupted sweep `tune.name` (Tuner.restore)
    out_dir: str = "pgen-runs/tune"  # summary: <out_dir>/<name>/{sweep.json,trials.png}
    log_every_s: float = 15.0


@dataclass
class LoopSettings:
    """`pgen loop`: when to retrain, how to gate, when and whom to reseed, and what to serve."""

    loop_id: Optional[str] = None  # default loop-<env>-<utc time>; `resume=true` needs it
    duration_s: Optional[float] = None  # wall-clock limit
    max_env_steps: Optional[int] = 5_000_000  # env steps of all members together; null = no limit
    retrain_every: int = 60  # new checkpoints in the generator's slice between fits
    # a new version becomes LATEST unless its alignment R² or its normalised score at the top target
    # is below the served version's (same grid, same episodes) by more than this
    tolerance: float = 0.05
    serve: bool = True  # deploy the Serve app (serve.*) on the loop's Ray; false: use `loop.app`, already running
    app: Optional[str] = None  # the Serve application to seed through; default serve.app_name
    reseed_every: int = 120  # new checkpoints between reseeds; 0: never reseed (an open-loop population)
    reseed_fraction: float = 0.25  # the weakest members (latest return) restarted from generated policies
    reseed_target: str = "best"  # best | best+<δ> | <a number>: the target return of the seed policies
    reseed_min_env_steps: int = 200_000  # a member is not reseeded before it has trained this long
    trainer_cpus: float = 1.0  # the generator trainer actor
    # members wait while a fit and its gate run: versions arrive after fewer env steps, at the cost of
    # wall-clock time (on few cores the fit then has them to itself)
    pause_during_fit: bool = False
    max_trainer_restarts: int = 3  # Ray restarts of a killed trainer (the fit is retried)
    log_every_s: float = 15.0
    out_dir: str = "pgen-runs/loop"  # <out_dir>/<loop_id>/: summary JSON, PNG, TensorBoard events


@dataclass
class LoopConfig(LearnerSetup):
    """`pgen loop`: populations, generator versions behind a promotion gate, Serve and seeding, running
    until `loop.duration_s`, `loop.max_env_steps` or Ctrl-C / SIGTERM / `ray job stop`."""

    profile: str = "quick"
    store: StoreConfig = field(default_factory=StoreConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)  # the kind: generator=<kind>
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)  # the promotion gate's grid and episodes
    serve: ServeSettings = field(default_factory=ServeSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)
    resume: bool = False  # continue loop `loop.loop_id` from its state in the store


SCHEMAS: Dict[str, type] = {"train": TrainConfig, "populate": PopulateConfig, "dataset": DatasetConfig,
                            "train-generator": TrainGeneratorConfig, "generate": GenerateConfig,
                            "evaluate": EvaluateConfig, "pipeline": PipelineConfig, "serve": ServeConfig,
                            "tune": SweepConfig, "loop": LoopConfig}
# commands whose config tree is a package of its own (its groups shadow the shared ones, e.g. `profile`)
CONFIG_MODULES: Dict[str, str] = {"tune": "pgen.conf.tune", "loop": "pgen.conf.loop"}

_cs = ConfigStore.instance()
for _name, _node in SCHEMAS.items():
    _cs.store(name=f"{_name.replace('-', '_')}_schema", node=_node)
for _name, _node in GENERATOR_KINDS.items():  # the `generator` group: pgen/conf/generator/<kind>.yaml
    _cs.store(group="generator", name=f"{_name}_schema", node=_node)


def normalise_overrides(overrides: List[str]) -> List[str]:
    """`overrides` as Hydra should read them: `env=custom` first when they set `env.id` without
    choosing an `env=` group (a module named by `env.id` gets the kwargs given for it and none of the
    default env's), `env.kwargs.<k>=<v>` as add-or-set (`++`), since an env's kwargs are its own and
    need not be in its YAML, and the former `generator.family=true|false` as the generator kind
    `generator=family|single` (logged)."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "generator.family" and value.lower() in ("true", "false"):
            kind = "family" if value.lower() == "true" else "single"
            logging.getLogger("pgen").info(f"{o} is the generator kind generator={kind}")
            out.append(f"generator={kind}")
        else:
            out.append(f"++{o}" if o.startswith("env.kwargs.") else o)
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    if "env.id" in keys and "env" not in keys:
        out.insert(0, "env=custom")
    return out


def default_env_name(env_id: str) -> str:
    """`pettingzoo.sisl.pursuit_v5` → `pursuit`: the module's last part without its version."""
    return re.sub(r"_v\d+$", "", env_id.rsplit(".", 1)[-1])


def compose_config(command: str, overrides: List[str] | None = None) -> Any:
    """Compose `pgen/conf/<command>.yaml` (for a command of CONFIG_MODULES, that package's
    `<command>.yaml`, e.g. `pgen/conf/tune/tune.yaml`) with Hydra overrides into the command's dataclass.

    `env.id=<module>` without `env=<name>` selects the `custom` env group (`normalise_overrides`). Never
    changes the working directory. Raises ConfigError with Hydra's message on a bad key, type or value.
    """
    if command not in SCHEMAS:
        raise ConfigError(f"unknown command {command!r}; known: {', '.join(sorted(SCHEMAS))}")
    _check_profile(command, overrides or [])
    try:
        with initialize_config_module(config_module=CONFIG_MODULES.get(command, "pgen.conf"), version_base="1.3"):
            cfg = compose(config_name=command, overrides=normalise_overrides(list(overrides or [])))
        out = OmegaConf.to_object(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"bad config for `pgen {command}`: {err}{_kind_hint(overrides or [])}") from err
    env = getattr(out, "env", None)
    if env is not None and not env.name:
        env.name = default_env_name(env.id)
    check_generator_kind(command, out)
    return out


def _check_profile(command: str, overrides: List[str]) -> None:
    """A command with a config package of its own (CONFIG_MODULES) takes only that package's profiles:
    the shared ones (`pgen/conf/profile/`, e.g. `zoo`) set keys its config does not have."""
    if command not in CONFIG_MODULES:
        return
    chosen = next((o.split("=", 1)[1] for o in reversed(overrides) if o.split("=", 1)[0].lstrip("+") == "profile"), None)
    package = resources.files(CONFIG_MODULES[command]) / "profile"
    known = sorted(f.name[:-len(".yaml")] for f in package.iterdir() if f.name.endswith(".yaml"))
    if chosen is not None and chosen not in known:
        raise ConfigError(f"bad config for `pgen {command}`: unknown profile={chosen}; the profiles of "
                          f"`pgen {command}` are {' | '.join(known)}")


def _kind_hint(overrides: List[str]) -> str:
    """For an override of a setting that the chosen generator kind does not have but another does:
    which kind has it."""
    chosen = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("generator=")), "single")
    have = {f.name for f in fields(GENERATOR_KINDS.get(chosen, GeneratorConfig))}
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key.startswith("generator.") and key.count(".") == 1 and key[10:] not in have:
            owners = [k for k, c in GENERATOR_KINDS.items() if key[10:] in {f.name for f in fields(c)}]
            if owners:
                return f"\n{key} is a setting of generator={' | '.join(owners)}, not of generator={chosen}"
    return ""


def check_generator_kind(command: str, cfg: Any) -> None:
    """ConfigError when a config's `generator.kind` is not the kind of its settings (the kind is
    chosen with `generator=<kind>`, which brings that kind's settings)."""
    gen = getattr(cfg, "generator", None)
    if gen is not None and type(gen) is not GENERATOR_KINDS.get(gen.kind):
        raise ConfigError(f"bad config for `pgen {command}`: generator.kind={gen.kind!r} with the settings of"
                          f" {type(gen).__name__}: choose the generator kind with generator=<{'|'.join(GENERATOR_KINDS)}>")


def enum_value(value: Any) -> Any:
    """The plain value of a config enum (`AlgoName.mappo` → "mappo"); other values unchanged."""
    return value.value if isinstance(value, Enum) else value


def to_dict(cfg: Any) -> Dict[str, Any]:
    """A composed config as plain JSON-able types (enums as their values), for run.json and actors."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)


def config_from_dict(command: str, data: Dict[str, Any]) -> Any:
    """Rebuild a command's typed config from `to_dict` output (how configs reach Ray actors)."""
    schema = OmegaConf.structured(SCHEMAS[command])
    gen = data.get("generator")
    if isinstance(gen, dict) and "generator" in schema:  # the settings of the generator kind `kind`
        kind = gen.get("kind", "single")
        if kind not in GENERATOR_KINDS:
            raise ConfigError(f"bad config for `pgen {command}`: generator.kind {kind!r} is not one of"
                              f" {', '.join(GENERATOR_KINDS)}")
        schema = OmegaConf.merge(schema, {"generator": OmegaConf.structured(GENERATOR_KINDS[kind])})
    try:
        out = OmegaConf.to_object(OmegaConf.merge(schema, data))
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad config for `pgen {command}`: {err}") from err
    check_generator_kind(command, out)
    return out
