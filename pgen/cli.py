"""`pgen <command> [hydra overrides]`: the one console script."""

from __future__ import annotations

import sys
from typing import Callable

from omegaconf import OmegaConf

from pgen.config import ConfigError, compose_config, to_dict
from pgen.envs import EnvError
from pgen.store import StoreError
from pgen.progress import setup_logging

USAGE = """usage: pgen <command> [key=value ...] [--cfg]

commands:
  populate   start population.size Ray actors that train and stream checkpoints to store.uri
  dataset    summarise the checkpoints in a store: counts, return range and histogram, bad rows
  train      train one population member in-process with IPPO/MAPPO (no Ray)
  train-generator  fit the return-conditioned VAE on a store slice; register a version
  generate   write num policies for target_return to a safetensors policy file
  evaluate   generated policies over a grid of targets vs random, top-10 % and retrieval baselines
  pipeline   the main job: populate -> train-generator -> evaluate (profile=quick | full)
  serve      the generator as an HTTP endpoint on Ray Serve (serve/app.py): /v1/generate, /v1/seed
  tune       Ray Tune sweep of the generator's hyper-parameters; registers the best (profile=quick | full)
  loop       the service: populations, generator versions behind a promotion gate, Serve and seeding, until stopped

Overrides are Hydra's: env=simple_tag algo=ippo policy=gru population.max_env_steps=200000
env.id=<module with parallel_env> env.kwargs.<k>=<v> seed=1 run_dir=/abs/path ...
--cfg prints the composed config and exits.
"""


def _train(cfg) -> None:
    from pgen.train import train

    train(cfg)


def _populate(cfg) -> None:
    from pgen.population import populate

    populate(cfg)


def _dataset(cfg) -> None:
    from pgen.dataset import format_summary, summarise

    print(format_summary(summarise(cfg)))


def _train_generator(cfg) -> None:
    from pgen.generator.train import train_generator

    train_generator(cfg)


def _generate(cfg) -> None:
    from pgen.generator.sample import generate_file

    path = generate_file(cfg)
    print(f"wrote {cfg.num} policies for target_return={cfg.target_return} to {path}")


def _evaluate(cfg) -> None:
    from pgen.evaluate import evaluate_generator, format_result

    print(format_result(evaluate_generator(cfg)))


def _pipeline(cfg) -> None:
    from pgen.pipeline import pipeline

    pipeline(cfg)


def _serve(cfg) -> None:
    # `serve/` sits beside `pgen/` (DESIGN.md): pgen itself never imports it, only this shortcut does
    from serve.app import run

    run(cfg)


def _tune(cfg) -> int:
    from tune.sweep import run  # the top-level tune/ package (DESIGN.md: pgen never imports it at module level)

    return run(cfg)


def _loop(cfg) -> int:
    from loop.driver import run  # the top-level loop/ package: it deploys serve/, which pgen never imports

    return run(cfg)


COMMANDS: dict[str, Callable] = {"train": _train, "populate": _populate, "dataset": _dataset,
                                 "train-generator": _train_generator, "generate": _generate,
                                 "evaluate": _evaluate, "pipeline": _pipeline, "serve": _serve, "tune": _tune,
                                 "loop": _loop}


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
        status = COMMANDS[command](cfg)
    except (ConfigError, EnvError, StoreError, ValueError) as err:
        print(f"pgen {command}: error: {err}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
