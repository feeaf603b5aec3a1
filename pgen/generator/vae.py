"""The parts every generator kind's VAE shares: the return condition's embedding, the encoder and
decoder transformers, the maps to and from the latent, and the two losses.

A kind's model (`single/model.py`, `family/model.py`) adds how a policy's parameters become tokens
and come back; what it encodes is `[CLS, condition, (arch,) tokens...]` → CLS → (μ, log σ²) of a
global latent z, and it decodes `[z, condition, (arch,) queries...]`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn


class FourierCondition(nn.Module):
    """c `[B]` → `[B, d_model]` from (c, sin 2^k π c, cos 2^k π c) for k < n. With `null`, a NaN in
    c means *no condition* and gets features of its own, learned (classifier-free guidance)."""

    def __init__(self, n: int, d_model: int, null: bool = False):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n, dtype=torch.float32), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n + 1, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.null = nn.Parameter(torch.zeros(2 * n + 1)) if null else None

    def features(self, c: torch.Tensor) -> torch.Tensor:
        missing = torch.isnan(c)
        c = torch.where(missing, torch.zeros_like(c), c)
        angles = c[:, None] * self.freqs
        out = torch.cat([c[:, None], angles.sin(), angles.cos()], dim=-1)
        if self.null is not None:
            out = torch.where(missing[:, None], self.null.expand_as(out), out)
        return out

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(c))


def transformer(cfg) -> nn.TransformerEncoder:
    """Pre-norm transformer blocks of `cfg` (d_model, n_heads, n_layers, dropout)."""
    block = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, 4 * cfg.d_model, cfg.dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(block, cfg.n_layers, norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False)


def add_vae_core(vae: nn.Module, cfg) -> None:
    """The parts every generator VAE has (`cfg`: a model config with d_model, n_heads, n_layers,
    dropout, latent_dim, fourier_features, null_condition): the CLS token, the encoder's and
    decoder's condition embeddings, the two transformers and the maps to and from the latent.
    ValueError when d_model is not divisible by n_heads."""
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"d_model {cfg.d_model} is not divisible by n_heads {cfg.n_heads}")
    d = cfg.d_model
    vae.cls = nn.Parameter(0.02 * torch.randn(d))
    null = getattr(cfg, "null_condition", False)
    vae.enc_cond = FourierCondition(cfg.fourier_features, d, null)
    vae.dec_cond = FourierCondition(cfg.fourier_features, d, null)
    vae.encoder = transformer(cfg)
    vae.decoder = transformer(cfg)
    vae.to_latent = nn.Linear(d, 2 * cfg.latent_dim)
    vae.from_latent = nn.Linear(cfg.latent_dim, d)


class Prior(NamedTuple):
    """p(z | condition): a mixture of K diagonal Gaussians (K = 1: one Gaussian), per row of a batch —
    component log-weights `[B, K]`, means and log-variances `[B, K, latent]`."""

    log_weights: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor

    @property
    def components(self) -> int:
        return self.mu.shape[1]


def prior_head(in_dim: int, cfg) -> nn.Sequential:
    """The MLP from the prior's inputs to its parameters: K · (μ, log σ²) and, for K > 1, K logits of
    the components' weights (`cfg.prior_components` K; 1 keeps the one-Gaussian prior's shape)."""
    k = cfg.prior_components
    return nn.Sequential(nn.Linear(in_dim, cfg.d_model), nn.GELU(),
                         nn.Linear(cfg.d_model, 2 * cfg.latent_dim * k + (k if k > 1 else 0)))


def prior_from(params: torch.Tensor, components: int) -> Prior:
    """The prior of `prior_head`'s output `[B, 2·latent·K (+ K)]`."""
    batch = params.shape[0]
    if components == 1:
        mu, logvar = gaussian(params)
        return Prior(params.new_zeros(batch, 1), mu[:, None], logvar[:, None])
    logits, gaussians = params[:, :components], params[:, components:]
    mu, logvar = gaussian(gaussians.reshape(batch * components, -1))
    return Prior(torch.log_softmax(logits, dim=-1), mu.reshape(batch, components, -1),
                 logvar.reshape(batch, components, -1))


def standard_prior(batch: int, latent: int, like: torch.Tensor) -> Prior:
    """N(0, I) for each of `batch` rows."""
    zeros = like.new_zeros(batch, 1, latent)
    return Prior(like.new_zeros(batch, 1), zeros, zeros)


