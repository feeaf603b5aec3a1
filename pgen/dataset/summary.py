"""What is in a store (`pgen dataset`) — counts per env/group/arch/run, return range, bad rows.

Prints a table, writes `summary.json` and `returns.png` (histogram of checkpoint returns per
env/group/arch) to `out_dir`. A return is the group's mean per-episode return summed over the
group's agents, measured greedily on the population's fixed evaluation episodes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pgen.config import DatasetConfig  # noqa: E402
from pgen.util.fileio import atomic_write  # noqa: E402
from pgen.store import open_store  # noqa: E402

COLUMNS = ["run_id", "env_key", "group", "arch", "step", "return_mean", "origin", "params", "checksum"]


def summarise(cfg: DatasetConfig) -> dict[str, Any]:
    store = open_store(cfg.store)
    result = store.read_records(env_key=cfg.env_key, group=cfg.group, arch=cfg.arch, run_id=cfg.run_id,
                                columns=COLUMNS)
    rows = result.table.drop_columns(["params"]).to_pylist() if result.rows else []
    slices: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in rows:
        slices[(r["env_key"], r["group"], r["arch"])].append(r)
    summary: dict[str, Any] = {"store": store.uri, "rows": result.rows, "bad_rows": result.bad_rows,
                               "bad_parts": [list(p) for p in result.bad_parts], "slices": []}
    for (env, group, arch), items in sorted(slices.items()):
        returns = [r["return_mean"] for r in items]
        runs: dict[str, list[dict]] = defaultdict(list)
        for r in items:
            runs[r["run_id"]].append(r)
        summary["slices"].append({
            "env_key": env, "group": group, "arch": arch, "checkpoints": len(items), "runs": len(runs),
            "return_min": min(returns), "return_max": max(returns),
            "per_run": {run: {"checkpoints": len(rs), "max_step": max(x["step"] for x in rs),
                              "return_min": min(x["return_mean"] for x in rs),
                              "return_max": max(x["return_mean"] for x in rs),
                              "origin": rs[0]["origin"]} for run, rs in sorted(runs.items())},
        })
    out = Path(cfg.out_dir).expanduser().resolve()
    if slices:
        fig, axes = plt.subplots(len(slices), 1, figsize=(7, 2.8 * len(slices)), dpi=110, squeeze=False)
        for ax, ((env, group, arch), items) in zip(axes[:, 0], sorted(slices.items())):
            ax.hist([r["return_mean"] for r in items], bins=30, color="tab:blue", alpha=0.8)
            ax.set(title=f"{env} / {group} / {arch}: {len(items)} checkpoints",
                   xlabel="checkpoint return (group sum, greedy eval)", ylabel="count")
        fig.tight_layout()
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "returns.png", lambda tmp: fig.savefig(tmp, format="png"))
        plt.close(fig)
        summary["plot"] = str(out / "returns.png")
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"store {summary['store']}: {summary['rows']:,} checkpoints, {summary['bad_rows']} bad rows, "
             f"{len(summary['bad_parts'])} unreadable parts"]
    for key, reason in summary["bad_parts"]:
        lines.append(f"  unreadable: {key}: {reason}")
    for s in summary["slices"]:
        lines.append(f"\nenv={s['env_key']} group={s['group']} arch={s['arch']}: {s['checkpoints']} checkpoints,"
                     f" {s['runs']} runs, return {s['return_min']:.1f} .. {s['return_max']:.1f}")
        lines.append(f"  {'run':<36} {'ckpts':>5} {'max step':>10} {'return min':>10} {'max':>8}  origin")
        for run, r in s["per_run"].items():
            lines.append(f"  {run:<36} {r['checkpoints']:>5} {r['max_step']:>10,} {r['return_min']:>10.1f}"
                         f" {r['return_max']:>8.1f}  {r['origin']}")
    if "plot" in summary:
        lines.append(f"\nreturn histogram: {summary['plot']}")
    return "\n".join(lines)
