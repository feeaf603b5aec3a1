"""Architectures as a condition (issue 17): function-preserving growth, the unit graph and arch code,
the fan-in scale law, an arch-family generator decoding an architecture it never saw, old
single-architecture versions, mixed-architecture populations and bad architecture requests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pgen.config import FamilyGeneratorConfig, compose_config
from pgen.dataset.slices import ParamDataset, Slice, archs_in_store
from pgen.envs import describe_env, env_key
from pgen.generator.condition import condition_for
from pgen.generator.family.archgraph import MAX_WIDTH, ArchGraph, arch_code, spec_from_code
from pgen.generator.family.kind import FamilyGenerator
from pgen.generator.family.normalize import FamilyNormalizer
from pgen.generator.fit import fit
from pgen.generator.sample import ArchNotSupported, requested_spec
from pgen.generator.versions import load_generator, read_generator, save_generator
from pgen.policies.growth import base_spec, can_grow, family_key, grow, growth_problem, transfer_source
from pgen.policies.nets import Actor
from pgen.policies.spec import PolicySpec
from pgen.population.worker import member_policy, shared_initial_actor
from pgen.store import CheckpointStore
from tests.test_generator import TINY_CALIBRATION

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "single-arch-version"
FAMILY_FIXTURE = FIXTURE.with_name("family-version")
TINY = FamilyGeneratorConfig(d_model=16, n_layers=1, n_heads=2, latent_dim=4, fourier_features=4, readout_dim=8,
                             epochs=3, batch_size=8, kl_warmup_epochs=2, log_every_s=60)
SUPPORTED = [PolicySpec("mlp", 18, h, 5, True) for h in [(8,), (32, 32), (64, 64), (96, 96), (256, 256), (64, 64, 64),
                                                         (7, 13, 5, 3), (512,)]] + [
    PolicySpec("mlp", 7, (16, 24), 3, False, "relu"), PolicySpec("gru", 10, (12, 8), 4, True),
    PolicySpec("gru", 6, (5, 7), 2, False, "relu")]


def spec(*hidden: int, **kw) -> PolicySpec:
    return PolicySpec(kw.get("kind", "mlp"), 18, hidden, 5, True, kw.get("activation", "tanh"))


def outputs(s: PolicySpec, flat: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    actor = Actor(s)
    actor.load_flat_params(flat)
    starts = torch.zeros(x.shape[:2])
    starts[0] = 1
    return actor.forward_sequence(x, actor.initial_state(x.shape[1]) if actor.recurrent else None, starts).detach()


@pytest.mark.parametrize("src, dst, atol", [
    (spec(32, 16), spec(64, 40), 1e-5), (spec(16, activation="relu"), spec(24, 24, 40, activation="relu"), 1e-5),
    (spec(16), spec(16, 16, 16), 0.05), (spec(8, 12, kind="gru"), spec(20, 30, kind="gru"), 1e-5)],
    ids=lambda v: v.arch_key if isinstance(v, PolicySpec) else str(v))
def test_growth_preserves_the_function(src, dst, atol):
    """Widening is exact (replicas split their outgoing weights); an appended identity layer is
    exact for ReLU and within O(ε²) for tanh."""
    flat = Actor(src).flat_params() + np.random.default_rng(0).normal(0, 0.3, src.layout.num_params).astype(np.float32)
    x = torch.randn(6, 4, 18)
    grown = grow(flat, src, dst)
    assert grown.shape == (dst.layout.num_params,)
    torch.testing.assert_close(outputs(dst, grown, x), outputs(src, flat, x), atol=atol, rtol=0)
    noisy = grow(flat, src, dst, noise=0.1, rng=np.random.default_rng(1))
    assert 0.05 < np.linalg.norm(noisy - grown) / np.linalg.norm(grown) < 0.15  # noise of 0.1 × each tensor's RMS


def test_growth_says_what_cannot_grow():
    assert "narrower" in growth_problem(spec(64, 64), spec(32, 64))
    assert "shallower" in growth_problem(spec(64, 64), spec(64))
    assert "family" in growth_problem(spec(64), spec(64, activation="relu"))
    assert "narrower" in growth_problem(spec(64), spec(64, 32))  # a grown layer keeps at least the last width
    with pytest.raises(ValueError, match="cannot grow mlp-18x64x64x5-tanh into mlp-18x32x5-tanh"):
        grow(Actor(spec(64, 64)).flat_params(), spec(64, 64), spec(32))
    trained = [spec(32, 32), spec(64, 64), spec(128, 128), spec(64)]
    assert transfer_source(trained, spec(96, 96)) == spec(64, 64)
    assert transfer_source(trained, spec(256, 256)) == spec(128, 128)
    assert transfer_source(trained, spec(64, 64, 64)) == spec(64, 64)
    assert transfer_source(trained, spec(16)) is None
    assert base_spec(trained) == spec(32) and all(can_grow(spec(32), s) for s in trained)
    assert family_key(spec(64, 64)) == "mlp-18xHx5-tanh"
    assert family_key(PolicySpec("mlp", 18, (8,), 2, False)) == "mlp-18xHx2c-tanh"


@pytest.mark.parametrize("s", SUPPORTED, ids=lambda s: s.arch_key)
def test_unit_graph_and_arch_code_round_trip_for_every_supported_architecture(s):
    graph = ArchGraph(s)
    x = torch.randn(3, s.layout.num_params)
    blocks = graph.blocks_of(x)
    assert torch.equal(graph.flat(blocks), x)
    assert graph.num_units == s.obs_dim + sum(s.hidden) + s.action_dim
    for block, values in zip(graph.blocks, blocks):  # a block's rows are its row layer's units
        assert values.shape[1] == graph.layers[block.rows].size
        if block.is_edges:
            assert values.shape[2] == graph.layers[block.cols].size
    features, ids = graph.unit_features()
    assert features.shape[0] == ids.shape[0] == graph.num_units and torch.isfinite(features).all()
    assert ids.max() == s.obs_dim + s.action_dim  # every observation feature and action has its own id
    assert spec_from_code(arch_code(s), s.obs_dim, s.action_dim) == s
    assert PolicySpec.from_arch_key(s.arch_key) == s


def synthetic_family(specs: list[PolicySpec], runs: int = 3, per_run: int = 8, seed: int = 0) -> Slice:
    """Per architecture, runs that drift from one base network grown into it; return grows with progress."""
    rng = np.random.default_rng(seed)
    base = base_spec(specs)
    init = Actor(base).flat_params()
    parts = {}
    for s in specs:
        params, run_ids = [], []
        for r in range(runs):
            direction = rng.normal(0, 0.03, init.size).astype(np.float32)
            for k in range(per_run):
                params.append(grow(init + k * direction, base, s, noise=0.01, rng=rng))
                run_ids.append(f"{s.arch_key}-r{r}")
        n = len(params)
        parts[s.arch_key] = ParamDataset(np.stack(params), np.tile(-80.0 + 4.0 * np.arange(per_run), runs),
                                         np.array(run_ids), np.tile(1000 * np.arange(per_run), runs), np.ones(n),
                                         np.full(n, 4))
    return Slice(parts, {s.arch_key: s for s in specs})


def test_the_scale_law_follows_fan_in_and_the_centre_of_an_unseen_arch_is_a_grown_mean():
    data = synthetic_family([spec(8, 8), spec(16, 16), spec(32, 32)])
    norm = FamilyNormalizer.fit(data)
    graph = ArchGraph(spec(16, 16))
    for (key, part) in data.parts.items():
        s = data.specs[key]
        x = norm.standardise(torch.from_numpy(part.params), s)
        assert x.mean(0).abs().max() < 1e-3  # a trained architecture is centred on its own mean
        hid = x[:, ArchGraph(s).param_block() == [b.role for b in graph.blocks].index("hid.weight")]
        assert 0.5 < hid.pow(2).mean().sqrt() < 2.0  # the law's scale is the residuals' within a factor 2
    unseen = spec(24, 24)
    src = data.specs["mlp-18x16x16x5-tanh"]
    np.testing.assert_allclose(norm.centre(unseen).numpy(), grow(norm.means[src.arch_key].numpy(), src, unseen), atol=1e-6)
    # the hidden layers' residuals shrink with width here (grown replicas split a fixed change): the law
    # extrapolates that beyond the widest trained arch
    role = ["in.weight", "in.bias", "hid.weight"].index("hid.weight")
    assert norm.law[role, 1] + norm.law[role, 2] < 0
    restored = FamilyNormalizer.from_tensors("mlp", norm.tensors())
    torch.testing.assert_close(restored.scale(unseen), norm.scale(unseen))


def test_a_generator_trained_on_two_architectures_decodes_a_third_and_round_trips(tmp_path):
    data = synthetic_family([spec(8), spec(16, 16)])
    gen = fit(TINY, data, spec(16, 16), seed=0).generator
    assert isinstance(gen, FamilyGenerator) and gen.info["archs"] == ["mlp-18x16x16x5-tanh", "mlp-18x8x5-tanh"]
    for grown in (True, False):  # new widths widened from a trained architecture, or decoded by the model
        gen.grow_unseen_width = grown
        for s in (spec(12, 12), spec(16, 16, 16), spec(8), spec(40)):
            params = gen.generate([-70.0, -50.0], num=2, seed=1, spec=s)
            assert params.shape == (4, s.layout.num_params) and np.isfinite(params).all()
            Actor(s).load_flat_params(params[0])  # a policy of that architecture
    gen.grow_unseen_width = True
    assert gen.generate(-60.0, seed=3).shape == (1, spec(16, 16).layout.num_params)  # the default architecture
    gen.info.update(name="fam", group="agent", dataset={"return_min": -80.0, "return_max": -52.0})
    store = CheckpointStore(str(tmp_path / "store"))
    save_generator(store, gen, {"final": {}})
    loaded = load_generator(store, "fam")
    assert isinstance(loaded, FamilyGenerator)
    for s in (spec(12, 12), spec(16, 16)):
        assert np.array_equal(loaded.generate([-70.0, -50.0], num=2, seed=1, spec=s),
                              gen.generate([-70.0, -50.0], num=2, seed=1, spec=s))


def test_a_depth_never_trained_is_decoded_at_the_deepest_trained_depth_and_deepened():
    data = synthetic_family([spec(8), spec(16, 16)], runs=2, per_run=3)
    gen = fit(replace(TINY, epochs=1), data, spec(16, 16), seed=0).generator
    gen.grow_unseen_width = False  # the depth alone (widths: the next test)
    deep, cut = spec(24, 24, 24), spec(24, 24)
    assert gen.decoded_as(deep) == cut and gen.decoded_as(cut) == cut and gen.decoded_as(spec(12)) == spec(12)
    assert gen.decoded_as(spec(8, 8, 8, 8)) == spec(8, 8)
    grown = gen.generate([-70.0, -50.0], num=2, seed=1, spec=deep)
    wide = gen.generate([-70.0, -50.0], num=2, seed=1, spec=cut)
    assert np.array_equal(grown, np.stack([grow(row, cut, deep) for row in wide]))
    x = torch.randn(3, 4, 18)
    for g, w in zip(grown, wide):  # the deepened policy acts as the decoded one (deepening is ε·I)
        torch.testing.assert_close(outputs(deep, g, x), outputs(cut, w, x), atol=0.05, rtol=0)
    gen.grow_unseen_depth = False
    assert gen.decoded_as(deep) == deep
    direct = gen.generate([-70.0, -50.0], num=2, seed=1, spec=deep)
    assert direct.shape == grown.shape and not np.allclose(direct, grown)


def test_widths_never_trained_are_decoded_as_their_transfer_source_and_widened(tmp_path):
    data = synthetic_family([spec(8), spec(16, 16)], runs=2, per_run=3)
    gen = fit(replace(TINY, epochs=1), data, spec(16, 16), seed=0).generator
    assert gen.info["unseen_widths"] == "grown" and gen.grow_unseen_width
    # trained: itself; a new width: the largest trained architecture that grows into it; a new depth: its cut's
    for s, at in ((spec(16, 16), spec(16, 16)), (spec(8), spec(8)), (spec(24, 24), spec(16, 16)),
                  (spec(12, 12), spec(8)), (spec(12), spec(8)), (spec(24, 24, 24), spec(16, 16)),
                  (spec(8, 8, 8, 8), spec(8))):
        assert gen.decoded_as(s) == at, s.arch_key
    wide, src = spec(24, 24), spec(16, 16)
    assert gen.return_range(wide) == gen.return_range(src)
    widened = gen.generate([-70.0, -50.0], num=2, seed=1, spec=wide)
    decoded = gen.generate([-70.0, -50.0], num=2, seed=1, spec=src)
    assert np.array_equal(widened, np.stack([grow(row, src, wide) for row in decoded]))
    x = torch.randn(3, 4, 18)
    for w, d in zip(widened, decoded):  # widening is exact: the policy acts as the decoded one
        torch.testing.assert_close(outputs(wide, w, x), outputs(src, d, x), atol=1e-5, rtol=0)
    gen.info.update(name="fam", group="agent", dataset={"return_min": -80.0, "return_max": -52.0})
    store = CheckpointStore(str(tmp_path / "store"))
    save_generator(store, gen, {"final": {}})
    loaded = load_generator(store, "fam")
    assert loaded.grow_unseen_width and np.array_equal(loaded.generate([-70.0, -50.0], num=2, seed=1, spec=wide), widened)
    gen.grow_unseen_width = False  # decoded directly by the model
    assert gen.decoded_as(wide) == wide
    direct = gen.generate([-70.0, -50.0], num=2, seed=1, spec=wide)
    assert direct.shape == widened.shape and not np.allclose(direct, widened)
    # versions fitted before this was recorded decode new widths directly (as they did)
    del loaded.info["unseen_widths"]
    assert not FamilyGenerator(loaded.model, loaded.normalizer, loaded.info).grow_unseen_width


def test_the_condition_is_clipped_to_the_range_of_the_architecture_it_is_decoded_from():
    data = synthetic_family([spec(8), spec(16, 16)], runs=2, per_run=3)
    data.parts["mlp-18x8x5-tanh"].returns[:] -= 10.0  # [8] spans −90 … −82, [16, 16] −80 … −72
    gen = fit(replace(TINY, epochs=1), data, spec(16, 16), seed=0).generator
    assert gen.info["arch_return_range"] == {"mlp-18x16x16x5-tanh": [-80.0, -72.0], "mlp-18x8x5-tanh": [-90.0, -82.0]}
    # trained: its own rows; held out: those of its transfer source; a new depth: of what it is decoded as
    for s, bounds in ((spec(8), (-90.0, -82.0)), (spec(12, 12), (-90.0, -82.0)), (spec(24, 24), (-80.0, -72.0)),
                      (spec(16, 16, 16), (-80.0, -72.0))):
        assert gen.return_range(s) == bounds
        low, high = bounds
        at = lambda target: gen.generate(target, num=2, seed=4, spec=s)  # noqa: E731  (the same ε each call)
        assert np.array_equal(at(low - 30.0), at(low)) and np.array_equal(at(high + 30.0), at(high))
        assert not np.array_equal(at(low), at(high))  # within the range the target still matters
    gen.clamp_to_arch_range = False
    assert not gen.clips_condition and gen.return_range(spec(8)) == (-90.0, -82.0)
    assert not np.array_equal(gen.generate(-82.0, num=2, seed=4, spec=spec(8)),
                              gen.generate(-52.0, num=2, seed=4, spec=spec(8)))


def test_a_family_version_conditions_each_architecture_through_its_source_architectures_calibration():
    """An arch-family version's `calibration` holds one curve per trained architecture; a request
    for an architecture is conditioned through the curve of the trained one its policies come from
    (itself, or its transfer source), then clipped to that architecture's range."""
    data = synthetic_family([spec(8), spec(16, 16)], runs=2, per_run=3)
    data.parts["mlp-18x8x5-tanh"].returns[:] -= 10.0  # [8] spans −90 … −82, [16, 16] −80 … −72
    gen = fit(replace(TINY, epochs=1), data, spec(16, 16), seed=0).generator
    curve = lambda shift: {"conditions": [-90.0 + shift, -80.0 + shift], "fitted": [-100.0 + shift, -80.0 + shift],  # noqa: E731
                           "achieved": [-100.0 + shift, -80.0 + shift], "samples": 1, "episodes": 1}
    uncalibrated = {s.arch_key: gen.conditioning([-85.0], s) for s in (spec(8), spec(12, 12), spec(16, 16, 16))}
    gen.info["calibration"] = {"mlp-18x8x5-tanh": curve(0.0), "mlp-18x16x16x5-tanh": curve(8.0)}
    for s, source, expected in ((spec(8), "mlp-18x8x5-tanh", -82.5), (spec(12, 12), "mlp-18x8x5-tanh", -82.5),
                                (spec(16, 16, 16), "mlp-18x16x16x5-tanh", -78.5)):
        assert gen.calibration_for(s) is gen.info["calibration"][source]
        assert gen.conditioning([-85.0], s) == pytest.approx([expected])
        calibrated = gen.generate(-85.0, num=2, seed=4, spec=s)
        gen.calibrated = False
        assert np.array_equal(gen.generate(expected, num=2, seed=4, spec=s), calibrated)
        assert gen.conditioning([-85.0], s) == pytest.approx(uncalibrated[s.arch_key])  # as asked, clipped
        gen.calibrated = True


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside (the fixtures were generated so), the caller's count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_an_old_single_arch_version_loads_and_generates_the_same_parameters():
    """`tests/fixtures/single-arch-version` was written by pgen before this issue (its config.json has
    no model type); today's code must give what that code generated (on one thread, as then: a forward
    pass's float rounding depends on the thread count; and up to the CPU's rounding)."""
    with one_thread():
        check_fixture()


