"""Generated policies chosen among candidates (pgen.evaluation.selection): the choice itself on a known return
function, `pgen evaluate evaluate.candidates=K` and `pgen generate candidates=K` on simple_spread."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from pgen.commands.train_generator import train_generator
from pgen.config import ConfigError, compose_config
from pgen.dataset.slices import ParamDataset, Slice
from pgen.evaluation.evaluate import evaluate_generator
from pgen.evaluation.metrics import alignment_r2
from pgen.evaluation.selection import closest, generate_selected
from pgen.generator.fit import fit
from pgen.generator.versions import load_generator
from pgen.policies.nets import Actor
from pgen.policies.policy_file import read_policy_file
from pgen.policies.rollout import selection_returns
from pgen.store import CheckpointStore
from tests.test_generator import SMALL, SPREAD, TINY_GEN, fill_store, known_return, pgen, train_cfg


def test_closest_picks_the_finite_candidate_nearest_each_target():
    returns = np.array([[-10.0, -52.0, -49.0], [np.nan, -80.0, np.nan], [np.nan, np.nan, np.nan]])
    assert closest(np.array([-50.0, -50.0, -50.0]), returns).tolist() == [2, 1, 0]
    assert closest(np.array([-5.0]), np.array([[-7.0, -3.0]])).tolist() == [0]  # a tie: the first


def test_each_policy_is_its_slots_closest_candidate_and_the_first_is_the_unselected_draw():
    """On data whose return is a known function of the weights (no env), with a generator whose samples
    spread: every handed-out policy is the candidate of its slot closest to the target, the first
    candidates are exactly `generate`'s draw, and choosing can only bring each slot closer."""
    rng = np.random.default_rng(2)
    init, u, play = known_return(rng)

    params = np.stack([init + 0.2 * k * u + rng.normal(0, 0.05, init.size) for _ in range(4) for k in range(20)])
    params = params.astype(np.float32)
    n = len(params)
    data = ParamDataset(params, play(params), np.repeat([f"r{i}" for i in range(4)], 20), np.tile(np.arange(20), 4),
                        np.ones(n), np.full(n, 4))
    gen = fit(replace(TINY_GEN, epochs=20, batch_size=16), Slice.of(SMALL, data), SMALL, seed=0).generator
    gen.info["dataset"] = {"return_min": float(data.returns.min()), "return_max": float(data.returns.max())}  # as registered
    played = []

    def returns_of(rows: np.ndarray) -> np.ndarray:
        played.append(len(rows))
        return play(rows)

    one = generate_selected(gen, -80.0, 3, 1, returns_of, seed=5, temperature=1.0)
    assert not played and np.array_equal(one.params, gen.generate(-80.0, 3, seed=5, temperature=1.0))
    first_r2, chosen_r2 = [], []
    for target in (-95.0, -80.0, -70.0):
        drawn = generate_selected(gen, target, 3, 6, returns_of, seed=5, temperature=1.0)
        assert played[-1] == 18 and drawn.returns.shape == (3, 6)
        np.testing.assert_array_equal(drawn.first, gen.generate(target, 3, seed=5, temperature=1.0))
        np.testing.assert_allclose(drawn.returns[:, 0], play(drawn.first))
        for j in range(3):
            assert np.abs(drawn.returns[j] - target).argmin() == drawn.chosen[j]
            assert play(drawn.params[j:j + 1])[0] == pytest.approx(drawn.returns[j, drawn.chosen[j]])
        first_r2.append(play(drawn.first)), chosen_r2.append(play(drawn.params))
    targets = np.repeat([-95.0, -80.0, -70.0], 3)
    assert alignment_r2(targets, np.concatenate(chosen_r2)) > alignment_r2(targets, np.concatenate(first_r2))
    # at or above the data's best return, the best candidate: the best return ever seen asks for the best
    top = gen.return_range()[1]
    for target in (top, top + 20.0):
        drawn = generate_selected(gen, target, 3, 6, returns_of, seed=5, temperature=1.0)
        assert drawn.chosen.tolist() == np.argmax(drawn.returns, axis=1).tolist()
    with pytest.raises(ConfigError, match="candidates must be >= 1"):
        generate_selected(gen, -80.0, 3, 0, returns_of)


