"""Raw env throughput of the two env backends on one core: the mpe2 PettingZoo loop (`VecEnv`,
E = 32 copies) against the batched NumPy MPE (`MPEVecEnv`, E = 32, 256, 1024), for simple_spread
and simple_tag (their `pgen/conf/env` configs).

One env step = one `step()` of one copy with every agent acting; random actions are sampled in
advance, auto-resets are included, `with_state=False` unless `--with-state` (MAPPO's critic reads
`state()`). Each row is the best of `--repeats` runs of `--seconds` (a shared host is noisy).
Prints the table with the ratio to the PettingZoo loop (goal: ≥ 50× at the best E) and writes
`bench/results/mpe_vector.json`. The script does not pin itself; run it on one core:

    taskset -c 1 python bench/mpe_vector.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def steps_per_s(vec, seconds: float, repeats: int, seed: int = 0) -> float:
    """Best-of-`repeats` env steps/s of `vec` under pre-sampled uniform random actions."""
    rng = np.random.default_rng(seed)
    E = vec.num_envs
    pool = [{g.name: rng.integers(0, g.action_dim, (E, g.size)) if g.discrete
             else rng.uniform(0.0, 1.0, (E, g.size, g.action_dim)).astype(np.float32) for g in vec.groups}
            for _ in range(64)]
    vec.reset()
    for actions in pool[:5]:  # warm-up
        vec.step(actions)
    best = 0.0
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n == 0:
            vec.step(pool[n % len(pool)])
            n += 1
        best = max(best, n * E / (time.perf_counter() - t0))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0, help="per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--envs", default="32,256,1024", help="copies E of the batched backend")
    p.add_argument("--pettingzoo-envs", type=int, default=32)
    p.add_argument("--with-state", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)

    from pgen.config import EnvBackend, compose_config
    from pgen.envs import MPEVecEnv, VecEnv

    sizes = [int(x) for x in a.envs.split(",")]
    results = []
    for env in ("simple_spread", "simple_tag"):
        cfg = compose_config("train", [f"env={env}"]).env
        base = steps_per_s(VecEnv(cfg, a.pettingzoo_envs, 0, a.with_state), a.seconds, a.repeats)
        results.append({"env": env, "backend": EnvBackend.pettingzoo.value, "num_envs": a.pettingzoo_envs,
                        "steps_per_s": base, "ratio": 1.0})
        for E in sizes:
            rate = steps_per_s(MPEVecEnv(cfg, E, 0, a.with_state), a.seconds, a.repeats)
            results.append({"env": env, "backend": EnvBackend.vector.value, "num_envs": E,
                            "steps_per_s": rate, "ratio": rate / base})

    print(f"\nraw env steps/s, one core, best of {a.repeats} × {a.seconds:g} s, with_state={a.with_state}")
    print(f"{'env':<14} {'backend':<11} {'E':>5} {'steps/s':>11} {'× pettingzoo':>13}")
    for r in results:
        print(f"{r['env']:<14} {r['backend']:<11} {r['num_envs']:>5} {r['steps_per_s']:>11,.0f} {r['ratio']:>12.1f}×")
    best = {env: max(r["ratio"] for r in results if r["env"] == env) for env in ("simple_spread", "simple_tag")}
    print("best ratio: " + ", ".join(f"{env} {v:.0f}× (goal ≥ 50×)" for env, v in best.items()))
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": a.seconds, "repeats": a.repeats,
           "with_state": a.with_state, "cpu_affinity": sorted(os.sched_getaffinity(0)), "load_avg": os.getloadavg(),
           "python": platform.python_version(), "numpy": np.__version__, "mpe2": metadata.version("mpe2"),
           "results": results, "best_ratio": best}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mpe_vector.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
