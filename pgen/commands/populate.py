"""`pgen populate`: population members as Ray actors (`pgen.population.worker.PopulationWorker`)
that train and stream checkpoints to the store, with a live table of the members."""

from __future__ import annotations

import signal
import threading
import time
from datetime import datetime, timezone
from typing import Any

from pgen.config import PopulateConfig, to_dict
from pgen.population.worker import (PopulationWorker, algo_settings_drawn_per_member, check_archs,
                                    check_member_resources, check_seed_settings, member_hparams, member_run_id)
from pgen.store import portable_store_config
from pgen.util.checks import check_target
from pgen.util.progress import format_duration, log
from pgen.util.ray_runtime import init_ray



def status_table(statuses: dict[int, dict[str, Any]], failed: dict[int, str]) -> str:
    lines = [f"{'member':>6} {'run':<28} {'env steps':>11} {'steps/s':>8} {'ckpts':>5} {'restarts':>8}  return"]
    for m in sorted(statuses):
        s = statuses[m]
        ret = " ".join(f"{g}={v:.1f}" for g, v in s["return"].items())
        flag = " done" if s["done"] else (f" FAILED: {failed[m]}" if m in failed else "")
        lines.append(f"{m:>6} {s['run_id']:<28} {s['env_steps']:>11,} {s['steps_per_s']:>8,.0f} {s['checkpoints']:>5}"
                     f" {s['restarts']:>8}  {ret}{flag}")
    return "\n".join(lines)


def populate(cfg: PopulateConfig) -> dict[int, dict[str, Any]]:
    """Start the members on Ray, keep one `train_interval` in flight per member, show a live table.

    Ends when every member reached `population.max_env_steps`, when `population.duration_s` has
    passed, or on Ctrl-C / SIGTERM: then in-flight intervals finish (each ends with a checkpoint)
    and the function returns the members' last status.
    """
    if cfg.population.size < 1:
        raise ValueError(f"population.size must be >= 1, got {cfg.population.size}")
    member_hparams(cfg.population.hparams, cfg.seed, 0)  # fail fast on bad ranges, before Ray starts
    for line in algo_settings_drawn_per_member(cfg):
        log.warning(line)
    check_archs(cfg)
    seed = cfg.population.seed
    if seed.model is not None:
        if cfg.population.seed_from:
            raise ValueError("population.seed_from and population.seed.model are alternatives: set one")
        if seed.target_return is None:
            raise ValueError("population.seed.model needs population.seed.target_return=<number>")
        check_target(seed.target_return, "population.seed.target_return")
    check_seed_settings(cfg.population)
    check_member_resources(cfg.population.resources)
    store_cfg = portable_store_config(cfg.store)  # fails fast on a bad store URI, before Ray starts
    init_ray()
    import ray
    missing = sorted(set(cfg.population.resources) - set(ray.cluster_resources()))
    if missing:
        log.info(f"population.resources {missing}: no node offers them now; members wait until one that does"
                 " joins (an autoscaler adds one of a node type that declares them)")
    prefix = cfg.run_id or f"pop-{cfg.env.name}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"
    plain = {**to_dict(cfg), "store": store_cfg}
    actor_cls = ray.remote(PopulationWorker)
    workers = {
        m: actor_cls.options(num_cpus=cfg.population.cpus_per_worker, resources=dict(cfg.population.resources),
                             max_restarts=cfg.population.max_restarts,
                             max_task_retries=cfg.population.max_restarts).remote(plain, m, member_run_id(prefix, m))
        for m in range(cfg.population.size)
    }
    log.info(f"populate {prefix}: {cfg.population.size} members on {cfg.env.id}, store {plain['store']['uri']}")
    fits = int(ray.cluster_resources().get("CPU", 0) // cfg.population.cpus_per_worker) if cfg.population.cpus_per_worker else 0
    if 0 < fits < cfg.population.size and not cfg.population.resources:
        log.info(f"the cluster has CPUs for {fits} of the {cfg.population.size} members at"
                 f" {cfg.population.cpus_per_worker:g} CPUs each: the others start as members finish their budget")
    stop = {"requested": False}

    def request_stop(signum, _frame) -> None:
        if not stop["requested"]:
            log.info(f"{signal.Signals(signum).name}: finishing the current intervals, then stopping")
        stop["requested"] = True

    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    statuses: dict[int, dict[str, Any]] = {m: {"member": m, "run_id": member_run_id(prefix, m), "env_steps": 0,
                                                "steps_per_s": 0.0, "return": {}, "checkpoints": 0, "restarts": 0,
                                                "done": False, "start_env_steps": 0} for m in workers}
    failed: dict[int, str] = {}
    inflight = {w.train_interval.remote(): m for m, w in workers.items()}
    deadline = None if cfg.population.duration_s is None else time.monotonic() + cfg.population.duration_s
    t0, last_log = time.monotonic(), time.monotonic()
    try:
        while inflight:
            if deadline is not None and time.monotonic() >= deadline and not stop["requested"]:
                log.info("population.duration_s reached: finishing the current intervals")
                stop["requested"] = True
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                m = inflight.pop(ref)
                try:
                    statuses[m] = ray.get(ref)
                except ray.exceptions.RayError as err:
                    failed[m] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                    log.info(f"member {m} failed and is out of restarts: {failed[m]}")
                    continue
                if statuses[m]["done"]:  # its CPUs go to members still waiting for a place (size > cluster)
                    ray.kill(workers[m], no_restart=True)
                elif not stop["requested"]:
                    inflight[workers[m].train_interval.remote()] = m
            if time.monotonic() - last_log >= cfg.log_every_s or not inflight:
                last_log = time.monotonic()
                total = sum(s["env_steps"] for s in statuses.values())
                elapsed = time.monotonic() - t0
                # the rate counts this run's steps only: resumed members' earlier steps are not progress
                rate = sum(s["env_steps"] - s["start_env_steps"] for s in statuses.values()) / max(elapsed, 1e-9)
                eta = ""
                if cfg.population.max_env_steps and rate > 0:
                    remaining = cfg.population.max_env_steps * len(workers) - total
                    eta = f", ETA {format_duration(remaining / rate)}" if remaining > 0 else ""
                log.info(f"population {prefix}: {total:,} env steps after {format_duration(elapsed)}"
                         f" ({rate:,.0f}/s{eta})\n{status_table(statuses, failed)}")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for w in workers.values():
            ray.kill(w, no_restart=True)
    return statuses


def main(cfg: PopulateConfig) -> None:
    populate(cfg)
