"""`pgen tune`: a Ray Tune sweep of the generator's hyper-parameters on one store slice.

1. Read the slice (`generator.group` of `env`, `policy`) from `store.uri`, split its runs into
   training and validation runs once (the same split for every trial), and roll out the
   evaluation baselines once (uniform random, the top-10 % checkpoints, retrieval).
2. Run a Tuner over `tune.space`: random search or Optuna (`tune.search`), the base
   configuration first (`tune.include_default`), ASHA on the per-epoch `tune.metric` with
   `generator.epochs` as its budget, `tune.max_concurrent` trials of `tune.cpus_per_trial` CPUs,
   failed trials retried from their last checkpoint (`tune.max_failures`). Trials that survive
   are rolled out (`tune.trainable`) and report the objective: alignment R² + normalised score.
3. Storage is Tune's `storage_path`: a local folder or `s3://bucket/prefix` through a pyarrow
   S3FileSystem on the store's endpoint (`store.endpoint_url`, `AWS_ENDPOINT_URL_S3`,
   `AWS_ENDPOINT_URL`). `resume=true tune.name=<name>` continues an interrupted sweep
   (`Tuner.restore`): finished trials are kept, unfinished ones continue from their checkpoints.
4. The trial with the best objective is registered as the next version of `generator.name` in the
   store; `<out_dir>/<name>/` gets `sweep.json` (every trial) and `trials.png`.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs
from ray import tune
from ray.tune.logger import TBXLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from pgen.config import ConfigError, SweepConfig, SweepSettings, enum_value, to_dict
from pgen.evaluation.baselines import measure_baselines
from pgen.evaluation.training_data import open_slice
from pgen.generator.versions import default_name, read_generator, save_generator
from pgen.store import CheckpointStore, open_store, s3_endpoint
from pgen.util.fileio import atomic_write
from pgen.util.progress import Progress, format_duration, log
from pgen.util.ray_runtime import init_ray
from tune.report import format_trials, plot_trials, trial_rows
from tune.space import default_point, search_space
from tune.trainable import TrialSetup, train_trial

INTERRUPTED = 130  # exit status of `pgen tune` when the sweep was interrupted (resume it)


def storage_location(uri: str, endpoint_url: str | None = None) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """Tune's (storage_path, storage_filesystem) for a local path, file:// URI or s3://bucket/prefix.

    S3 goes through a pyarrow S3FileSystem on the same endpoint as the store: `endpoint_url`, else
    `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`, else AWS; credentials from the standard chain.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"tune.storage {uri!r}: no bucket; use s3://bucket/prefix")
        endpoint = s3_endpoint(endpoint_url)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        fs = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, region=region or None)
        return f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/"), fs
    if parsed.scheme == "file":
        return str(Path(parsed.path).resolve()), None
    if parsed.scheme:
        raise ConfigError(f"tune.storage {uri!r}: use a local path, file:///abs/path or s3://bucket/prefix")
    return str(Path(uri).expanduser().resolve()), None


