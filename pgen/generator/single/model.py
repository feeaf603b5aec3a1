"""The single-architecture VAE: a conditional transformer VAE over one architecture's parameter tokens.

Encoder: `[CLS, condition, tokens...]` → transformer → CLS → (μ, log σ²) of a global latent z.
Prior: p(z | condition), a small MLP on the condition's Fourier features giving one Gaussian or a
mixture of `prior_components` Gaussians (`vae.Prior`; N(0, I) with `conditional_prior=False`), so
that the latent can say which member a checkpoint resembles while the prior knows which members
reached a given return.
Decoder: `[z, condition, queries...]` → transformer → one output per query → the layer's tokens;
each query is its position embedding plus the embeddings of z and of the condition. Beside the
transformer's output, every token position has its own linear read-out of z and of the condition's
Fourier features (a conditional probabilistic-PCA path that a small transformer cannot express:
position-specific linear maps of a global latent); the transformer models what is not linear.
Tokens (`tokens.Tokenizer`) enter and leave through a linear map per layer (their widths differ);
every token position has a learned layer embedding and a learned position embedding. The
condition is the target return scaled to [0, 1] over the dataset's range, through fixed Fourier
features and an MLP, separately for encoder and decoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pgen.generator.vae import Prior, add_vae_core, gaussian, prior_from, prior_head, sample_prior, standard_prior


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
    null_condition: bool = False  # a learned "no condition" (classifier-free guidance)
    prior_components: int = 1  # K of the conditional prior, a mixture of K Gaussians (1: one Gaussian)


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
        self.prior = prior_head(2 * cfg.fourier_features + 1, cfg) if cfg.conditional_prior else None
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
        return gaussian(self.to_latent(h))

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> list[torch.Tensor]:
        """Latent `[B, latent]` and condition `[B]` → per-layer tokens `[B, n_l, w_l]`."""
        zc = torch.stack([self.from_latent(z), self.dec_cond(c)], dim=1)  # [B, 2, d]
        # every query carries z and the condition as well (a strong, direct conditioning path)
        queries = self._positions() + zc.sum(dim=1, keepdim=True)
        h = self.decoder(torch.cat([zc, queries], dim=1))[:, 2:]
        u = torch.cat([z, self.dec_cond.features(c)], dim=-1)  # [B, k]
        return [proj(part) + torch.einsum("bk,tkw->btw", u, a)
                for proj, part, a in zip(self.token_out, h.split(self.cfg.layer_tokens, dim=1), self.readout)]

    def prior_params(self, c: torch.Tensor) -> Prior:
        """p(z | c): learned from the condition (one Gaussian or a mixture), or N(0, I)."""
        if self.prior is None:
            return standard_prior(c.shape[0], self.cfg.latent_dim, c)
        return prior_from(self.prior(self.dec_cond.features(c)), self.cfg.prior_components)

    def sample_latent(self, c: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z = μ_p(c) + σ_p(c)·ε for the generation noise ε ~ N(0, τ²I) (`vae.sample_prior`)."""
        return sample_prior(self.prior_params(c), noise)

    def forward(self, tokens: list[torch.Tensor], c: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(tokens, c)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        z = mu + eps * (0.5 * logvar).exp()
        return self.decode(z, c), mu, logvar
