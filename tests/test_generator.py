"""The generator: tokenisation, augmentation, normalisation, the metrics, training, versions in the
store (local and S3), `pgen generate` / `pgen evaluate` error cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from pgen.commands.train_generator import train_generator
from pgen.config import CalibrationSettings, SingleGeneratorConfig, compose_config
from pgen.dataset.slices import ParamDataset, Slice, load_rows, split_by_run
from pgen.envs import env_key
from pgen.evaluation.calibration import calibration_curve, validation
from pgen.evaluation.metrics import (action_agreement, alignment_r2, cross_run_nn_median, isotonic_increasing,
                                     learning_signal, min_relative_l2, nearest, normalised_score, r2_gain, spearman,
                                     target_percentiles)
from pgen.generator.augment import permutation_index
from pgen.generator.condition import condition_for
from pgen.generator.fit import fit
from pgen.generator.single.kind import return_balance_weights
from pgen.generator.single.normalize import Normalizer
from pgen.generator.single.tokens import Tokenizer
from pgen.generator.versions import GeneratorNotFound, list_generators, load_generator, resolve_model
from pgen.policies.nets import Actor
from pgen.policies.policy_file import read_policy_file
from pgen.policies.spec import PolicySpec
from pgen.store import CheckpointStore, params_checksum

SPECS = [PolicySpec("mlp", 18, (64, 64), 5, True), PolicySpec("mlp", 7, (16,), 3, False, "relu"),
         PolicySpec("gru", 10, (12, 8), 4, True), PolicySpec("gru", 6, (5, 7), 2, False)]
TINY_GEN = SingleGeneratorConfig(d_model=16, n_layers=1, n_heads=2, latent_dim=4, fourier_features=4, epochs=4,
                           batch_size=8, kl_warmup_epochs=2, log_every_s=60,
                           calibration=CalibrationSettings(points=4, samples=1, episodes=4, validation_samples=2))
# the same small calibration on a command line, for the tests whose fits calibrate as a user's do but that
# test something else (the default calibration is tested by test_train_generator_and_generate_against_s3)
TINY_CALIBRATION = ["generator.calibration.points=4", "generator.calibration.samples=1",
                    "generator.calibration.episodes=4", "generator.calibration.refine=2",
                    "generator.calibration.validation_samples=2"]
SPREAD = compose_config("train-generator").env  # simple_spread: one group "agent", obs 18, 5 actions
SMALL = PolicySpec("mlp", 18, (8,), 5, True)


def pgen(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "pgen.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("mode", ["neuron", "chunk"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.arch_key)
def test_tokenizer_round_trips_exactly(spec, mode):
    layout = Actor(spec).layout
    tok = Tokenizer(layout, mode, chunk_size=13)
    x = torch.randn(3, layout.num_params)
    tokens = tok.tokens(x)
    assert torch.equal(tok.flat(tokens), x)
    assert sum(int(m.sum()) for m in tok.masks()) == layout.num_params
    if mode == "neuron" and spec.kind == "mlp":
        # one token per output unit: its incoming weights then its bias
        tokens_of = {layer.name: layer.tokens for layer in tok.layers}
        assert [tokens_of[f"layers.{i}"] for i in range(len(spec.hidden))] + [tokens_of["head"]] == [
            *spec.hidden, spec.action_dim]
        actor = Actor(spec)
        first = [layer.name for layer in tok.layers].index("layers.0")
        t0 = tok.tokens(torch.from_numpy(actor.flat_params())[None])[first][0, 2]
        assert torch.equal(t0, torch.cat([actor.layers[0].weight[2], actor.layers[0].bias[2:3]]).detach())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.arch_key)
def test_hidden_unit_permutation_preserves_the_function(spec):
    a, b = Actor(spec), Actor(spec)
    flat = a.flat_params()
    idx = permutation_index(spec, torch.Generator().manual_seed(1)).numpy()
    assert sorted(idx.tolist()) == list(range(flat.size)) and (idx != np.arange(flat.size)).any()
    b.load_flat_params(flat[idx])
    x = torch.randn(6, 4, spec.obs_dim)
    starts = torch.zeros(6, 4)
    starts[0] = 1
    h0 = a.initial_state(4) if a.recurrent else None
    torch.testing.assert_close(a.forward_sequence(x, h0, starts), b.forward_sequence(x, h0, starts), atol=1e-5, rtol=1e-5)


def test_split_by_run_never_splits_a_run():
    runs = np.array(["a"] * 5 + ["b"] * 4 + ["c"] * 6 + ["d"] * 2 + ["e"] * 3)
    train, val = split_by_run(runs, 0.4, seed=3)
    assert set(runs[train]).isdisjoint(runs[val]) and len(set(runs[val])) == 2
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(runs)))
    assert len(split_by_run(np.array(["a", "a"]), 0.5, 0)[1]) == 0  # one run: nothing to hold out


def test_return_balance_weights_give_each_return_bin_equal_mass():
    returns = np.array([-100.0] * 2 + [-50.0] * 8 + [0.0] * 30)  # rare low, common high
    uniform = return_balance_weights(returns, 0.0)
    np.testing.assert_allclose(uniform, 1 / 40)
    balanced = return_balance_weights(returns, 1.0, bins=4)
    assert balanced.sum() == pytest.approx(1.0)
    for level in (-100.0, -50.0, 0.0):  # three occupied bins, a third of the mass each
        assert balanced[returns == level].sum() == pytest.approx(1 / 3)
    half = return_balance_weights(returns, 0.5, bins=4)
    assert uniform[0] < half[0] < balanced[0]  # alpha interpolates
    np.testing.assert_allclose(return_balance_weights(np.full(5, 3.0), 1.0), 0.2)  # one return: uniform
    with pytest.raises(ValueError, match="generator.return_balance must be a finite number >= 0"):
        return_balance_weights(returns, -1.0)


def test_normalizer_centres_per_parameter_scales_per_layer_and_round_trips():
    layout = Actor(SPECS[0]).layout
    tok = Tokenizer(layout)
    params = np.random.default_rng(0).normal(3.0, 2.0, (20, layout.num_params)).astype(np.float32)
    norm = Normalizer.fit(params, np.linspace(-50, -10, 20), tok)
    x = norm.standardise(torch.from_numpy(params), tok)
    assert x.mean(0).abs().max().item() < 1e-4  # every parameter centred
    for i in range(len(tok.layers)):
        col = x[:, tok.layer_of_param == i]
        assert abs(col.pow(2).mean().sqrt().item() - 1) < 1e-3  # unit scale per layer
    torch.testing.assert_close(norm.unstandardise(x, tok), torch.from_numpy(params), atol=1e-4, rtol=1e-5)
    c = norm.condition(torch.tensor([-50.0, -10.0, 30.0, -90.0, -30.0])).tolist()
    assert c == pytest.approx([0.0, 1.0, 2.0, -1.0, 0.5], abs=1e-6)
    # the condition is the return's percentile: a few very low returns do not squash the top
    skewed = Normalizer.fit(params, np.array([-150.0] * 2 + list(np.linspace(-60, -40, 18))), tok)
    assert skewed.condition(torch.tensor([-50.0])).item() == pytest.approx(0.55, abs=0.03)
    assert torch.equal(Normalizer.from_tensors(norm.tensors()).returns.knots, norm.returns.knots)


def test_metrics_match_their_definitions():
    t = np.array([-60.0, -50.0, -40.0, -30.0])
    assert alignment_r2(t, t) == 1.0
    assert alignment_r2(t, t + 5) == pytest.approx(1 - 4 * 25 / 500)  # a bias is penalised
    assert alignment_r2(t, np.full(4, -45.0)) == pytest.approx(0.0)  # the mean is worth 0
    assert spearman(t, t ** 3) == pytest.approx(1.0) and spearman(t, -t) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.9486833)
    assert normalised_score(-30.0, r_random=-80.0, r_top=-30.0) == 1.0
    assert normalised_score(-80.0, r_random=-80.0, r_top=-30.0) == 0.0
    # the R² gain of paired arms and its bootstrap standard error within each target
    t = np.repeat([-60.0, -50.0, -40.0], 8)
    noise = np.random.default_rng(0).normal(0, 3, t.size)
    assert r2_gain(t, t + noise, t + noise) == (0.0, 0.0)
    gain, se = r2_gain(t, t + 4 * noise, t + noise)
    assert gain == pytest.approx(alignment_r2(t, t + noise) - alignment_r2(t, t + 4 * noise)) and 0 < se < gain
    gain, se = r2_gain(t, t + noise, t + noise + np.random.default_rng(1).normal(0, 0.3, t.size))
    assert abs(gain) < se  # a difference within the noise of the pairs
    returns = np.arange(-100.0, -49.0)  # 51 returns: percentile q is -100 + q / 2
    assert target_percentiles(returns, 3) == [-97.5, -75.0, -52.5, -50.0]  # 5, 50, 95 and the maximum
    refs = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0], [10.0, 1.0]])
    d, i = nearest(np.array([[3.0, 3.0], [9.0, 0.0]]), refs)
    assert i.tolist() == [1, 2] and d == pytest.approx([1.0, 1.0])
    # nearest neighbour of another run: 0→(3,4) 5, (3,4)→0 5, (10,0)→(3,4) √65, (10,1)→(3,4) √58
    assert cross_run_nn_median(refs, np.array(["a", "b", "c", "c"])) == pytest.approx(np.median([5, 5, 65 ** .5, 58 ** .5]))
    assert min_relative_l2(np.array([[3.0, 4.05]]), refs)[0] == pytest.approx(0.01, rel=1e-5)
    a = Actor(SMALL)
    obs = torch.randn(5, 3, 18)
    assert action_agreement(a, a, obs, torch.ones(5, 3)) == 1.0


def test_learning_signal_flags_a_population_that_learned_nothing():
    # the case a new user met: every member at uniform random's level
    flat = learning_signal(np.array([-17.0, -16.6, -18.0, -19.0]), episode_std=6.0, episodes=20, r_random=-14.9)
    assert not flat["learned"] and len(flat["reasons"]) == 2
    assert "no better than uniform random" in flat["reasons"][0] and "span 2.4" in flat["reasons"][1]
    good = learning_signal(np.linspace(-180, -40, 100), episode_std=20.0, episodes=20, r_random=-80.0)
    assert good["learned"] and good["r_top"] == pytest.approx(np.linspace(-180, -40, 100)[-10:].mean())
    # far above random, but every checkpoint the same within the noise: nothing to condition on
    assert learning_signal(np.array([-40.0, -41.0, -39.5]), 8.0, 20, -80.0)["reasons"][0].startswith("the checkpoints'")
    # a better-than-random top, by less than two standard errors: not learned
    assert not learning_signal(np.array([-80.0, -60.0, -78.0]), 30.0, 4, -80.0, r_top=-60.0)["learned"]


def known_return(rng: np.random.Generator, offset: float = -100.0
                 ) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """(SMALL's initial policy, a random unit direction u, play): a "return" that needs no env,
    `offset + 10 · (params − init) · u` per parameter row."""
    init = Actor(SMALL).flat_params()
    u = rng.normal(size=init.size)
    u /= np.linalg.norm(u)

    def play(p: np.ndarray) -> np.ndarray:
        return offset + 10.0 * (np.asarray(p, np.float64) - init) @ u

    return init, u, play


def test_a_higher_condition_yields_a_higher_return_and_a_condition_blind_generator_does_not():
    """The core promise on data where the return is a known function of the weights (a projection of
    their distance from the initial policy), so achieved returns need no env: conditioned on the
    return, generated policies' returns follow the targets; conditioned on shuffled returns, not."""
    rng = np.random.default_rng(0)
    init, u, play = known_return(rng, offset=0.0)
    achieved = play

    params, runs = [], []
    for r in range(5):  # each run drifts along u at its own speed and along a direction of its own
        drift = rng.normal(size=init.size)
        drift -= (drift @ u) * u
        drift /= np.linalg.norm(drift)
        speed = rng.uniform(0.5, 1.5)
        for k in range(30):
            params.append(init + 0.1 * k * speed * u + 0.05 * k * drift + rng.normal(0, 0.01, init.size))
            runs.append(f"r{r}")
    params = np.stack(params).astype(np.float32)
    returns, n = achieved(params), len(params)
    cfg = replace(TINY_GEN, epochs=40, batch_size=16, kl_warmup_epochs=10)
    targets = np.linspace(np.percentile(returns, 5), np.percentile(returns, 95), 8)

    def rho(condition: np.ndarray) -> float:
        data = ParamDataset(params, condition, np.array(runs), np.tile(np.arange(30), 5), np.ones(n), np.full(n, 4))
        gen = fit(cfg, Slice.of(SMALL, data), SMALL, seed=0).generator
        return spearman(np.repeat(targets, 3), achieved(gen.generate(targets, num=3, seed=1, temperature=0.5)))

    assert rho(returns) >= 0.8
    assert rho(rng.permutation(returns)) < 0.5  # the same model and data, blind to the return


def test_isotonic_regression_is_the_closest_non_decreasing_fit():
    y = np.array([1.0, 3.0, 2.0, 4.0, 0.0, 5.0])
    fit_ = isotonic_increasing(y)
    assert np.allclose(fit_, [1.0, 2.25, 2.25, 2.25, 2.25, 5.0])
    assert np.all(np.diff(fit_) >= 0) and np.array_equal(isotonic_increasing([1.0, 2.0, 3.0]), [1.0, 2.0, 3.0])
    # weights pull a pooled block towards the heavier value
    assert np.allclose(isotonic_increasing([2.0, 0.0], weights=[3.0, 1.0]), [1.5, 1.5])
    rng = np.random.default_rng(0)
    for _ in range(20):  # no other non-decreasing sequence is closer (brute force over perturbations)
        v = rng.normal(size=7)
        best = isotonic_increasing(v)
        for _ in range(50):
            other = np.sort(best + rng.normal(0, 0.1, 7))
            assert ((other - v) ** 2).sum() >= ((best - v) ** 2).sum() - 1e-12


def test_condition_for_inverts_the_fitted_curve():
    cal = {"conditions": [-150.0, -130.0, -100.0, -80.0, -60.0], "fitted": [-90.0, -90.0, -80.0, -65.0, -55.0]}
    got = condition_for(cal, [-80.0, -72.5, -55.0, -50.0, -40.0, -95.0, -120.0])
    assert np.allclose(got, [-100.0, -90.0, -60.0, -60.0, -60.0, -150.0, -150.0], atol=1e-5)  # ends: the ends
    assert np.all(np.diff(condition_for(cal, np.linspace(-120, -40, 50))) >= 0)  # monotone in the target
    ident = {"conditions": [-100.0, -50.0], "fitted": [-100.0, -50.0]}
    assert np.allclose(condition_for(ident, [-90.0, -60.0, -40.0]), [-90.0, -60.0, -50.0])


def test_calibration_makes_a_compressed_generator_play_the_returns_it_is_asked_for():
    """Data where the recorded return is a compressing function of the return the weights play (known
    without an env): conditioned on the record, the generator plays g⁻¹(t) for a request t (R² well
    below 1); calibrated on what its policies play, it plays t."""
    rng = np.random.default_rng(1)
    init, u, play = known_return(rng)

    params, runs = [], []
    for r in range(5):
        for k in range(30):
            params.append(init + 0.2 * k * u + rng.normal(0, 0.01, init.size))
            runs.append(f"r{r}")
    params = np.stack(params).astype(np.float32)
    plays = play(params)
    lo, hi = plays.min(), plays.max()
    recorded = lo + (plays - lo) ** 2 / (hi - lo)  # monotone, squeezes the low returns together
    n = len(params)
    data = ParamDataset(params, recorded, np.array(runs), np.tile(np.arange(30), 5), np.ones(n), np.full(n, 4))
    gen = fit(replace(TINY_GEN, epochs=40, batch_size=16, kl_warmup_epochs=10), Slice.of(SMALL, data), SMALL, seed=0).generator
    targets = np.linspace(np.percentile(recorded, 5), np.percentile(recorded, 95), 8)

    def r2() -> float:
        return alignment_r2(np.repeat(targets, 3), play(gen.generate(targets, num=3, seed=1)))

    uncalibrated = r2()
    curve = calibration_curve(gen, recorded, CalibrationSettings(points=16, samples=4, episodes=1), play)
    assert np.all(np.diff(curve["fitted"]) >= 0) and curve["conditions"] == sorted(curve["conditions"])
    gen.info["calibration"] = curve
    assert r2() >= 0.9 and uncalibrated <= 0.75, (r2(), uncalibrated)
    # its own validation grid agrees: adopted
    check = curve["validation"]
    assert curve["adopted"] and check["adopted"] and check["r2_calibrated"] > check["r2_as_asked"] + 0.1, check
    gen.calibrated = False
    assert r2() == uncalibrated
    gen.calibrated = True
    # a curve that conditions 30 units too low misaligns what the model gets right: its validation
    # rejects it, and a version holding a rejected curve is conditioned on the target as asked
    wrong = {**curve, "fitted": (np.asarray(curve["fitted"]) + 30.0).tolist()}
    check = validation(gen, wrong, recorded, 4, play)
    assert not check["adopted"] and check["r2_calibrated"] < check["r2_as_asked"], check
    # a curve through the identity changes nothing: no gain beyond rounding, and no noise in it
    same = validation(gen, {**curve, "fitted": list(curve["conditions"])}, recorded, 4, play)
    assert same["r2_calibrated"] == pytest.approx(same["r2_as_asked"], abs=1e-6) and same["gain_se"] < 1e-6
    # a real gain smaller than the margin's standard errors is not adopted either
    good = validation(gen, curve, recorded, 4, play, margin=0.0)
    assert good["adopted"] and not validation(gen, curve, recorded, 4, play,
                                              margin=1.01 * (good["r2_calibrated"] - good["r2_as_asked"]) / good["gain_se"])["adopted"]
    gen.info["calibration"] = {**wrong, "validation": check, "adopted": False}
    assert gen.calibration_for() is None and r2() == uncalibrated
    with pytest.raises(ValueError, match="calibration.points must be 0"):
        calibration_curve(gen, recorded, CalibrationSettings(points=1), play)


def test_a_slice_that_learned_nothing_is_flagged_by_train_generator_and_evaluate(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    for rows in synthetic_records(SMALL):  # every checkpoint plays at uniform random's level, give or take
        for seq, row in enumerate(rows):
            row["return_mean"], row["return_std"] = -80.0 + 0.1 * seq, 20.0
            store.write_part([row], row["env_key"], "agent", SMALL.arch_key, row["run_id"], seq)
    common = [f"store.uri={store.uri}"]
    out = pgen("train-generator", *common, "policy.hidden=[8]", "generator.epochs=2", "generator.d_model=16",
               "generator.n_layers=1", "generator.latent_dim=4", *TINY_CALIBRATION, f"out_dir={tmp_path / 'gen'}",
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "learned nothing a generator can aim at" in out.stderr and "population.max_env_steps" in out.stderr
    gen = load_generator(store, None)
    assert gen.info["dataset"]["learning_signal"]["learned"] is False
    out = pgen("evaluate", *common, "evaluate.episodes=4", "evaluate.samples=1", "evaluate.targets=2",
               "evaluate.max_top=2", "evaluate.states=2", f"evaluate.out_dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("!!!") and "WARNING" in out.stdout.splitlines()[-1]
    result = json.loads(next((tmp_path / "ev").rglob("evaluation.json")).read_text())
    assert result["learned_nothing"] is True and result["learning_signal"]["reasons"]


def synthetic_records(spec: PolicySpec, runs: int = 3, per_run: int = 12, seed: int = 0,
                      prefix: str = "syn") -> list[list[dict]]:
    """Checkpoints that move from a shared init along a per-run direction; return grows with progress;
    runs `<prefix>-m000`, `<prefix>-m001`, …"""
    rng = np.random.default_rng(seed)
    init = Actor(spec).flat_params()
    out = []
    for r in range(runs):
        direction = rng.normal(0, 0.05, init.size).astype(np.float32)
        rows = []
        for k in range(per_run):
            params = (init + k * direction).astype(np.float32)
            rows.append({"run_id": f"{prefix}-m{r:03d}", "member": r, "env_id": SPREAD.id, "env_key": env_key(SPREAD),
                         "group": "agent", "arch": spec.arch_key, "step": 1000 * k, "update": k,
                         "return_mean": -80.0 + 4.0 * k + r, "return_std": 1.0, "episodes": 4,
                         "num_params": int(params.size), "params": params, "checksum": params_checksum(params),
                         "created_at": datetime.now(timezone.utc), "seed": r, "origin": "trained"})
        out.append(rows)
    return out


def fill_store(store: CheckpointStore, spec: PolicySpec = SMALL, **kw) -> None:
    for rows in synthetic_records(spec, **kw):
        for seq, row in enumerate(rows):
            store.write_part([row], row["env_key"], "agent", spec.arch_key, row["run_id"], seq)


def train_cfg(store_uri: str, **generator):
    out = Path(store_uri).parent / "generators"
    cfg = compose_config("train-generator", [f"store.uri={store_uri}", "policy.hidden=[8]", f"out_dir={out}"])
    cfg.generator = replace(TINY_GEN, **generator)
    return cfg


@pytest.mark.parametrize("return_balance", [0.0, 1.0])
def test_fit_resumes_exactly_from_a_saved_state(tmp_path, return_balance):
    store = CheckpointStore(str(tmp_path / "store"))
    fill_store(store)
    data = load_rows(store, env_key(SPREAD), "agent", SMALL.arch_key, Actor(SMALL).layout.num_params)
    cfg = replace(TINY_GEN, permute_prob=0.5, return_balance=return_balance)
    if return_balance:
        with pytest.raises(ValueError, match="generator.return_balance must be a finite number >= 0"):
            fit(replace(cfg, return_balance=-0.5), Slice.of(SMALL, data), SMALL, seed=0)
    full = fit(cfg, Slice.of(SMALL, data), SMALL, seed=0)

    def stop_after_two(metrics, save):
        if metrics["epoch"] == 2:
            save(tmp_path / "state")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, Slice.of(SMALL, data), SMALL, seed=0, callback=stop_after_two)
    resumed = fit(cfg, Slice.of(SMALL, data), SMALL, seed=0, resume=tmp_path / "state")
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"], rel=1e-5)
    for (k, a), b in zip(full.generator.model.state_dict().items(), resumed.generator.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_a_warm_start_begins_from_the_previous_weights_and_says_so(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    fill_store(store)
    data = load_rows(store, env_key(SPREAD), "agent", SMALL.arch_key, Actor(SMALL).layout.num_params)
    first = fit(TINY_GEN, Slice.of(SMALL, data), SMALL, seed=0).generator
    first.info.update(name="spread", version="v0001")  # as registered
    # lr 0: the warm-started model is the previous one, weight for weight (AdamW's decay scales with lr)
    again = fit(replace(TINY_GEN, epochs=1, lr=0.0), Slice.of(SMALL, data), SMALL, seed=1, warm_start=first).generator
    for (k, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert again.info["warm_start"] == {"from": first.model_id, "weights": True, "normalizer": "refitted to this data"}
    cold = fit(replace(TINY_GEN, epochs=1, lr=0.0), Slice.of(SMALL, data), SMALL, seed=1).generator
    assert cold.info["warm_start"]["from"] is None
    assert any(not torch.equal(a, b) for a, b in zip(cold.model.state_dict().values(),
                                                     first.model.state_dict().values()))
    other = fit(replace(TINY_GEN, epochs=1, d_model=2 * TINY_GEN.d_model), Slice.of(SMALL, data), SMALL, seed=1, warm_start=first)
    assert other.generator.info["warm_start"]["from"] is None
    assert "another model configuration" in other.generator.info["warm_start"]["why"]


def test_versions_round_trip_exactly_and_generation_is_deterministic(tmp_path):
    store_uri = str(tmp_path / "store")
    fill_store(CheckpointStore(store_uri))
    gen = train_generator(train_cfg(store_uri, name="spread"))
    assert gen.version == "v0001"
    store = CheckpointStore(store_uri)
    loaded = load_generator(store, "spread")
    for (k, a), b in zip(gen.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), k
    a = gen.generate([-70.0, -45.0], num=3, seed=7)
    assert a.shape == (6, Actor(SMALL).layout.num_params) and a.dtype == np.float32
    assert np.array_equal(a, loaded.generate([-70.0, -45.0], num=3, seed=7))
    assert np.array_equal(a, loaded.generate([-70.0, -45.0], num=3, seed=7))
    assert not np.array_equal(a, loaded.generate([-70.0, -45.0], num=3, seed=8))
    assert loaded.info["dataset"]["rows"] == 36 and len(loaded.info["dataset"]["val_runs"]) == 1
    for bad in (float("nan"), float("inf"), "many"):
        with pytest.raises(ValueError, match="target_return must be a"):
            loaded.generate(bad)
    # a second version moves LATEST; the first stays loadable by name@version
    train_generator(train_cfg(store_uri, name="spread", epochs=2))
    assert resolve_model(store, "spread") == ("spread", "v0002")
    assert np.array_equal(load_generator(store, "spread@v0001").generate(-50.0, seed=1), gen.generate(-50.0, seed=1))
    assert [(g["name"], g["version"], g["latest"]) for g in list_generators(store)] == [
        ("spread", "v0001", False), ("spread", "v0002", True)]
    with pytest.raises(GeneratorNotFound, match="versions: v0001, v0002"):
        load_generator(store, "spread@v0003")
    with pytest.raises(GeneratorNotFound, match="there are: spread"):
        load_generator(store, "other")
    assert (tmp_path / "store" / "generators" / "spread" / "v0002" / "metrics.json").exists()


def test_a_version_with_a_corrupt_model_file_is_a_clear_error(tmp_path):
    store_uri = str(tmp_path / "store")
    fill_store(CheckpointStore(store_uri))
    train_generator(train_cfg(store_uri, name="spread"))
    path = tmp_path / "store" / "generators" / "spread" / "v0001" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(GeneratorNotFound, match="unreadable"):
        load_generator(CheckpointStore(store_uri), "spread")


def test_train_generator_and_generate_against_s3(s3_store_uri, tmp_path):
    fill_store(CheckpointStore(s3_store_uri))
    out = pgen("train-generator", f"store.uri={s3_store_uri}", "policy.hidden=[8]", "generator.d_model=16",
               "generator.n_layers=1", "generator.epochs=3", "generator.batch_size=8", "generator.name=spread",
               f"out_dir={tmp_path / 'gens'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "registered spread@v0001" in out.stderr and "epochs/s" in out.stderr and "ETA" in out.stderr
    folder = tmp_path / "gens" / "spread" / "v0001"
    assert (folder / "loss.png").stat().st_size > 1000 and (folder / "calibration.png").stat().st_size > 1000
    assert any(p.name.startswith("events.out.tfevents") for p in (folder / "tensorboard").iterdir())
    assert "calibrated (conditioned on → achieved, fitted)" in out.stderr and "validation R²" in out.stderr
    trained = out.stderr
    out = pgen("generate", f"store.uri={s3_store_uri}", "target_return=-55", "num=4", "seed=3",
               f"out={tmp_path / 'p.safetensors'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    pf = read_policy_file(tmp_path / "p.safetensors")
    assert pf.params.shape == (4, Actor(SMALL).layout.num_params)
    assert pf.metadata["model"] == "spread" and pf.metadata["version"] == "v0001"
    assert float(pf.metadata["target_return"]) == -55.0 and pf.metadata["arch"] == SMALL.arch_key
    gen = load_generator(CheckpointStore(s3_store_uri), "spread")
    np.testing.assert_array_equal(pf.params, gen.generate(-55.0, num=4, seed=3))
    # the version's calibration (16 conditions × 4 policies × 30 episodes by default) decides the condition
    cal = gen.info["calibration"]
    assert len(cal["conditions"]) >= 2 and np.all(np.diff(cal["fitted"]) >= 0) and cal["samples"] == 4
    check = cal["validation"]  # adopted only if it aligns the validation grid better, by a standard error
    gain = check["r2_calibrated"] - check["r2_as_asked"]
    assert cal["adopted"] == check["adopted"] == (gain > 0 and gain >= check["gain_se"])
    assert check["samples"] == 24 and check["targets"] == 9 and check["margin"] == 1.0 and check["gain_se"] >= 0
    if cal["adopted"]:
        conditioned = float(condition_for(cal, [-55.0])[0])
        assert float(pf.metadata["conditioned_on"]) == pytest.approx(conditioned)
    else:
        conditioned = -55.0
        assert "conditioned_on" not in pf.metadata and "not adopted" in trained
    # what the policy file and Serve's replies report: the condition, None when it is the request
    for adopt in (True, False):
        gen.info["calibration"] = {**cal, "adopted": adopt}
        assert gen.conditioned_on(-55.0) == (pytest.approx(float(condition_for(cal, [-55.0])[0])) if adopt else None)
    gen.info["calibration"] = cal
    gen.calibrated = False
    np.testing.assert_array_equal(pf.params, gen.generate(conditioned, num=4, seed=3))


@pytest.fixture(scope="module")
def spread_store(tmp_path_factory) -> str:
    """A store with generator `spread` v0001 (one epoch: for requests it must refuse)."""
    store_uri = str(tmp_path_factory.mktemp("spread") / "store")
    fill_store(CheckpointStore(store_uri), runs=2, per_run=4)
    train_generator(train_cfg(store_uri, name="spread", epochs=1))
    return store_uri


@pytest.mark.parametrize("args, message", [
    (["target_return=nan"], "target_return must be a finite number"),
    (["target_return=inf"], "target_return must be a finite number"),
    (["target_return=-inf"], "target_return must be a finite number"),
    ([], "target_return=<number> is required"),
    (["target_return=-50", "num=5000"], "num must be between 1 and 1024"),
    (["target_return=-50", "model=nope"], "no generator 'nope'"),
    (["target_return=-50", "model=spread@v0009"], "no complete version v0009"),
])
def test_generate_rejects_bad_requests_with_a_clear_error(spread_store, args, message, pgen_in_process):
    """Through the command's entry point in this process (the command itself: the test below)."""
    status, _, err = pgen_in_process("generate", f"store.uri={spread_store}", *args)
    assert status == 2 and message in err and "Traceback" not in err, err


def test_pgen_generate_exits_2_with_the_message(spread_store, tmp_path):
    out = pgen("generate", f"store.uri={spread_store}", "target_return=nan", cwd=tmp_path)
    assert out.returncode == 2 and "target_return must be a finite number" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_train_generator_on_an_empty_slice_is_a_clear_error(tmp_path, pgen_in_process):
    status, _, err = pgen_in_process("train-generator", f"store.uri={tmp_path / 'empty'}")
    assert status == 2 and "no checkpoints in" in err and "Traceback" not in err


@pytest.mark.parametrize("tokenisation", ["neuron", "chunk"])
def test_gru_generator_end_to_end(tmp_path, tokenisation):
    """A GRU slice: train, register, generate, and the generated policies play the env."""
    from pgen.policies.rollout import evaluate_returns

    spec = PolicySpec("gru", 18, (8, 8), 5, True)
    store_uri = str(tmp_path / "store")
    fill_store(CheckpointStore(store_uri), spec=spec)
    cfg = compose_config("train-generator", [f"store.uri={store_uri}", "policy=gru", "policy.hidden=[8,8]",
                                             f"out_dir={tmp_path / 'gens'}"])
    cfg.generator = replace(TINY_GEN, tokenisation=tokenisation, chunk_size=16)
    gen = train_generator(cfg)
    assert gen.info["arch"] == spec.arch_key == "gru-18x8x8x5-tanh"
    params = load_generator(CheckpointStore(store_uri), gen.name).generate([-60.0, -45.0], num=2, seed=0)
    actor = Actor(spec)
    actor.load_flat_params(params[0])
    returns = evaluate_returns(SPREAD, {"agent": actor}, episodes=2)["agent"]
    assert returns.shape == (2,) and np.isfinite(returns).all()


def test_multi_group_slices_condition_on_returns_against_the_reference(tmp_path):
    """simple_tag adversaries: each checkpoint's return is re-measured against the reference prey (the
    co-trained prey of the best adversary checkpoint), the generator and `pgen evaluate` use those
    returns, and `generator.rescore_episodes=0` keeps the recorded ones."""
    from pgen.envs import describe_env
    from pgen.evaluation.baselines import measure_baselines
    from pgen.evaluation.training_data import open_slice
    from pgen.policies.nets import actor_from_flat
    from pgen.policies.rollout import evaluate_returns

    cfg = compose_config("train-generator", ["env=simple_tag", f"store.uri={tmp_path / 'store'}", "policy.hidden=[8]",
                                             "generator.group=adversary", f"out_dir={tmp_path / 'gens'}"])
    env = describe_env(cfg.env)
    specs = {g: PolicySpec.for_group(env.group(g), "mlp", (8,), "tanh") for g in ("adversary", "agent")}
    store = CheckpointStore(str(tmp_path / "store"))
    rng = np.random.default_rng(0)
    recorded = {}
    for r in range(2):
        for k in range(4):
            for group, spec in specs.items():
                params = (Actor(spec).flat_params() + rng.normal(0, 0.3, spec.layout.num_params)).astype(np.float32)
                ret = 10.0 * k + r if group == "adversary" else -5.0 * k
                store.write_part([{"run_id": f"tag-m{r:03d}", "member": r, "env_id": cfg.env.id, "env_key": env_key(cfg.env),
                                   "group": group, "arch": spec.arch_key, "step": 1000 * k, "update": k,
                                   "return_mean": ret, "return_std": 1.0, "episodes": 4, "num_params": int(params.size),
                                   "params": params, "checksum": params_checksum(params),
                                   "created_at": datetime.now(timezone.utc), "seed": r, "origin": "trained"}],
                                 env_key(cfg.env), group, spec.arch_key, f"tag-m{r:03d}", k)
                if group == "adversary":
                    recorded[(f"tag-m{r:03d}", 1000 * k)] = ret
    cfg.generator = replace(TINY_GEN, group="adversary", rescore_episodes=3, epochs=1)
    sl = open_slice(store, cfg.env, cfg.policy, cfg.generator)
    assert sl.reference["run_id"] == "tag-m001" and sl.reference["step"] == 3000  # best recorded adversary
    prey = load_rows(store, env_key(cfg.env), "agent", specs["agent"].arch_key, specs["agent"].layout.num_params,
                      run_ids=["tag-m001"])
    prey_actor = actor_from_flat(specs["agent"], prey.params[prey.steps == 3000][0])
    for i in (0, 5):
        expected = evaluate_returns(cfg.env, {"agent": prey_actor,
                                              "adversary": actor_from_flat(specs["adversary"], sl.data.parts[specs["adversary"].arch_key].params[i])}, 3)
        assert sl.data.returns[i] == pytest.approx(expected["adversary"].mean())
    gen = train_generator(cfg, store)
    rescored = gen.info["dataset"]["rescored"]
    assert rescored["episodes"] == 3 and sorted(rescored["returns"]) == ["tag-m000", "tag-m001"]
    train = np.isin(sl.data.run_ids, gen.info["dataset"]["train_runs"])
    assert gen.normalizer.returns.low == pytest.approx(sl.data.returns[train].min())
    assert gen.info["dataset"]["return_max"] == pytest.approx(sl.data.returns[train].max())
    settings = compose_config("evaluate", ["evaluate.episodes=2", "evaluate.targets=2", "evaluate.max_top=1"]).evaluate
    base = measure_baselines(store, load_generator(store, gen.name).info, settings)
    np.testing.assert_allclose(base.data.returns, sl.data.returns[train])

    cfg.generator = replace(cfg.generator, rescore_episodes=0)
    kept = open_slice(store, cfg.env, cfg.policy, cfg.generator)
    assert [recorded[(r, int(s))] for r, s in zip(kept.data.run_ids, kept.data.steps)] == kept.data.returns.tolist()
    assert "rescored" not in kept.info(0, ["tag-m000"], ["tag-m001"])["dataset"]
    with pytest.raises(ValueError, match="generator.rescore_episodes must be >= 0, got -1"):
        open_slice(store, cfg.env, cfg.policy, replace(cfg.generator, rescore_episodes=-1))
