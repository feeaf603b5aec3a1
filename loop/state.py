"""What `pgen loop` remembers, in the store: members, budget used, counters, gate decisions, history.

The state is written after every event as a new write-once snapshot
`loop/<loop_id>/state/<seq:06d>.json`; `pgen loop resume=true` (or a restarted job) reads the
highest one. Snapshots are never overwritten, so a driver killed while writing one leaves the one
before it, whole.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from pgen.store import CheckpointStore

STATE_RE = re.compile(r"^loop/([^/]+)/state/(\d{6})\.json$")


@dataclass
class Member:
    """One slot of the population and the run that fills it now (a reseed starts a new run in it)."""

    slot: int
    run_id: str
    generation: int = 0  # reseeds of this slot so far
    origin: str = "trained"  # "trained" | "seeded:<name>@<version>"
    env_steps: int = 0
    checkpoints: int = 0
    last_return: float | None = None


@dataclass
class LoopState:
    loop_id: str
    started_at: str
    members: list[Member]
    seq: int = 0  # the snapshot this state was read from or last written as
    elapsed_s: float = 0.0  # wall time of the loop's runs before this one (resume)
    retired_env_steps: int = 0  # env steps of runs that a reseed replaced
    checkpoints: int = 0  # checkpoints of the generator's group written by every run of the loop
    best_return: float | None = None  # the best checkpoint return seen (generator's group)
    checkpoints_at_fit: int = 0  # `checkpoints` when the last fit started
    checkpoints_at_reseed: int = 0
    served: str | None = None  # `name@version` the gate last promoted
    last_version: str | None = None  # the newest version the loop fitted (what the next fit warm-starts from)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    reseeds: list[dict[str, Any]] = field(default_factory=list)
    history: list[list[float]] = field(default_factory=list)  # [elapsed s, env steps, best return]

    @property
    def env_steps(self) -> int:
        """Env steps of every run of the loop: the current members' and the retired ones'."""
        return self.retired_env_steps + sum(m.env_steps for m in self.members)

    def save(self, store: CheckpointStore) -> None:
        """Write the next snapshot (write-once)."""
        self.seq += 1
        data = asdict(self)
        store.put_once(f"loop/{self.loop_id}/state/{self.seq:06d}.json", json.dumps(data, indent=1).encode())

    @classmethod
    def load(cls, store: CheckpointStore, loop_id: str) -> "LoopState | None":
        """The newest snapshot of `loop_id`, or None if it has none."""
        seqs = [int(m[2]) for k in store.list(f"loop/{loop_id}/state/") if (m := STATE_RE.match(k))]
        if not seqs:
            return None
        data = json.loads(store.get(f"loop/{loop_id}/state/{max(seqs):06d}.json"))
        data["members"] = [Member(**m) for m in data["members"]]
        return cls(**data)