class SweepProgress(tune.Callback):
    """Console lines with trials done, epochs/s, the best so far and an ETA, every `every_s` seconds.

    Progress is counted in epochs of the sweep's budget (trials × generator.epochs); a trial that
    ASHA stops counts its whole budget as done, so the ETA assumes the stopping rate so far.
    """

    def __init__(self, name: str, num_samples: int, epochs: int, metric: str, every_s: float):
        self.name, self.num_samples, self.epochs, self.metric, self.every_s = name, num_samples, epochs, metric, every_s
        self.progress: Progress | None = None
        self.best = math.inf  # the lowest per-epoch metric any trial reported

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.best = min(self.best, result.get(self.metric, math.inf))

    def _done(self, trials: list) -> int:
        return sum(self.epochs if t.status in ("TERMINATED", "ERROR") else int(t.last_result.get("epoch", 0))
                   for t in trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        done = self._done(trials)
        if self.progress is None:  # the first step of this run (a resumed sweep starts from what is done)
            self.progress = Progress(f"tune {self.name}", self.num_samples * self.epochs, unit="epochs",
                                     every_s=self.every_s, start=done)
        self.progress.update(done, self._extra(trials))

    def _extra(self, trials: list) -> str:
        status = [t.status for t in trials]
        finished = [t for t in trials if t.status == "TERMINATED"]
        stopped = sum(1 for t in finished if int(t.last_result.get("epoch", 0)) < self.epochs)
        scored = [t for t in finished if "objective" in t.last_result]
        best = max(scored, key=lambda t: t.last_result["objective"], default=None)
        parts = [f"trials {len(finished)}/{self.num_samples} done ({stopped} stopped early,"
                 f" {status.count('ERROR')} failed), {status.count('RUNNING')} running"]
        if math.isfinite(self.best):
            parts.append(f"best {self.metric} {self.best:.4f}")
        if best is not None:
            parts.append(f"best objective {best.last_result['objective']:.3f} ({best.trial_id})")
        return " | ".join(parts)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result
        how = "evaluated" if "objective" in r else "stopped early by ASHA"
        extra = (f": R² {r['alignment_r2']:.3f}, normalised score at the top {r['normalised_score_top']:.2f},"
                 f" objective {r['objective']:.3f}") if "objective" in r else ""
        log.info(f"tune {self.name}: trial {trial.trial_id} {how} at epoch {r.get('epoch', 0)}/{self.epochs}"
                 f" ({self.metric} {r.get(self.metric, float('nan')):.4f}){extra}")
        if self.progress is not None:
            self.progress.update(self._done(trials), self._extra(trials), force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log.info(f"tune {self.name}: trial {trial.trial_id} failed for good: {trial.error_file or ''}")


def trial_resources(t: SweepSettings) -> dict[str, float]:
    """What each trial asks Ray for: `tune.cpus_per_trial` CPUs, and `tune.gpus_per_trial` GPUs when set.

    On a cluster a GPU request makes the autoscaler start a GPU worker; on a machine without GPUs the
    trials stay pending (Tune says so in its status lines)."""
    res = {"cpu": t.cpus_per_trial}
    if t.gpus_per_trial > 0:
        res["gpu"] = t.gpus_per_trial
    return res


def _searcher(cfg: SweepConfig, points: list[dict[str, Any]]) -> Any:
    """Random search or Optuna's TPE, at most `tune.max_concurrent` trials at once, seeded by `seed`."""
    if enum_value(cfg.tune.search) == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(points_to_evaluate=points or None, seed=cfg.seed),
                                  max_concurrent=cfg.tune.max_concurrent)
    return BasicVariantGenerator(points_to_evaluate=points or None, random_state=cfg.seed,
                                 max_concurrent=cfg.tune.max_concurrent)


def _check(cfg: SweepConfig) -> None:
    t = cfg.tune
    for key in ("num_samples", "max_concurrent", "grace_period", "checkpoint_every"):
        if getattr(t, key) < 1:
            raise ConfigError(f"tune.{key} must be >= 1, got {getattr(t, key)}")
    if t.reduction_factor < 2:
        raise ConfigError(f"tune.reduction_factor must be >= 2, got {t.reduction_factor}")
    if t.max_failures < 0 or t.cpus_per_trial <= 0 or t.gpus_per_trial < 0:
        raise ConfigError("tune.max_failures must be >= 0, tune.cpus_per_trial > 0 and tune.gpus_per_trial >= 0")
    if cfg.generator.epochs < 1:
        raise ConfigError(f"generator.epochs must be >= 1, got {cfg.generator.epochs}")
    if not t.metric.startswith("val_"):
        raise ConfigError(f"tune.metric must be a per-epoch validation metric of fit (val_loss, val_recon,"
                          f" val_kl), got {t.metric!r}")


def _tuner(cfg: SweepConfig, trainable: Any, space: dict[str, Any], points: list[dict[str, Any]], name: str,
           path: str, fs: pyarrow.fs.FileSystem | None) -> tune.Tuner:
    """A new sweep: the searcher, ASHA on the per-epoch metric, storage, retries, progress, TensorBoard."""
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(
            metric=cfg.tune.metric, mode="min", num_samples=cfg.tune.num_samples, search_alg=_searcher(cfg, points),
            scheduler=ASHAScheduler(time_attr="epoch", max_t=cfg.generator.epochs,
                                    grace_period=min(cfg.tune.grace_period, cfg.generator.epochs),
                                    reduction_factor=cfg.tune.reduction_factor),
            trial_dirname_creator=lambda trial: f"trial-{trial.trial_id}"),
        run_config=tune.RunConfig(
            name=name, storage_path=path, storage_filesystem=fs, verbose=0,
            failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[SweepProgress(name, cfg.tune.num_samples, cfg.generator.epochs, cfg.tune.metric,
                                     cfg.log_every_s), TBXLoggerCallback()]))


