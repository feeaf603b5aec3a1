"""A population member: a Ray actor that trains continuously and streams checkpoints to the store.

`pgen populate` (`pgen/commands/populate.py`) and `pgen loop` run them. A `PopulationWorker` is one member: its own PPO learner (hyper-parameters drawn per member from
`population.hparams`), its own run id, and its own slice of the store. Each call to
`train_interval()` runs `population.checkpoint_every` PPO updates, evaluates the policies greedily
on fixed evaluation seeds, saves the trainer state (a new write-once folder, with the checkpoint's
returns and time) and moves `runs/<run_id>/state/latest` to it, then writes that checkpoint as one
record per group, each a Parquet part with a deterministic key.

Crash safety comes from that order and from Ray: the actor is created with `max_restarts` and its
calls with `max_task_retries`, so a killed worker is restarted, its `__init__` resumes from the
last saved state, and the interrupted call is retried. A checkpoint exists once its state is
committed: a member killed before that redoes the interval (at most one) and commits it again under
a new state folder; one killed among its parts writes the missing parts from the committed state,
byte for byte what it would have written. So no part is ever written with two contents and the
groups of one checkpoint index always come from one training, even on an S3-compatible server
that ignores `If-None-Match`; a resumed member continues after the highest part index there is.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from pgen.config import (AlgoConfig, ConfigError, LoopConfig, PolicyConfig, PopulateConfig, PopulationConfig,
                         ServeSettings, config_from_dict, enum_value, to_dict)
from pgen.envs import env_key
from pgen.learner.state import load_state, save_state
from pgen.policies.growth import base_spec, grow, orthogonal_gain, same_family
from pgen.policies.nets import Actor
from pgen.policies.rollout import best_candidate, evaluate_returns
from pgen.policies.spec import PolicySpec
from pgen.population.served import generator_handle
from pgen.store import CheckpointStore, open_store, params_checksum
from pgen.util.progress import log, setup_logging

WORKER_FILE = "worker.json"


def member_hparams(ranges: dict[str, list[float]], seed: int, member: int) -> dict[str, float]:
    """Draw each `algo.<key>` from its [low, high] range: log-uniform when low > 0, else uniform.

    Deterministic in (seed, member); a range with low == high pins the value.
    """
    rng = np.random.default_rng([seed, member, 0x9E3779B9])
    known = set(AlgoConfig.__dataclass_fields__)
    out: dict[str, float] = {}
    for key in sorted(ranges):
        if key not in known:
            raise ValueError(f"population.hparams.{key} is not an algo setting; known: {sorted(known)}")
        low, high = (float(v) for v in ranges[key])
        if not low <= high:
            raise ValueError(f"population.hparams.{key}: low {low} > high {high}")
        if low > 0:
            out[key] = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        else:
            out[key] = float(rng.uniform(low, high))
    return out


def check_member_resources(resources: dict[str, float]) -> None:
    """`population.resources` must name custom resources (CPUs come from `cpus_per_worker`) with amounts >= 0."""
    for name, amount in resources.items():
        if name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ValueError(f"population.resources.{name}: Ray's built-in resources are not custom resources;"
                             " use population.cpus_per_worker for CPUs")
        if not amount >= 0:
            raise ValueError(f"population.resources.{name} must be >= 0, got {amount}")


def algo_settings_drawn_per_member(cfg: PopulateConfig | LoopConfig) -> list[str]:
    """One line per `algo.<key>` changed from its default that `population.hparams` draws per member
    instead (so the change has no effect), saying how to pin it."""
    default, lines = AlgoConfig(), []
    for key in sorted(set(cfg.population.hparams) & set(AlgoConfig.__dataclass_fields__)):
        value, span = getattr(cfg.algo, key), [float(v) for v in cfg.population.hparams[key]]
        if value != getattr(default, key) and span != [value, value]:
            lines.append(f"algo.{key}={value} is not used: population.hparams.{key} draws it per member from {span};"
                         f" pin it with population.hparams.{key}=[{value},{value}]")
    return lines


def check_seed_settings(population: PopulationConfig) -> None:
    """`population.seed.candidates` must be a count the Serve handle can answer in one request, and
    `population.seed_critic_warmup` a number of updates."""
    limit = ServeSettings().max_num
    if not 1 <= population.seed.candidates <= limit:
        raise ConfigError(f"population.seed.candidates must be between 1 and {limit}, got {population.seed.candidates}")
    if population.seed_critic_warmup < 0:
        raise ConfigError(f"population.seed_critic_warmup must be >= 0, got {population.seed_critic_warmup}")


def member_run_id(prefix: str, member: int) -> str:
    return f"{prefix}-m{member:03d}"


def member_policy(cfg: PopulateConfig, member: int) -> PolicyConfig:
    """The policy setting of member `member`: `population.archs[member mod len]`, else `policy`."""
    archs = cfg.population.archs
    return archs[member % len(archs)] if archs else cfg.policy


def check_archs(cfg: PopulateConfig) -> None:
    """ValueError naming a `population.archs` entry that cannot be built, or a bad arch_init_noise."""
    for i, arch in enumerate(cfg.population.archs):
        try:
            PolicySpec(enum_value(arch.kind), 1, tuple(arch.hidden), 1, True, enum_value(arch.activation))
        except ValueError as err:
            raise ValueError(f"population.archs[{i}]: {err}") from None
    if not cfg.population.arch_init_noise >= 0:
        raise ValueError(f"population.arch_init_noise must be >= 0, got {cfg.population.arch_init_noise}")


def shared_initial_actor(cfg: PopulateConfig, group, index: int, policy: PolicyConfig) -> np.ndarray:
    """The initial actor weights every member of architecture `policy` shares for group `group`
    (the env's `index`-th): drawn from the population seed with the base `algo.init_scale`; with
    `population.archs` and `arch_init=grown`, the family's base network (`growth.base_spec` of the
    archs of the same kind and activation) drawn so and grown into `policy` (pgen/policies/growth.py)."""
    import torch

    def spec_of(p: PolicyConfig) -> PolicySpec:
        return PolicySpec.for_group(group, enum_value(p.kind), p.hidden, enum_value(p.activation))

    def draw(spec: PolicySpec) -> np.ndarray:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.SeedSequence([cfg.seed, index, 0x5EED]).generate_state(1)[0]))
            return Actor(spec, init_scale=cfg.algo.init_scale).flat_params()

    spec = spec_of(policy)
    pop = cfg.population
    if not pop.archs or enum_value(pop.arch_init) != "grown":
        return draw(spec)
    family = [s for s in map(spec_of, pop.archs) if same_family(s, spec)]
    base = base_spec(family)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, index, 0x6E0, *spec.hidden]))
    return grow(draw(base), base, spec, noise=pop.arch_init_noise, rng=rng,
                identity_gain=orthogonal_gain(cfg.algo.init_scale))


def seed_params(store: CheckpointStore, run_id: str, member: int) -> tuple[dict[str, np.ndarray], str, dict[str, str]]:
    """Initial weights per group from the checkpoints of run `run_id` (row member mod count).

    Returns (params per group, origin of those checkpoints, arch per group). A seed run may cover
    only some of the env's groups (a generator seeds one group).
    """
    result = store.read_records(run_id=run_id)
    if result.rows == 0:
        raise ValueError(f"population.seed_from={run_id}: no readable checkpoints of that run in {store.uri}")
    rows = result.table.to_pylist()
    params, origin, arch = {}, "trained", {}
    for group in sorted({r["group"] for r in rows}):
        group_rows = sorted((r for r in rows if r["group"] == group), key=lambda r: (r["member"], r["step"]))
        row = group_rows[member % len(group_rows)]
        params[group] = np.asarray(row["params"], dtype=np.float32)
        origin, arch[group] = row["origin"], row["arch"]
    return params, origin, arch


class PopulationWorker:
    """One population member; use as a Ray actor (`ray.remote(PopulationWorker)`) or in-process."""

    def __init__(self, cfg: dict[str, Any], member: int, run_id: str, stream: bool = True):
        """`stream=False` trains and evaluates without touching the store (benchmarks, dry runs)."""
        import torch

        from pgen.learner.ppo import PPOLearner

        self.cfg: PopulateConfig = config_from_dict("populate", cfg)
        setup_logging()  # in a Ray worker: lines reach the driver's console through log_to_driver
        torch.set_num_threads(self.cfg.torch_threads)
        self.member, self.run_id = member, run_id
        self.store = open_store(self.cfg.store) if stream else None
        self.hparams = member_hparams(self.cfg.population.hparams, self.cfg.seed, member)
        algo = replace(self.cfg.algo, **self.hparams)
        self.seed = self.cfg.seed * 1000 + member
        self.policy = member_policy(self.cfg, member)
        self.learner = PPOLearner(self.cfg.env, self.policy, algo, self.seed, self.cfg.population.max_env_steps)
        self.env_key = env_key(self.cfg.env)
        self.arch = {name: gl.actor.spec.arch_key for name, gl in self.learner.groups.items()}
        self.checkpoints, self.restarts, self.origin = 0, 0, "trained"
        self.last_return: dict[str, float] = {}
        self.steps_per_s = 0.0
        self.interval_s = self.store_s = 0.0  # wall time of the last interval, and of its store writes
        if self.store is not None and not self._resume():
            self._start()
        self.start_env_steps = self.learner.env_steps  # where this process began (a resume: its state's)

    # --- start / resume -------------------------------------------------------------------------

    def _state_prefix(self) -> str:
        return f"runs/{self.run_id}/state"

    def _start(self) -> None:
        if self.cfg.population.shared_init:
            self._shared_initial_policies()
        seed_from, seed = self.cfg.population.seed_from, self.cfg.population.seed
        if seed_from:
            params, origin, arch = seed_params(self.store, seed_from, self.member)
        elif seed.model:
            params, origin, arch = self._seed_from_deployment()
        if seed_from or seed.model:
            wrong = {g: a for g, a in arch.items() if self.arch.get(g) != a}
            if wrong:
                raise ValueError(f"seed {seed_from or seed.model}: groups/archs {wrong} do not match this"
                                 f" population's {self.arch}")
            for group, flat in params.items():  # groups without seed weights keep their initial policy
                self.learner.groups[group].actor.load_flat_params(flat)
            self.learner.actor_frozen_until = {group: self.cfg.population.seed_critic_warmup for group in params}
            # docs/design.md origins are "trained" | "seeded:<generator>@<version>": weights copied from a
            # trained run stay "trained" (run.json records seed_from)
            self.origin = origin
        info = {"run_id": self.run_id, "member": self.member, "seed": self.seed, "hparams": self.hparams,
                "origin": self.origin, "seed_from": seed_from, "env_key": self.env_key, "arch": self.arch,
                "status": "started", "created_at": datetime.now(timezone.utc).isoformat(),
                "config": to_dict(self.cfg)}
        self.store.put_once(f"runs/{self.run_id}/run.json", json.dumps(info, indent=1, default=str).encode())
        self.checkpoints = self._next_part_index()  # 0, unless parts of this run exist without a state
        if self.checkpoints:
            log.info(f"{self.run_id}: {self.checkpoints} checkpoints of this run exist without a trainer state;"
                     " its first checkpoint gets the next index")
        # the first checkpoint: the initial policies, so the dataset starts at the random / seeded level
        self._checkpoint()

    def _seed_from_deployment(self) -> tuple[dict[str, np.ndarray], str, dict[str, str]]:
        """One generated policy for `population.seed.target_return` from the served generator, asked
        through a DeploymentHandle (the PolicyGenerator deployment of `serve/`): the only one asked
        for, or the best of `population.seed.candidates` on the selection episodes. `seed.model` is
        `name` (the version LATEST names when the member starts: the reply says which) or `name@version`."""
        seed = self.cfg.population.seed
        handle = generator_handle(seed.app)
        arch = {"kind": enum_value(self.policy.kind), "hidden": list(self.policy.hidden),
                "activation": enum_value(self.policy.activation)}  # this member's architecture
        request = {"target_return": seed.target_return, "num": seed.candidates, "seed": self.seed,
                   "temperature": seed.temperature, "arch": arch}
        reply = handle.options(multiplexed_model_id=seed.model).generate.remote(request).result(
            timeout_s=seed.timeout_s)
        name, version = reply["model"], reply["version"]
        group, params = reply["group"], np.asarray(reply["params"])
        chosen = self._best_candidate(group, params) if len(params) > 1 else 0
        log.info(f"{self.run_id}: seeded from {name}@{version} (target return {seed.target_return}"
                 + (f", candidate {chosen + 1} of {len(params)}" if len(params) > 1 else "") + ")")
        return {group: params[chosen]}, f"seeded:{name}@{version}", {group: reply["arch"]}

    def _best_candidate(self, group: str, params: np.ndarray) -> int:
        """Index of the candidate policy of `group` with the highest mean greedy return on the selection
        episodes (the other groups play this member's policies); their env steps count as training's."""
        others = {name: gl.actor for name, gl in self.learner.groups.items() if name != group}
        best, means, steps = best_candidate(self.cfg.env, others, group, self.learner.groups[group].actor.spec, params,
                                            self.cfg.population.eval_episodes)
        self.learner.env_steps += steps
        log.info(f"{self.run_id}: seed candidates return {min(means):.2f} … {max(means):.2f} on"
                 f" {self.cfg.population.eval_episodes} selection episodes ({steps:,} env steps)")
        return best

    def _shared_initial_policies(self) -> None:
        """Replace each group's actor weights by the initial ones every member of this member's
        architecture shares (`shared_initial_actor`); critics stay per member."""
        for i, (name, gl) in enumerate(sorted(self.learner.groups.items())):
            gl.actor.load_flat_params(shared_initial_actor(self.cfg, gl.group, i, self.policy))

    def _resume(self) -> bool:
        files = load_state(self.store, self._state_prefix(), self.learner, extra=(WORKER_FILE,))
        if files is None:
            return False
        meta = json.loads(files[WORKER_FILE])
        self.origin, self.restarts = meta["origin"], meta["restarts"] + 1
        self.last_return = meta.get("last_return", {})
        self.learner.actor_frozen_until = meta.get("actor_frozen_until", {})
        if meta.get("pending"):  # the parts of the committed checkpoint that a crash left unwritten
            self._write_checkpoint(meta["pending"])
        # continue after every part there is (parts beyond the state: written by an older pgen before a crash)
        self.checkpoints = max(meta["checkpoints"], self._next_part_index())
        log.info(f"{self.run_id}: resumed at {self.learner.env_steps:,} env steps, checkpoint {self.checkpoints}"
                 f" (restart {self.restarts})")
        return True

    # --- the work -------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        budget = self.cfg.population.max_env_steps
        return budget is not None and self.learner.env_steps >= budget

    def train_interval(self) -> dict[str, Any]:
        """`checkpoint_every` PPO updates (fewer at the end of the budget), then one checkpoint."""
        t0, steps0 = time.perf_counter(), self.learner.env_steps
        self.store_s = 0.0
        for _ in range(self.cfg.population.checkpoint_every):
            if self.done:
                break
            self.learner.iterate()
        if self.learner.env_steps > steps0:
            self._checkpoint()
            self.interval_s = time.perf_counter() - t0
            self.steps_per_s = (self.learner.env_steps - steps0) / self.interval_s
        return self.status()

    def _checkpoint(self) -> None:
        """Evaluate; commit the checkpoint with the trainer state (state files, then the pointer);
        then write its records, one write-once part per group, from what was committed.

        That order makes a checkpoint all-or-nothing across groups without relying on the store's
        conditional writes: a part exists only for a committed checkpoint, and a member that dies
        between its parts writes the missing ones from the same committed state when it resumes."""
        policies = {name: gl.actor for name, gl in self.learner.groups.items()}
        returns = evaluate_returns(self.cfg.env, policies, self.cfg.population.eval_episodes)
        pending = {"index": self.checkpoints, "step": self.learner.env_steps, "update": self.learner.iteration,
                   "created_at": datetime.now(timezone.utc).isoformat(),
                   "groups": {name: {"return_mean": float(r.mean()), "return_std": float(r.std()),
                                     "episodes": int(r.size)} for name, r in returns.items()}}
        self.last_return = {name: g["return_mean"] for name, g in pending["groups"].items()}
        self.checkpoints += 1
        if self.store is None:
            return
        t0 = time.perf_counter()
        self._save_state(pending)
        self._write_checkpoint(pending)
        self.store_s += time.perf_counter() - t0

    def _write_checkpoint(self, pending: dict[str, Any]) -> None:
        """The committed checkpoint `pending` as one record per group, from the actors (which hold
        the committed weights). A part that is already there is this same checkpoint's: left as is."""
        created_at = datetime.fromisoformat(pending["created_at"])
        for name, gl in self.learner.groups.items():
            group, params = pending["groups"][name], gl.actor.flat_params()
            record = {
                "run_id": self.run_id, "member": self.member, "env_id": self.cfg.env.id, "env_key": self.env_key,
                "group": name, "arch": self.arch[name], "step": pending["step"], "update": pending["update"],
                "return_mean": group["return_mean"], "return_std": group["return_std"], "episodes": group["episodes"],
                "num_params": int(params.size), "params": params, "checksum": params_checksum(params),
                "created_at": created_at, "seed": self.seed, "origin": self.origin,
            }
            self.store.write_part([record], self.env_key, name, self.arch[name], self.run_id, pending["index"])

    def _next_part_index(self) -> int:
        """1 + the highest checkpoint index of any of this member's parts (0 if none)."""
        return max(self.store.next_part_seq(self.env_key, name, self.arch[name], self.run_id)
                   for name in self.learner.groups)

    def _save_state(self, pending: dict[str, Any]) -> None:
        worker = {"checkpoints": self.checkpoints, "origin": self.origin, "restarts": self.restarts,
                  "last_return": self.last_return, "status": "done" if self.done else "running", "pending": pending,
                  "actor_frozen_until": self.learner.actor_frozen_until}
        save_state(self.store, self._state_prefix(), self.learner, extra={WORKER_FILE: json.dumps(worker).encode()})

    def status(self) -> dict[str, Any]:
        return {"member": self.member, "run_id": self.run_id, "env_steps": self.learner.env_steps,
                "steps_per_s": self.steps_per_s, "return": dict(self.last_return), "checkpoints": self.checkpoints,
                "restarts": self.restarts, "done": self.done, "pid": os.getpid(), "origin": self.origin,
                "interval_s": self.interval_s, "store_s": self.store_s, "start_env_steps": self.start_env_steps}
