"""Training the generator: `fit` is the loop (a plain function Ray Tune can wrap unchanged);
`train_generator` is `pgen train-generator` around it (data from the store, TensorBoard, loss-curve
PNG, registration of a version).

`fit(cfg, data, spec, seed, callback)` calls `callback(metrics, save)` after every epoch with the
epoch's metrics and a function `save(folder)` that writes a resumable training state there
(safetensors + JSON); `fit(..., resume=folder)` continues from such a folder.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from pgen.config import EnvConfig, GeneratorConfig, TrainGeneratorConfig, enum_value, to_dict
from pgen.envs import describe_env, env_key
from pgen.generator.calibration import calibrate, check_calibration_settings, plot_calibration
from pgen.generator.data import (Normalizer, ParamDataset, Tokenizer, load_slice, permutation_index, reference_actors,
                                 return_balance_weights, split_by_run)
from pgen.generator.family_data import FamilyData, family_archs, load_family
from pgen.generator.model import ModelConfig, ParamVAE, kl_divergence, reconstruction_loss
from pgen.generator.sample import Generator, pick_device, save_generator
from pgen.plots import plot_curves
from pgen.fileio import atomic_write
from pgen.growth import family_key
from pgen.policy import Actor, PolicySpec
from pgen.progress import Progress, log
from pgen.metrics import learning_signal, learning_warning
from pgen.rollout import evaluate_returns, reference_returns
from pgen.state import optimizer_tensors, restore_optimizer
from pgen.store import CheckpointStore, open_store

Callback = Callable[[dict[str, float], Callable[[Path], None]], None]


@dataclass
class FitResult:
    generator: Generator
    history: list[dict[str, float]] = field(default_factory=list)
    train_runs: list[str] = field(default_factory=list)
    val_runs: list[str] = field(default_factory=list)


def model_config(cfg: GeneratorConfig, tokenizer: Tokenizer) -> ModelConfig:
    return ModelConfig([layer.tokens for layer in tokenizer.layers], [layer.width for layer in tokenizer.layers],
                       cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.latent_dim, cfg.fourier_features, cfg.dropout,
                       cfg.conditional_prior)


def _augment(x: torch.Tensor, perms: torch.Tensor | None, cfg: GeneratorConfig, rng: torch.Generator) -> torch.Tensor:
    """Random hidden-unit permutations (a pool of precomputed ones) and Gaussian noise."""
    if perms is not None and cfg.permute_prob > 0:
        which = torch.rand(x.shape[0], generator=rng) < cfg.permute_prob
        if which.any():
            pick = torch.randint(len(perms), (int(which.sum()),), generator=rng)
            x = x.clone()
            x[which] = torch.gather(x[which], 1, perms[pick].to(x.device))
    if cfg.noise_std > 0:
        x = x + cfg.noise_std * torch.randn(x.shape, generator=rng).to(x.device)
    return x


def _losses(model: torch.nn.Module, tokens: list[torch.Tensor], masks: list[torch.Tensor], c: torch.Tensor,
            rng: torch.Generator | None, use_mean: bool = False, free_bits: float = 0.0, ctx: tuple = ()
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction, KL) of a batch of tokens; `ctx`: what the model's methods take after the
    condition (an arch-family model: the architecture's `ArchInputs`)."""
    if use_mean:
        mu, logvar = model.encode(tokens, c, *ctx)
        pred = model.decode(mu, c, *ctx)
    else:
        pred, mu, logvar = model(tokens, c, *ctx, rng)
    return reconstruction_loss(pred, tokens, masks), kl_divergence(mu, logvar, *model.prior_params(c, *ctx), free_bits)


def warm_start_plan(cfg: GeneratorConfig, spec: PolicySpec, previous: Generator | None) -> dict[str, Any]:
    """Whether a fit can start from `previous` (a registered version of the same slice): only when its
    policy layout and model shape are the ones `cfg` builds. The plan is recorded in the new version's
    config.json (`warm_start`)."""
    if previous is None:
        return {"from": None, "why": "no previous version"}
    if not isinstance(previous, Generator):
        return {"from": None, "why": f"{previous.model_id} is an arch-family version"}
    tokenizer = Tokenizer(spec.layout, enum_value(cfg.tokenisation), cfg.chunk_size)
    if previous.info["layout"] != spec.layout.to_json():
        return {"from": None, "why": f"{previous.model_id} has another policy layout"}
    if asdict(model_config(cfg, tokenizer)) != previous.info["model"]:
        return {"from": None, "why": f"{previous.model_id} has another model configuration"}
    return {"from": previous.model_id, "weights": True, "normalizer": "refitted to this data"}


