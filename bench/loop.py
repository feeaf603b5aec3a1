"""What the closed loop buys: `pgen loop` against an open-loop population, same budget, side by side.

For each seed, two runs of `pgen loop` (each its own process and local Ray, one after the other,
open then closed, so both meet the machine alike), with the same env, population, PPO settings and
total env-step budget:

  (a) open loop: the population alone (`loop.reseed_every=0`, no fits, no Serve);
  (b) closed loop: generator versions behind the gate, Serve, and the weakest members reseeded from
      generated policies (the profile's settings).

During (b) `--clients` threads keep a bounded load of `/v1/generate` requests for the loop's model
on loopback (each waits for its answer, then `--client-pause-s`), across every promotion: a failed
request, or a version older than one the same client already got, is counted.

Reported per seed: the best greedy checkpoint return in the store over env steps for both (the
loop's history), (a)'s final best, the env steps (b) needs to reach it (goal ≤ 1/2 of the budget (a)
used) and (b)'s final best (goal: higher); the promoted versions of (b) with their top target and the
return achieved there (goal: non-decreasing over ≥ 3 promotions, the top target rising); failed
requests (goal 0); per gate decision, the store's best return minus the version's achieved return
at the top target (`gate_gaps`: what a seed from it can add to the population's best). Writes
`bench/results/loop<tag>.json` and `loop<tag>.png`.

    python bench/loop.py --seeds 0 1 2 --budget 3000000
    python bench/loop.py --gaps        # gate_gaps of the results already there, no runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
OPEN = ["loop.reseed_every=0", "loop.serve=false", "loop.retrain_every=1000000000"]


def model_name(overrides: list[str]) -> str:
    from pgen.config import compose_config
    from pgen.generator.versions import default_name

    cfg = compose_config("loop", overrides)
    return default_name(cfg.env, cfg.policy, cfg.generator)


class Load:
    """Client threads posting /v1/generate one request at a time; failures and version regressions."""

    def __init__(self, url: str, model: str, clients: int, pause_s: float):
        self.url, self.model, self.pause_s = url, model, pause_s
        self.ok, self.failures, self.regressions, self.versions = 0, [], [], set()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        self.served = False  # whether a version has been answered yet (404s before it are expected)

    def _client(self) -> None:
        import requests

        last = 0
        while not self.stop.is_set():
            try:
                r = requests.post(f"{self.url}/v1/generate", json={"model": self.model, "target_return": -40.0},
                                  timeout=60)
            except requests.RequestException:
                if self.served:  # the endpoint was up: a refused or dropped request is a failure
                    self.failures.append("connection")
                time.sleep(0.5)
                continue
            if r.status_code == 404 and not self.served:
                time.sleep(0.5)
                continue
            if r.status_code != 200:
                self.failures.append(f"{r.status_code} {r.text[:160]}")
            else:
                self.served, self.ok = True, self.ok + 1
                number = int(r.json()["version"][1:])
                if number < last:
                    self.regressions.append(f"v{number} after v{last}")
                last = max(last, number)
                self.versions.add(number)
            time.sleep(self.pause_s)

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)


def run_loop(name: str, overrides: list[str], out: Path, load: dict[str, Any] | None) -> dict[str, Any]:
    """One `pgen loop` process; its summary.json, and the load's counts when `load` is given."""
    from tests.s3server import free_port

    port = free_port()
    args = [*overrides, f"loop.loop_id={name}", f"store.uri={out / name / 'store'}", f"loop.out_dir={out / 'loops'}",
            f"serve.port={port}", "loop.log_every_s=2"]
    (out / name).mkdir(parents=True, exist_ok=True)  # its own store: the loop fits on all of its store's data
    log_path = out / f"{name}.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "pgen.cli", "loop", *args], stdout=log_file,
                                stderr=subprocess.STDOUT, cwd=out)
        counts = None
        if load:
            with Load(f"http://127.0.0.1:{port}", load["model"], load["clients"], load["pause_s"]) as lo:
                # the load runs while the loop serves: until its budget is reached (then it shuts Serve down)
                while proc.poll() is None and "reached: finishing" not in log_path.read_text():
                    time.sleep(1.0)
            counts = {"ok": lo.ok, "failed": len(lo.failures), "failures": lo.failures[:10],
                      "regressions": lo.regressions[:10], "versions_seen": sorted(lo.versions)}
        proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{name}: pgen loop exited {proc.returncode}; see {log_path}")
    summary = json.loads((out / "loops" / name / "summary.json").read_text())
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    summary["load"] = counts
    return summary


def steps_to_reach(history: list[list[float]], level: float) -> int | None:
    """The first env-step count at which the best return in the store is ≥ `level`."""
    return next((int(s) for _, s, b in history if b is not None and b >= level), None)


def versions_improve(decisions: list[dict[str, Any]]) -> dict[str, Any]:
    promoted = [d for d in decisions if d["promoted"]]
    achieved = [d["metrics"]["achieved_top"] for d in promoted]
    targets = [d["metrics"]["top_target"] for d in promoted]
    return {"promoted": [d["model_id"].split("@")[1] for d in promoted], "achieved_top": achieved,
            "top_target": targets, "rejected": sum(not d["promoted"] for d in decisions),
            "achieved_non_decreasing": all(b >= a for a, b in zip(achieved, achieved[1:])),
            "top_target_rising": len(targets) > 1 and targets[-1] > targets[0]}


