"""One trial of a sweep: `pgen.generator.fit.fit`, unchanged, reporting to Ray Tune.

Every epoch the trial reports fit's metrics (`epoch`, `train_loss`, `val_loss`, `val_recon`, …)
with `tune.report`; every `checkpoint_every` epochs the report carries a checkpoint that fit's
`save(folder)` wrote (safetensors + JSON). A retried or resumed trial continues from
`tune.get_checkpoint()` with `fit(..., resume=folder)`, which picks up exactly where it stopped.

The last epoch's report waits for the final objective: the trained generator is rolled out over
the target grid against the sweep's baselines (`pgen.evaluation.evaluate.evaluate_generator`), and the report
adds `alignment_r2`, `spearman`, `normalised_score_top` and `objective` (their sum), with a
checkpoint holding the generator's version files and its evaluation. Trials ASHA stops earlier
never reach it.
"""

from __future__ import annotations

import logging
import math
import warnings
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from ray import tune

from pgen.config import EvaluateConfig, EvaluateSettings, config_from_dict
from pgen.dataset.probes import Probes
from pgen.dataset.slices import Slice
from pgen.evaluation.baselines import Baselines
from pgen.evaluation.calibration import calibrate
from pgen.evaluation.evaluate import evaluate_generator
from pgen.generator.fit import fit
from pgen.generator.versions import generator_files
from pgen.policies.spec import PolicySpec

EVALUATION_KEYS = ("alignment_r2", "spearman", "normalised_score_top", "retrieval_alignment_r2", "r_random", "r_top10",
                   "novelty_median", "copies", "min_relative_l2", "agreement_mean")


def objective(evaluation: dict[str, Any]) -> float:
    """What a sweep maximises: alignment R² + normalised score at the top target (NaN → -inf)."""
    value = evaluation["alignment_r2"] + evaluation["normalised_score_top"]
    return value if math.isfinite(value) else -math.inf


@dataclass
class TrialSetup:
    """What every trial shares, put once into Ray's object store by `tune.with_parameters`."""

    base: dict[str, Any]  # the base generator config (to_dict), which a trial's config overrides
    data: Slice
    probes: Probes  # the slice's probe states
    spec: PolicySpec
    seed: int
    slice_info: dict[str, Any]  # TrainingSlice.info: what the version records about its slice
    baselines: Baselines
    evaluate: EvaluateSettings
    checkpoint_every: int
    threads: int


def _report(metrics: dict[str, Any], save: Callable[[Path], None] | None) -> None:
    if save is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="pgen-trial-") as folder:
        save(Path(folder))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def train_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The function trainable: fit the generator of `config` (swept settings) on the shared slice."""
    torch.set_num_threads(setup.threads)
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # a line per checkpoint otherwise
    # the shared arrays come from Ray's object store, read-only; torch warns on every view of them
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    cfg = config_from_dict("train-generator", {"generator": {**setup.base, **config}}).generator
    last: dict[str, Any] = {}

    def callback(metrics: dict[str, float], save: Callable[[Path], None]) -> None:
        if metrics["epoch"] == cfg.epochs:  # reported below, with the evaluation
            last.update(metrics=metrics, save=save)
            return
        _report(metrics, save if metrics["epoch"] % setup.checkpoint_every == 0 else None)

    checkpoint = tune.get_checkpoint()
    with tempfile.TemporaryDirectory(prefix="pgen-resume-") as resume:
        if checkpoint is not None:
            checkpoint.to_directory(resume)
        result = fit(cfg, setup.data, setup.spec, setup.seed, callback, resume=Path(resume) if checkpoint else None,
                     label=f"trial {tune.get_context().get_trial_id()}", probes=setup.probes)
    if not last:
        raise RuntimeError(f"resumed at epoch {len(result.history)} of {cfg.epochs}: nothing left to train")
    if result.train_runs != setup.slice_info["dataset"]["train_runs"]:
        raise RuntimeError(f"fit split the runs differently from the sweep: {result.train_runs}")
    gen = result.generator
    gen.info.update(setup.slice_info)
    base = setup.baselines  # its training rows, as `pgen train-generator` calibrates before it registers a version
    calibrate(gen, base.env_cfg, base.others, base.data, cfg.calibration,
              label=f"trial {tune.get_context().get_trial_id()}: calibration")
    with tempfile.TemporaryDirectory(prefix="pgen-trial-") as folder:
        last["save"](Path(folder))
        settings = replace(setup.evaluate, out_dir=str(Path(folder) / "evaluation"))
        evaluation = evaluate_generator(EvaluateConfig(evaluate=settings, torch_threads=setup.threads), gen=gen,
                                        baselines=setup.baselines)
        metrics = {"final": last["metrics"], "history": result.history, "behaviour": result.behaviour}
        for name, blob in generator_files(gen, metrics).items():
            (Path(folder) / name).write_bytes(blob)
        summary = {k: evaluation[k] for k in EVALUATION_KEYS}
        tune.report({**last["metrics"], **summary, "objective": objective(evaluation)},
                    checkpoint=tune.Checkpoint.from_directory(folder))
