"""`pgen train`: one population member trained in-process with PPO, without Ray.

Writes to `<run_dir>/<run_id>/`: `run.json` (resolved config, status), `curve.csv` / `curve.json`
(per iteration: env steps, steps/s, mean episode return per group, losses), `curve.png`,
`policies/<group>.safetensors` (the final policy file of each group) and `state/` (trainer state
for `resume=true`). A progress line with env steps/s, return and ETA is logged every
`log_every_s` seconds.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pgen.config import TrainConfig, enum_value, to_dict
from pgen.learner.ppo import IterationStats, PPOLearner
from pgen.learner.state import load_state, save_state
from pgen.policies.policy_file import save_policy_file
from pgen.store import CheckpointStore
from pgen.util.fileio import atomic_write
from pgen.util.plots import plot_curves
from pgen.util.progress import Progress, log

STATE_EVERY_ITERATIONS = 25


def default_run_id(cfg: TrainConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"train-{cfg.env.name}-{enum_value(cfg.algo.name)}-s{cfg.seed}-{stamp}"


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str)))


@dataclass
class TrainResult:
    run_id: str
    run_path: Path
    env_steps: int
    iterations: int
    curve: list[dict[str, float]] = field(default_factory=list)
    policy_files: dict[str, Path] = field(default_factory=dict)

    def final_return(self, group: str, last: int = 10) -> float:
        """Mean of the per-iteration mean returns over the last `last` iterations with episodes."""
        values = [row[f"return_{group}"] for row in self.curve if not math.isnan(row[f"return_{group}"])]
        return float(np.mean(values[-last:])) if values else float("nan")


def _curve_row(stats: IterationStats, elapsed: float) -> dict[str, float]:
    row: dict[str, float] = {"iteration": stats.iteration, "env_steps": stats.env_steps,
                             "time_s": round(elapsed, 3), "steps_per_s": round(stats.steps_per_s, 1)}
    for group, returns in stats.episode_returns.items():
        row[f"return_{group}"] = float(np.mean(returns)) if returns else float("nan")
        row[f"episodes_{group}"] = len(returns)
    for group, losses in stats.losses.items():
        for key, value in losses.items():
            row[f"{key}_{group}"] = value
    return row


def write_curve(run_path: Path, curve: list[dict[str, float]], groups: list[str], title: str) -> None:
    if not curve:
        return
    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(curve[0]))
            writer.writeheader()
            writer.writerows(curve)
    atomic_write(run_path / "curve.csv", write_csv)
    _write_json(run_path / "curve.json", curve)
    steps = [row["env_steps"] for row in curve]
    plot_curves({g: (steps, [row[f"return_{g}"] for row in curve]) for g in groups}, run_path / "curve.png",
                title=title, ylabel="episode return (sum over the group's agents)")


def train(cfg: TrainConfig, on_iteration: Callable[[IterationStats], bool | None] | None = None) -> TrainResult:
    """Train until `population.max_env_steps` or `population.duration_s`, or until `on_iteration`
    (called after every iteration) returns True; see the module docstring."""
    torch.set_num_threads(cfg.torch_threads)
    run_id = cfg.run_id or default_run_id(cfg)
    run_path = Path(cfg.run_dir).expanduser().resolve() / run_id
    budget = cfg.population.max_env_steps
    learner = PPOLearner(cfg.env, cfg.policy, cfg.algo, cfg.seed, max_env_steps=budget)
    groups = list(learner.groups)
    curve: list[dict[str, float]] = []
    run_store = CheckpointStore(str(run_path))  # state/ is written like a population's, write-once + pointer
    if cfg.resume and load_state(run_store, "state", learner) is not None:
        if (run_path / "curve.json").exists():
            curve = [r for r in json.loads((run_path / "curve.json").read_text()) if r["iteration"] <= learner.iteration]
        log.info(f"resumed {run_id} at iteration {learner.iteration} ({learner.env_steps:,} env steps)")
    run_info = {"run_id": run_id, "seed": cfg.seed, "config": to_dict(cfg), "status": "running",
                "groups": {g: learner.groups[g].actor.spec.arch_key for g in groups}, "origin": "trained"}
    _write_json(run_path / "run.json", run_info)
    log.info(f"run {run_id}: {cfg.env.id} groups "
             + ", ".join(f"{g} ({learner.groups[g].group.size} agents, {run_info['groups'][g]})" for g in groups)
             + f"; {enum_value(cfg.algo.name)}; output {run_path}")
    progress = Progress("env steps", budget, "env steps", cfg.log_every_s, start=learner.env_steps)
    t0 = time.monotonic() - (curve[-1]["time_s"] if curve else 0.0)
    recent: dict[str, list[float]] = {g: [] for g in groups}
    deadline = None if cfg.population.duration_s is None else time.monotonic() + cfg.population.duration_s
    try:
        while (budget is None or learner.env_steps < budget) and (deadline is None or time.monotonic() < deadline):
            stats = learner.iterate()
            curve.append(_curve_row(stats, time.monotonic() - t0))
            for g in groups:
                recent[g] = (recent[g] + stats.episode_returns[g])[-100:]
            if on_iteration and on_iteration(stats):
                break
            extra = "return " + " ".join(f"{g}={np.mean(r):.1f}" for g, r in recent.items() if r)
            progress.update(learner.env_steps, extra)
            if learner.iteration % STATE_EVERY_ITERATIONS == 0:
                save_state(run_store, "state", learner)
                write_curve(run_path, curve, groups, f"{cfg.env.name} {enum_value(cfg.algo.name)} seed {cfg.seed}")
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        log.info("interrupted: saving state, curve and policies")
    progress.update(learner.env_steps, "finished", force=True)
    save_state(run_store, "state", learner)
    write_curve(run_path, curve, groups, f"{cfg.env.name} {enum_value(cfg.algo.name)} seed {cfg.seed}")
    result = TrainResult(run_id, run_path, learner.env_steps, learner.iteration, curve)
    for g in groups:
        gl = learner.groups[g]
        result.policy_files[g] = save_policy_file(
            run_path / "policies" / f"{g}.safetensors", gl.actor.flat_params(), gl.actor.spec, cfg.env.id, g,
            model="trained", version=run_id,
            extra={"return_mean": repr(result.final_return(g)), "env_steps": str(learner.env_steps)},
        )
    run_info.update(status=status, env_steps=learner.env_steps, iterations=learner.iteration,
                    final_return={g: result.final_return(g) for g in groups})
    _write_json(run_path / "run.json", run_info)
    learner.close()
    log.info(f"{status}: {learner.env_steps:,} env steps; final return "
             + ", ".join(f"{g}={result.final_return(g):.2f}" for g in groups)
             + f"; curve {run_path / 'curve.png'}; policies {run_path / 'policies'}")
    return result


def main(cfg: TrainConfig) -> None:
    train(cfg)