def test_a_family_version_without_the_linear_readout_loads_and_generates_the_same_parameters():
    """`tests/fixtures/family-version` was written before the family model's linear read-out: its
    config.json has no `linear_readout`, so it loads without one and generates what it did then."""
    with one_thread():
        gen = read_generator(lambda f: (FAMILY_FIXTURE / f).read_bytes(), "fixture", device="cpu")
        assert "linear_readout" not in json.loads((FAMILY_FIXTURE / "config.json").read_text())["model"]
        assert isinstance(gen, FamilyGenerator) and not gen.model.cfg.linear_readout
        expected = load_file(str(FAMILY_FIXTURE / "expected.safetensors"))["params"].numpy()
        assert_generates_as_then(gen.generate([-70.0, -50.0], num=3, seed=5, spec=spec(12, 12)), expected)


def test_the_linear_readout_is_linear_in_the_latent_and_can_be_turned_off():
    """With the transformer's read-out zeroed, a decoded block is an affine map of z (the family's
    probabilistic-PCA path); without `generator.linear_readout` (the default) the model has none."""
    data = synthetic_family([spec(8), spec(16, 16)], runs=2, per_run=3)
    gen = fit(replace(TINY, epochs=1, linear_readout=True), data, spec(16, 16), seed=0).generator
    assert gen.model.cfg.linear_readout and gen.info["model"]["linear_readout"]
    model, a = gen.model, gen.inputs(spec(12, 12))
    with torch.no_grad():
        for m in [*model.read_rows.values(), *model.read_units.values()]:
            for p in m.parameters():
                p.zero_()
        c = torch.full((3,), 0.5)
        z0, z1 = torch.randn(2, 3, model.cfg.latent_dim)
        lin = lambda z: model.decode(z, c, a)  # noqa: E731
        for b0, b1, bm in zip(lin(z0), lin(z1), lin((z0 + z1) / 2)):
            torch.testing.assert_close(bm, (b0 + b1) / 2, atol=1e-5, rtol=1e-4)
            assert b1.abs().sum() > 0
    plain = fit(replace(TINY, epochs=1), data, spec(16, 16), seed=0).generator
    assert not plain.model.cfg.linear_readout and not hasattr(plain.model, "lin_rows")


