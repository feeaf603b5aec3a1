"""The arch-family VAE: one conditional transformer VAE for every architecture of a family.

Its tokens are the units of the architecture's graph (`family/archgraph.py`): each enters as the
embedding of what it is (its features and, for inputs and outputs, which observation feature or
action) plus two linear *messages* over its edges — the weights into it from the units of the
layer before and out of it to the units of the layer after, each weight times a learned map of the
other unit's embedding, averaged over the fan — and its biases. The decoder's queries get the
same messages computed on the family normaliser's centre for the architecture (its mean network,
or a trained one's grown into it), so they know what each unit is in that network.

Encoder: `[CLS, return, arch, units...]` → transformer → CLS → (μ, log σ²) of a global latent z.
Prior: p(z | return, arch), an MLP on the return's Fourier features and the arch embedding.
Decoder: `[z, return, arch, queries...]` → transformer → one vector h per unit; a weight block
between unit layers r and c is `P_role(h_r) Q_role(h_c)ᵀ / √k`, a per-unit block `w_role · h_r`
(roles: `archgraph.ROLES`). So any width and depth decodes, and the architecture (`arch_code`,
embedded by an MLP) conditions encoder, prior and decoder beside the return.

Linear read-out (`linear_readout`, the family's form of the single-architecture model's
per-position linear path): beside the transformer's read-out, every block gets a part that is
linear in u = (z, Fourier features of the return), with unit-specific maps computed from each
unit's context (its embedding plus the centre's messages, which do not depend on z): a weight
block adds `(A_role(ctx_r)·u)·B_role(ctx_c)ᵀ / √(k·|u|)`, a per-unit block `a_role(ctx_r)·u`. A small
transformer struggles to express such unit-specific linear maps of a global latent; these are
what a probabilistic PCA of the checkpoints would be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pgen.generator.family.archgraph import ARCH_CODE, ROLES, UNIT_FEATURES, ArchGraph, arch_code, arch_graph
from pgen.generator.vae import Prior, add_vae_core, gaussian, prior_from, prior_head, sample_prior, standard_prior
from pgen.policies.spec import PolicySpec

MODEL_TYPE = "arch-family"  # config.json "model.type" of a family version (single-arch versions have none)


@dataclass
class FamilyModelConfig:
    kind: str  # mlp | gru: which block roles the read-outs cover
    obs_dim: int
    action_dim: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    latent_dim: int = 32
    fourier_features: int = 6
    readout_dim: int = 64  # k of the bilinear read-out of a weight block
    dropout: float = 0.0
    conditional_prior: bool = True
    linear_readout: bool = False  # off in versions fitted before it existed (their config has no key)
    null_condition: bool = False  # a learned "no condition" (classifier-free guidance)
    prior_components: int = 1  # K of the conditional prior, a mixture of K Gaussians (1: one Gaussian)
    type: str = MODEL_TYPE


@dataclass
class ArchInputs:
    """What the model needs to know about one architecture, computed once per architecture."""

    graph: ArchGraph
    features: torch.Tensor  # [U, UNIT_FEATURES]
    ids: torch.Tensor  # [U]
    code: torch.Tensor  # [ARCH_CODE]
    centre: list[torch.Tensor]  # per block, the standardised centre network, [1, rows(, cols)]

    def to(self, device: torch.device) -> "ArchInputs":
        return ArchInputs(self.graph, self.features.to(device), self.ids.to(device), self.code.to(device),
                          [c.to(device) for c in self.centre])


def arch_inputs(spec: PolicySpec, centre_standardised: torch.Tensor) -> ArchInputs:
    """`centre_standardised`: `[P]` the normaliser's centre of `spec` divided by its scale."""
    graph = arch_graph(spec)
    features, ids = graph.unit_features()
    return ArchInputs(graph, features, ids, torch.from_numpy(arch_code(spec)),
                      graph.blocks_of(centre_standardised.float()[None]))


class UnitMessages(nn.Module):
    """Per-unit sums over its blocks (module doc): `[B, U, d]` from per-block values."""

    def __init__(self, roles: tuple[str, ...], d: int):
        super().__init__()
        weights = [r for r in roles if r.split(".")[-1] == "weight" or r.startswith("gru.ih") or r.startswith("gru.hh")]
        self.incoming = nn.ModuleDict({r.replace(".", "_"): nn.Linear(d, d, bias=False) for r in weights})
        self.outgoing = nn.ModuleDict({r.replace(".", "_"): nn.Linear(d, d, bias=False) for r in weights})
        self.per_unit = nn.ParameterDict({r.replace(".", "_"): nn.Parameter(0.02 * torch.randn(d))
                                          for r in roles if r not in weights})

    def forward(self, graph: ArchGraph, values: list[torch.Tensor], units: torch.Tensor) -> torch.Tensor:
        parts: list[list[torch.Tensor]] = [[] for _ in graph.layers]
        for block, v in zip(graph.blocks, values):
            key = block.role.replace(".", "_")
            rows = units[graph.unit_slice(block.rows)]
            if block.is_edges:
                cols = units[graph.unit_slice(block.cols)]
                parts[block.rows].append(v @ self.incoming[key](cols) / math.sqrt(v.shape[-1]))
                parts[block.cols].append(v.transpose(1, 2) @ self.outgoing[key](rows) / math.sqrt(v.shape[-2]))
            else:
                parts[block.rows].append(v[..., None] * self.per_unit[key])
        batch = values[0].shape[0]
        out = [torch.stack(p).sum(0) if p else units.new_zeros(batch, layer.size, units.shape[-1])
               for p, layer in zip(parts, graph.layers)]
        return torch.cat([o.expand(batch, -1, -1) for o in out], dim=1)


