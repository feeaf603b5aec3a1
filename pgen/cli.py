"""`pgen <command> [hydra overrides]`: the one console script.

Each command is a `main(cfg)` (or `run(cfg)`) function in its own module, imported when it runs: the
library commands in `pgen/commands/`, and `serve`, `tune`, `loop` in the packages beside `pgen/`
(which import pgen; pgen's libraries never import them: this dispatcher is the one place above all).
"""

from __future__ import annotations

import importlib
import sys

from omegaconf import OmegaConf

from pgen.config import ConfigError, compose_config, to_dict
from pgen.envs import EnvError
from pgen.store import StoreError
from pgen.util.progress import setup_logging

USAGE = """usage: pgen <command> [key=value ...] [--cfg]

commands:
  populate   start population.size Ray actors that train and stream checkpoints to store.uri
  dataset    summarise the checkpoints in a store: counts, return range and histogram, bad rows
  train      train one population member in-process with IPPO/MAPPO (no Ray)
  train-generator  fit the return-conditioned VAE on a store slice; register a version (generator=single | family)
  generate   write num policies for target_return to a safetensors policy file
  evaluate   generated policies over a grid of targets vs random, top-10 % and retrieval baselines
  pipeline   the main job: populate -> train-generator -> evaluate (profile=quick | full)
  serve      the generator as an HTTP endpoint on Ray Serve (serve/): /v1/generate, /v1/seed
  tune       Ray Tune sweep of the generator's hyper-parameters; registers the best (profile=quick | full)
  loop       the service: populations, generator versions behind a promotion gate, Serve and seeding, until stopped

Overrides are Hydra's: env=simple_tag algo=ippo policy=gru population.max_env_steps=200000
env.id=<module with parallel_env> env.kwargs.<k>=<v> seed=1 run_dir=/abs/path ...
--cfg prints the composed config and exits.
"""

# command → "module:function" (the function takes the composed config and returns an exit status or None)
COMMANDS: dict[str, str] = {
    "train": "pgen.commands.train:main", "populate": "pgen.commands.populate:main",
    "dataset": "pgen.commands.dataset:main", "train-generator": "pgen.commands.train_generator:main",
    "generate": "pgen.commands.generate:main", "evaluate": "pgen.commands.evaluate:main",
    "pipeline": "pgen.commands.pipeline:main", "serve": "serve.launcher:run", "tune": "tune.sweep:run",
    "loop": "loop.driver:run",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"pgen: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    if any(o in ("-h", "--help") for o in overrides):
        print(f"{USAGE}\n`pgen {command} --cfg` prints the config `pgen {command}` runs with: every key it takes.")
        return 0
    show = "--cfg" in overrides
    overrides = [o for o in overrides if o != "--cfg"]
    setup_logging()
    try:
        cfg = compose_config(command, overrides)
        if show:
            print(OmegaConf.to_yaml(to_dict(cfg)))
            return 0
        module, function = COMMANDS[command].split(":")
        status = getattr(importlib.import_module(module), function)(cfg)
    except (ConfigError, EnvError, StoreError, ValueError) as err:
        print(f"pgen {command}: error: {err}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
