"""`pgen generate`: `num` policies for `target_return` from a registered generator, as a policy file.

The file (docs/design.md "Policy file") also records `seed`, `temperature`, the dataset's return
range and `conditioned_on` (the return the model was conditioned on, when that is not the target
itself). With `candidates=K` each policy is the closest to the target of K generated, played on
`selection_episodes` selection episodes (`pgen.evaluation.selection`); the file then records
`candidates`, `selection_episodes` and each policy's `selection_returns`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pgen.config import GenerateConfig, config_from_dict, enum_value
from pgen.dataset.reference import reference_actors
from pgen.evaluation.selection import check_selection, generate_selected
from pgen.generator.sample import requested_spec
from pgen.generator.versions import load_generator
from pgen.policies.policy_file import save_policy_file
from pgen.policies.rollout import selection_returns
from pgen.store import CheckpointStore, open_store
from pgen.util.checks import check_target


def generate_file(cfg: GenerateConfig, store: CheckpointStore | None = None) -> Path:
    """Write the policy file of `cfg` (module doc); returns its path."""
    if cfg.target_return is None:
        raise ValueError("target_return=<number> is required")
    target = check_target(cfg.target_return)
    if not 1 <= cfg.num <= cfg.max_num:
        raise ValueError(f"num must be between 1 and {cfg.max_num}, got {cfg.num}")
    check_selection(cfg.candidates, cfg.selection_episodes)
    store = store or open_store(cfg.store)
    gen = load_generator(store, cfg.model)
    p = cfg.policy
    spec = requested_spec(gen, cfg.arch, enum_value(p.kind) if p.kind else None, p.hidden,
                          enum_value(p.activation) if p.activation else None)
    extra: dict[str, Any] = {"seed": str(cfg.seed), "temperature": repr(float(cfg.temperature)),
                             "dataset_return_range": json.dumps(list(gen.return_range(spec)))}
    if cfg.candidates > 1:  # each policy the closest to the target of `candidates`, played on the selection episodes
        env_cfg = config_from_dict("train", {"env": gen.info["env"]}).env
        returns_of = selection_returns(env_cfg, reference_actors(store, gen.info, env_cfg), gen.info["group"], spec,
                                       cfg.selection_episodes)
        drawn = generate_selected(gen, target, cfg.num, cfg.candidates, returns_of, seed=cfg.seed,
                                  temperature=cfg.temperature, spec=spec)
        params = drawn.params
        extra.update(candidates=str(cfg.candidates), selection_episodes=str(cfg.selection_episodes),
                     selection_returns=json.dumps([float(r[c]) for r, c in zip(drawn.returns, drawn.chosen)]))
    else:
        params = gen.generate(target, cfg.num, seed=cfg.seed, temperature=cfg.temperature, spec=spec)
    arch = "" if spec == gen.spec else f"-{spec.arch_key}"
    out = Path(cfg.out or f"generated-{gen.name}-{gen.version}{arch}-{target:g}.safetensors").expanduser().resolve()
    condition = gen.conditioned_on(target, spec)
    if condition is not None:
        extra["conditioned_on"] = repr(condition)
    return save_policy_file(out, params, spec, gen.info["env"]["id"], gen.info["group"], gen.name, gen.version,
                            target_return=target, extra=extra)


def main(cfg: GenerateConfig) -> None:
    path = generate_file(cfg)
    print(f"wrote {cfg.num} policies for target_return={cfg.target_return} to {path}")
