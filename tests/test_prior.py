"""The conditional prior p(z | return) as a mixture of K Gaussians (`generator.prior_components`): its KL
bound, how generation picks a component, and a mixture-prior version fitted, registered and generated."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pgen.commands.train_generator import train_generator
from pgen.dataset.slices import Slice, load_rows
from pgen.envs import env_key
from pgen.generator.fit import fit
from pgen.generator.vae import Prior, kl_divergence, kl_to_prior, sample_prior
from pgen.generator.versions import load_generator
from pgen.policies.nets import Actor
from pgen.store import CheckpointStore
from tests.test_generator import SMALL, SPREAD, TINY_GEN, fill_store, train_cfg


def posterior_and_prior(k: int, batch: int = 5, latent: int = 3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    mu, logvar = torch.randn(batch, latent, generator=g), 0.3 * torch.randn(batch, latent, generator=g)
    prior = Prior(torch.log_softmax(torch.randn(batch, k, generator=g), -1), 2 * torch.randn(batch, k, latent, generator=g),
                  0.3 * torch.randn(batch, k, latent, generator=g))
    return mu, logvar, prior


def test_one_component_is_the_gaussian_kl_and_equal_components_are_one_gaussian():
    mu, logvar, prior = posterior_and_prior(1)
    one = kl_divergence(mu, logvar, prior.mu[:, 0], prior.logvar[:, 0])
    assert torch.equal(kl_to_prior(mu, logvar, prior), one)
    same = Prior(torch.full((5, 3), -np.log(3.0)), prior.mu.expand(-1, 3, -1), prior.logvar.expand(-1, 3, -1))
    assert float(kl_to_prior(mu, logvar, same)) == pytest.approx(float(one), rel=1e-5)


def test_the_mixture_kl_bound_lies_between_the_true_kl_and_the_best_single_component():
    """KL(q ‖ Σ π_k N_k) ≤ −log Σ π_k e^(−KL_k) ≤ min_k KL_k − log π_k: the bound the fit minimises is
    above the true KL (estimated from 200,000 samples of q) and below any one component's cost."""
    mu, logvar, prior = posterior_and_prior(3, batch=4)
    bound = float(kl_to_prior(mu, logvar, prior))
    n = 200_000
    z = mu + (0.5 * logvar).exp() * torch.randn(n, *mu.shape, generator=torch.Generator().manual_seed(1))
    log_q = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)  # [n, B]
    comp = torch.distributions.Normal(prior.mu, (0.5 * prior.logvar).exp())  # [B, K, L]
    log_p = torch.logsumexp(prior.log_weights + comp.log_prob(z[:, :, None]).sum(-1), -1)  # [n, B]
    true_kl = float((log_q - log_p).mean())
    assert true_kl <= bound + 0.02
    per = torch.stack([kl_divergence(mu[i:i + 1], logvar[i:i + 1], prior.mu[i, k][None], prior.logvar[i, k][None])
                       - prior.log_weights[i, k] for i in range(4) for k in range(3)]).reshape(4, 3)
    assert bound <= float(per.min(1).values.mean()) + 1e-5


def test_generation_takes_the_component_whose_cumulative_weight_passes_the_uniform():
    latent = 2
    prior = Prior(torch.log(torch.tensor([[0.2, 0.8]])).expand(4, -1),
                  torch.tensor([[[-5.0, -5.0], [5.0, 5.0]]]).expand(4, -1, -1), torch.zeros(4, 2, latent))
    noise = torch.tensor([[0.0, 0.0, 0.1], [0.0, 0.0, 0.19], [1.0, -1.0, 0.21], [0.0, 0.0, 0.99]])
    z = sample_prior(prior, noise)
    assert z.tolist() == [[-5.0, -5.0], [-5.0, -5.0], [6.0, 4.0], [5.0, 5.0]]
    u = torch.rand(20_000, 1, generator=torch.Generator().manual_seed(0))
    many = sample_prior(Prior(prior.log_weights[:1].expand(20_000, -1), prior.mu[:1].expand(20_000, -1, -1),
                              prior.logvar[:1].expand(20_000, -1, -1)), torch.cat([torch.zeros(20_000, latent), u], 1))
    assert float((many[:, 0] < 0).float().mean()) == pytest.approx(0.2, abs=0.01)


def test_a_mixture_prior_version_is_fitted_registered_and_generates_the_same_policies(tmp_path):
    store_uri = str(tmp_path / "store")
    fill_store(CheckpointStore(store_uri))
    gen = train_generator(train_cfg(store_uri, name="mix", prior_components=3, epochs=2))
    loaded = load_generator(CheckpointStore(store_uri), "mix")
    assert loaded.model.cfg.prior_components == 3 and loaded.info["model"]["prior_components"] == 3
    prior = loaded.model.prior_params(torch.tensor([0.1, 0.9]))
    assert prior.mu.shape == (2, 3, TINY_GEN.latent_dim)
    assert torch.allclose(prior.log_weights.exp().sum(-1), torch.ones(2))
    noise = loaded.noise(4, seed=3)
    assert noise.shape == (4, TINY_GEN.latent_dim + 1) and 0 <= float(noise[:, -1].min()) <= float(noise[:, -1].max()) < 1
    a = gen.generate([-70.0, -45.0], num=3, seed=7)
    assert a.shape == (6, Actor(SMALL).layout.num_params) and np.isfinite(a).all()
    assert np.array_equal(a, loaded.generate([-70.0, -45.0], num=3, seed=7))
    assert not np.array_equal(a, loaded.generate([-70.0, -45.0], num=3, seed=8))


@pytest.mark.parametrize("changes, message", [
    ({"prior_components": 0}, "generator.prior_components must be an integer >= 1"),
    ({"prior_components": 2, "conditional_prior": False}, "> 1 only with generator.conditional_prior=true"),
])
def test_a_bad_prior_is_refused_with_a_clear_error(tmp_path, changes, message):
    store = CheckpointStore(str(tmp_path / "store"))
    fill_store(store, runs=2, per_run=3)
    data = load_rows(store, env_key(SPREAD), "agent", SMALL.arch_key, Actor(SMALL).layout.num_params)
    with pytest.raises(ValueError, match=message):
        fit(replace(TINY_GEN, **changes), Slice.of(SMALL, data), SMALL, seed=0)
