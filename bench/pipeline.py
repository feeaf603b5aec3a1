"""The main job end to end (issue 15): `pgen pipeline` run as a user runs it — a fresh process, a fresh
local store and local Ray per run — with its arms interleaved in one run, so that the load of a shared
machine falls on each alike and the ratios mean something.

Arms (each a list of overrides on `pgen pipeline profile=quick`):
  previous   the quick profile as it was before the batched env backend (the PettingZoo loop, 3 members,
             a checkpoint every 4 updates, 0.66 CPU each, the PPO defaults and member lr range of then):
             the run that took 6 min 06 s;
  quick      today's profile, as the README's first command runs it;
  --lever NAME=OVERRIDES   today's profile with more overrides (space-separated), e.g.
             --lever "epochs120=generator.epochs=120".
Repeat r runs every arm with `seed=r` (`previous` only in its first `--previous-repeats` repeats;
`--seeds` names the seeds instead).
Per run: wall time from process start to exit, the pipeline's own stage timings and its table: the
generator alone (one request, the defaults) — R², Spearman, score at the top, novelty, copies — beside
retrieval and the memorisation audit's noisy retrieval and interpolation (R², score at the top,
novelty), and with `evaluate.candidates` > 1 the choice among candidates. Prints one row per run and
per arm the median wall time and its ratio to `previous`'s; writes bench/results/pipeline.json (or `--out`).

    python3 bench/pipeline.py --repeats 3 --previous-repeats 1 --lever "epochs120=generator.epochs=120"
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))
from rollout import PREVIOUS  # noqa: E402  (the PPO defaults before the batched backend)

PREVIOUS_PROFILE = [*PREVIOUS, "population.size=3", "population.checkpoint_every=4", "population.cpus_per_worker=0.66",
                    "population.hparams.lr=[0.00015,0.0015]", "generator.calibration.points=0",  # no calibration then
                    "evaluate.candidates=1", "evaluate.temperature=0.5"]  # nor a choice among candidates
TABLE = ("alignment_r2", "spearman", "normalised_score_top", "novelty_median", "copies", "retrieval_alignment_r2",
         "retrieval_normalised_score_top", "noisy_retrieval", "interpolation", "candidates", "chosen")


def run_pipeline(arm: str, overrides: list[str], seed: int) -> dict:
    """One `pgen pipeline profile=quick` in a fresh directory; its summary, wall time and command."""
    with tempfile.TemporaryDirectory(prefix=f"pgen-bench-pipeline-{arm}-") as tmp:
        cmd = [sys.executable, "-m", "pgen.cli", "pipeline", "profile=quick", f"store.uri={tmp}/store",
               f"out_dir={tmp}/runs", f"seed={seed}", *overrides]
        print(f"\n[{arm}, seed {seed}] " + " ".join(cmd[2:]), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=tmp)
        wall = time.perf_counter() - t0
        summary = json.loads(next(Path(tmp, "runs").glob("pipeline-*.json")).read_text())
    (group, table), = summary["groups"].items()
    return {"arm": arm, "seed": seed, "overrides": overrides, "wall_s": wall, "timings": summary["timings"],
            "group": group, **{k: table.get(k) for k in TABLE}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", help="run these seeds instead of 0 … repeats − 1")
    ap.add_argument("--previous-repeats", type=int, help="repeats that run `previous` too (default: all)")
    ap.add_argument("--no-previous", action="store_true", help="skip the `previous` arm")
    ap.add_argument("--no-quick", action="store_true",
                    help="skip the `quick` arm (its table is deterministic per seed; its time is then from another run)")
    ap.add_argument("--lever", action="append", default=[], metavar="NAME=OVERRIDES")
    ap.add_argument("--out", default=str(RESULTS / "pipeline.json"))
    args = ap.parse_args()
    levers = {}
    for text in args.lever:
        name, _, overrides = text.partition("=")
        if not name or not overrides:
            ap.error(f"--lever {text!r}: expected NAME=OVERRIDES")
        levers[name] = overrides.split()
    seeds = args.seeds if args.seeds is not None else list(range(args.repeats))
    previous_repeats = 0 if args.no_previous else (len(seeds) if args.previous_repeats is None else args.previous_repeats)
    arms = ({"previous": PREVIOUS_PROFILE} if previous_repeats else {}) | ({} if args.no_quick else {"quick": []}) | levers
    runs = []
    for i, seed in enumerate(seeds):
        for arm, overrides in arms.items():
            if arm == "previous" and i >= previous_repeats:
                continue
            runs.append(run_pipeline(arm, overrides, seed))
            Path(args.out).write_text(json.dumps({"host": platform.node(), "runs": runs}, indent=1))
    print(f"\n{'arm':<12} {'seed':>4} {'wall':>8} {'populate':>9} {'fit':>7} {'evaluate':>9} | generator: {'R²':>6}"
          f" {'ρ':>6} {'score':>6} {'nov.':>5} {'copies':>6} | retrieval: {'R²':>6} {'score':>6} | noisy: {'R²':>6}"
          f" {'score':>6} {'nov.':>5} | interp.: {'R²':>6} {'score':>6} {'nov.':>5} | chosen: {'R²':>6} {'score':>6}")
    for r in runs:
        t, group = r["timings"], r["group"]
        fit_s, evaluate_s = t[f"train_generator_{group}_s"], t[f"evaluate_{group}_s"]
        n, i, c = r["noisy_retrieval"] or {}, r["interpolation"] or {}, r["chosen"]
        print(f"{r['arm']:<12} {r['seed']:>4} {r['wall_s']:>7.0f}s {t['populate_s']:>8.0f}s {fit_s:>6.0f}s"
              f" {evaluate_s:>8.0f}s | {'':>10} {r['alignment_r2']:>6.3f} {r['spearman']:>6.3f}"
              f" {r['normalised_score_top']:>6.2f} {r['novelty_median']:>5.2f} {r['copies']:>6} | {'':>10}"
              f" {r['retrieval_alignment_r2']:>6.3f} {r['retrieval_normalised_score_top'] or float('nan'):>6.2f} |"
              f" {'':>6} {n.get('alignment_r2', float('nan')):>6.3f} {n.get('normalised_score_top', float('nan')):>6.2f}"
              f" {n.get('novelty_median', float('nan')):>5.2f} | {'':>8} {i.get('alignment_r2', float('nan')):>6.3f}"
              f" {i.get('normalised_score_top', float('nan')):>6.2f} {i.get('novelty_median', float('nan')):>5.2f} |"
              + (f" {'':>7} {c['alignment_r2']:>6.3f} {c['normalised_score_top']:>6.2f}" if c else ""))
    medians = {arm: statistics.median(r["wall_s"] for r in runs if r["arm"] == arm)
               for arm in dict.fromkeys(r["arm"] for r in runs)}
    base = medians.get("previous")
    print()
    for arm, wall in medians.items():
        ratio = f"  {base / wall:.2f}× faster than previous (goal ≥ 2)" if base and arm != "previous" else ""
        print(f"{arm:<12} median wall {wall:.0f} s{ratio}")
    summary = {"host": platform.node(), "command": "python3 bench/pipeline.py " + shlex.join(sys.argv[1:]),
               "arms": arms, "median_wall_s": medians,
               "speedup_vs_previous": {a: base / w for a, w in medians.items() if base and a != "previous"}, "runs": runs}
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