def fit(cfg: GeneratorConfig, data: ParamDataset, spec: PolicySpec, seed: int, callback: Callback | None = None,
        resume: Path | None = None, label: str = "generator", warm_start: Generator | None = None) -> FitResult:
    """Train the VAE on `data` (one slice) for `cfg.epochs` epochs; returns the generator and history.
    `data` a `FamilyData` (several architectures of one family) trains the arch-family VAE instead
    (`family_fit.fit_family`; `spec` is then the architecture it generates by default).

    `warm_start`: a previous version of the slice whose model weights the fit starts from where
    `warm_start_plan` allows it (single-architecture versions); the normaliser (parameter statistics
    and return percentiles) is refitted to this data, which has grown and moved (keeping the old
    statistics standardises the new checkpoints far outside the range the model learnt); the plan is
    `info["warm_start"]`."""
    if isinstance(data, FamilyData):
        from pgen.generator.family_fit import fit_family

        result = fit_family(cfg, data, spec, seed, callback, resume, label)
        result.generator.info["warm_start"] = {"from": None, "why": "arch-family versions start cold"}
        return result
    if len(data) < 2:
        raise ValueError(f"{label}: need at least 2 checkpoints to train a generator, got {len(data)}")
    if not np.isfinite(data.returns).all() or not np.isfinite(data.params).all():
        raise ValueError(f"{label}: the dataset has non-finite values")
    torch.manual_seed(seed)
    device = pick_device(cfg.device)
    layout = spec.layout
    tokenizer = Tokenizer(layout, enum_value(cfg.tokenisation), cfg.chunk_size)
    train_idx, val_idx = split_by_run(data.run_ids, cfg.val_fraction, seed)
    train, val = data.subset(train_idx), data.subset(val_idx)
    plan = warm_start_plan(cfg, spec, warm_start)
    normalizer = Normalizer.fit(train.params, train.returns, tokenizer)
    x_train = normalizer.standardise(torch.from_numpy(train.params), tokenizer).to(device)
    c_train = normalizer.condition(torch.from_numpy(train.returns)).float().to(device)
    x_val = normalizer.standardise(torch.from_numpy(val.params), tokenizer).to(device) if len(val) else None
    c_val = normalizer.condition(torch.from_numpy(val.returns)).float().to(device) if len(val) else None
    masks = [m.to(device) for m in tokenizer.masks()]
    model = ParamVAE(model_config(cfg, tokenizer))
    if plan["from"]:
        model.load_state_dict(warm_start.model.state_dict())
        log.info(f"{label}: warm start from {plan['from']}")
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = torch.Generator().manual_seed(seed)
    perms = (torch.stack([permutation_index(spec, rng) for _ in range(256)]) if cfg.permute_prob > 0 else None)
    # an epoch is len(train) rows: a permutation, or with generator.return_balance > 0 a draw with
    # replacement that favours rows whose return is rare in the training set
    balance = (torch.from_numpy(return_balance_weights(train.returns, cfg.return_balance))
               if cfg.return_balance != 0 else None)  # the weights check the value (negative, NaN, inf)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    schedule = lr_schedule(optimizer, cfg.lr, cfg.epochs * steps_per_epoch)

    def batches() -> Iterator[tuple[int, Losses]]:
        order = (torch.randperm(len(train), generator=rng) if balance is None
                 else torch.multinomial(balance, len(train), replacement=True, generator=rng))
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size].to(device)
            yield len(idx), lambda idx=idx: _losses(model, tokenizer.tokens(_augment(x_train[idx], perms, cfg, rng)),
                                                    masks, c_train[idx], rng, free_bits=cfg.free_bits)

    validate = (None if x_val is None else
                lambda: _losses(model, tokenizer.tokens(x_val), masks, c_val, None, use_mean=True))
    history = train_epochs(cfg, model, optimizer, schedule, rng, EpochPlan(len(train), batches, validate), callback,
                           resume, label)
    model.eval()
    info = {"model": asdict(model_config(cfg, tokenizer)), "generator": to_dict(cfg), "policy_spec": spec.to_json(),
            "layout": layout.to_json(), "arch": spec.arch_key, "warm_start": plan}
    return FitResult(Generator(model, tokenizer, normalizer, info), history,
                     sorted(set(train.run_ids.tolist())), sorted(set(val.run_ids.tolist())))


