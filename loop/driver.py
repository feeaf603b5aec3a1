"""`pgen loop`: pgen as a service that runs itself.

One driver (a Ray job like the others) keeps, until `loop.duration_s`, `loop.max_env_steps` (all
members together) or Ctrl-C / SIGTERM / `ray job stop`:

- a **population** of `population.size` members (`PopulationWorker` actors, as `pgen populate`)
  streaming checkpoints to the store;
- a **generator trainer** (`loop.trainer.GeneratorTrainer`): whenever the generator's slice has
  grown by `loop.retrain_every` checkpoints, it fits a new version on all the data so far,
  warm-started from the previous one, registers it (not promoted) and measures it beside the served
  version on the same grid and episodes;
- the **promotion gate** (`pgen.evaluation.gate`): the new version becomes LATEST unless it is worse than the
  served one by more than `loop.tolerance`; every decision is a record in the store and a log line,
  and a rejected version stays registered, servable as `name@version`;
- **Serve**: the app of `serve/app.py` deployed on the loop's Ray (`loop.serve`, with `serve.*`), or
  an application already running (`loop.app`); requests for `model=<name>` follow LATEST;
- a **seeder**: every `loop.reseed_every` checkpoints the `loop.reseed_fraction` weakest members
  (by their latest checkpoint's return, once they have trained `loop.reseed_min_env_steps`) restart
  as new runs from policies the served generator generates for `loop.reseed_target` (through a
  DeploymentHandle); their checkpoints carry origin `seeded:<name>@<version>` and feed the next fits.
  If the Serve application is not running, seeding pauses (logged); the loop goes on.

Its state lives in the store (`loop.state`), so `pgen loop resume=true loop.loop_id=<id>` (or a
restarted job) continues where it stopped: members resume from their own trainer states, the gate
history and counters from the newest snapshot. Outputs under `<loop.out_dir>/<loop_id>/`: a periodic
table, TensorBoard scalars (`tensorboard/`), `best_return.png` and `summary.json`.
"""

from __future__ import annotations

import json
import math
import re
import signal
import threading
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pgen.config import ConfigError, LoopConfig, PopulateConfig, SeedConfig, ServeConfig, to_dict
from pgen.dataset.slices import slice_spec
from pgen.evaluation.calibration import check_calibration_settings
from pgen.evaluation.gate import decide, record_decision
from pgen.evaluation.selection import check_selection
from pgen.generator.versions import default_name, promote
from pgen.population.served import generator_handle
from pgen.population.worker import (PopulationWorker, algo_settings_drawn_per_member, check_member_resources,
                                    check_seed_settings, member_hparams)
from pgen.util.fileio import atomic_write
from pgen.util.progress import format_duration, log
from pgen.util.ray_runtime import init_ray
from pgen.store import CheckpointStore, open_store, portable_store_config
from loop.state import LoopState, Member
from loop.trainer import GeneratorTrainer

RESEED_TARGET_RE = re.compile(r"^best(\+(?P<delta>[0-9.eE+-]+))?$")


