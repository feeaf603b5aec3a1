"""`pgen pipeline`: the main job — populate → train generator → evaluate, then the table and plots.

On one machine by default (local Ray, `./pgen-store`); `store.uri=s3://…` and `RAY_ADDRESS` work
the same. `profile=quick` (≤ 15 minutes on 2 cores) or `profile=full` (the figures of
bench/README.md) set the population budget, the generator's epochs and the evaluation grid. One
generator per group of the env (or only `generator.group`).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pgen.commands.populate import populate
from pgen.commands.train_generator import train_generator
from pgen.config import EvaluateConfig, PipelineConfig, PopulateConfig, TrainGeneratorConfig
from pgen.envs import describe_env
from pgen.evaluation.calibration import check_calibration_settings
from pgen.evaluation.evaluate import evaluate_generator
from pgen.evaluation.metrics import learning_warning
from pgen.evaluation.report import format_result
from pgen.evaluation.selection import check_selection
from pgen.store import open_store
from pgen.util.fileio import atomic_write
from pgen.util.progress import format_duration, log


def pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    t0 = time.monotonic()
    check_calibration_settings(cfg.generator.calibration)  # not after minutes of populating
    check_selection(cfg.evaluate.candidates, cfg.evaluate.selection_episodes, "evaluate.")
    store = open_store(cfg.store)  # fails fast on a bad URI
    run_id = cfg.run_id or f"pipe-{cfg.env.name}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"
    groups = [cfg.generator.group] if cfg.generator.group else [g.name for g in describe_env(cfg.env).groups]
    out = Path(cfg.out_dir).expanduser().resolve()
    log.info(f"pipeline {run_id} (profile={cfg.profile}): populate {cfg.population.size} members × "
             f"{cfg.population.max_env_steps:,} env steps → train generator(s) for {groups} → evaluate; store {store.uri}")

    stage = time.monotonic()
    populate(PopulateConfig(env=cfg.env, policy=cfg.policy, algo=cfg.algo, population=cfg.population, seed=cfg.seed,
                            torch_threads=cfg.torch_threads, store=cfg.store, run_id=run_id,
                            log_every_s=cfg.log_every_s))
    timings = {"populate_s": time.monotonic() - stage}
    results: dict[str, Any] = {"run_id": run_id, "profile": cfg.profile, "store": store.uri, "groups": {}}
    for group in groups:
        stage = time.monotonic()
        named = cfg.generator.name and len(groups) > 1  # one name per group when the user gave one
        gen_cfg = replace(cfg.generator, group=group, name=f"{cfg.generator.name}-{group}" if named else cfg.generator.name)
        gen = train_generator(TrainGeneratorConfig(env=cfg.env, policy=cfg.policy, store=cfg.store, generator=gen_cfg,
                                                   seed=cfg.seed, out_dir=str(out / "generators")), store)
        timings[f"train_generator_{group}_s"] = time.monotonic() - stage
        stage = time.monotonic()
        settings = replace(cfg.evaluate, out_dir=str(out / "evaluate"))
        result = evaluate_generator(EvaluateConfig(store=cfg.store, model=gen.model_id, evaluate=settings), store, gen)
        timings[f"evaluate_{group}_s"] = time.monotonic() - stage
        print(format_result(result), flush=True)
        results["groups"][group] = {k: result[k] for k in (
            "model", "alignment_r2", "spearman", "normalised_score_top", "novelty_median", "copies", "agreement_mean",
            "retrieval_alignment_r2", "retrieval_spearman", "retrieval_normalised_score_top", "noisy_retrieval",
            "interpolation", "r_random", "r_top10", "candidates", "chosen", "learned_nothing", "learning_signal",
            "plot", "json")}
    timings["total_s"] = time.monotonic() - t0
    results["timings"] = timings
    path = out / f"pipeline-{run_id}.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    log.info(f"pipeline {run_id} done in {format_duration(timings['total_s'])}: summary {path}; "
             + "; ".join(f"{g}: plot {r['plot']}" for g, r in results["groups"].items()))
    for group, r in results["groups"].items():
        if r["learned_nothing"]:
            log.warning(learning_warning(r["learning_signal"], f"pipeline {run_id}, group {group}")
                        + f"\n(population: {cfg.population.size} members × {cfg.population.max_env_steps} env steps)")
    return results


def main(cfg: PipelineConfig) -> None:
    pipeline(cfg)