def assert_generates_as_then(generated: np.ndarray, expected: np.ndarray) -> None:
    """What a fixture's code generated, up to the float rounding of the CPU: the fixtures were written on
    another CPU model, whose vector kernels round the last bit differently (|Δ| ≤ 4e-8 seen on another
    machine); a change of the decoding itself moves parameters by orders of magnitude more."""
    assert generated.shape == expected.shape and generated.dtype == expected.dtype
    np.testing.assert_allclose(generated, expected, rtol=0, atol=1e-6)


def check_fixture() -> None:
    gen = read_generator(lambda f: (FIXTURE / f).read_bytes(), "fixture", device="cpu")
    assert "type" not in json.loads((FIXTURE / "config.json").read_text())["model"]
    expected = load_file(str(FIXTURE / "expected.safetensors"))["params"].numpy()
    generated = gen.generate([-70.0, -50.0], num=3, seed=5)
    assert_generates_as_then(generated, expected)
    assert np.array_equal(gen.generate([-70.0, -50.0], num=3, seed=5, spec=gen.spec), generated)
    with pytest.raises(ArchNotSupported, match="generates only mlp-18x8x5-tanh"):
        gen.generate(-50.0, spec=spec(16))


@pytest.mark.parametrize("request_, message", [
    ({"kind": "gru", "hidden": [16, 16]}, "is not of this generator's family"),
    ({"activation": "relu"}, "is not of this generator's family"),
    ({"hidden": [MAX_WIDTH + 1]}, f"hidden sizes must be at most {MAX_WIDTH}"),
    ({"hidden": [16, 16, 16, 16, 16]}, "at most 4 hidden layers"),
    ({"hidden": [4]}, "narrower or shallower than every architecture"),
    ({"hidden": [0]}, "hidden sizes must be positive"),
    ({"kind": "transformer"}, "policy kind must be mlp or gru"),
    ({"arch": "mlp-18x16x4-tanh"}, "does not fit group agent"),
    ({"arch": "mlp-18x16x5-tanh", "hidden": [32]}, "disagree"),
    ({"arch": "resnet50"}, "is not an arch key"),
])
def test_bad_architecture_requests_get_a_clear_error(request_, message):
    gen = fit(replace(TINY, epochs=1), synthetic_family([spec(8), spec(16, 16)], runs=2, per_run=3), spec(8),
              seed=0).generator
    gen.info.update(name="fam", group="agent")
    with pytest.raises(ArchNotSupported, match=message):
        requested_spec(gen, **request_)
    assert requested_spec(gen, hidden=[24, 24]) == spec(24, 24)
    assert requested_spec(gen, arch="mlp-18x32x5-tanh") == spec(32)


