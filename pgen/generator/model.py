"""The conditional transformer VAE over a policy's parameter tokens (DESIGN.md "Generator").

Encoder: `[CLS, condition, tokens...]` → transformer → CLS → (μ, log σ²) of a global latent z.
Prior: p(z | condition), a small MLP on the condition's Fourier features (or N(0, I) with
`conditional_prior=False`), so that the latent can say which member a checkpoint resembles while
the prior knows which members reached a given return.
Decoder: `[z, condition, queries...]` → transformer → one output per query → the layer's tokens;
each query is its position embedding plus the embeddings of z and of the condition. Beside the
transformer's output, every token position has its own linear read-out of z and of the condition's
Fourier features (a conditional probabilistic-PCA path that a small transformer cannot express:
position-specific linear maps of a global latent); the transformer models what is not linear.
Tokens enter and leave through a linear map per layer (their widths differ); every token position
has a learned layer embedding and a learned position embedding. The condition is the target
return scaled to [0, 1] over the dataset's range, through fixed Fourier features and an MLP,
separately for encoder and decoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ModelConfig:
    layer_tokens: list[int]  # tokens per layer
    layer_widths: list[int]  # values per token, per layer
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 4
    latent_dim: int = 32
    fourier_features: int = 16
    dropout: float = 0.0
    conditional_prior: bool = True  # p(z | condition) learned; else p(z) = N(0, I)


class FourierCondition(nn.Module):
    """c `[B]` → `[B, d_model]` from (c, sin 2^k π c, cos 2^k π c) for k < n."""

    def __init__(self, n: int, d_model: int):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n, dtype=torch.float32), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n + 1, d_model), nn.GELU(), nn.Linear(d_model, d_model))

    def features(self, c: torch.Tensor) -> torch.Tensor:
        angles = c[:, None] * self.freqs
        return torch.cat([c[:, None], angles.sin(), angles.cos()], dim=-1)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(c))


def _transformer(cfg: ModelConfig) -> nn.TransformerEncoder:
    block = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, 4 * cfg.d_model, cfg.dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(block, cfg.n_layers, norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False)


def add_vae_core(vae: nn.Module, cfg) -> None:
    """The parts every generator VAE has (`cfg`: a model config with d_model, n_heads, n_layers,
    dropout, latent_dim, fourier_features): the CLS token, the encoder's and decoder's condition
    embeddings, the two transformers and the maps to and from the latent.
    ValueError when d_model is not divisible by n_heads."""
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"d_model {cfg.d_model} is not divisible by n_heads {cfg.n_heads}")
    d = cfg.d_model
    vae.cls = nn.Parameter(0.02 * torch.randn(d))
    vae.enc_cond = FourierCondition(cfg.fourier_features, d)
    vae.dec_cond = FourierCondition(cfg.fourier_features, d)
    vae.encoder = _transformer(cfg)
    vae.decoder = _transformer(cfg)
    vae.to_latent = nn.Linear(d, 2 * cfg.latent_dim)
    vae.from_latent = nn.Linear(cfg.latent_dim, d)


class ParamVAE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.token_in = nn.ModuleList(nn.Linear(w, d) for w in cfg.layer_widths)
        self.token_out = nn.ModuleList(nn.Linear(d, w) for w in cfg.layer_widths)
        self.register_buffer("layer_ids", torch.cat([torch.full((n,), i, dtype=torch.long)
                                                     for i, n in enumerate(cfg.layer_tokens)]), persistent=False)
        self.layer_emb = nn.Embedding(len(cfg.layer_tokens), d)
        self.pos_emb = nn.Parameter(0.02 * torch.randn(sum(cfg.layer_tokens), d))
        add_vae_core(self, cfg)
        self.prior = (nn.Sequential(nn.Linear(2 * cfg.fourier_features + 1, d), nn.GELU(), nn.Linear(d, 2 * cfg.latent_dim))
                      if cfg.conditional_prior else None)
        # per-position linear read-out of (z, Fourier features of c): [tokens_l, latent + 2n + 1, width_l]
        k = cfg.latent_dim + 2 * cfg.fourier_features + 1
        self.readout = nn.ParameterList(nn.Parameter(torch.randn(n, k, w) / math.sqrt(k))
                                        for n, w in zip(cfg.layer_tokens, cfg.layer_widths))

    def _positions(self) -> torch.Tensor:
        return self.layer_emb(self.layer_ids) + self.pos_emb  # [T, d]

    def encode(self, tokens: list[torch.Tensor], c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer tokens `[B, n_l, w_l]` and condition `[B]` → (μ, log σ²) `[B, latent]`."""
        x = torch.cat([proj(t) for proj, t in zip(self.token_in, tokens)], dim=1) + self._positions()
        batch = x.shape[0]
        head = torch.stack([self.cls.expand(batch, -1), self.enc_cond(c)], dim=1)
        h = self.encoder(torch.cat([head, x], dim=1))[:, 0]
        mu, logvar = self.to_latent(h).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> list[torch.Tensor]:
        """Latent `[B, latent]` and condition `[B]` → per-layer tokens `[B, n_l, w_l]`."""
        zc = torch.stack([self.from_latent(z), self.dec_cond(c)], dim=1)  # [B, 2, d]
        # every query carries z and the condition as well (a strong, direct conditioning path)
        queries = self._positions() + zc.sum(dim=1, keepdim=True)
        h = self.decoder(torch.cat([zc, queries], dim=1))[:, 2:]
        u = torch.cat([z, self.dec_cond.features(c)], dim=-1)  # [B, k]
        return [proj(part) + torch.einsum("bk,tkw->btw", u, a)
                for proj, part, a in zip(self.token_out, h.split(self.cfg.layer_tokens, dim=1), self.readout)]

    def prior_params(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(z | c): learned from the condition, or N(0, I)."""
        if self.prior is None:
            zeros = c.new_zeros(c.shape[0], self.cfg.latent_dim)
            return zeros, zeros
        mu, logvar = self.prior(self.dec_cond.features(c)).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def sample_latent(self, c: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z = μ_p(c) + σ_p(c)·ε for the generation noise ε ~ N(0, τ²I)."""
        mu, logvar = self.prior_params(c)
        return mu + (0.5 * logvar).exp() * eps

    def forward(self, tokens: list[torch.Tensor], c: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(tokens, c)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        z = mu + eps * (0.5 * logvar).exp()
        return self.decode(z, c), mu, logvar


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor, prior_logvar: torch.Tensor,
                  free_bits: float = 0.0) -> torch.Tensor:
    """KL(q(z|x, c) ‖ p(z|c)) of diagonal Gaussians, summed over latent dims, mean over the batch.
    With `free_bits` > 0 each dimension's batch-mean KL counts as at least that many nats (no
    gradient below it), which keeps the decoder from ignoring z."""
    per_dim = 0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1.0)
    per_dim = per_dim.mean(0)
    if free_bits > 0:
        per_dim = per_dim.clamp_min(free_bits)
    return per_dim.sum()


def reconstruction_loss(pred: list[torch.Tensor], target: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared error of each layer's real (unpadded) values, averaged over layers with equal weight."""
    losses = []
    for p, t, m in zip(pred, target, masks):
        m = m.to(p.device)
        losses.append(((p - t).pow(2) * m).sum() / (m.sum() * p.shape[0]))
    return torch.stack(losses).mean()
