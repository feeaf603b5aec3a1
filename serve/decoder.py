"""The generator part of a replica: versions multiplexed by model id, requests batched across callers.

The handle API (what population members use, in both layouts):
`handle.options(multiplexed_model_id=M).generate.remote({"target_return": R, "num": K, "seed": S,
"temperature": T, "arch": A})` with M `name` (the version LATEST names now) or `name@vNNNN`, and A
optional (`{"arch": key}` or `{"kind", "hidden", "activation"}` for an arch-family generator) → a
dict with `params` (`[K, P]` float32), `model`, `version`, `group`, `arch`, `env_id`, `layout`,
`policy_spec`, `return_range`, `conditioned_on`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Iterator, NamedTuple

import numpy as np
from ray import serve

from pgen.config import DEFAULT_TEMPERATURE, ServeConfig
from pgen.generator.sample import Generator, pick_device, requested_spec
from pgen.generator.versions import load_generator, resolve_model
from pgen.policies.spec import PolicySpec
from pgen.util.checks import check_target

MODELS_PER_REPLICA = 4  # generator versions a replica keeps loaded (least recently used goes first)


class Overloaded(Exception):
    """A replica's generate queue is full (serve.max_ongoing_requests + serve.max_queued_requests)."""


class DecodeJob(NamedTuple):
    """One request's share of a batch."""

    gen: Generator
    spec: PolicySpec
    target: float
    num: int
    seed: int
    temperature: float


def decode_jobs(jobs: list[DecodeJob], rows: int = 64) -> list[np.ndarray]:
    """One forward pass per generator and slice of at most `rows` policies over every job; each job
    draws its own noise from its seed, so batching does not change what a request gets."""
    import torch

    out: list[np.ndarray | None] = [None] * len(jobs)
    by_model: dict[tuple[int, PolicySpec], list[int]] = {}
    for i, job in enumerate(jobs):
        by_model.setdefault((id(job.gen), job.spec), []).append(i)
    with torch.inference_mode():
        for idx in by_model.values():
            group = [jobs[i] for i in idx]
            gen, spec = group[0].gen, group[0].spec
            noise = torch.cat([gen.noise(j.num, j.seed, j.temperature) for j in group])
            returns = np.concatenate([np.full(j.num, j.target, np.float64) for j in group])
            # past a few dozen policies a CPU forward pass gets slower per policy (its activations
            # leave the caches: bench/README.md "Serve"), so a large batch goes in slices
            params = np.concatenate([gen.decode(returns[a:a + rows], noise[a:a + rows], spec)
                                     for a in range(0, len(returns), rows)])
            ends = np.cumsum([j.num for j in group])
            for i, chunk in zip(idx, np.split(params, ends[:-1])):
                out[i] = chunk
    return out


def check_request(request: dict[str, Any], limit: int) -> tuple[float, int, int, float]:
    """(target, num, seed, temperature) of a handle request, or ValueError naming the problem."""
    target = check_target(request.get("target_return"))
    num, seed = int(request.get("num", 1)), int(request.get("seed", 0))
    temperature = check_target(request.get("temperature", DEFAULT_TEMPERATURE), "temperature")
    if not 1 <= num <= limit:
        raise ValueError(f"num must be between 1 and {limit} (serve.max_num, serve.max_population), got {num}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    return target, num, seed, temperature


class Decoder:
    """The generator part of a replica (module doc): `generate` is the handle API; `_policies` what
    the edge calls with a resolved `name@version`."""

    def _start_decoder(self, cfg: ServeConfig) -> None:
        import torch

        settings = cfg.serve
        torch.set_num_threads(settings.torch_threads)
        self.device = pick_device(settings.device)
        self._rows = settings.decode_rows
        self._batching = settings.batching
        self._batched = serve.batch(max_batch_size=settings.max_batch_size,
                                    batch_wait_timeout_s=settings.batch_wait_timeout_s,
                                    max_concurrent_batches=settings.max_concurrent_batches)(self._decode_batch)
        self._limit = max(settings.max_num, settings.max_population)  # /v1/seed asks for a population
        self._working = asyncio.Semaphore(settings.max_ongoing_requests)
        self._capacity = settings.max_ongoing_requests + settings.max_queued_requests
        self._admitted = 0  # generate requests from this replica's edge, working or waiting

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, model_id: str) -> Generator:
        return await asyncio.to_thread(load_generator, self.store, model_id, str(self.device))

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """The handle API: the model is the call's `multiplexed_model_id`, `name` (the version LATEST
        names now; the reply's `version` says which) or `name@version`."""
        model_id = serve.get_multiplexed_model_id()
        if "@" not in model_id:
            name, version = await asyncio.to_thread(resolve_model, self.store, model_id or None)
            model_id = f"{name}@{version}"
        return await self._policies(model_id, request)

    async def _policies(self, model_id: str, request: dict[str, Any]) -> dict[str, Any]:
        target, num, seed, temperature = check_request(request, self._limit)
        async with self._working:
            gen = await self.get_model(model_id)
            spec = requested_spec(gen, **(request.get("arch") or {}))
            job = DecodeJob(gen, spec, target, num, seed, temperature)
            params = await self._batched(job) if self._batching else (await self._decode_batch([job]))[0]
        info = gen.info
        return {"params": params, "model": gen.name, "version": gen.version, "group": info["group"],
                "arch": spec.arch_key, "env_id": info["env"]["id"], "layout": spec.layout.to_json(),
                "policy_spec": spec.to_json(), "return_range": list(gen.return_range(spec)),
                "conditioned_on": gen.conditioned_on(target, spec)}

    @contextlib.contextmanager
    def _admit(self) -> Iterator[None]:
        """A place in this replica's generate queue, or Overloaded (the edge's 503)."""
        if self._admitted >= self._capacity:
            raise Overloaded(f"this replica has {self._admitted} generate requests in flight (serve.max_ongoing_requests"
                             f" + serve.max_queued_requests = {self._capacity})")
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    async def _decode_batch(self, jobs: list[DecodeJob]) -> list[np.ndarray]:
        # off the event loop, so the next batch gathers while this one runs
        return await asyncio.to_thread(decode_jobs, jobs, self._rows)

    def check_health(self) -> None:
        self.store.list("generators/")  # raises (and Serve restarts the replica) if the store is gone
