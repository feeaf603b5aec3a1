"""The one fit loop of every generator kind: a plain function Ray Tune wraps unchanged.

`fit(cfg, data, spec, seed, callback)` holds out whole runs of every architecture for validation
(`Slice.split`), lets the kind (`cfg.kind`, `kinds.py`) build its model, normaliser and tensors,
then trains: β warm-up, AdamW with a warm-up and cosine schedule, gradient clipping, per-epoch
metrics. After every epoch it calls `callback(metrics, save)` with the epoch's metrics and a
function `save(folder)` that writes a resumable training state there (safetensors + JSON);
`fit(..., resume=folder)` continues from such a folder exactly.
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
from pgen.generator.augment import augment
from pgen.generator.kind import ArchTensors
from pgen.generator.kinds import kind_for
from pgen.generator.sample import Generator, pick_device
from pgen.generator.vae import losses
from pgen.learner.state import optimizer_tensors, restore_optimizer
from pgen.policies.spec import PolicySpec
from pgen.util.fileio import atomic_write
from pgen.util.progress import Progress, log

Callback = Callable[[dict[str, float], Callable[[Path], None]], None]
Losses = Callable[[], tuple[torch.Tensor, torch.Tensor]]  # one batch's (reconstruction, KL), computed when called


@dataclass
class FitResult:
    generator: Generator
    history: list[dict[str, float]] = field(default_factory=list)
    train_runs: list[str] = field(default_factory=list)
    val_runs: list[str] = field(default_factory=list)


@dataclass
class EpochPlan:
    """A generator's training data as `train_epochs` sees it: `batches()` yields each batch of an
    epoch as (rows, its losses), `validate()` the validation losses (None: no validation rows)."""

    rows: int  # training rows an epoch sees
    batches: Callable[[], Iterator[tuple[int, Losses]]]
    validate: Losses | None


def fit(cfg: GeneratorConfig, data: Slice, spec: PolicySpec, seed: int, callback: Callback | None = None,
        resume: Path | None = None, label: str = "generator", warm_start: Generator | None = None) -> FitResult:
    """Train a generator of kind `cfg.kind` on `data` for `cfg.epochs` epochs; `spec` is the
    architecture it generates by default. Returns the generator (unregistered) and its history.

    `warm_start`: a previous version of the slice whose model weights the fit starts from where the
    kind allows it (`warm_start_plan`); the normaliser (parameter statistics and return percentiles)
    is refitted to this data, which has grown and moved (keeping the old statistics standardises the
    new checkpoints far outside the range the model learnt); the plan is `info["warm_start"]`."""
    kind = kind_for(cfg)
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

    def arch_losses(a: ArchTensors, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return losses(model, a.parts(augment(a.x[idx], a.perms, cfg, rng)), a.masks, a.c[idx], rng,
                      free_bits=cfg.free_bits, ctx=a.ctx)

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
            yield len(idx), lambda a=archs[key], idx=idx: arch_losses(a, idx)

    def validate() -> tuple[torch.Tensor, torch.Tensor]:
        parts = [(len(a.x_val), losses(model, a.parts(a.x_val), a.masks, a.c_val, None, use_mean=True, ctx=a.ctx))
                 for a in archs.values() if a.x_val is not None]
        if len(parts) == 1:
            return parts[0][1]
        total = sum(n for n, _ in parts)
        return (sum(n * r for n, (r, _) in parts) / total, sum(n * k for n, (_, k) in parts) / total)

    has_val = any(a.x_val is not None for a in archs.values())
    rows = sum(len(a.x) for a in archs.values())
    history = train_epochs(cfg, model, optimizer, schedule, rng, EpochPlan(rows, batches, validate if has_val else None),
                           callback, resume, label)
    model.eval()
    info = {**setup.info, "generator": to_dict(cfg), "warm_start": plan}
    runs = lambda idx: sorted({r for k, p in data.parts.items() for r in p.run_ids[idx[k]].tolist()})  # noqa: E731
    return FitResult(setup.generator(model, setup.normalizer, info), history, runs(train_idx), runs(val_idx))


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
        sums = np.zeros(3)
        for rows, batch_losses in plan.batches():
            lr = optimizer.param_groups[0]["lr"]
            recon, kl = batch_losses()
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
