"""The promotion gate of `pgen loop` (`loop/`): is a new generator version at least as good as the served one?

Both are measured by `pgen.evaluation.evaluate.evaluate_generator` on the *new* version's target grid, episodes
and baselines (uniform random, the best 10 % of its training checkpoints): the same fixed grid and
episodes for both, on the data as it is now. The new version becomes LATEST unless its alignment R²
or its normalised score at the top target is below the served version's by more than
`loop.tolerance`. Every decision is a write-once record `loop/<loop_id>/gate/<name>@<version>.json`,
which Serve's `/v1/models` shows beside each version (`with_gates`).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

from pgen.store import CheckpointStore

GATE_METRICS = ("alignment_r2", "spearman", "normalised_score_top", "top_target", "r_random", "r_top10", "copies")
JUDGED = ("alignment_r2", "normalised_score_top")  # what the gate compares


def gate_metrics(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The metrics of an evaluation the gate records, and the mean achieved return at the top target."""
    top = next(t for t in evaluation["targets"] if t["target"] == evaluation["top_target"])
    return {**{k: evaluation[k] for k in GATE_METRICS}, "achieved_top": top["achieved_mean"]}


def decide(candidate: dict[str, Any], served: dict[str, Any] | None, tolerance: float) -> tuple[bool, str]:
    """(promote?, why) for a candidate's gate metrics against the served version's (None: none served)."""
    if served is None:
        return True, "no version is served yet"
    worse = []
    for key in JUDGED:
        new, old = candidate[key], served[key]
        if not math.isfinite(new):
            worse.append(f"{key} is not a number")
        elif math.isfinite(old) and new < old - tolerance:
            worse.append(f"{key} {new:.3f} < served {old:.3f} - {tolerance:g}")
    if worse:
        return False, "worse than the served version: " + "; ".join(worse)
    return True, (f"not worse than the served version by more than {tolerance:g}"
                  f" (R² {candidate['alignment_r2']:.3f} vs {served['alignment_r2']:.3f}, score at the top"
                  f" {candidate['normalised_score_top']:.3f} vs {served['normalised_score_top']:.3f})")


def gate_key(loop_id: str, model_id: str) -> str:
    return f"loop/{loop_id}/gate/{model_id}.json"


def record_decision(store: CheckpointStore, loop_id: str, decision: dict[str, Any]) -> dict[str, Any]:
    """Write the decision about `decision["model_id"]` once (a retry after a crash finds it there)."""
    decision = {**decision, "decided_at": datetime.now(timezone.utc).isoformat()}
    store.put_once(gate_key(loop_id, decision["model_id"]), json.dumps(decision, indent=1).encode())
    return decision


def gate_records(store: CheckpointStore) -> dict[str, dict[str, Any]]:
    """Every gate decision in the store, by `name@version` (a version decided by two loops: the later)."""
    out: dict[str, dict[str, Any]] = {}
    for key in store.list("loop/"):
        parts = key.split("/")
        if len(parts) == 4 and parts[2] == "gate" and parts[3].endswith(".json"):
            try:
                record = json.loads(store.get(key))
            except (KeyError, ValueError):
                continue
            previous = out.get(record.get("model_id", ""))
            if previous is None or record.get("decided_at", "") >= previous.get("decided_at", ""):
                out[record["model_id"]] = record
    return out


def with_gates(models: list[dict[str, Any]], store: CheckpointStore) -> list[dict[str, Any]]:
    """`models` (rows of `pgen.generator.versions.list_generators`) each with `gate`: the promotion
    gate's decision about that version when `pgen loop` made one (promoted, why, metrics, served), else None."""
    gates = gate_records(store)
    out = []
    for m in models:
        gate = gates.get(f"{m['name']}@{m['version']}")
        out.append({**m, "gate": None if gate is None else {k: gate[k] for k in ("promoted", "why", "metrics", "served")}})
    return out