def test_a_mixed_population_spreads_members_over_archs_and_grows_one_base_into_each():
    cfg = compose_config("populate", ["population.size=4", "population.archs=[{hidden:[8,8]},{hidden:[16]}]", "seed=3",
                                      "population.arch_init_noise=0"])
    assert [list(member_policy(cfg, m).hidden) for m in range(4)] == [[8, 8], [16], [8, 8], [16]]
    group = describe_env(cfg.env).groups[0]
    deep, wide = (shared_initial_actor(cfg, group, 0, member_policy(cfg, m)) for m in (0, 1))
    assert np.array_equal(deep, shared_initial_actor(cfg, group, 0, member_policy(cfg, 2)))  # one start per arch
    # both grown from one [8] base: the [16] start replicates each base unit twice, the [8, 8] start is
    # the base with an identity layer appended
    w16 = spec(16).layout.unflatten(wide)["layers.0.weight"]
    w8 = spec(8, 8).layout.unflatten(deep)
    assert torch.equal(w16[0::2], w16[1::2]) and torch.equal(w16[0::2], w8["layers.0.weight"])
    assert torch.allclose(w8["layers.1.weight"], w8["layers.1.weight"][0, 0] * torch.eye(8))
    noisy = replace(cfg, population=replace(cfg.population, arch_init_noise=0.1))
    w16n = spec(16).layout.unflatten(shared_initial_actor(noisy, group, 0, member_policy(cfg, 1)))["layers.0.weight"]
    assert not torch.equal(w16n[0::2], w16n[1::2]) and torch.allclose(w16n, w16, atol=0.2)
    independent = replace(cfg, population=replace(cfg.population, arch_init="independent"))
    assert not np.array_equal(shared_initial_actor(independent, group, 0, member_policy(cfg, 1)), wide)