def reseed_target(spec: str, best: float) -> float:
    """`loop.reseed_target` for the store's best return: `best`, `best+<δ>` or a number."""
    m = RESEED_TARGET_RE.match(spec.replace(" ", ""))
    if m:
        return best + float(m["delta"] or 0.0)
    try:
        value = float(spec)
    except ValueError:
        raise ConfigError(f"loop.reseed_target must be best, best+<number> or a number, got {spec!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"loop.reseed_target must be finite, got {spec!r}")
    return value


def check_config(cfg: LoopConfig) -> None:
    """ConfigError naming the first loop setting that cannot work (before Ray starts)."""
    s = cfg.loop
    if cfg.population.size < 1:
        raise ConfigError(f"population.size must be >= 1, got {cfg.population.size}")
    for key in ("retrain_every", "max_trainer_restarts"):
        if getattr(s, key) < (1 if key == "retrain_every" else 0):
            raise ConfigError(f"loop.{key} must be >= {1 if key == 'retrain_every' else 0}, got {getattr(s, key)}")
    if s.reseed_every < 0 or not 0 <= s.reseed_fraction <= 1:
        raise ConfigError("loop.reseed_every must be >= 0 and loop.reseed_fraction in [0, 1]")
    if not s.tolerance >= 0:
        raise ConfigError(f"loop.tolerance must be >= 0, got {s.tolerance}")
    if cfg.resume and not s.loop_id:
        raise ConfigError("resume=true needs loop.loop_id=<the loop to continue>")
    if not s.serve and s.reseed_every and not s.app:
        raise ConfigError("loop.serve=false: name the running Serve application to seed through with loop.app")
    reseed_target(s.reseed_target, 0.0)
    member_hparams(cfg.population.hparams, cfg.seed, 0)
    check_member_resources(cfg.population.resources)
    check_seed_settings(cfg.population)
    check_calibration_settings(cfg.generator.calibration)
    check_selection(cfg.evaluate.candidates, cfg.evaluate.selection_episodes, "evaluate.")  # the gate's grid


class Loop:
    """One run of `pgen loop`; `run()` until a stop condition, then the summary."""

    def __init__(self, cfg: LoopConfig):
        check_config(cfg)
        for line in algo_settings_drawn_per_member(cfg):
            log.warning(line)
        self.cfg = cfg
        self.store: CheckpointStore = open_store(cfg.store)
        self.store_cfg = portable_store_config(cfg.store)
        self.group, _ = slice_spec(cfg.env, cfg.policy, cfg.generator.group)
        self.name = default_name(cfg.env, cfg.policy, cfg.generator)
        self.app = cfg.loop.app or cfg.serve.app_name
        loop_id = cfg.loop.loop_id or f"loop-{cfg.env.name}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"
        state = LoopState.load(self.store, loop_id)
        if cfg.resume and state is None:
            raise ConfigError(f"no loop {loop_id!r} to resume in {self.store.uri}")
        if not cfg.resume and state is not None:
            raise ConfigError(f"loop {loop_id!r} exists in {self.store.uri}: resume=true continues it,"
                              " or give another loop.loop_id")
        self.state = state or LoopState(loop_id, datetime.now(timezone.utc).isoformat(), [
            Member(slot, f"{loop_id}-m{slot:03d}") for slot in range(cfg.population.size)])
        self.out = Path(cfg.loop.out_dir).expanduser().resolve() / loop_id
        self.stop_requested = False

    # --- members --------------------------------------------------------------------------------

    def _member_cfg(self, seed: SeedConfig | None) -> dict[str, Any]:
        population = replace(self.cfg.population, max_env_steps=None, seed=seed or SeedConfig())
        cfg = PopulateConfig(env=self.cfg.env, policy=self.cfg.policy, algo=self.cfg.algo, population=population,
                             seed=self.cfg.seed, torch_threads=self.cfg.torch_threads, store=self.cfg.store)
        return {**to_dict(cfg), "store": self.store_cfg}

    def _start_member(self, member: Member, seed: SeedConfig | None = None) -> Any:
        import ray

        p = self.cfg.population
        actor = ray.remote(PopulationWorker).options(
            num_cpus=p.cpus_per_worker, resources=dict(p.resources), max_restarts=p.max_restarts,
            max_task_retries=p.max_restarts)
        return actor.remote(self._member_cfg(seed), member.slot, member.run_id)

    # --- the service ----------------------------------------------------------------------------

    def _deploy(self) -> None:
        from ray import serve

        from serve.app import build  # serve/ sits beside pgen/: only the loop, not pgen, imports it

        serve.start(http_options={"host": self.cfg.serve.host, "port": self.cfg.serve.port})
        serve.run(build(ServeConfig(store=self.cfg.store, serve=self.cfg.serve)), name=self.app, route_prefix="/",
                  blocking=False)
        log.info(f"loop {self.state.loop_id}: Serve application {self.app!r} at"
                 f" http://{self.cfg.serve.host}:{self.cfg.serve.port} (model={self.name} follows LATEST)")

    def _serving(self) -> bool:
        """Whether the Serve application to seed through is running (else seeding pauses)."""
        try:
            generator_handle(self.app)
            from ray import serve

            return serve.status().applications[self.app].status == "RUNNING"
        except Exception as err:  # noqa: BLE001 - any failure to reach Serve means: not now
            log.info(f"loop {self.state.loop_id}: Serve application {self.app!r} unavailable ({err}); seeding paused")
            return False

    def _weakest(self) -> list[Member]:
        ready = [m for m in self.state.members
                 if m.env_steps >= self.cfg.loop.reseed_min_env_steps and m.last_return is not None]
        k = min(len(ready), max(1, round(self.cfg.loop.reseed_fraction * len(self.state.members))))
        return sorted(ready, key=lambda m: m.last_return)[:k] if self.cfg.loop.reseed_fraction > 0 else []

    def _check_cpus(self) -> None:
        """Log when the loop asks for more CPUs than the cluster has now: what cannot be placed waits
        (for an autoscaler to add nodes, or forever on a fixed machine), so say what to lower."""
        import ray

        cfg = self.cfg
        demand = {"population": cfg.population.size * cfg.population.cpus_per_worker,
                  "trainer": cfg.loop.trainer_cpus}
        if cfg.loop.serve:
            demand["serve"] = cfg.serve.num_cpus * max(1, cfg.serve.min_replicas) + cfg.serve.ingress_num_cpus
        have = ray.cluster_resources().get("CPU", 0.0)
        if sum(demand.values()) > have + 1e-9:
            parts = ", ".join(f"{k} {v:g}" for k, v in demand.items())
            log.warning(f"loop {self.state.loop_id}: asks for {sum(demand.values()):g} CPUs ({parts}), the cluster"
                        f" has {have:g} now: what does not fit waits for more nodes. On a fixed machine lower"
                        " population.cpus_per_worker, loop.trainer_cpus or serve.num_cpus")

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        import ray
        from tensorboardX import SummaryWriter

        cfg, st = self.cfg, self.state
        init_ray()
        self._check_cpus()
        if cfg.loop.serve:
            self._deploy()
        self.out.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(self.out / "tensorboard"))
        self.store.put_once(f"loop/{st.loop_id}/config.json", json.dumps(to_dict(cfg), indent=1).encode())
        trainer_cls = ray.remote(GeneratorTrainer).options(
            num_cpus=cfg.loop.trainer_cpus, max_restarts=cfg.loop.max_trainer_restarts,
            max_task_retries=cfg.loop.max_trainer_restarts)
        plain = {**to_dict(cfg), "store": self.store_cfg}
        trainer = trainer_cls.remote(plain, str(self.out))
        actors = {m.slot: self._start_member(m) for m in st.members}
        if cfg.resume:
            self._count_committed(actors)
        inflight = {actors[m.slot].train_interval.remote(): m.slot for m in st.members}
        to_reseed: dict[int, SeedConfig] = {}
        paused: list[int] = []  # loop.pause_during_fit: members whose next interval waits for the fit
        fit_ref = None
        self._signals()
        t0, last_log, last_save = time.monotonic() - st.elapsed_s, 0.0, time.monotonic()
        steps_at_log, time_at_log = st.env_steps, time.monotonic()
        log.info(f"loop {st.loop_id}: {len(st.members)} members on {cfg.env.id}, generator {self.name} (group"
                 f" {self.group}), store {self.store.uri}, budget {cfg.loop.max_env_steps or 'none'} env steps"
                 + (f" (resumed at {st.env_steps:,} env steps, {len(st.decisions)} gate decisions)" if cfg.resume else ""))
        try:
            while inflight or (paused and not self.stop_requested):
                elapsed = time.monotonic() - t0
                budget = cfg.loop.max_env_steps
                if not self.stop_requested and ((budget and st.env_steps >= budget)
                                                or (cfg.loop.duration_s and elapsed >= cfg.loop.duration_s)):
                    log.info(f"loop {st.loop_id}: {'budget' if budget and st.env_steps >= budget else 'duration'}"
                             " reached: finishing the intervals in flight")
                    self.stop_requested = True
                if inflight:
                    ready = ray.wait(list(inflight), num_returns=1, timeout=1.0)[0]
                else:  # every member paused: wait for the fit
                    ray.wait([fit_ref], timeout=1.0)
                    ready = []
                for ref in ready:
                    slot = inflight.pop(ref)
                    member = st.members[slot]
                    try:
                        status = ray.get(ref)
                    except ray.exceptions.RayError as err:
                        log.info(f"loop {st.loop_id}: member {member.run_id} failed for good"
                                 f" ({type(err).__name__}); slot {slot} restarts as a new run")
                        to_reseed.pop(slot, None)
                        self._replace(member, None)
                        actors[slot] = self._start_member(member)
                        if not self.stop_requested:
                            inflight[actors[slot].train_interval.remote()] = slot
                        continue
                    self._absorb(member, status)
                    if slot in to_reseed and not self.stop_requested:
                        ray.kill(actors[slot], no_restart=True)
                        seed = to_reseed.pop(slot)
                        self._replace(member, seed)
                        actors[slot] = self._start_member(member, seed)
                    if self.stop_requested:
                        continue
                    if fit_ref is not None and cfg.loop.pause_during_fit:
                        paused.append(slot)
                    else:
                        inflight[actors[slot].train_interval.remote()] = slot
                # the generator: a new version whenever the slice has grown enough
                if fit_ref is None and not self.stop_requested and \
                        st.checkpoints - st.checkpoints_at_fit >= cfg.loop.retrain_every:
                    st.checkpoints_at_fit = st.checkpoints
                    log.info(f"loop {st.loop_id}: {st.checkpoints:,} checkpoints: fitting a new version of"
                             f" {self.name}" + (f" (warm start from {st.last_version})" if st.last_version else ""))
                    fit_ref = trainer.fit_version.remote(st.last_version, st.served)
                if fit_ref is not None and ray.wait([fit_ref], timeout=0)[0]:
                    try:
                        self._gate(ray.get(fit_ref), writer)
                    except ray.exceptions.RayError as err:
                        log.info(f"loop {st.loop_id}: the fit failed ({str(err).splitlines()[0][:300]}); the next"
                                 f" one starts after {cfg.loop.retrain_every} more checkpoints")
                    fit_ref = None
                    st.save(self.store)
                    for slot in paused:  # the members go on
                        inflight[actors[slot].train_interval.remote()] = slot
                    paused.clear()
                # the seeder
                if cfg.loop.reseed_every and st.served and not self.stop_requested and not to_reseed and \
                        st.checkpoints - st.checkpoints_at_reseed >= cfg.loop.reseed_every:
                    st.checkpoints_at_reseed = st.checkpoints
                    if self._serving():
                        target = reseed_target(cfg.loop.reseed_target, st.best_return)
                        for m in self._weakest():
                            to_reseed[m.slot] = replace(cfg.population.seed, model=st.served, target_return=target,
                                                        app=self.app)
                        log.info(f"loop {st.loop_id}: reseeding {sorted(to_reseed)} from {st.served} for a return"
                                 f" of {target:.1f} (best so far {st.best_return:.1f})")
                now = time.monotonic()
                if now - last_log >= cfg.loop.log_every_s or not inflight:
                    rate = (st.env_steps - steps_at_log) / max(now - time_at_log, 1e-9)
                    steps_at_log, time_at_log, last_log = st.env_steps, now, now
                    st.history.append([round(now - t0, 1), st.env_steps, st.best_return])
                    if st.best_return is not None:
                        writer.add_scalar("store/best_return", st.best_return, st.env_steps)
                    writer.add_scalar("population/env_steps_per_s", rate, st.env_steps)
                    log.info(self._table(now - t0, rate, fit_ref is not None))
                if now - last_save >= 30:
                    last_save = now
                    st.elapsed_s = now - t0
                    st.save(self.store)
        finally:
            self._restore_signals()
            if fit_ref is not None:
                log.info(f"loop {st.loop_id}: stopping: the fit in flight is abandoned (nothing of it is visible)")
            ray.kill(trainer, no_restart=True)
            for actor in actors.values():
                ray.kill(actor, no_restart=True)
            st.elapsed_s = time.monotonic() - t0
            st.history.append([round(st.elapsed_s, 1), st.env_steps, st.best_return])
            st.save(self.store)
            writer.close()
        return self._summary()

    def _count_committed(self, actors: dict[int, Any], timeout_s: float = 60.0) -> None:
        """On a resume, before a fit is due: count what the members committed after the last snapshot.
        A member not started within `timeout_s` (no place on the cluster yet) or whose start failed is
        counted, or handled, when its first interval returns, as any member is."""
        import ray

        st = self.state
        refs = {actors[m.slot].status.remote(): m for m in st.members}
        ready = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)[0]
        before = st.checkpoints
        for ref in ready:
            try:
                self._absorb(refs[ref], ray.get(ref))
            except ray.exceptions.RayError:
                pass  # its interval fails too, and the main loop restarts the slot as a new run
        if st.checkpoints > before:
            log.info(f"loop {st.loop_id}: {st.checkpoints - before} checkpoints committed after the last"
                     " snapshot are counted")

    def _absorb(self, member: Member, status: dict[str, Any]) -> None:
        """A member's interval is done: count its new checkpoints, note its return."""
        st = self.state
        st.checkpoints += status["checkpoints"] - member.checkpoints
        member.checkpoints, member.env_steps = status["checkpoints"], status["env_steps"]
        ret = status["return"].get(self.group)
        if ret is not None:
            member.last_return = float(ret)
            st.best_return = ret if st.best_return is None else max(st.best_return, float(ret))

    def _replace(self, member: Member, seed: SeedConfig | None) -> None:
        """Retire the member's run; its slot gets a new run (seeded from `seed`'s generator, or not)."""
        st = self.state
        st.retired_env_steps += member.env_steps
        if seed is not None:
            st.reseeds.append({"slot": member.slot, "from_run": member.run_id, "from_return": member.last_return,
                               "model": seed.model, "target_return": seed.target_return, "env_steps": st.env_steps})
        member.generation += 1
        member.run_id = f"{st.loop_id}-m{member.slot:03d}-g{member.generation}"
        member.origin = f"seeded:{seed.model}" if seed else "trained"
        member.env_steps, member.checkpoints, member.last_return = 0, 0, None
        st.save(self.store)

    def _gate(self, result: dict[str, Any], writer: Any) -> None:
        st, cfg = self.state, self.cfg
        promoted, why = decide(result["metrics"], result["served_metrics"], cfg.loop.tolerance)
        decision = record_decision(self.store, st.loop_id, {
            "model_id": result["model_id"], "promoted": promoted, "why": why, "metrics": result["metrics"],
            "served": result["served"], "served_metrics": result["served_metrics"], "env_steps": st.env_steps,
            "checkpoints": st.checkpoints, "fit_from_checkpoints": st.checkpoints_at_fit,
            "warm_start": result["warm_start"], "dataset": result["dataset"], "fit_s": result["fit_s"],
            "gate_s": result["gate_s"]})
        st.decisions.append(decision)
        st.last_version = result["model_id"]
        name, version = result["model_id"].split("@")
        if promoted:
            promote(self.store, name, version, why=f"pgen loop {st.loop_id}: {why}")
            st.served = result["model_id"]
        number = int(version[1:])
        for key in ("alignment_r2", "normalised_score_top", "achieved_top", "top_target"):
            writer.add_scalar(f"gate/{key}", result["metrics"][key], number)
        writer.add_scalar("gate/promoted", float(promoted), number)
        log.info(f"loop {st.loop_id}: gate {result['model_id']}: {'PROMOTED' if promoted else 'rejected'} ({why});"
                 f" fit {result['fit_s']:.0f} s, gate {result['gate_s']:.0f} s")

    # --- seeing it ------------------------------------------------------------------------------

    def _table(self, elapsed: float, rate: float, fitting: bool) -> str:
        st, budget = self.state, self.cfg.loop.max_env_steps
        promoted = sum(d["promoted"] for d in st.decisions)
        eta = ""
        if budget and rate > 0 and st.env_steps < budget:
            eta = f", ETA {format_duration((budget - st.env_steps) / rate)}"
        best = "-" if st.best_return is None else f"{st.best_return:.1f}"
        head = (f"loop {st.loop_id}: {st.env_steps:,}{f'/{budget:,}' if budget else ''} env steps in"
                f" {format_duration(elapsed)} ({rate:,.0f}/s{eta}) | best return {best} | {len(st.decisions)}"
                f" versions, {promoted} promoted, serving {st.served or 'none'}{' | fitting' if fitting else ''}"
                f" | {len(st.reseeds)} reseeds")
        rows = [f"  {'slot':>4} {'run':<40} {'env steps':>11} {'ckpts':>5} {'return':>8}  origin"]
        for m in st.members:
            ret = "-" if m.last_return is None else f"{m.last_return:.1f}"
            rows.append(f"  {m.slot:>4} {m.run_id:<40} {m.env_steps:>11,} {m.checkpoints:>5} {ret:>8}  {m.origin}")
        return "\n".join([head, *rows])

    def _summary(self) -> dict[str, Any]:
        st = self.state
        summary = {"loop_id": st.loop_id, "store": self.store.uri, "generator": self.name, "group": self.group,
                   "env_steps": st.env_steps, "elapsed_s": round(st.elapsed_s, 1), "best_return": st.best_return,
                   "served": st.served, "decisions": st.decisions, "reseeds": st.reseeds, "history": st.history,
                   "members": [asdict(m) for m in st.members]}
        summary["plot"] = str(plot_loop(summary, self.out / "best_return.png"))
        summary["tensorboard"] = str(self.out / "tensorboard")
        atomic_write(self.out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
        summary["json"] = str(self.out / "summary.json")
        log.info(f"loop {st.loop_id}: {st.env_steps:,} env steps in {format_duration(st.elapsed_s)}, best return"
                 f" {st.best_return}, serving {st.served}; {summary['json']}, {summary['plot']}; TensorBoard:"
                 f" tensorboard --logdir {summary['tensorboard']}")
        return summary

    # --- signals --------------------------------------------------------------------------------

    def _signals(self) -> None:
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return

        def request_stop(signum, _frame) -> None:
            if not self.stop_requested:
                log.info(f"{signal.Signals(signum).name}: finishing the intervals in flight, then stopping")
            self.stop_requested = True

        self._previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    def _restore_signals(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def plot_loop(summary: dict[str, Any], path: Path) -> Path:
    """The best checkpoint return over the loop's env steps, promotions and reseeds marked."""
    from pgen.util.plots import plt, save_figure  # matplotlib, headless (Agg)

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    points = [(s, b) for _, s, b in summary["history"] if b is not None]
    if points:
        ax.step([s for s, _ in points], [b for _, b in points], where="post", color="tab:blue",
                label="best checkpoint return in the store")
    for d in summary["decisions"]:
        style = dict(color="tab:green", linestyle="--") if d["promoted"] else dict(color="tab:red", linestyle=":")
        ax.axvline(d["env_steps"], linewidth=1, **style)
        ax.annotate(d["model_id"].split("@")[1] + ("" if d["promoted"] else " ✗"), (d["env_steps"], 0.02),
                    xycoords=("data", "axes fraction"), rotation=90, fontsize=7, color=style["color"])
    for r in summary["reseeds"]:
        ax.plot(r["env_steps"], r["target_return"], marker="v", color="tab:orange", linestyle="none")
    ax.plot([], [], color="tab:green", linestyle="--", label="version promoted (✗ rejected: red)")
    ax.plot([], [], marker="v", color="tab:orange", linestyle="none", label="reseed (its target return)")
    ax.set(title=f"pgen loop {summary['loop_id']}: {summary['generator']}", xlabel="env steps (all members)",
           ylabel="return (sum over the group, greedy)")
    return save_figure(fig, ax, path, {"fontsize": 7, "loc": "lower right"})


def run(cfg: LoopConfig) -> int:
    """`pgen loop`: run the loop; 0 when it ends (budget, duration or a stop signal)."""
    Loop(cfg).run()
    return 0