def gate_gaps(history: list[list[float]], decisions: list[dict[str, Any]]) -> list[float]:
    """Per gate decision: the store's best return when it was made minus the new version's achieved
    return at the top target (> 0: the version generates below the best member, so a seed from it
    cannot lift the population's best)."""
    gaps = []
    for d in decisions:
        best = max((b for _, s, b in history if b is not None and s <= d["env_steps"]), default=None)
        if best is not None:
            gaps.append(round(best - d["metrics"]["achieved_top"], 2))
    return gaps


def print_gaps() -> None:
    """`--gaps`: `gate_gaps` of every closed loop in bench/results/loop*.json (no new runs)."""
    every = []
    for path in sorted(RESULTS.glob("loop*.json")):
        for r in json.loads(path.read_text())["runs"]:
            gaps = gate_gaps(r["closed"]["history"], r["closed"]["decisions"])
            every += gaps
            print(f"{path.name:<28} seed {r['seed']}: best − achieved at the top, per decision: {gaps}")
    if every:
        print(f"{len(every)} decisions: {min(every):+.1f} … {max(every):+.1f}, above zero in"
              f" {sum(g > 0 for g in every)}")


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    colors = {"open": "tab:gray", "closed": "tab:blue"}
    for r in results:
        for kind in ("open", "closed"):
            h = [(s, b) for _, s, b in r[kind]["history"] if b is not None]
            ax.step([s for s, _ in h], [b for _, b in h], where="post", color=colors[kind], alpha=0.8,
                    label=f"{kind} loop" if r is results[0] else None)
        for d in r["closed"]["decisions"]:
            if d["promoted"]:
                ax.axvline(d["env_steps"], color="tab:green", linewidth=0.6, alpha=0.4)
    ax.plot([], [], color="tab:green", linewidth=0.6, label="promotion (closed loop)")
    ax.set(xlabel="env steps (all members)", ylabel="best greedy checkpoint return in the store",
           title=f"pgen loop: closed vs open loop, {len(results)} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=3_000_000, help="loop.max_env_steps of every run")
    p.add_argument("--profile", default="quick")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--client-pause-s", type=float, default=0.2)
    p.add_argument("--out", type=Path, default=Path("/tmp/pgen-bench-loop"))
    p.add_argument("--tag", default="", help="suffix of the result files: loop<tag>.json / .png")
    p.add_argument("--gaps", action="store_true", help="only print `gate_gaps` of the results already in bench/results")
    p.add_argument("overrides", nargs="*", help="more `pgen loop` overrides for both runs")
    a = p.parse_args()
    if a.gaps:
        print_gaps()
        return
    os.environ["PYTHONPATH"] = os.pathsep.join(
        x for x in (str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")) if x)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.s3server.free_port
    stamp = time.strftime("%Y%m%dT%H%M%S")
    results = []
    for seed in a.seeds:
        common = [f"profile={a.profile}", f"seed={seed}", f"loop.max_env_steps={a.budget}", *a.overrides]
        out = a.out / f"{stamp}-s{seed}"
        out.mkdir(parents=True, exist_ok=True)
        print(f"seed {seed}: open loop ...", flush=True)
        opened = run_loop(f"open-s{seed}", [*common, *OPEN], out, None)
        print(f"seed {seed}: closed loop ...", flush=True)
        load = {"model": model_name(common), "clients": a.clients, "pause_s": a.client_pause_s}
        closed = run_loop(f"closed-s{seed}", common, out, load)
        level = opened["best_return"]
        reach = steps_to_reach(closed["history"], level)
        row = {"seed": seed, "open": opened, "closed": closed, "open_final_best": level,
               "open_env_steps": opened["env_steps"], "closed_final_best": closed["best_return"],
               "closed_steps_to_open_final_best": reach,
               "steps_ratio": None if reach is None else reach / opened["env_steps"],
               "versions": versions_improve(closed["decisions"]), "reseeds": len(closed["reseeds"]),
               "gate_gaps": gate_gaps(closed["history"], closed["decisions"])}
        results.append(row)
        print(f"seed {seed}: open best {level:.2f} at {opened['env_steps']:,} steps; closed best"
              f" {closed['best_return']:.2f}, reaches the open best at {reach if reach is None else f'{reach:,}'}"
              f" env steps; load {closed['load']}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    slim = [{**r, "open": {k: r["open"][k] for k in ("history", "best_return", "env_steps", "wall_s")},
             "closed": {k: r["closed"][k] for k in ("history", "best_return", "env_steps", "wall_s", "decisions",
                                                    "reseeds", "load")}} for r in results]
    (RESULTS / f"loop{a.tag}.json").write_text(json.dumps({"budget": a.budget, "profile": a.profile,
                                                   "overrides": a.overrides, "runs": slim}, indent=1))
    plot(results, RESULTS / f"loop{a.tag}.png")
    print(f"\n{'seed':>4} {'open best':>10} {'closed best':>11} {'closed steps to open best':>26} {'ratio':>6}"
          f" {'promoted':>8} {'achieved@top non-decr.':>22} {'top target rises':>16} {'failed req':>10}")
    for r in results:
        v, lo = r["versions"], r["closed"]["load"]
        reach = r["closed_steps_to_open_final_best"]
        print(f"{r['seed']:>4} {r['open_final_best']:>10.2f} {r['closed_final_best']:>11.2f}"
              f" {'never' if reach is None else f'{reach:,}':>26} {r['steps_ratio'] or float('nan'):>6.2f}"
              f" {len(v['promoted']):>8} {str(v['achieved_non_decreasing']):>22} {str(v['top_target_rising']):>16}"
              f" {lo['failed'] + len(lo['regressions']):>10}")
    print(f"\n{RESULTS / f'loop{a.tag}.json'}, {RESULTS / f'loop{a.tag}.png'}")


if __name__ == "__main__":
    main()