Losses = Callable[[], tuple[torch.Tensor, torch.Tensor]]  # one batch's (reconstruction, KL), computed when called


@dataclass
class EpochPlan:
    """A generator's training data as `train_epochs` sees it: `batches()` yields each batch of an
    epoch as (rows, its losses), `validate()` the validation losses (None: no validation rows)."""

    rows: int  # training rows an epoch sees
    batches: Callable[[], Iterator[tuple[int, Losses]]]
    validate: Losses | None


def train_epochs(cfg: GeneratorConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: LRScheduler,
                 rng: torch.Generator, plan: EpochPlan, callback: Callback | None, resume: Path | None,
                 label: str) -> list[dict[str, float]]:
    """The epoch loop of every generator: β warm-up, AdamW steps with clipping, per-epoch metrics,
    the callback with a resumable `save`, progress lines; continues from `resume` when given.

    Denormal floats are flushed to zero while it trains: the backward passes produce them on CPU
    (an arch-family epoch on real checkpoints is ~10× slower without the flush, a single-architecture
    one ~1.2×; bench/README.md "Architectures")."""
    flush = torch.set_flush_denormal(True)
    try:
        return _train_epochs(cfg, model, optimizer, schedule, rng, plan, callback, resume, label)
    finally:
        if flush:
            torch.set_flush_denormal(False)


def _train_epochs(cfg: GeneratorConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  schedule: LRScheduler, rng: torch.Generator, plan: EpochPlan, callback: Callback | None,
                  resume: Path | None, label: str) -> list[dict[str, float]]:
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume is not None:
        start_epoch, history = _load_fit_state(Path(resume), model, optimizer, schedule, rng)
    progress = Progress(label, cfg.epochs, unit="epochs", every_s=cfg.log_every_s, start=start_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        beta = cfg.beta * min(1.0, (epoch + 1) / max(1, cfg.kl_warmup_epochs))
        sums = np.zeros(3)
        for rows, losses in plan.batches():
            lr = optimizer.param_groups[0]["lr"]
            recon, kl = losses()
            loss = recon + beta * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            sums += np.array([loss.item(), recon.item(), kl.item()]) * rows
        train_loss, train_recon, train_kl = sums / plan.rows
        metrics = {"epoch": epoch + 1, "train_loss": train_loss, "train_recon": train_recon, "train_kl": train_kl,
                   "beta": beta, "lr": lr}
        if plan.validate is not None:
            model.eval()
            with torch.no_grad():
                recon, kl = plan.validate()
            metrics.update(val_recon=recon.item(), val_kl=kl.item(), val_loss=recon.item() + cfg.beta * kl.item())
        metrics["epoch_s"] = time.perf_counter() - t0
        history.append(metrics)
        if callback is not None:
            callback(metrics, lambda folder: _save_fit_state(Path(folder), model, optimizer, schedule, rng, history))
        shown = f"loss {train_loss:.4f} recon {train_recon:.4f} kl {train_kl:.1f}"
        if "val_recon" in metrics:
            shown += f" | val recon {metrics['val_recon']:.4f}"
        progress.update(epoch + 1, shown, force=epoch + 1 == cfg.epochs)
    return history


def lr_schedule(optimizer: torch.optim.Optimizer, lr: float, total_steps: int) -> LRScheduler:
    """Linear warm-up from lr/warm to `lr` over the first 5 % of the steps, then cosine decay to 10 % of
    `lr` at the last step (stepped once per optimizer step)."""
    warm = max(1, total_steps // 20)
    return SequentialLR(optimizer, [LinearLR(optimizer, start_factor=1 / warm, end_factor=1.0, total_iters=max(1, warm - 1)),
                                    CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warm), eta_min=0.1 * lr)],
                        milestones=[warm])


