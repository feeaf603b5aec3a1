"""The memorisation audit in every evaluation (noisy retrieval at the generator's novelty, interpolation
of the checkpoints nearest a target's return), the probe states of a slice, and the behaviour a fit is
validated on (and, with `generator.functional_weight`, trained on)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pgen.config import compose_config
from pgen.dataset.probes import Probes, probes_key, read_probes, write_probes
from pgen.evaluation.evaluate import evaluate_generator, matched_noise
from pgen.evaluation.training_data import PROBE_CHECKPOINTS, PROBE_EPISODES, open_slice
from pgen.generator.behaviour import PolicyOutputs, action_agreement, action_kl
from pgen.generator.fit import fit
from pgen.policies.nets import Actor
from pgen.policies.spec import PolicySpec
from pgen.store import CheckpointStore
from tests.test_generator import SMALL, TINY_GEN, fill_store, train_cfg


def test_matched_noise_gives_the_novelty_asked_for():
    """Noise of a known scale has a known distance: σ·‖ε‖ from rows that are their own nearest
    reference, so the σ found for a median novelty m is m · scale / median ‖ε‖."""
    rng = np.random.default_rng(0)
    refs = rng.normal(0, 100.0, (20, 50))  # far apart: a noisy row's nearest reference stays its own
    noise = rng.standard_normal((20, 50))
    scale = 3.0  # the median cross-run distance novelty is divided by

    def novelty(rows: np.ndarray) -> np.ndarray:
        return np.linalg.norm(rows[:, None] - refs[None], axis=-1).min(1) / scale

    sigma = matched_noise(refs, noise, 0.5, novelty)
    assert sigma == pytest.approx(0.5 * scale / np.median(np.linalg.norm(noise, axis=1)), rel=1e-6)
    assert np.median(novelty(refs + sigma * noise)) == pytest.approx(0.5, rel=1e-6)
    assert matched_noise(refs, noise, 0.0, novelty) == 0.0 and matched_noise(refs, noise, float("nan"), novelty) == 0.0


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """A tiny simple_spread generator (SMALL arch), trained with probe states, in a local store."""
    root = tmp_path_factory.mktemp("audit")
    store_uri = str(root / "store")
    fill_store(CheckpointStore(store_uri), runs=3, per_run=6)
    from pgen.commands.train_generator import train_generator

    gen = train_generator(train_cfg(store_uri, name="spread", epochs=3))
    return root, store_uri, gen


def test_every_evaluation_audits_the_generator_against_noisy_retrieval_and_interpolation(tiny_store):
    root, store_uri, gen = tiny_store
    cfg = compose_config("evaluate", [f"store.uri={store_uri}", "evaluate.episodes=3", "evaluate.targets=3",
                                      "evaluate.samples=3", "evaluate.max_top=2", "evaluate.states=2",
                                      "evaluate.interpolation_k=2", f"evaluate.out_dir={root / 'ev'}"])
    result = evaluate_generator(cfg)
    noisy, interp = result["noisy_retrieval"], result["interpolation"]
    for arm in (noisy, interp):
        assert set(arm) >= {"alignment_r2", "spearman", "normalised_score_top", "novelty_median", "agreement_mean"}
    # noisy retrieval: the retrieved checkpoint plus noise scaled to the generator's median novelty
    assert noisy["noise_std"] > 0 and noisy["novelty_median"] == pytest.approx(result["novelty_median"], abs=1e-3)
    assert len(result["noisy_retrieval_points"]) == len(result["points"]) == 4 * 3
    # interpolation: one policy per target, the average of the k checkpoints whose returns are nearest
    assert interp["k"] == 2 and len(result["interpolation_points"]) == 4
    store = CheckpointStore(store_uri)
    from pgen.dataset.slices import load_rows

    rows = load_rows(store, gen.info["env_key"], "agent", SMALL.arch_key, SMALL.layout.num_params,
                     run_ids=gen.info["dataset"]["train_runs"])
    target = result["targets"][0]["target"]
    nearest = np.argsort(np.abs(rows.returns - target), kind="stable")[:2]
    average = rows.params[nearest].mean(0)
    from pgen.evaluation.baselines import measure_baselines

    base = measure_baselines(store, gen.info, cfg.evaluate)
    from pgen.policies.nets import actor_from_flat

    assert result["interpolation_points"][0]["achieved"] == pytest.approx(
        base.achieved_return(actor_from_flat(SMALL, average)))
    from pgen.evaluation.report import format_result

    table = format_result(result)
    assert "generator (one request)" in table and "interpolation (k 2)" in table and "noisy retrieval (σ" in table


def test_probe_states_are_written_once_and_read_back(tiny_store):
    root, store_uri, gen = tiny_store
    store = CheckpointStore(store_uri)
    probes = read_probes(store, gen.info["env_key"], "agent")
    assert probes is not None and store.exists(probes_key(gen.info["env_key"], "agent"))
    # T steps of PROBE_CHECKPOINTS checkpoints' PROBE_EPISODES episodes, 3 agents each
    assert probes.obs.shape[1:] == (PROBE_CHECKPOINTS * PROBE_EPISODES * 3, SMALL.obs_dim)
    assert probes.starts.shape == probes.obs.shape[:2] and probes.starts[0].eq(1).all()
    assert len(probes.made_from["checkpoints"]) == PROBE_CHECKPOINTS
    # a later fit of the slice reads them; another writer cannot replace them
    again = open_slice(store, *(lambda c: (c.env, c.policy, c.generator))(train_cfg(store_uri)))
    assert torch.equal(again.probes.obs, probes.obs)
    other = Probes(torch.zeros_like(probes.obs), torch.ones_like(probes.starts))
    assert torch.equal(write_probes(store, gen.info["env_key"], "agent", other).obs, probes.obs)
    store.put_pointer(probes_key("bad", "agent"), b"not safetensors")
    with pytest.raises(ValueError, match="unreadable"):
        read_probes(store, "bad", "agent")


def test_behaviour_of_decoded_policies_on_probe_states():
    """The batched outputs of many parameter vectors are each network's own; the KL of a policy from
    itself is 0 and grows with a perturbation; greedy agreement counts equal argmaxes."""
    spec = PolicySpec("mlp", 6, (8,), 3, True)
    actors = [Actor(spec) for _ in range(2)]
    flat = torch.stack([torch.from_numpy(a.flat_params()) for a in actors])
    probes = Probes(torch.randn(4, 5, 6), torch.zeros(4, 5))
    out = PolicyOutputs(spec)(flat, probes)
    assert out.shape == (2, 4, 5, 3)
    torch.testing.assert_close(out[1], actors[1](probes.obs.reshape(-1, 6))[0].reshape(4, 5, 3))
    assert action_kl(spec, out, out).abs().max() < 1e-6 and action_agreement(spec, out, out).eq(1).all()
    worse = PolicyOutputs(spec)(flat + 0.5 * torch.randn_like(flat), probes)
    assert (action_kl(spec, out, worse) > 0).all() and action_agreement(spec, out, worse).le(1).all()


def test_a_fit_with_probes_reports_held_out_behaviour_and_trains_on_it(tiny_store):
    root, store_uri, gen = tiny_store
    sl = open_slice(CheckpointStore(store_uri), *(lambda c: (c.env, c.policy, c.generator))(train_cfg(store_uri)))
    plain = fit(TINY_GEN, sl.data, SMALL, seed=0, probes=sl.probes)
    last = plain.history[-1]
    assert 0 <= last["val_action_agreement"] <= 1 and last["val_action_kl"] >= 0 and "train_action_kl" not in last
    assert set(plain.behaviour) == {"model_agreement", "model_kl", "nearest_train_agreement", "nearest_train_kl",
                                    "mean_agreement", "mean_kl"}
    functional = fit(replace(TINY_GEN, functional_weight=1.0), sl.data, SMALL, seed=0, probes=sl.probes)
    assert functional.history[-1]["train_action_kl"] > 0
    with pytest.raises(ValueError, match="functional_weight > 0 needs the slice's probe states"):
        fit(replace(TINY_GEN, functional_weight=1.0), sl.data, SMALL, seed=0)
    # without probes the fit is the same as before: no behaviour, the same losses
    no_probes = fit(TINY_GEN, sl.data, SMALL, seed=0)
    assert no_probes.behaviour is None and no_probes.history[-1]["val_recon"] == pytest.approx(last["val_recon"])


def test_classifier_free_guidance_decodes_away_from_the_unconditional_policy(tiny_store):
    """With `generator.condition_dropout`, the model learns "no condition" as well; a version fitted
    with `generator.guidance` w decodes dec(none) + w · (dec(return) − dec(none)), and keeps doing so
    when loaded; w 1 is plain conditioning."""
    root, store_uri, _ = tiny_store
    sl = open_slice(CheckpointStore(store_uri), *(lambda c: (c.env, c.policy, c.generator))(train_cfg(store_uri)))
    guided = fit(replace(TINY_GEN, condition_dropout=0.3, guidance=2.0), sl.data, SMALL, seed=0).generator
    assert guided.guidance == 2.0 and guided.model.dec_cond.null is not None
    noise = torch.zeros(1, guided.latent_dim)
    c = guided.normalizer.condition(torch.tensor([-70.0], dtype=torch.float64)).float()
    with torch.no_grad():
        z = guided.model.sample_latent(c, noise)
        conditioned = guided.tokenizer.flat(guided.model.decode(z, c))
        free = guided.tokenizer.flat(guided.model.decode(z, torch.full_like(c, float("nan"))))
    expected = guided.normalizer.unstandardise(free + 2.0 * (conditioned - free), guided.tokenizer).numpy()
    np.testing.assert_allclose(guided.decode(np.array([-70.0]), noise), expected, atol=1e-5)
    assert not np.allclose(expected, guided.normalizer.unstandardise(conditioned, guided.tokenizer).numpy())
    from pgen.generator.versions import generator_files, read_generator

    files = generator_files(guided, {"final": {}})
    loaded = read_generator(lambda f: files[f], "guided")
    np.testing.assert_allclose(loaded.generate(-70.0, 2, seed=1), guided.generate(-70.0, 2, seed=1), atol=1e-5)
    with pytest.raises(ValueError, match="guidance other than 1 needs generator.condition_dropout > 0"):
        fit(replace(TINY_GEN, guidance=2.0), sl.data, SMALL, seed=0)