@pytest.fixture(scope="module")
def spread_store(tmp_path_factory):
    """A tiny simple_spread generator (SMALL arch) registered in a local store."""
    root = tmp_path_factory.mktemp("selection")
    store_uri = str(root / "store")
    fill_store(CheckpointStore(store_uri), runs=3, per_run=6)
    train_generator(train_cfg(store_uri, name="spread", epochs=2))
    return root, store_uri


def test_evaluate_reports_the_generator_alone_and_with_candidates_the_choice_as_its_own_row(spread_store):
    root, store_uri = spread_store
    common = [f"store.uri={store_uri}", "evaluate.episodes=3", "evaluate.targets=2", "evaluate.samples=2",
              "evaluate.max_top=1", "evaluate.states=2"]
    plain = evaluate_generator(compose_config("evaluate", common + [f"evaluate.out_dir={root / 'k1'}"]))
    assert plain["candidates"] == 1 and plain["chosen"] is None and "achieved_chosen" not in plain["points"][0]
    chosen = evaluate_generator(compose_config("evaluate", common + [
        "evaluate.candidates=4", "evaluate.selection_episodes=2", f"evaluate.out_dir={root / 'k4'}"]))
    assert chosen["candidates"] == 4 and chosen["selection_episodes"] == 2
    # the headline is the generator alone: candidates=1's policies, on the same held-out episodes
    assert [p["achieved"] for p in chosen["points"]] == [p["achieved"] for p in plain["points"]]
    assert chosen["alignment_r2"] == pytest.approx(plain["alignment_r2"], nan_ok=True)
    assert set(chosen["chosen"]) >= {"alignment_r2", "spearman", "normalised_score_top", "candidates"}
    assert all(0 <= p["candidate"] < 4 and np.isfinite(p["selection_return"]) and "achieved_chosen" in p
               for p in chosen["points"])
    saved = json.loads((root / "k4" / "spread@v0001" / "evaluation.json").read_text())
    assert saved["chosen"] == chosen["chosen"]
    with pytest.raises(ConfigError, match="evaluate.candidates must be >= 1"):
        evaluate_generator(compose_config("evaluate", common + ["evaluate.candidates=0"]))


def test_generate_with_candidates_writes_the_closest_and_says_what_they_played(spread_store):
    root, store_uri = spread_store
    out = pgen("generate", f"store.uri={store_uri}", "target_return=-70", "num=2", "seed=1", "candidates=3",
               "selection_episodes=2", f"out={root / 'chosen.safetensors'}", cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    pf = read_policy_file(root / "chosen.safetensors")
    assert pf.params.shape == (2, Actor(SMALL).layout.num_params)
    assert pf.metadata["candidates"] == "3" and pf.metadata["selection_episodes"] == "2"
    gen = load_generator(CheckpointStore(store_uri), "spread")
    env = compose_config("train-generator").env
    played = selection_returns(env, {}, "agent", SMALL, 2)(pf.params)  # on the selection episodes again
    np.testing.assert_allclose(played, json.loads(pf.metadata["selection_returns"]))
    first = gen.generate(-70.0, 2, seed=1)
    pool_first = selection_returns(env, {}, "agent", SMALL, 2)(first)
    # each chosen policy is at least as close to the target as its slot's first candidate
    assert np.all(np.abs(played + 70.0) <= np.abs(pool_first + 70.0) + 1e-9)
    out = pgen("generate", f"store.uri={store_uri}", "target_return=-70", "candidates=0", cwd=root)
    assert out.returncode == 2 and "candidates must be >= 1, got 0" in out.stderr and "Traceback" not in out.stderr
    assert SPREAD.id == env.id