def test_mixed_population_to_family_generator_generate_and_evaluate_end_to_end(tmp_path):
    """The README's "Architectures" commands at a tiny budget: `pgen populate population.archs=…`,
    `pgen train-generator generator=family`, `pgen generate arch=…` / `policy.hidden=…` and
    `pgen evaluate evaluate.archs=…` over a held-out architecture."""
    from tests.test_population import TINY as POP_TINY
    from tests.test_population import pgen

    store_dir = tmp_path / "store"
    common = [f"store.uri={store_dir}"]
    out = pgen("populate", *common, *POP_TINY, "population.size=4", "population.max_env_steps=400",
               "population.cpus_per_worker=0.5", "population.archs=[{hidden:[8]},{hidden:[8,8]}]", "run_id=mix",
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    store = CheckpointStore(str(store_dir))
    runs = {m: json.loads(store.get(f"runs/mix-m00{m}/run.json")) for m in range(4)}
    assert [runs[m]["arch"]["agent"] for m in range(4)] == ["mlp-18x8x5-tanh", "mlp-18x8x8x5-tanh"] * 2
    assert [s.arch_key for s in archs_in_store(store, env_key(describe_env_cfg()), "agent", "mlp-18xHx5-tanh")] == [
        "mlp-18x8x5-tanh", "mlp-18x8x8x5-tanh"]
    out = pgen("train-generator", *common, "generator=family", "generator.epochs=2", "generator.d_model=16",
               "generator.n_layers=1", "generator.n_heads=2", "generator.latent_dim=4", "generator.readout_dim=8",
               "generator.batch_size=4", *TINY_CALIBRATION, "generator.calibration.validation_samples=0",  # unchecked curves
               f"out_dir={tmp_path / 'gen'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    gen = load_generator(store, None)
    info = gen.info
    assert isinstance(gen, FamilyGenerator) and gen.name == "simple_spread-agent-mlp-18xHx5-tanh"
    assert info["arch"] == "mlp-18xHx5-tanh" and info["archs"] == ["mlp-18x8x5-tanh", "mlp-18x8x8x5-tanh"]
    assert info["model"]["type"] == "arch-family" and info["dataset"]["arch_rows"] == {
        "mlp-18x8x5-tanh": 6, "mlp-18x8x8x5-tanh": 6}
    assert set(info["dataset"]["max_step"]) == {f"mix-m00{m}" for m in range(4)}
    # calibrated after the fit, one curve per trained architecture (docs/generator.md "Calibration")
    assert sorted(info["calibration"]) == info["archs"]
    assert all(len(c["conditions"]) == len(c["fitted"]) >= 2 for c in info["calibration"].values())
    assert next((tmp_path / "gen").rglob("calibration.png")).stat().st_size > 1000
    for args, key in [(["arch=mlp-18x12x12x5-tanh"], "mlp-18x12x12x5-tanh"), (["policy.hidden=[16]"], "mlp-18x16x5-tanh")]:
        out = pgen("generate", *common, "target_return=-60", "num=2", *args, f"out={tmp_path / (key + '.safetensors')}",
                   cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        params = load_file(str(tmp_path / f"{key}.safetensors"))
        assert params["params"].shape == (2, PolicySpec.from_arch_key(key).layout.num_params)
        # the range reported is that of the trained architecture it is decoded from (what the condition is clipped to)
        with safe_open(str(tmp_path / f"{key}.safetensors"), "np") as f:
            metadata = f.metadata()
        reported = json.loads(metadata["dataset_return_range"])
        source = {"mlp-18x12x12x5-tanh": "mlp-18x8x8x5-tanh", "mlp-18x16x5-tanh": "mlp-18x8x5-tanh"}[key]
        assert reported == info["arch_return_range"][source]
        conditioned = float(np.clip(condition_for(info["calibration"][source], np.array([-60.0]))[0], *reported))
        assert float(metadata["conditioned_on"]) == pytest.approx(conditioned)
    out = pgen("evaluate", *common, "evaluate.archs=[[12,12]]", "evaluate.episodes=4", "evaluate.samples=1",
               "evaluate.targets=2", "evaluate.max_top=2", "evaluate.states=2", "evaluate.random_inits=1",
               f"evaluate.out_dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next((tmp_path / "ev").rglob("evaluation.json")).read_text())
    assert [(a["arch"], a["trained"]) for a in result["archs"]] == [
        ("mlp-18x8x5-tanh", True), ("mlp-18x8x8x5-tanh", True), ("mlp-18x12x12x5-tanh", False)]
    held_out = result["archs"][-1]
    assert all(a["calibrated"] for a in result["archs"])
    assert [r["conditioned_on"] for r in held_out["targets"]] == pytest.approx(
        np.clip(condition_for(info["calibration"]["mlp-18x8x8x5-tanh"], np.array([r["target"] for r in held_out["targets"]])),
                *info["arch_return_range"]["mlp-18x8x8x5-tanh"]).tolist())
    # transfer: the best trained checkpoint (of whichever trained architecture it is) grown into the
    # held-out one; novelty: against the largest trained architecture that grows into it
    assert held_out["transfer_source"] in ("mlp-18x8x5-tanh", "mlp-18x8x8x5-tanh")
    assert held_out["transfer_checkpoint"]["arch"] == held_out["transfer_source"]
    assert held_out["novelty_reference"] == "mlp-18x8x8x5-tanh"
    assert "held out" in out.stdout and next((tmp_path / "ev").rglob("alignment.png")).stat().st_size > 1000


def describe_env_cfg():
    return compose_config("train-generator").env


def test_serve_requests_name_an_architecture_and_one_batch_decodes_several():
    """/v1/generate and /v1/seed take `arch` or `hidden`/`kind`/`activation` (bounds checked before
    the model: a 422); a batch of requests for two architectures decodes each as it would alone."""
    from pydantic import ValidationError

    from serve.decoder import DecodeJob, decode_jobs
    from serve.schemas import GenerateRequest, SeedRequest

    req = GenerateRequest(model="fam", target_return=-50.0, hidden=[96, 96])
    assert req.arch_request() == {"arch": None, "hidden": [96, 96], "kind": None, "activation": None}
    assert SeedRequest(model="fam", target_return=-50.0, population_size=2, arch="mlp-18x96x5-tanh").arch == \
        "mlp-18x96x5-tanh"
    for bad in [{"hidden": [MAX_WIDTH + 1]}, {"hidden": [8] * 5}, {"hidden": []}, {"kind": "transformer"},
                {"activation": "gelu"}, {"hidden": ["8"]}]:
        with pytest.raises(ValidationError):
            GenerateRequest(model="fam", target_return=-50.0, **bad)
    gen = fit(replace(TINY, epochs=1), synthetic_family([spec(8), spec(16, 16)], runs=2, per_run=3), spec(8),
              seed=0).generator
    jobs = [DecodeJob(gen, spec(24, 24), -60.0, 2, 1, 1.0), DecodeJob(gen, spec(8), -55.0, 1, 2, 1.0),
            DecodeJob(gen, spec(24, 24), -50.0, 1, 3, 1.0)]
    for job, params in zip(jobs, decode_jobs(jobs)):
        np.testing.assert_allclose(params, gen.generate(job.target, job.num, seed=job.seed, temperature=job.temperature,
                                                   spec=job.spec), atol=1e-5)