def sample_prior(prior: Prior, noise: torch.Tensor) -> torch.Tensor:
    """z from `prior` for the generation noise `noise` `[B, latent (+ 1)]`: ε ~ N(0, τ²I) in its first
    `latent` columns, z = μ_k + σ_k·ε; a mixture (K > 1) takes the component k whose cumulative weight
    first exceeds the uniform u in the last column (τ spreads z within a component, not across them)."""
    latent = prior.mu.shape[-1]
    eps = noise[:, :latent]
    if prior.components == 1:
        return prior.mu[:, 0] + (0.5 * prior.logvar[:, 0]).exp() * eps
    cdf = prior.log_weights.exp().cumsum(-1)
    k = (noise[:, latent:latent + 1] >= cdf).sum(-1).clamp(max=prior.components - 1)
    rows = torch.arange(noise.shape[0], device=noise.device)
    return prior.mu[rows, k] + (0.5 * prior.logvar[rows, k]).exp() * eps


def gaussian(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, 2 · latent]` → (μ, log σ²), the log-variance clamped to [−12, 8]."""
    mu, logvar = params.chunk(2, dim=-1)
    return mu, logvar.clamp(-12.0, 8.0)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor, prior_logvar: torch.Tensor
                ) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(μ_p, σ_p²)) per latent dimension, elementwise over broadcast shapes."""
    return 0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1.0)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor, prior_logvar: torch.Tensor,
                  free_bits: float = 0.0) -> torch.Tensor:
    """KL(q(z|x, c) ‖ p(z|c)) of diagonal Gaussians, summed over latent dims, mean over the batch.
    With `free_bits` > 0 each dimension's batch-mean KL counts as at least that many nats (no
    gradient below it), which keeps the decoder from ignoring z."""
    per_dim = gaussian_kl(mu, logvar, prior_mu, prior_logvar).mean(0)
    if free_bits > 0:
        per_dim = per_dim.clamp_min(free_bits)
    return per_dim.sum()


def kl_to_prior(mu: torch.Tensor, logvar: torch.Tensor, prior: Prior, free_bits: float = 0.0) -> torch.Tensor:
    """KL(q(z|x, c) ‖ p(z|c)), mean over the batch. One Gaussian: `kl_divergence`. A mixture has no closed
    form; its variational upper bound −log Σ_k π_k exp(−KL(q ‖ N_k)) (Hershey & Olsen 2007) takes its place,
    with `free_bits` · latent nats as its floor."""
    if prior.components == 1:
        return kl_divergence(mu, logvar, prior.mu[:, 0], prior.logvar[:, 0], free_bits)
    per_component = gaussian_kl(mu[:, None], logvar[:, None], prior.mu, prior.logvar).sum(-1)  # [B, K]
    bound = -torch.logsumexp(prior.log_weights - per_component, dim=-1).mean()
    return bound.clamp_min(free_bits * mu.shape[-1]) if free_bits > 0 else bound


def reconstruction_loss(pred: list[torch.Tensor], target: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared error of each part's real (unpadded) values, averaged over parts with equal weight."""
    losses = []
    for p, t, m in zip(pred, target, masks):
        m = m.to(p.device)
        losses.append(((p - t).pow(2) * m).sum() / (m.sum() * p.shape[0]))
    return torch.stack(losses).mean()


def losses(model: nn.Module, parts: list[torch.Tensor], masks: list[torch.Tensor], c: torch.Tensor,
           rng: torch.Generator | None, use_mean: bool = False, free_bits: float = 0.0, ctx: tuple = ()
           ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(reconstruction, KL, the decoded parts) of a batch: `parts` what the model encodes (tokens or
    blocks), `ctx` what its methods take after the condition (the family model: the architecture's
    inputs); `use_mean` decodes the posterior mean (validation) instead of a sample."""
    if use_mean:
        mu, logvar = model.encode(parts, c, *ctx)
        pred = model.decode(mu, c, *ctx)
    else:
        pred, mu, logvar = model(parts, c, *ctx, rng)
    return (reconstruction_loss(pred, parts, masks), kl_to_prior(mu, logvar, model.prior_params(c, *ctx), free_bits),
            pred)
