"""Training the arch-family VAE (`fit` dispatches here for a `FamilyData`).

The same epoch loop as a single-architecture generator (`train.train_epochs`): every batch holds
rows of one architecture (their tensors share a shape), the batches of all architectures are
shuffled together, so an epoch sees every training row once. Validation holds out whole runs of
every architecture (`split_runs_per_arch`); the permutation augmentation draws function-preserving
permutations of each architecture's own hidden units.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pgen.config import GeneratorConfig, to_dict
from pgen.generator.data import permutation_index
from pgen.generator.family_data import FamilyData, FamilyNormalizer, split_runs_per_arch
from pgen.generator.family_model import ArchInputs, FamilyModelConfig, FamilyVAE, arch_inputs
from pgen.generator.sample import FamilyGenerator, pick_device
from pgen.generator.train import Callback, EpochPlan, FitResult, Losses, _augment, _losses, lr_schedule, train_epochs
from pgen.growth import family_key
from pgen.policy import PolicySpec


def family_model_config(cfg: GeneratorConfig, spec: PolicySpec) -> FamilyModelConfig:
    return FamilyModelConfig(spec.kind, spec.obs_dim, spec.action_dim, cfg.d_model, cfg.n_layers, cfg.n_heads,
                             cfg.latent_dim, cfg.fourier_features, cfg.readout_dim, cfg.dropout, cfg.conditional_prior,
                             cfg.linear_readout)


class _Arch:
    """One architecture's training and validation tensors, standardised."""

    def __init__(self, data: FamilyData, key: str, train_idx: np.ndarray, val_idx: np.ndarray,
                 normalizer: FamilyNormalizer, cfg: GeneratorConfig, rng: torch.Generator, device: torch.device):
        spec, part = data.specs[key], data.parts[key]
        self.inputs: ArchInputs = arch_inputs(spec, normalizer.centre_standardised(spec)).to(device)
        self.masks = [torch.ones(t.shape[1:], device=device) for t in self.inputs.centre]

        def tensors(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            x = normalizer.standardise(torch.from_numpy(part.params[idx]), spec).to(device)
            return x, normalizer.condition(torch.from_numpy(part.returns[idx])).float().to(device)

        self.x, self.c = tensors(train_idx)
        self.x_val, self.c_val = tensors(val_idx) if len(val_idx) else (None, None)
        self.perms = (torch.stack([permutation_index(spec, rng) for _ in range(64)]) if cfg.permute_prob > 0 else None)

    def losses(self, model: FamilyVAE, x: torch.Tensor, c: torch.Tensor, rng: torch.Generator | None,
               use_mean: bool = False, free_bits: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        return _losses(model, self.inputs.graph.blocks_of(x), self.masks, c, rng, use_mean, free_bits, (self.inputs,))


def fit_family(cfg: GeneratorConfig, data: FamilyData, spec: PolicySpec, seed: int, callback: Callback | None = None,
               resume: Path | None = None, label: str = "generator") -> FitResult:
    """Train the arch-family VAE on every architecture of `data`; `spec` is the one it generates by
    default (the epochs run in `train_epochs`, which flushes denormals)."""
    if len(data) < 2:
        raise ValueError(f"{label}: need at least 2 checkpoints to train a generator, got {len(data)}")
    if not all(np.isfinite(p.params).all() and np.isfinite(p.returns).all() for p in data.parts.values()):
        raise ValueError(f"{label}: the dataset has non-finite values")
    if cfg.return_balance != 0:
        raise ValueError("generator.return_balance is not supported by arch-family generators (generator.family=true)")
    torch.manual_seed(seed)
    device = pick_device(cfg.device)
    train_idx, val_idx = split_runs_per_arch(data, cfg.val_fraction, seed)
    train = data.subset(train_idx)
    normalizer = FamilyNormalizer.fit(train)
    rng = torch.Generator().manual_seed(seed)
    archs = {k: _Arch(data, k, train_idx[k], val_idx[k], normalizer, cfg, rng, device) for k in sorted(train.parts)}
    model = FamilyVAE(family_model_config(cfg, spec)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = sum(math.ceil(len(a.x) / cfg.batch_size) for a in archs.values())
    schedule = lr_schedule(optimizer, cfg.lr, cfg.epochs * steps)

    def batches() -> Iterator[tuple[int, Losses]]:
        plan = []
        for key, a in archs.items():
            order = torch.randperm(len(a.x), generator=rng)
            plan += [(key, order[i : i + cfg.batch_size]) for i in range(0, len(a.x), cfg.batch_size)]
        for j in torch.randperm(len(plan), generator=rng).tolist():
            key, idx = plan[j]
            a = archs[key]
            yield len(idx), lambda a=a, idx=idx: a.losses(model, _augment(a.x[idx], a.perms, cfg, rng), a.c[idx], rng,
                                                           free_bits=cfg.free_bits)

    def validate() -> tuple[torch.Tensor, torch.Tensor]:
        parts = [(len(a.x_val), a.losses(model, a.x_val, a.c_val, None, use_mean=True))
                 for a in archs.values() if a.x_val is not None]
        total = sum(n for n, _ in parts)
        return (sum(n * r for n, (r, _) in parts) / total, sum(n * k for n, (_, k) in parts) / total)

    has_val = any(a.x_val is not None for a in archs.values())
    rows = sum(len(a.x) for a in archs.values())
    history = train_epochs(cfg, model, optimizer, schedule, rng, EpochPlan(rows, batches, validate if has_val else None),
                           callback, resume, label)
    model.eval()
    info = {"model": asdict(family_model_config(cfg, spec)), "generator": to_dict(cfg), "policy_spec": spec.to_json(),
            "layout": spec.layout.to_json(), "arch": family_key(spec), "archs": sorted(train.parts),
            # the returns each architecture's training rows span: what it conditions on (FamilyGenerator.return_range)
            "arch_return_range": {k: [float(p.returns.min()), float(p.returns.max())] for k, p in sorted(train.parts.items())},
            # widths never trained are decoded as their transfer source and widened (FamilyGenerator.decoded_as)
            "unseen_widths": "grown"}
    runs = lambda idx: sorted({r for k, p in data.parts.items() for r in p.run_ids[idx[k]].tolist()})  # noqa: E731
    return FitResult(FamilyGenerator(model, normalizer, info), history, runs(train_idx), runs(val_idx))
