"""`pgen pipeline` end to end on a tiny profile: real local Ray population, generator, evaluation."""

from __future__ import annotations

import json

import numpy as np

from pgen.generator.sample import load_generator
from pgen.store import CheckpointStore
from tests.test_population import TINY, pgen

TINY_PIPELINE = [
    *TINY, "population.size=2", "population.max_env_steps=1200", "policy.hidden=[8]",
    "generator.d_model=16", "generator.n_layers=1", "generator.latent_dim=4", "generator.epochs=3",
    "generator.batch_size=8", "evaluate.episodes=4", "evaluate.samples=2", "evaluate.targets=2",
    "evaluate.max_top=2", "evaluate.states=2", "evaluate.extra_targets=[500.0]",
]


def test_pipeline_runs_populate_train_evaluate(tmp_path):
    store_uri = tmp_path / "store"
    out = pgen("pipeline", *TINY_PIPELINE, f"store.uri={store_uri}", f"out_dir={tmp_path / 'runs'}", "run_id=pipe",
               cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "alignment R²" in out.stdout and "normalised score at the top target" in out.stdout
    assert "(outside the dataset's range)" in out.stdout
    summary = json.loads((tmp_path / "runs" / "pipeline-pipe.json").read_text())
    result = summary["groups"]["agent"]
    assert result["model"] == "simple_spread-agent-mlp-18x8x5-tanh@v0001"
    evaluation = json.loads(open(result["json"]).read())
    # 2 grid targets + the dataset's maximum + one flagged extra target, 2 samples each
    assert [t["in_range"] for t in evaluation["targets"]] == [True, True, True, False]
    assert len(evaluation["points"]) == 8
    # 1200 env steps barely move a shared initial policy, so copies (< 1 % from a checkpoint) may occur here
    assert 0 <= evaluation["copies"] <= 8 and evaluation["min_relative_l2"] >= 0
    assert "spearman" in evaluation  # NaN when a tiny generator's policies all achieve the same return
    for key in ("alignment_r2", "normalised_score_top", "novelty_median", "agreement_mean",
                "r_random", "r_top10", "retrieval_alignment_r2"):
        assert np.isfinite(evaluation[key]), key
    assert (tmp_path / "runs" / "evaluate" / result["model"] / "alignment.png").stat().st_size > 5000
    store = CheckpointStore(str(store_uri))
    gen = load_generator(store, "simple_spread-agent-mlp-18x8x5-tanh")
    assert gen.info["dataset"]["rows"] == 14  # 2 members × checkpoints at 0, 200, …, 1200 env steps
    assert set(gen.info["dataset"]["runs"]) == {"pipe-m000", "pipe-m001"}