def sweep(cfg: SweepConfig) -> dict[str, Any]:
    """Run (or resume) the sweep; returns its summary (also written to `<out_dir>/<name>/sweep.json`)."""
    t0 = time.monotonic()
    _check(cfg)
    space = search_space(cfg.tune.space, cfg.generator)  # ConfigError before anything starts
    points = [default_point(cfg.tune.space, cfg.generator)] if cfg.tune.include_default else []
    path, fs = storage_location(cfg.tune.storage, cfg.store.endpoint_url)
    if cfg.resume and not cfg.tune.name:
        raise ConfigError(f"resume=true needs tune.name=<the sweep's name>; sweeps in {cfg.tune.storage}:"
                          f" {', '.join(_sweeps(path, fs)) or 'none'}")
    name = cfg.tune.name or (f"tune-{default_name(cfg.env, cfg.policy, cfg.generator)}"
                             f"-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}")
    experiment = f"{path}/{name}"
    shown = experiment if fs is None else f"{cfg.tune.storage.rstrip('/')}/{name}"  # where users find it
    exists = tune.Tuner.can_restore(experiment, storage_filesystem=fs)
    if cfg.resume and not exists:
        raise ConfigError(f"no sweep {name!r} to resume in {cfg.tune.storage}; there are:"
                          f" {', '.join(_sweeps(path, fs)) or 'none'}")
    if exists and not cfg.resume:
        raise ConfigError(f"sweep {name!r} already exists in {cfg.tune.storage}: resume=true continues it,"
                          " another tune.name starts a new one")
    out = Path(cfg.out_dir).expanduser().resolve() / name
    done = json.loads((out / "sweep.json").read_text()).get("best") if (out / "sweep.json").exists() else None
    if cfg.resume and done:
        raise ConfigError(f"sweep {name!r} has finished; its best trial {done['trial_id']} is"
                          f" {done.get('model') or 'not registered (tune.register=false)'}: {out / 'sweep.json'}")
    # after every check above: in a multi-group env opening the slice re-measures each checkpoint's return
    store = open_store(cfg.store)
    sl = open_slice(store, cfg.env, cfg.policy, cfg.generator, label="tune")
    train_idx, val_idx = sl.data.split(cfg.generator.val_fraction, cfg.seed)  # as every trial's fit splits it
    runs = lambda idx: sorted({r for k, p in sl.data.parts.items() for r in p.run_ids[idx[k]].tolist()})  # noqa: E731
    if not runs(val_idx):
        raise ValueError(f"tune: the slice has {len(set(sl.data.run_ids.tolist()))} run(s); a sweep needs at least 2"
                         " (trials are compared on held-out validation runs) and generator.val_fraction > 0")
    info = sl.info(cfg.seed, runs(train_idx), runs(val_idx))
    baselines = measure_baselines(store, info, cfg.evaluate, label=f"tune {name}")
    setup = TrialSetup(to_dict(cfg.generator), sl.data, sl.probes, sl.spec, cfg.seed, info, baselines, cfg.evaluate,
                       cfg.tune.checkpoint_every, max(1, int(cfg.tune.cpus_per_trial)))
    init_ray()
    # Tune warns when a trial's checkpoints (num_to_keep=2) force frequent experiment snapshots; they are small
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = tune.with_resources(tune.with_parameters(train_trial, setup=setup), trial_resources(cfg.tune))
    log.info(f"tune {name}: {'resuming' if cfg.resume else 'starting'} {cfg.tune.num_samples} trials"
             f" ({enum_value(cfg.tune.search)} search over {', '.join(space)}), {cfg.tune.max_concurrent} at a time,"
             f" ≤ {cfg.generator.epochs} epochs each, ASHA on {cfg.tune.metric}; TensorBoard: tensorboard --logdir {shown}")
    tuner = (tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True, storage_filesystem=fs)
             if cfg.resume else _tuner(cfg, trainable, space, points, name, path, fs))
    tuner.fit()
    # the experiment state as saved, which is what a resume continues from: after an interruption Tune
    # marks its stopped trials TERMINATED in memory, while the saved state keeps them unfinished
    analysis = tune.ExperimentAnalysis(experiment, storage_filesystem=fs)
    rows = trial_rows(analysis, cfg.generator.epochs, cfg.tune.metric)
    finished = [r for r in rows if r["status"] in ("TERMINATED", "ERROR")]
    summary: dict[str, Any] = {
        "name": name, "storage": shown, "store": store.uri, "profile": cfg.profile,
        "slice": {"env_key": sl.key, "group": sl.group, "arch": sl.slice_key, "archs": info["archs"],
                  "rows": int(len(sl.data)),
                  "train_runs": info["dataset"]["train_runs"], "val_runs": info["dataset"]["val_runs"]},
        "search": enum_value(cfg.tune.search), "metric": cfg.tune.metric, "epochs": cfg.generator.epochs,
        "num_samples": cfg.tune.num_samples, "space": {k: to_dict(v) for k, v in cfg.tune.space.items() if v},
        "base": to_dict(cfg.generator), "interrupted": len(finished) < cfg.tune.num_samples,
        "trials": rows, "stopped_early": sum(r["stopped_early"] for r in rows),
        "failed": sum(r["status"] == "ERROR" for r in rows), "evaluated": sum(r["objective"] is not None for r in rows),
        "baselines": {"r_random": baselines.r_random, "r_top10": baselines.r_top}, "evaluate": to_dict(cfg.evaluate),
    }
    if summary["interrupted"]:
        log.info(f"tune {name}: interrupted with {len(finished)}/{cfg.tune.num_samples} trials finished; continue"
                 f" with the same command and resume=true tune.name={name}")
    else:
        summary["best"] = _register_best(cfg, store, analysis, rows, name, shown)
    summary["elapsed_s"] = time.monotonic() - t0
    summary["plot"] = str(plot_trials(rows, summary["space"], cfg.tune.metric, out / "trials.png", name))
    summary["json"] = str(out / "sweep.json")
    atomic_write(out / "sweep.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1, default=float)))
    return summary


def _sweeps(path: str, fs: pyarrow.fs.FileSystem | None) -> list[str]:
    """Names of the sweeps under the storage path (folders with Tune's experiment state)."""
    fs = fs or pyarrow.fs.LocalFileSystem()
    try:
        found = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    return sorted(Path(f.path).name for f in found
                  if f.type == pyarrow.fs.FileType.Directory and tune.Tuner.can_restore(f.path, storage_filesystem=fs))


def _register_best(cfg: SweepConfig, store: CheckpointStore, analysis: Any, rows: list[dict[str, Any]], name: str,
                   shown: str) -> dict[str, Any]:
    """Register the trial with the best objective (ties: lower metric) as a generator version."""
    scored = [r for r in rows if r["objective"] is not None and math.isfinite(r["objective"])]
    if not scored:
        evaluated = [r for r in rows if r["objective"] is not None]
        if evaluated:  # R² is undefined when every target is the same return
            raise ValueError(f"tune {name}: the {len(evaluated)} evaluated trials have no finite objective (R² +"
                             " score): the slice's returns do not spread (see the learning-signal warning above)")
        raise ValueError(f"tune {name}: no trial finished its evaluation (all stopped early or failed)")
    best = max(scored, key=lambda r: (r["objective"], -r[cfg.tune.metric]))
    trial = next(t for t in analysis.trials if t.trial_id == best["trial_id"])
    with trial.checkpoint.as_directory() as folder:  # its last checkpoint: the one with the generator
        gen = read_generator(lambda file: (Path(folder) / file).read_bytes(), f"trial {best['trial_id']}'s generator")
        metrics = json.loads((Path(folder) / "metrics.json").read_text())
    metrics["tune"] = {"sweep": name, "storage": shown, "trial_id": best["trial_id"],
                       "config": best["config"], "objective": best["objective"]}
    registered = {"trial_id": best["trial_id"], "config": best["config"], "objective": best["objective"],
                  cfg.tune.metric: best[cfg.tune.metric], "alignment_r2": best["alignment_r2"],
                  "normalised_score_top": best["normalised_score_top"]}
    if cfg.tune.register:
        version = save_generator(store, gen, metrics)
        registered["model"] = gen.model_id
        log.info(f"tune {name}: registered the best trial {best['trial_id']} as {gen.model_id} in {store.uri}"
                 f" (objective {best['objective']:.3f}: R² {best['alignment_r2']:.3f} + normalised score"
                 f" {best['normalised_score_top']:.2f}); `pgen generate model={gen.name}@{version}` serves it")
    return registered


def run(cfg: SweepConfig) -> int:
    """`pgen tune`: the sweep, its table and where the outputs are; the exit status."""
    summary = sweep(cfg)
    print(format_trials(summary), flush=True)
    log.info(f"tune {summary['name']} done in {format_duration(summary['elapsed_s'])}: {summary['json']},"
             f" {summary['plot']}")
    return INTERRUPTED if summary["interrupted"] else 0

