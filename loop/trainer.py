"""The generator trainer of `pgen loop`: a Ray actor that fits, registers and measures one version.

`GeneratorTrainer.fit_version(previous, served)` fits a new version of the loop's generator on every
checkpoint of its slice so far (`pgen train-generator`'s `train_generator`, warm-started from the
version `previous` where its layout and model shape allow — the plan is in the version's
`config.json`, `warm_start`), registers it without promoting it, then measures it and the served
version on the new version's grid, episodes and baselines (`pgen.evaluation.gate`). The driver decides.

The actor is created with `max_restarts` and its calls with `max_task_retries`: a trainer killed
mid-fit is restarted and the fit retried from scratch. What the killed attempt wrote is invisible:
a version is complete only once its `config.json` is written, last.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pgen.config import EvaluateConfig, LoopConfig, TrainGeneratorConfig, config_from_dict
from pgen.commands.train_generator import train_generator
from pgen.evaluation.baselines import measure_baselines
from pgen.evaluation.evaluate import evaluate_generator
from pgen.evaluation.gate import gate_metrics
from pgen.generator.versions import load_generator
from pgen.util.progress import log, setup_logging
from pgen.store import open_store


class GeneratorTrainer:
    """Fits versions of one loop's generator; use as a Ray actor (`ray.remote(GeneratorTrainer)`)."""

    def __init__(self, cfg: dict[str, Any], out_dir: str):
        import torch

        self.cfg: LoopConfig = config_from_dict("loop", cfg)
        setup_logging()
        torch.set_num_threads(self.cfg.torch_threads)
        self.store = open_store(self.cfg.store)
        self.out = Path(out_dir)

    def fit_version(self, previous: str | None, served: str | None) -> dict[str, Any]:
        """Fit, register (not promoted) and measure a new version; `previous`: the version to warm-start
        from (`name@vNNNN`), `served`: the one the gate compares it with (None: none yet)."""
        cfg, t0 = self.cfg, time.monotonic()
        warm = load_generator(self.store, previous, device=cfg.generator.device) if previous else None
        train_cfg = TrainGeneratorConfig(env=cfg.env, policy=cfg.policy, store=cfg.store, generator=cfg.generator,
                                         seed=cfg.seed, torch_threads=cfg.torch_threads,
                                         out_dir=str(self.out / "generators"))
        gen = train_generator(train_cfg, self.store, warm_start=warm, promoted=False)
        fit_s = time.monotonic() - t0
        settings = replace(cfg.evaluate, out_dir=str(self.out / "gate" / gen.version))
        base = measure_baselines(self.store, gen.info, settings, label=f"gate {gen.model_id}")
        evaluate = EvaluateConfig(store=cfg.store, evaluate=settings, torch_threads=cfg.torch_threads)
        candidate = gate_metrics(evaluate_generator(evaluate, self.store, gen, base))
        incumbent = None
        if served is not None:
            # the fit copied the warm start's weights (load_state_dict): it is still the served version
            old = warm if warm is not None and served == previous else \
                load_generator(self.store, served, device=cfg.generator.device)
            incumbent = gate_metrics(evaluate_generator(evaluate, self.store, old, base, same_slice=False))
        ds = gen.info["dataset"]
        log.info(f"gate {gen.model_id}: R² {candidate['alignment_r2']:.3f}, score at the top"
                 f" {candidate['normalised_score_top']:.2f} (target {candidate['top_target']:.1f})"
                 + (f"; served {served}: R² {incumbent['alignment_r2']:.3f}, score"
                    f" {incumbent['normalised_score_top']:.2f}" if incumbent else ""))
        return {"model_id": gen.model_id, "version": gen.version, "metrics": candidate, "served": served,
                "served_metrics": incumbent, "warm_start": gen.info["warm_start"],
                "dataset": {"rows": ds["rows"], "runs": len(ds["runs"]), "return_max": ds["return_max"]},
                "fit_s": round(fit_s, 1), "gate_s": round(time.monotonic() - t0 - fit_s, 1)}