def _save_fit_state(folder: Path, model: ParamVAE, optimizer: torch.optim.Optimizer, schedule: LRScheduler,
                    rng: torch.Generator, history: list[dict[str, float]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    opt_tensors, opt_meta = optimizer_tensors("optim", optimizer)
    tensors = {**{f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
               **{k: v.cpu() for k, v in opt_tensors.items()}, "rng": rng.get_state()}
    atomic_write(folder / "fit.safetensors", lambda tmp: save_file(tensors, tmp))
    meta = {"epoch": len(history), "history": history, "optimizer": opt_meta, "schedule": schedule.state_dict()}
    atomic_write(folder / "fit.json", lambda tmp: Path(tmp).write_text(json.dumps(meta)))


def _load_fit_state(folder: Path, model: ParamVAE, optimizer: torch.optim.Optimizer, schedule: LRScheduler,
                    rng: torch.Generator) -> tuple[int, list[dict[str, float]]]:
    meta = json.loads((folder / "fit.json").read_text())
    if "schedule" not in meta:
        raise ValueError(f"{folder} is the fit state of an older pgen (no learning-rate schedule): start the fit anew")
    tensors = load_file(str(folder / "fit.safetensors"))
    device = next(model.parameters()).device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    restore_optimizer(optimizer, "optim", {k: v.to(device) for k, v in tensors.items() if k.startswith("optim.")},
                      meta["optimizer"])
    schedule.load_state_dict(meta["schedule"])
    rng.set_state(tensors["rng"])
    return int(meta["epoch"]), list(meta["history"])


# --- `pgen train-generator` ----------------------------------------------------------------------


def slice_spec(env_cfg: EnvConfig, policy_cfg: Any, group: str | None) -> tuple[str, PolicySpec]:
    """The group (default: the env's first) and the policy spec its checkpoints have."""
    env = describe_env(env_cfg)
    g = env.group(group) if group else env.groups[0]
    return g.name, PolicySpec.for_group(g, enum_value(policy_cfg.kind), policy_cfg.hidden,
                                        enum_value(policy_cfg.activation))


def generator_name(env_cfg: EnvConfig, policy_cfg: Any, gen_cfg: GeneratorConfig) -> str:
    """The generator's name in the store: `generator.name`, else <env>-<group>-<arch> of its slice."""
    if gen_cfg.name:
        return gen_cfg.name
    group, spec = slice_spec(env_cfg, policy_cfg, gen_cfg.group)
    return f"{env_cfg.name}-{group}-{family_key(spec) if gen_cfg.family else spec.arch_key}"


def family_slice(store: CheckpointStore, key: str, group: str, spec: PolicySpec, gen_cfg: GeneratorConfig
                 ) -> tuple[FamilyData, PolicySpec]:
    """The checkpoints of `spec`'s family (of `generator.archs` when given, else every architecture of
    the family in the store), and the architecture the generator produces by default: `spec` when it
    is among them, else the first."""
    family = family_key(spec)
    specs = family_archs(store, key, group, family)
    if gen_cfg.archs:
        wanted = [replace(spec, hidden=tuple(h)) for h in gen_cfg.archs]
        missing = [s.arch_key for s in wanted if s not in specs]
        if missing:
            raise ValueError(f"generator.archs: no checkpoints of {missing} in {store.uri} for env={key} group={group};"
                             f" the store has {[s.arch_key for s in specs] or 'none of the family ' + family}")
        specs = wanted
    if not specs:
        raise ValueError(f"no checkpoints of the family {family} in {store.uri} for env={key} group={group};"
                         " run `pgen populate population.archs=[...]` or `pgen dataset` to see what is there")
    data = load_family(store, key, group, specs)
    return data, spec if spec.arch_key in data.parts else data.specs[sorted(data.parts)[0]]


def _rescored(env_cfg: EnvConfig, others: dict[str, Any], group: str, spec: PolicySpec, data: ParamDataset,
              episodes: int, label: str) -> ParamDataset:
    """`data` with each checkpoint's return re-measured against the reference over `episodes` episodes."""
    per_episode = reference_returns(env_cfg, others, group, spec, data.params, episodes, label=label)
    returns = per_episode.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # nan when either side is constant
        corr = np.corrcoef(returns, data.returns)[0, 1]
    log.info(f"{label}: returns against the reference {returns.min():.1f} .. {returns.max():.1f}"
             f" (correlation with the recorded ones {corr:.2f})")
    return replace(data, returns=returns, return_std=per_episode.std(axis=1), episodes=np.full(len(returns), episodes))


def reference_policies(store: CheckpointStore, key: str, group: str, arch: str, data: ParamDataset
                       ) -> dict[str, Any]:
    """The other groups' fixed opponents/partners for evaluation (DESIGN.md "achieved return"):
    the co-trained policies of the run with the best checkpoint, at that checkpoint's step."""
    best = int(np.argmax(data.returns))
    run, step = str(data.run_ids[best]), int(data.steps[best])
    rows = store.read_records(env_key=key, run_id=run, columns=["group", "arch", "step"]).table.to_pylist()
    others = {r["group"]: r for r in rows if r["group"] != group and r["step"] == step}
    return {"run_id": run, "step": step, "groups": {g: {"arch": r["arch"]} for g, r in sorted(others.items())}}


@dataclass
class TrainingSlice:
    """One env/group/arch slice of the store, loaded for `fit`, and what a version records about it.

    `data.returns` are what the generator conditions on: in a multi-group env each checkpoint's
    return re-measured against `reference` over `rescore_episodes` episodes (DESIGN.md "achieved
    return": the other groups play one fixed reference), else the records' own `return_mean`.
    """

    store: CheckpointStore
    env: EnvConfig
    key: str
    group: str
    spec: PolicySpec
    name: str  # the generator's name in the store
    data: ParamDataset | FamilyData
    reference: dict[str, Any]  # the other groups' fixed policies (`reference_policies`)
    others: dict[str, Actor]  # `reference` loaded: the actors the group's returns are measured against
    rescore_episodes: int = 0  # 0: data.returns are the records' own
    learning: dict[str, Any] = field(default_factory=dict)  # `metrics.learning_signal` of the slice

    def info(self, seed: int, train_runs: list[str], val_runs: list[str]) -> dict[str, Any]:
        """The slice's part of a version's config.json: env, group, policy, dataset summary, reference."""
        data = self.data
        train_rows = np.isin(data.run_ids, train_runs)
        returns = data.returns[train_rows]
        top = np.sort(returns)[::-1][: max(1, int(math.ceil(0.1 * len(returns))))]
        runs = sorted(set(data.run_ids.tolist()))
        dataset = {"store": self.store.uri, "rows": int(len(data)), "train_rows": int(train_rows.sum()),
                   "runs": runs, "train_runs": list(train_runs), "val_runs": list(val_runs),
                   "max_step": {r: int(data.steps[data.run_ids == r].max()) for r in runs},
                   "return_min": float(returns.min()), "return_max": float(returns.max()),
                   "return_p5": float(np.percentile(returns, 5)), "return_p95": float(np.percentile(returns, 95)),
                   "return_top10_recorded": float(top.mean()), "learning_signal": self.learning}
        if self.rescore_episodes:
            dataset["rescored"] = {"episodes": self.rescore_episodes, "returns": {
                r: [[int(st), float(v)] for st, v in zip(data.steps[data.run_ids == r], data.returns[data.run_ids == r])]
                for r in runs}}
        out = {
            "name": self.name, "env": to_dict(self.env), "env_key": self.key, "group": self.group, "seed": seed,
            "policy_spec": self.spec.to_json(), "layout": self.spec.layout.to_json(), "arch": self.spec.arch_key,
            "dataset": dataset, "reference": self.reference,
        }
        if isinstance(data, FamilyData):  # the slice is (env, group, arch family): `arch` is the family key
            out.update(arch=family_key(self.spec), archs=sorted(data.parts))
            dataset["arch_rows"] = {k: int(len(p)) for k, p in sorted(data.parts.items())}
        return out


def open_slice(store: CheckpointStore, env_cfg: EnvConfig, policy_cfg: Any, gen_cfg: GeneratorConfig,
               label: str = "train-generator") -> TrainingSlice:
    """Read the store's checkpoints of (env, generator.group, policy), log what they are and, in a
    multi-group env, re-measure their returns against the reference (`generator.rescore_episodes`)."""
    if gen_cfg.rescore_episodes < 0:
        raise ValueError(f"generator.rescore_episodes must be >= 0, got {gen_cfg.rescore_episodes}")
    group, spec = slice_spec(env_cfg, policy_cfg, gen_cfg.group)
    key = env_key(env_cfg)
    name = generator_name(env_cfg, policy_cfg, gen_cfg)
    if gen_cfg.family:
        data, spec = family_slice(store, key, group, spec, gen_cfg)
        archs = ", ".join(f"{k} {len(p)}" for k, p in data.parts.items())
    else:
        data = load_slice(store, key, group, spec.arch_key, spec.layout.num_params)
        archs = spec.arch_key
    log.info(f"{label} {name}: {len(data)} checkpoints ({archs}) from {len(set(data.run_ids))} runs"
             f" ({data.bad_rows} bad rows skipped), returns {data.returns.min():.1f} .. {data.returns.max():.1f}")
    reference = reference_policies(store, key, group, spec.arch_key, data)
    rescore = gen_cfg.rescore_episodes if reference["groups"] else 0
    others = reference_actors(store, {"reference": reference, "env_key": key}, env_cfg)
    if rescore:
        what = f"{label} {name}: rescore against {reference['run_id']}@{reference['step']}"
        data = (data.map(lambda k, part: _rescored(env_cfg, others, group, data.specs[k], part, rescore, f"{what} ({k})"))
                if isinstance(data, FamilyData) else _rescored(env_cfg, others, group, spec, data, rescore, what))
    # is there anything to learn? uniform random play on the episodes the returns were measured on
    n_episodes = int(np.median(data.episodes))
    r_random = float(evaluate_returns(env_cfg, {**others, group: None}, n_episodes)[group].mean())
    learning = learning_signal(data.returns, float(np.median(data.return_std)), n_episodes, r_random)
    if not learning["learned"]:
        log.warning(learning_warning(learning, f"{label} {name}"))
    return TrainingSlice(store, env_cfg, key, group, spec, name, data, reference, others, rescore, learning)


def train_generator(cfg: TrainGeneratorConfig, store: CheckpointStore | None = None,
                    warm_start: Generator | None = None, promoted: bool = True) -> Generator:
    """Fit on the store's slice for (env, generator.group, policy), write TensorBoard events and the
    loss curve to `<out_dir>/<name>/<version>/`, register the version; returns the generator.

    `warm_start` (a previous version) and `promoted` (False: registered but not what `name` means
    until `promote` is called — `pgen loop`'s gate decides) are `fit`'s and `save_generator`'s."""
    from tensorboardX import SummaryWriter

    store = store or open_store(cfg.store)
    torch.set_num_threads(cfg.torch_threads)
    sl = open_slice(store, cfg.env, cfg.policy, cfg.generator)
    name = sl.name
    out = Path(cfg.out_dir).expanduser().resolve() / name
    scratch = out / f"unregistered-{time.strftime('%Y%m%dT%H%M%S')}"
    writer = SummaryWriter(str(scratch / "tensorboard"))

    def callback(metrics: dict[str, float], _save: Callable[[Path], None]) -> None:
        for k, v in metrics.items():
            if k != "epoch":
                writer.add_scalar(f"generator/{k}", v, metrics["epoch"])

    check_calibration_settings(cfg.generator.calibration)
    result = fit(cfg.generator, sl.data, sl.spec, cfg.seed, callback, label=f"train-generator {name}",
                 warm_start=warm_start)
    writer.close()
    gen = result.generator
    gen.info.update(sl.info(cfg.seed, result.train_runs, result.val_runs))
    calibration = calibrate(gen, sl.env, sl.others, sl.data, cfg.generator.calibration, result.train_runs,
                            label=f"train-generator {name}: calibration")
    final = result.history[-1]
    metrics = {"final": final, "history": result.history}
    version = save_generator(store, gen, metrics, promoted=promoted)
    folder = out / version
    if folder.exists():  # the same name and version in another store
        folder = out / f"{version}-{scratch.name.split('-', 1)[1]}"
    scratch.rename(folder)
    png = plot_curves({k: ([h["epoch"] for h in result.history], [h.get(k, float("nan")) for h in result.history])
                       for k in ("train_recon", "val_recon")}, folder / "loss.png",
                      f"{name}@{version}: reconstruction loss (standardised params)", xlabel="epoch",
                      ylabel="mean squared error", window=1)
    curve = (f"; calibration {plot_calibration(calibration, folder / 'calibration.png', f'{name}@{version}: the return condition')}"
             if calibration else "")
    log.info(f"registered {name}@{version}{'' if promoted else ' (not promoted)'} in {store.uri}:"
             f" val recon {final.get('val_recon', float('nan')):.4f};"
             f" loss curve {png}{curve}; TensorBoard: tensorboard --logdir {folder / 'tensorboard'}")
    return gen