class FamilyVAE(nn.Module):
    def __init__(self, cfg: FamilyModelConfig):
        super().__init__()
        self.cfg = cfg
        d, roles = cfg.d_model, ROLES[cfg.kind]
        self.unit_features = nn.Linear(UNIT_FEATURES, d)
        self.unit_ids = nn.Embedding(1 + cfg.obs_dim + cfg.action_dim, d)
        self.arch = nn.Sequential(nn.Linear(ARCH_CODE, d), nn.GELU(), nn.Linear(d, d))
        self.enc_messages = UnitMessages(roles, d)
        self.centre_messages = UnitMessages(roles, d)
        self.centre_norm = nn.LayerNorm(d)
        add_vae_core(self, cfg)
        self.prior = prior_head(2 * cfg.fourier_features + 1 + d, cfg) if cfg.conditional_prior else None
        k = cfg.readout_dim
        edge_roles = list(self.enc_messages.incoming)
        self.read_rows = nn.ModuleDict({r: nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, k)) for r in edge_roles})
        self.read_cols = nn.ModuleDict({r: nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, k)) for r in edge_roles})
        self.read_units = nn.ModuleDict({r: nn.Linear(d, 1) for r in self.enc_messages.per_unit})
        if cfg.linear_readout:
            u = self.linear_inputs
            self.lin_rows = nn.ModuleDict({r: nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, k * u))
                                           for r in edge_roles})
            self.lin_cols = nn.ModuleDict({r: nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, k))
                                           for r in edge_roles})
            self.lin_units = nn.ModuleDict({r: nn.Linear(d, u) for r in self.enc_messages.per_unit})

    @property
    def linear_inputs(self) -> int:
        """|u|: the latent and the return's Fourier features, what the linear read-out is linear in."""
        return self.cfg.latent_dim + 2 * self.cfg.fourier_features + 1

    def _units(self, a: ArchInputs) -> torch.Tensor:
        return self.unit_features(a.features) + self.unit_ids(a.ids)  # [U, d]

    def _context(self, a: ArchInputs, units: torch.Tensor) -> torch.Tensor:
        """`[1, U, d]`: the units' embeddings plus the messages of the centre network."""
        return units + self.centre_norm(self.centre_messages(a.graph, a.centre, units))

    def encode(self, blocks: list[torch.Tensor], c: torch.Tensor, a: ArchInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised per-block values `[B, ...]` and condition `[B]` → (μ, log σ²) `[B, latent]`."""
        units = self._units(a)
        x = self._context(a, units) + self.enc_messages(a.graph, blocks, units)
        batch = x.shape[0]
        head = torch.stack([self.cls.expand(batch, -1), self.enc_cond(c), self.arch(a.code).expand(batch, -1)], dim=1)
        h = self.encoder(torch.cat([head, x], dim=1))[:, 0]
        return gaussian(self.to_latent(h))

    def decode(self, z: torch.Tensor, c: torch.Tensor, a: ArchInputs) -> list[torch.Tensor]:
        """Latent `[B, latent]` and condition `[B]` → standardised per-block values of `a`'s architecture."""
        batch = z.shape[0]
        head = torch.stack([self.from_latent(z), self.dec_cond(c), self.arch(a.code).expand(batch, -1)], dim=1)
        context = self._context(a, self._units(a))  # [1, U, d], the same for every row
        queries = context + head.sum(dim=1, keepdim=True)  # [B, U, d]
        h = self.decoder(torch.cat([head, queries], dim=1))[:, 3:]
        k = math.sqrt(self.cfg.readout_dim)
        u = torch.cat([z, self.dec_cond.features(c)], dim=-1) if self.cfg.linear_readout else None  # [B, |u|]
        out = []
        for block in a.graph.blocks:
            key = block.role.replace(".", "_")
            row_units = a.graph.unit_slice(block.rows)
            rows = h[:, row_units]
            if block.is_edges:
                col_units = a.graph.unit_slice(block.cols)
                cols = h[:, col_units]
                w = self.read_rows[key](rows) @ self.read_cols[key](cols).transpose(1, 2) / k
                if u is not None:
                    maps = self.lin_rows[key](context[0, row_units]).unflatten(-1, (self.cfg.readout_dim, -1))
                    p = torch.einsum("rkj,bj->brk", maps, u)  # [B, rows, k]: linear in u
                    w = w + p @ self.lin_cols[key](context[0, col_units]).T / (k * math.sqrt(u.shape[-1]))
                out.append(w)
            else:
                v = self.read_units[key](rows).squeeze(-1)
                if u is not None:
                    v = v + u @ self.lin_units[key](context[0, row_units]).T / math.sqrt(u.shape[-1])
                out.append(v)
        return out

    def prior_params(self, c: torch.Tensor, a: ArchInputs) -> Prior:
        """p(z | return, arch) (one Gaussian or a mixture), or N(0, I) without a conditional prior."""
        if self.prior is None:
            return standard_prior(c.shape[0], self.cfg.latent_dim, c)
        arch = self.arch(a.code).expand(c.shape[0], -1)
        return prior_from(self.prior(torch.cat([self.dec_cond.features(c), arch], dim=-1)), self.cfg.prior_components)

    def sample_latent(self, c: torch.Tensor, noise: torch.Tensor, a: ArchInputs) -> torch.Tensor:
        """z from p(z | return, arch) for the generation noise (`vae.sample_prior`)."""
        return sample_prior(self.prior_params(c, a), noise)

    def forward(self, blocks: list[torch.Tensor], c: torch.Tensor, a: ArchInputs,
                generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(blocks, c, a)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        return self.decode(mu + eps * (0.5 * logvar).exp(), c, a), mu, logvar
