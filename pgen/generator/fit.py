"""The one fit loop of every generator kind: a plain function Ray Tune wraps unchanged.

`fit(cfg, data, spec, seed, callback)` holds out whole runs of every architecture for validation
(`Slice.split`), lets the kind (`cfg.kind`, `kinds.py`) build its model, normaliser and tensors,
then trains: β warm-up, AdamW with a warm-up and cosine schedule, gradient clipping, per-epoch
metrics. After every epoch it calls `callback(metrics, save)` with the epoch's metrics and a
function `save(folder)` that writes a resumable training state there (safetensors + JSON);
`fit(..., resume=folder)` continues from such a folder exactly.

With the slice's probe states (`probes`), every epoch also measures the behaviour of the validation
runs' reconstructions — the agreement of their greedy actions with the original checkpoints', and
the KL of their action distributions — and `generator.functional_weight` > 0 adds that KL on the
training rows' reconstructions to the loss (`behaviour.py`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from pgen.config import GeneratorConfig, to_dict
from pgen.dataset.slices import Slice
from pgen.dataset.probes import Probes
from pgen.generator.augment import augment
from pgen.generator.behaviour import PolicyOutputs, action_agreement, action_kl
from pgen.generator.kind import ArchTensors
from pgen.generator.kinds import kind_for
from pgen.generator.sample import Generator, pick_device
from pgen.generator.vae import losses
from pgen.learner.state import optimizer_tensors, restore_optimizer
from pgen.policies.spec import PolicySpec
from pgen.util.fileio import atomic_write
from pgen.util.progress import Progress, log

Callback = Callable[[dict[str, float], Callable[[Path], None]], None]
# one batch's (reconstruction, KL, functional) losses, computed when called
Losses = Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class FitResult:
    generator: Generator
    history: list[dict[str, float]] = field(default_factory=list)
    train_runs: list[str] = field(default_factory=list)
    val_runs: list[str] = field(default_factory=list)
    # on the probe states, the validation runs' reconstructions against two references that learn
    # nothing: the nearest training checkpoint and the mean checkpoint (None: no probes, or no validation)
    behaviour: dict[str, float] | None = None


class Behaviour:
    """One architecture's training and validation rows on the probe states (module doc)."""

    def __init__(self, a: ArchTensors, probes: Probes, device: torch.device):
        self.outputs = PolicyOutputs(a.spec)
        self.spec, self.probes = a.spec, probes
        with torch.no_grad():
            self.train = self.outputs(torch.from_numpy(a.params).to(device), probes)
            self.train_log_std = self.outputs.log_std(torch.from_numpy(a.params).to(device))
            params_val = None if a.params_val is None else torch.from_numpy(a.params_val).to(device)
            self.val = None if params_val is None else self.outputs(params_val, probes)
            self.val_log_std = None if params_val is None else self.outputs.log_std(params_val)

    def kl(self, flat: torch.Tensor, idx: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The mean KL of the decoded rows `flat` from the training rows `idx`, on the probe sequences `cols`."""
        decoded = self.outputs(flat, self.probes.columns(cols))
        log_std = None if self.train_log_std is None else self.train_log_std[idx]
        return action_kl(self.spec, self.train[idx][:, :, cols], decoded, log_std, self.outputs.log_std(flat)).mean()

    def validate(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[V]` agreement and KL of decoded validation rows `flat` with the originals, on every probe state."""
        decoded = self.outputs(flat, self.probes)
        return (action_agreement(self.spec, self.val, decoded),
                action_kl(self.spec, self.val, decoded, self.val_log_std, self.outputs.log_std(flat)))


@dataclass
class EpochPlan:
    """A generator's training data as `train_epochs` sees it: `batches()` yields each batch of an
    epoch as (rows, its losses), `validate()` the validation losses (None: no validation rows)."""

    rows: int  # training rows an epoch sees
    batches: Callable[[], Iterator[tuple[int, Losses]]]
    validate: Callable[[], dict[str, float]] | None


def fit(cfg: GeneratorConfig, data: Slice, spec: PolicySpec, seed: int, callback: Callback | None = None,
        resume: Path | None = None, label: str = "generator", warm_start: Generator | None = None,
        probes: Probes | None = None) -> FitResult:
    """Train a generator of kind `cfg.kind` on `data` for `cfg.epochs` epochs; `spec` is the
    architecture it generates by default. Returns the generator (unregistered) and its history.
    `probes`: the slice's probe states (module doc; needed by `generator.functional_weight` > 0).

    `warm_start`: a previous version of the slice whose model weights the fit starts from where the
    kind allows it (`warm_start_plan`); the normaliser (parameter statistics and return percentiles)
    is refitted to this data, which has grown and moved (keeping the old statistics standardises the
    new checkpoints far outside the range the model learnt); the plan is `info["warm_start"]`."""
    kind = kind_for(cfg)
    if cfg.functional_weight < 0 or cfg.functional_sequences < 1:
        raise ValueError(f"generator.functional_weight must be >= 0 and generator.functional_sequences >= 1, got"
                         f" {cfg.functional_weight} and {cfg.functional_sequences}")
    if cfg.functional_weight > 0 and probes is None:
        raise ValueError(f"{label}: generator.functional_weight > 0 needs the slice's probe states")
    if not 0 <= cfg.condition_dropout < 1 or cfg.guidance < 0 or (cfg.guidance != 1 and cfg.condition_dropout == 0):
        raise ValueError("generator.condition_dropout must be in [0, 1) and generator.guidance >= 0; a guidance other"
                         f" than 1 needs generator.condition_dropout > 0, got {cfg.condition_dropout} and {cfg.guidance}")
    if not isinstance(cfg.prior_components, int) or cfg.prior_components < 1 or (
            cfg.prior_components > 1 and not cfg.conditional_prior):
        raise ValueError("generator.prior_components must be an integer >= 1, and > 1 only with"
                         f" generator.conditional_prior=true, got {cfg.prior_components!r}")
    if len(data) < 2:
        raise ValueError(f"{label}: need at least 2 checkpoints to train a generator, got {len(data)}")
    if not all(np.isfinite(p.params).all() and np.isfinite(p.returns).all() for p in data.parts.values()):
        raise ValueError(f"{label}: the dataset has non-finite values")
    torch.manual_seed(seed)
    device = pick_device(cfg.device)
    train_idx, val_idx = data.split(cfg.val_fraction, seed)
    train, val = data.subset(train_idx), data.subset(val_idx)
    rng = torch.Generator().manual_seed(seed)
    setup = kind.setup(cfg, train, val, spec, device, rng)
    plan = kind.warm_start_plan(cfg, spec, warm_start)
    if plan["from"]:
        setup.model.load_state_dict(warm_start.model.state_dict())
        log.info(f"{label}: warm start from {plan['from']}")
    model = setup.model.to(device)
    archs = setup.archs
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = sum(math.ceil(len(a.x) / cfg.batch_size) for a in archs.values())
    schedule = lr_schedule(optimizer, cfg.lr, cfg.epochs * steps)

    behaviour = {k: Behaviour(a, probes, device) for k, a in archs.items()} if probes is not None else {}
    sequences = probes.obs.shape[1] if probes is not None else 0

    def arch_losses(key: str, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = archs[key]
        c = a.c[idx]
        if cfg.condition_dropout > 0:  # classifier-free guidance: some rows learn "no condition" (NaN)
            dropped = (torch.rand(len(idx), generator=rng) < cfg.condition_dropout).to(c.device)
            c = torch.where(dropped, torch.full_like(c, float("nan")), c)
        recon, kl, pred = losses(model, a.parts(augment(a.x[idx], a.perms, cfg, rng)), a.masks, c, rng,
                                 free_bits=cfg.free_bits, ctx=a.ctx)
        if cfg.functional_weight == 0:
            return recon, kl, recon.new_zeros(())
        cols = torch.randperm(sequences, generator=rng)[:cfg.functional_sequences]
        return recon, kl, behaviour[key].kl(a.raw(pred), idx, cols)

    def batches() -> Iterator[tuple[int, Losses]]:
        plan = []
        for key, a in archs.items():
            order = (torch.randperm(len(a.x), generator=rng) if a.weights is None
                     else torch.multinomial(a.weights, len(a.x), replacement=True, generator=rng))
            plan += [(key, order[i : i + cfg.batch_size]) for i in range(0, len(a.x), cfg.batch_size)]
        if len(archs) > 1:  # every architecture's batches, shuffled together
            plan = [plan[j] for j in torch.randperm(len(plan), generator=rng).tolist()]
        for key, idx in plan:
            idx = idx.to(device)
            yield len(idx), lambda key=key, idx=idx: arch_losses(key, idx)

    def validate() -> dict[str, float]:
        """The validation rows' losses (their posterior means decoded) and, with probes, their behaviour."""
        sums, total, agree, act_kl = np.zeros(2), 0, [], []
        for key, a in archs.items():
            if a.x_val is None:
                continue
            recon, kl, pred = losses(model, a.parts(a.x_val), a.masks, a.c_val, None, use_mean=True, ctx=a.ctx)
            sums += len(a.x_val) * np.array([recon.item(), kl.item()])
            total += len(a.x_val)
            if key in behaviour:
                ag, k = behaviour[key].validate(a.raw(pred))
                agree.append(ag), act_kl.append(k)
        recon, kl = sums / total
        out = {"val_recon": recon, "val_kl": kl, "val_loss": recon + cfg.beta * kl}
        if agree:
            out.update(val_action_agreement=float(torch.cat(agree).mean()), val_action_kl=float(torch.cat(act_kl).mean()))
        return out

    has_val = any(a.x_val is not None for a in archs.values())
    rows = sum(len(a.x) for a in archs.values())
    history = train_epochs(cfg, model, optimizer, schedule, rng, EpochPlan(rows, batches, validate if has_val else None),
                           callback, resume, label)
    model.eval()
    info = {**setup.info, "generator": to_dict(cfg), "warm_start": plan}
    runs = lambda idx: sorted({r for k, p in data.parts.items() for r in p.run_ids[idx[k]].tolist()})  # noqa: E731
    references = behaviour_references(archs, behaviour, setup.centre) if behaviour and has_val else None
    if references is not None and history:
        references.update(model_agreement=history[-1]["val_action_agreement"],
                          model_kl=history[-1]["val_action_kl"])
        log.info(f"{label}: greedy actions of the validation runs on the probe states, reconstructed"
                 f" {references['model_agreement']:.3f} of them; the nearest training checkpoint's"
                 f" {references['nearest_train_agreement']:.3f}, the mean checkpoint's {references['mean_agreement']:.3f}")
    return FitResult(setup.generator(model, setup.normalizer, info), history, runs(train_idx), runs(val_idx),
                     references)


@torch.no_grad()
def behaviour_references(archs: dict[str, ArchTensors], behaviour: dict[str, Behaviour],
                         centre: Callable[[str], torch.Tensor]) -> dict[str, float]:
    """On the probe states, the validation rows against two references that learn nothing: the
    nearest training row (in the standardised space) and the mean checkpoint (`centre(arch key)`,
    the normaliser's). Agreement and KL averaged over every validation row."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("nearest_train_agreement", "nearest_train_kl",
                                                           "mean_agreement", "mean_kl")}
    for key, a in archs.items():
        if a.x_val is None:
            continue
        b = behaviour[key]
        nearest = torch.cdist(a.x_val, a.x).argmin(1).cpu()
        for name, flat in (("nearest_train", torch.from_numpy(a.params[nearest.numpy()])),
                           ("mean", centre(key)[None].expand(len(a.x_val), -1))):
            agreement, kl = b.validate(flat.to(b.val))
            out[f"{name}_agreement"].append(agreement)
            out[f"{name}_kl"].append(kl)
    return {k: float(torch.cat(v).mean()) for k, v in out.items()}


def train_epochs(cfg: GeneratorConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: LRScheduler,
                 rng: torch.Generator, plan: EpochPlan, callback: Callback | None, resume: Path | None,
                 label: str) -> list[dict[str, float]]:
    """The epoch loop: β warm-up, AdamW steps with clipping, per-epoch metrics, the callback with a
    resumable `save`, progress lines; continues from `resume` when given.

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
        sums = np.zeros(4)
        for rows, batch_losses in plan.batches():
            lr = optimizer.param_groups[0]["lr"]
            recon, kl, functional = batch_losses()
            loss = recon + beta * kl + cfg.functional_weight * functional
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            sums += np.array([loss.item(), recon.item(), kl.item(), functional.item()]) * rows
        train_loss, train_recon, train_kl, train_functional = sums / plan.rows
        metrics = {"epoch": epoch + 1, "train_loss": train_loss, "train_recon": train_recon, "train_kl": train_kl,
                   "beta": beta, "lr": lr}
        if cfg.functional_weight:
            metrics["train_action_kl"] = train_functional
        if plan.validate is not None:
            model.eval()
            with torch.no_grad():
                metrics.update(plan.validate())
        metrics["epoch_s"] = time.perf_counter() - t0
        history.append(metrics)
        if callback is not None:
            callback(metrics, lambda folder: _save_fit_state(Path(folder), model, optimizer, schedule, rng, history))
        shown = f"loss {train_loss:.4f} recon {train_recon:.4f} kl {train_kl:.1f}"
        if "val_recon" in metrics:
            shown += f" | val recon {metrics['val_recon']:.4f}"
        if "val_action_agreement" in metrics:
            shown += f" actions {metrics['val_action_agreement']:.3f}"
        progress.update(epoch + 1, shown, force=epoch + 1 == cfg.epochs)
    return history


def lr_schedule(optimizer: torch.optim.Optimizer, lr: float, total_steps: int) -> LRScheduler:
    """Linear warm-up from lr/warm to `lr` over the first 5 % of the steps, then cosine decay to 10 % of
    `lr` at the last step (stepped once per optimizer step)."""
    warm = max(1, total_steps // 20)
    return SequentialLR(optimizer, [LinearLR(optimizer, start_factor=1 / warm, end_factor=1.0, total_iters=max(1, warm - 1)),
                                    CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warm), eta_min=0.1 * lr)],
                        milestones=[warm])


def _save_fit_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: LRScheduler,
                    rng: torch.Generator, history: list[dict[str, float]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    opt_tensors, opt_meta = optimizer_tensors("optim", optimizer)
    tensors = {**{f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
               **{k: v.cpu() for k, v in opt_tensors.items()}, "rng": rng.get_state()}
    atomic_write(folder / "fit.safetensors", lambda tmp: save_file(tensors, tmp))
    meta = {"epoch": len(history), "history": history, "optimizer": opt_meta, "schedule": schedule.state_dict()}
    atomic_write(folder / "fit.json", lambda tmp: Path(tmp).write_text(json.dumps(meta)))


def _load_fit_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: LRScheduler,
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
