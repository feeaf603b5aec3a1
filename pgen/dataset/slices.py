"""The checkpoints a generator learns from: one slice of the store, as arrays.

A slice is the checkpoints of one (env, group) and one or more architectures of a family (a
single-architecture generator's slice is a family of one). `Slice` holds one `ParamDataset` per
architecture (arch key), row-aligned within each; every place that reads checkpoints for a
generator — its fit, its evaluation's baselines, Tune — holds a `Slice`.

- `load_rows` reads one architecture's verified records with pyarrow (checksums verified by the
  store), sorted by run and step; `load_slice` reads several; `archs_in_store` lists the
  architectures of a family the store holds for (env, group);
- `Slice.split` holds out whole runs of every architecture for validation, never single rows;
- `condition_returns`: the returns a trained generator conditioned on, for rows of its slice;
- `slice_spec`: the group and policy spec an env and policy config name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from pgen.config import EnvConfig, enum_value
from pgen.envs import describe_env
from pgen.policies.growth import family_key
from pgen.policies.spec import PolicySpec
from pgen.store import CheckpointStore

COLUMNS = ["run_id", "step", "return_mean", "return_std", "episodes", "params", "created_at"]


@dataclass
class ParamDataset:
    """Checkpoints of one (env, group, arch), row-aligned."""

    params: np.ndarray  # [N, P] float32, ParamLayout order
    returns: np.ndarray  # [N] float64, the record's return_mean
    run_ids: np.ndarray  # [N] str
    steps: np.ndarray  # [N] int64
    return_std: np.ndarray  # [N] float64, std of the per-episode returns behind `returns`
    episodes: np.ndarray  # [N] int, how many episodes `returns` averages
    bad_rows: int = 0

    def __len__(self) -> int:
        return len(self.returns)

    def subset(self, idx: np.ndarray) -> "ParamDataset":
        return ParamDataset(self.params[idx], self.returns[idx], self.run_ids[idx], self.steps[idx],
                            self.return_std[idx], self.episodes[idx])


def load_rows(store: CheckpointStore, env_key: str, group: str, arch: str, num_params: int,
              run_ids: list[str] | None = None) -> ParamDataset:
    """Every verified checkpoint of (env, group, arch) (optionally only of `run_ids`), sorted by run and step."""
    result = store.read_records(env_key=env_key, group=group, arch=arch, columns=COLUMNS)
    if result.rows == 0:
        raise ValueError(f"no checkpoints in {store.uri} for env={env_key} group={group} arch={arch}"
                         f" ({result.bad_rows} bad rows skipped); run `pgen populate` or `pgen dataset` to see what is there")
    table = result.table
    if run_ids is not None:
        table = table.filter(pa.compute.is_in(table["run_id"], pa.array(run_ids)))
    params_col = table["params"].combine_chunks()
    params = params_col.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if params.size != len(table) * num_params:
        raise ValueError(f"slice {env_key}/{group}/{arch}: rows do not have {num_params} params each")
    data = ParamDataset(params.reshape(len(table), num_params), table["return_mean"].to_numpy(),
                        np.asarray(table["run_id"].to_pylist()), table["step"].to_numpy(),
                        table["return_std"].to_numpy(), table["episodes"].to_numpy(), result.bad_rows)
    order = np.lexsort((data.steps, data.run_ids))
    out = data.subset(order)
    out.bad_rows = result.bad_rows
    return out


def split_by_run(run_ids: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation) with whole runs held out: round(val_fraction × runs), at least
    one when there are two runs or more, none with a single run (then validation is empty)."""
    runs = sorted(set(run_ids.tolist()))
    n_val = 0 if len(runs) < 2 or val_fraction <= 0 else max(1, round(val_fraction * len(runs)))
    n_val = min(n_val, len(runs) - 1)
    rng = np.random.default_rng(seed)
    val_runs = set(rng.permutation(runs)[:n_val].tolist()) if n_val else set()
    is_val = np.array([r in val_runs for r in run_ids], dtype=bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


@dataclass
class Slice:
    """Checkpoints of one (env, group) and one or more architectures, one `ParamDataset` each."""

    parts: dict[str, ParamDataset]  # arch key → its checkpoints
    specs: dict[str, PolicySpec]  # arch key → spec

    @classmethod
    def of(cls, spec: PolicySpec, rows: ParamDataset) -> "Slice":
        """The slice of one architecture."""
        return cls({spec.arch_key: rows}, {spec.arch_key: spec})

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts.values())

    def _pooled(self, column: str) -> np.ndarray:
        return np.concatenate([getattr(p, column) for p in self.parts.values()])

    # every architecture's rows, concatenated in part order
    returns = property(lambda self: self._pooled("returns"))
    run_ids = property(lambda self: self._pooled("run_ids"))
    steps = property(lambda self: self._pooled("steps"))
    return_std = property(lambda self: self._pooled("return_std"))
    episodes = property(lambda self: self._pooled("episodes"))

    @property
    def bad_rows(self) -> int:
        return sum(p.bad_rows for p in self.parts.values())

    @property
    def rows(self) -> list[tuple[str, int]]:
        """(arch key, row) of every row, in part order (the order of the pooled columns)."""
        return [(k, i) for k, p in self.parts.items() for i in range(len(p))]

    def subset(self, keep: dict[str, np.ndarray]) -> "Slice":
        """The rows `keep[arch key]` of each architecture (an architecture left with none is dropped)."""
        return Slice({k: p.subset(keep[k]) for k, p in self.parts.items() if len(keep[k])}, self.specs)

    def map(self, fn: Callable[[str, ParamDataset], ParamDataset]) -> "Slice":
        """Each part replaced by `fn(arch key, part)`."""
        return Slice({k: fn(k, p) for k, p in self.parts.items()}, self.specs)

    def with_returns(self, returns: np.ndarray) -> "Slice":
        """The same rows with `returns` (concatenated in part order) as their returns."""
        ends = np.cumsum([len(p) for p in self.parts.values()])[:-1]
        return Slice({k: replace(p, returns=r) for (k, p), r in zip(self.parts.items(), np.split(returns, ends))},
                     self.specs)

    def split(self, val_fraction: float, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Row indices (train, validation) per architecture: `split_by_run` within each, so every
        architecture keeps training runs and none is held out whole."""
        train, val = {}, {}
        for i, (key, part) in enumerate(sorted(self.parts.items())):
            train[key], val[key] = split_by_run(part.run_ids, val_fraction, seed + 7919 * i)
        return train, val


def archs_in_store(store: CheckpointStore, env_key: str, group: str, family: str) -> list[PolicySpec]:
    """The architectures of `family` (a family key) with checkpoints in the store for (env, group), by arch key."""
    prefix = f"checkpoints/env={env_key}/group={group}/"
    keys = {k[len(prefix):].split("/", 1)[0] for k in store.list(prefix)}
    specs = [PolicySpec.from_arch_key(k[len("arch="):]) for k in keys if k.startswith("arch=")]
    return sorted((s for s in specs if family_key(s) == family), key=lambda s: s.arch_key)


def load_slice(store: CheckpointStore, env_key: str, group: str, specs: list[PolicySpec],
               run_ids: list[str] | None = None) -> Slice:
    """Every verified checkpoint of each architecture in `specs` (optionally only of `run_ids`)."""
    parts = {}
    for spec in specs:
        part = load_rows(store, env_key, group, spec.arch_key, spec.layout.num_params, run_ids)
        if len(part):
            parts[spec.arch_key] = part
    return Slice(parts, {s.arch_key: s for s in specs})


def condition_returns(data: ParamDataset, dataset_info: dict[str, Any]) -> ParamDataset:
    """`data` with the returns a generator conditioned on (`dataset_info` = its config.json "dataset"):
    the ones re-measured against the reference when it rescored its checkpoints, else the records'."""
    rescored = dataset_info.get("rescored")
    if not rescored:
        return data
    lookup = {(run, int(step)): float(value) for run, rows in rescored["returns"].items() for step, value in rows}
    keys = list(zip(data.run_ids.tolist(), data.steps.tolist()))
    missing = [k for k in keys if k not in lookup]
    if missing:
        raise ValueError(f"{len(missing)} checkpoints (e.g. run {missing[0][0]} step {missing[0][1]}) have no"
                         " rescored return in the generator's config.json")
    return replace(data, returns=np.array([lookup[k] for k in keys]))


def slice_spec(env_cfg: EnvConfig, policy_cfg: Any, group: str | None) -> tuple[str, PolicySpec]:
    """The group (default: the env's first) and the policy spec its checkpoints have."""
    env = describe_env(env_cfg)
    g = env.group(group) if group else env.groups[0]
    return g.name, PolicySpec.for_group(g, enum_value(policy_cfg.kind), policy_cfg.hidden,
                                        enum_value(policy_cfg.activation))
