"""The pgen Serve application: the HTTP and gRPC endpoint of the batched, multiplexed generator.

    serve run serve.app:app store.uri=<uri> [serve.<key>=<value> ...]     # from the repo root
    serve deploy serve/config.yaml                                       # on a running cluster
    pgen serve store.uri=<uri> serve.port=8000                           # the same, as one command

`app(args)` is the application builder: `key=value` arguments are Hydra overrides of the `serve`
config (`pgen/conf/serve.yaml`, schema `ServeConfig`), so a misspelt key fails with a message.

Two layouts (`serve.layout`), the same endpoints, limits and handle API:

- `single` (default): one deployment, `PolicyGenerator`, is the FastAPI ingress (OpenAPI at /docs),
  the gRPC ingress (`serve/pgen.proto`) and the generator: a request is validated, resolved and
  decoded in the replica that received it, with no second hop (bench/README.md "Serve": the hop
  cost more than the model).
- `split`: an `Ingress` deployment (HTTP, gRPC) calls the `PolicyGenerator` deployment through a
  DeploymentHandle, so the two scale apart (e.g. CPU ingress replicas before GPU generators).

Either way the edge validates every request, resolves `name` to the version LATEST points at
(re-read every `serve.latest_ttl_s`) and asks for `name@version`, so when a new version is
registered requests move to it while the ones in flight finish on the old one, and none fails.
The generator loads versions on demand (`@serve.multiplexed`, LRU per replica) and decodes the
requests of all clients in one forward pass (`@serve.batch`; slices of `serve.decode_rows`
policies), replicas autoscale on ongoing requests, `serve.num_gpus > 0` puts replicas (and the
model) on GPUs. Population members call `PolicyGenerator.generate` through a handle (module doc of
`pgen/deployment.py`), in both layouts.

- Overload: a replica works on at most `max_ongoing_requests` generate requests and queues
  `max_queued_requests` more; beyond that the answer is 503 with Retry-After (and a JSON error).
- Bad input: 4xx with a JSON body {"error": ..., "detail": ...}; nothing reaches a 500. gRPC maps
  them to INVALID_ARGUMENT, NOT_FOUND and UNAVAILABLE.
- `/v1/seed` writes runs into the store and spends CPU on rollouts, so it is closed by default: it
  needs `Authorization: Bearer <token>` with the token in the environment variable named by
  `serve.token_env` (default PGEN_SERVE_TOKEN) of the replica, compared in constant time; with no
  token set it answers 403, unless `serve.allow_unauthenticated_seed=true` (local development;
  `pgen serve` on a loopback address sets it when no token is set, and says so). Each client (its
  token) has at most `serve.seed_concurrency` seed calls in flight (more get 429 with
  Retry-After), and the rollouts run in a pool of `serve.seed_workers` threads, off the event loop.
- Responses never name the store's URI or endpoint (`/healthz` included): those stay in the logs.

How Serve itself runs (its proxy, its event loops) is not the application's: environment
variables read when Serve's processes start (`ray_serve_env`). `pgen serve` sets them for the Ray
it starts from `serve.proxy` and `serve.throughput_optimized`; a cluster sets them on its nodes.
"""


import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Annotated, Any, Iterator, Literal, NamedTuple, Optional

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from pgen.config import (DEFAULT_TEMPERATURE, ConfigError, ServeConfig, ServeLayout, ServeProxy, ServeSettings,
                         compose_config, config_from_dict, to_dict)
from pgen.generator.archgraph import MAX_DEPTH, MAX_WIDTH
from pgen.generator.sample import (BaseGenerator, GeneratorNotFound, check_target, list_generators, load_generator,
                                   pick_device, requested_spec, resolve_model)
from pgen.policy import PolicySpec, policy_file_bytes
from pgen.deployment import GENERATOR_DEPLOYMENT
from pgen.ray_runtime import init_ray
from pgen.seeding import RUN_ID_RE, RunExists, write_seed_run
from pgen.store import StoreError, open_store, portable_store_config
from serve import pgen_pb2 as pb

logger = logging.getLogger("ray.serve")

MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._=-]*(@v[0-9]{4,})?$"
MODELS_PER_REPLICA = 4  # generator versions a replica keeps loaded (least recently used goes first)
SEED_MAX = 2**63 - 1
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # `pgen serve` hosts only this machine can reach
# the gRPC servicer of serve/pgen.proto, for Serve's grpc_options (serve/config.yaml, `pgen serve`)
GRPC_SERVICER = "serve.pgen_pb2_grpc.add_PolicyGeneratorServicer_to_server"

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class ArchFields(BaseModel):
    """The architecture asked of an arch-family generator (unset: the generator's default)."""

    arch: Optional[str] = Field(None, max_length=200, description="an arch key, e.g. mlp-18x96x96x5-tanh")
    hidden: Optional[list[Annotated[int, Field(ge=1, le=MAX_WIDTH, strict=True)]]] = Field(
        None, min_length=1, max_length=MAX_DEPTH, description=f"hidden sizes (each ≤ {MAX_WIDTH}, ≤ {MAX_DEPTH} layers)")
    kind: Optional[Literal["mlp", "gru"]] = None
    activation: Optional[Literal["tanh", "relu"]] = None

    def arch_request(self) -> dict[str, Any]:
        return {"arch": self.arch, "hidden": self.hidden, "kind": self.kind, "activation": self.activation}


class GenerateRequest(ArchFields):
    """POST /v1/generate: `num` policies for `target_return` from generator `model`."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=200, pattern=MODEL_ID, description="`name` (its LATEST) or `name@vNNNN`")
    target_return: FiniteFloat = Field(description="the group return the policies should achieve")
    num: int = Field(1, ge=1, strict=True, description="policies to generate (at most serve.max_num)")
    seed: Optional[int] = Field(None, ge=0, le=SEED_MAX, strict=True, description="default: a random seed, returned")
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0.0, le=10.0, strict=True, allow_inf_nan=False,
                               description="generation noise ε ~ N(0, temperature² I)")
    format: Literal["json", "safetensors"] = Field("json", description="safetensors: the DESIGN.md policy file")


class SeedRequest(ArchFields):
    """POST /v1/seed: write `population_size` generated policies as seed checkpoints of a new run."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=200, pattern=MODEL_ID)
    target_return: FiniteFloat
    population_size: int = Field(ge=1, strict=True, description="seed policies (at most serve.max_population)")
    run_id: Optional[str] = Field(None, pattern=RUN_ID_RE.pattern)
    seed: Optional[int] = Field(None, ge=0, le=SEED_MAX, strict=True)
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0.0, le=10.0, strict=True, allow_inf_nan=False)


def error(status: int, message: str, headers: dict[str, str] | None = None, **detail: Any) -> JSONResponse:
    return JSONResponse({"error": message, **detail}, status_code=status, headers=headers)


class Overloaded(Exception):
    """A replica's generate queue is full (serve.max_ongoing_requests + serve.max_queued_requests)."""


class DecodeJob(NamedTuple):
    """One request's share of a batch."""

    gen: BaseGenerator
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
    """The generator part of a replica: versions multiplexed by model id `name@version`, requests
    batched across callers. Handle API (what population actors use):
    `handle.options(multiplexed_model_id="name@vNNNN").generate.remote({"target_return": R, "num": K,
    "seed": S, "temperature": T, "arch": A})` (A optional: `{"arch": key}` or `{"kind", "hidden",
    "activation"}` for an arch-family generator) → a dict with `params` (`[K, P]` float32), `model`,
    `version`, `group`, `arch`, `env_id`, `layout`, `policy_spec`, `return_range`."""

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
    async def get_model(self, model_id: str) -> BaseGenerator:
        return await asyncio.to_thread(load_generator, self.store, model_id, str(self.device))

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """The handle API: the model is the call's `multiplexed_model_id`."""
        model_id = serve.get_multiplexed_model_id()
        if "@" not in model_id:
            raise GeneratorNotFound(f"call with multiplexed_model_id='<name>@<version>', got {model_id!r}")
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


def current_edge():
    """The replica object answering this request (the FastAPI routes below are plain functions, so
    that one `api` serves both layouts)."""
    return serve.get_replica_context().servable_object


EdgeDep = Annotated[Any, Depends(current_edge)]  # an Edge

api = FastAPI(title="pgen", version="1", description="Policies for a requested return, generated by pgen's "
              "return-conditioned VAE. Returns are group returns: the per-episode sum over the group's agents.")


def body_limit() -> int:
    """serve.max_body_bytes of the replica answering (the default outside a replica)."""
    try:
        return serve.get_replica_context().servable_object.settings.max_body_bytes
    except Exception:  # noqa: BLE001 - no replica context (yet)
        return ServeSettings.max_body_bytes


class RequestLimits:
    """ASGI middleware: 415 for a POST whose body is not application/json, 413 for a body over
    serve.max_body_bytes, declared (Content-Length) or streamed (chunked); the body read here is
    replayed to the app."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
        if ctype != "application/json":
            return await error(415, f"Content-Type must be application/json, got {ctype or 'none'!r}")(scope, receive, send)
        limit = body_limit()
        too_big = error(413, f"request body over {limit} bytes (serve.max_body_bytes)")
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await too_big(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await too_big(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


api.add_middleware(RequestLimits)


def error_summary(errors: list[dict[str, Any]], skip: int = 1) -> tuple[str, list[dict[str, Any]]]:
    """A one-line summary and a JSON-able list of pydantic errors (never the input: it may not even be
    JSON-serialisable, NaN, and it is the caller's anyway)."""
    detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in errors]
    return "; ".join(f"{'.'.join(d['loc'][skip:]) or 'body'}: {d['msg']}" for d in detail), detail


@api.exception_handler(RequestValidationError)
async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    summary, detail = error_summary(exc.errors())
    return error(422, f"invalid request: {summary}", detail=detail)


@api.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException and the router's 404 / 405
async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


@api.exception_handler(Exception)
async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error in a request")
    return error(500, f"internal error: {type(exc).__name__}")


@api.get("/healthz")
async def healthz(edge: EdgeDep) -> dict[str, Any]:
    """Ok when the replica runs and the store answers."""
    try:
        await asyncio.to_thread(edge.store.list, "generators/")
    except StoreError as err:
        raise edge._store_unavailable(err) from None
    return {"status": "ok"}


@api.get("/v1/models")
async def models(edge: EdgeDep) -> dict[str, Any]:
    """Every complete generator version in the store: env, group, arch, version, return range."""
    return {"models": await edge._models()}


@api.post("/v1/generate", responses={200: {"content": {"application/octet-stream": {}}}})
async def generate(req: GenerateRequest, edge: EdgeDep) -> Response:
    """`num` policies for `target_return`: JSON (params + ParamLayout + model version) or a
    safetensors policy file (`format="safetensors"`)."""
    meta, out = await edge._generate_request(req)
    if req.format == "safetensors":
        name = f"generated-{meta['model']}-{meta['version']}-{req.target_return:g}.safetensors"
        return Response(policy_file(meta, out), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}"',
                                 "X-Pgen-Model": meta["model_id"], "X-Pgen-Seed": str(meta["seed"])})
    body = {**meta, "layout": json.loads(out["layout"]), "num_params": int(out["params"].shape[1]),
            "params": out["params"]}
    # orjson writes each float32 as its shortest decimal form, which reads back to the same float32
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


@api.post("/v1/seed")
async def seed(req: SeedRequest, edge: EdgeDep,
               authorization: Annotated[Optional[str], Header()] = None) -> dict[str, Any]:
    """Write `population_size` generated policies (returns measured) as seed checkpoints of a new
    run, origin `seeded:<model>@<version>`; start a population from it with
    `pgen populate population.seed_from=<run_id>`. Needs the bearer token (see the module doc)."""
    return await edge._seed_request(req, authorization)


def policy_file(meta: dict[str, Any], out: dict[str, Any]) -> bytes:
    """The DESIGN.md policy file of a generate reply."""
    low, high = meta["dataset_return_range"]
    extra = {"seed": str(meta["seed"]), "temperature": repr(meta["temperature"]),
             "dataset_return_range": f"[{low}, {high}]"}
    if meta["conditioned_on"] is not None:
        extra["conditioned_on"] = repr(meta["conditioned_on"])
    return policy_file_bytes(out["params"], PolicySpec.from_json(out["policy_spec"]), out["env_id"], out["group"],
                             out["model"], out["version"], meta["target_return"], extra)


GRPC_CODES = {404: "NOT_FOUND", 413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT", 503: "UNAVAILABLE"}


class Edge:
    """What answers clients, over HTTP (the routes above) and gRPC (`Generate`): validation at the
    edge, `name` → LATEST, /v1/seed and its token. `_decode` is the generator call of the layout."""

    def _start_edge(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.settings = cfg.serve
        self.store = open_store(cfg.store)
        self.token = os.environ.get(self.settings.token_env) or None
        self._latest: dict[str, tuple[str, float]] = {}  # name → (version, monotonic time resolved)
        self._models_cache: tuple[list[dict[str, Any]], float] | None = None
        self._seeding: dict[str, int] = {}  # client (a digest of its token) → /v1/seed calls in flight
        self._seed_pool = ThreadPoolExecutor(self.settings.seed_workers, thread_name_prefix="pgen-seed")
        self._retry_after = str(max(1, int(np.ceil(self.settings.retry_after_s))))
        # what a response must never show: where the store is
        self._private = [v for v in (self.store.uri, getattr(self.store, "endpoint", None)) if v]
        if self.token:
            seed_state = f"needs the bearer token in ${self.settings.token_env}"
        elif self.settings.allow_unauthenticated_seed:
            seed_state = "open to anyone who reaches this port (serve.allow_unauthenticated_seed=true)"
        else:
            seed_state = f"disabled: no token in ${self.settings.token_env}"
        logger.info(f"pgen {self.settings.layout.value} endpoint: store {self.store.uri}; /v1/seed {seed_state}")

    async def _decode(self, model_id: str, request: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _public(self, message: str) -> str:
        """`message` without the store's URI or endpoint."""
        for value in self._private:
            message = message.replace(value, "the store")
        return message

    def _store_unavailable(self, err: StoreError) -> HTTPException:
        logger.warning(f"store unavailable: {err}")
        return HTTPException(503, "store unavailable; try again later", headers={"Retry-After": "5"})

    async def _resolve(self, model: str) -> str:
        """`name@version` for a request's model id; `name` → LATEST, cached for latest_ttl_s."""
        name, _, version = model.partition("@")
        cached = self._latest.get(name)
        if not version and cached and time.monotonic() - cached[1] < self.settings.latest_ttl_s:
            return f"{name}@{cached[0]}"
        try:
            name, version = await asyncio.to_thread(resolve_model, self.store, model)
        except GeneratorNotFound as err:
            raise HTTPException(404, self._public(str(err))) from None
        except StoreError as err:
            raise self._store_unavailable(err) from None
        if "@" not in model:
            self._latest[name] = (version, time.monotonic())
        return f"{name}@{version}"

    async def _generate(self, model: str, target: float, num: int, seed: int, temperature: float,
                        arch: dict[str, Any] | None = None) -> dict[str, Any]:
        model_id = await self._resolve(model)
        request = {"target_return": target, "num": num, "seed": seed, "temperature": temperature, "arch": arch}
        try:
            return await self._decode(model_id, request)
        except (BackPressureError, Overloaded) as err:
            message = err.message if isinstance(err, BackPressureError) else str(err)
            raise HTTPException(503, f"overloaded: {message}", headers={"Retry-After": self._retry_after}) from None
        except GeneratorNotFound as err:
            raise HTTPException(404, self._public(str(err).splitlines()[-1])) from None
        except StoreError as err:
            raise self._store_unavailable(err) from None
        except ValueError as err:
            raise HTTPException(422, self._public(str(err).splitlines()[-1])) from None

    async def _generate_request(self, req: GenerateRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the reply's metadata, the generator's answer) for a validated generate request."""
        if req.num > self.settings.max_num:
            raise HTTPException(422, f"num must be at most {self.settings.max_num} (serve.max_num), got {req.num}")
        seed = secrets.randbelow(2**31) if req.seed is None else req.seed
        out = await self._generate(req.model, req.target_return, req.num, seed, req.temperature, req.arch_request())
        low, high = out["return_range"]
        meta = {"model": out["model"], "version": out["version"], "model_id": f"{out['model']}@{out['version']}",
                "env_id": out["env_id"], "group": out["group"], "arch": out["arch"],
                "target_return": req.target_return, "conditioned_on": out["conditioned_on"],
                "in_range": bool(low <= req.target_return <= high),
                "dataset_return_range": [low, high], "num": req.num, "seed": seed, "temperature": req.temperature}
        return meta, out

    async def _models(self) -> list[dict[str, Any]]:
        if self._models_cache is None or time.monotonic() - self._models_cache[1] >= self.settings.latest_ttl_s:
            try:
                self._models_cache = (await asyncio.to_thread(list_generators, self.store), time.monotonic())
            except StoreError as err:
                raise self._store_unavailable(err) from None
        return self._models_cache[0]

    async def Generate(self, request: pb.GenerateRequest, grpc_context=None) -> pb.GenerateReply:
        """gRPC `pgen.v1.PolicyGenerator/Generate` (serve/pgen.proto): /v1/generate's checks and answer."""
        import grpc

        fields = {"model": request.model, "target_return": request.target_return,
                  "format": "safetensors" if request.format == pb.POLICY_FILE else "json"}
        for name in ("num", "seed", "temperature"):
            if request.HasField(name):
                fields[name] = getattr(request, name)
        try:
            req = GenerateRequest.model_validate(fields)
            meta, out = await self._generate_request(req)
        except ValidationError as err:
            summary, _ = error_summary(err.errors(), skip=0)
            return self._grpc_error(grpc_context, grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: {summary}")
        except HTTPException as err:
            code = getattr(grpc.StatusCode, GRPC_CODES.get(err.status_code, "INTERNAL"))
            return self._grpc_error(grpc_context, code, str(err.detail))
        reply = pb.GenerateReply(
            model=meta["model"], version=meta["version"], model_id=meta["model_id"], env_id=meta["env_id"],
            group=meta["group"], arch=meta["arch"], target_return=meta["target_return"], in_range=meta["in_range"],
            dataset_return_range=meta["dataset_return_range"], num=meta["num"], seed=meta["seed"],
            temperature=meta["temperature"], num_params=int(out["params"].shape[1]),
            conditioned_on=meta["conditioned_on"])
        if req.format == "safetensors":
            reply.policy_file = policy_file(meta, out)
        else:
            reply.params.extend(out["params"].ravel())
            reply.layout_json = out["layout"]
        return reply

    @staticmethod
    def _grpc_error(grpc_context, code, message: str) -> pb.GenerateReply:
        if grpc_context is not None:
            grpc_context.set_code(code)
            grpc_context.set_details(message)
        return pb.GenerateReply()

    async def _seed_request(self, req: SeedRequest, authorization: str | None) -> dict[str, Any]:
        client = self._authorize(authorization)
        if req.population_size > self.settings.max_population:
            raise HTTPException(422, f"population_size must be at most {self.settings.max_population}"
                                     f" (serve.max_population), got {req.population_size}")
        if self._seeding.get(client, 0) >= self.settings.seed_concurrency:
            raise HTTPException(429, f"too many /v1/seed calls in flight for this client (at most"
                                     f" {self.settings.seed_concurrency}, serve.seed_concurrency); retry later",
                                headers={"Retry-After": self._retry_after})
        self._seeding[client] = self._seeding.get(client, 0) + 1
        try:
            return await self._seed(req)
        finally:
            self._seeding[client] -= 1
            if not self._seeding[client]:
                del self._seeding[client]

    async def _seed(self, req: SeedRequest) -> dict[str, Any]:
        seed = secrets.randbelow(2**31) if req.seed is None else req.seed
        out = await self._generate(req.model, req.target_return, req.population_size, seed, req.temperature,
                                   req.arch_request())
        loop = asyncio.get_running_loop()
        try:
            info = await loop.run_in_executor(self._seed_pool, self._info, out["model"], out["version"])
            summary = await loop.run_in_executor(
                self._seed_pool, write_seed_run, self.store, info, out["params"], req.target_return, req.run_id,
                self.settings.seed_eval_episodes, seed, req.temperature, PolicySpec.from_json(out["policy_spec"]))
        except RunExists as err:
            raise HTTPException(409, self._public(str(err))) from None
        except StoreError as err:
            raise self._store_unavailable(err) from None
        summary["command"] = f"pgen populate population.seed_from={summary['run_id']}"  # on this server's store
        return summary

    def _info(self, name: str, version: str) -> dict[str, Any]:
        return json.loads(self.store.get(f"generators/{name}/{version}/config.json"))

    def _authorize(self, authorization: str | None) -> str:
        """The calling client's key (a digest of its token), or HTTPException 401 / 403."""
        if self.token is None:
            if self.settings.allow_unauthenticated_seed:
                return "anonymous"
            raise HTTPException(403, f"/v1/seed is disabled: the server has no bearer token; set"
                                     f" {self.settings.token_env} in its environment (or, for local development"
                                     " only, serve.allow_unauthenticated_seed=true)")
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401, "this endpoint needs 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        presented = authorization[len("Bearer "):].encode()
        if not hmac.compare_digest(presented, self.token.encode()):  # constant time
            raise HTTPException(403, "invalid bearer token")
        return hashlib.sha256(presented).hexdigest()[:16]


@serve.deployment(name=GENERATOR_DEPLOYMENT)
@serve.ingress(api)
class PolicyEndpoint(Decoder, Edge):
    """serve.layout=single: HTTP, gRPC, the handle API and the generator in one replica."""

    def __init__(self, cfg: dict[str, Any]):
        config: ServeConfig = config_from_dict("serve", cfg)
        self._start_edge(config)
        self._start_decoder(config)

    async def _decode(self, model_id: str, request: dict[str, Any]) -> dict[str, Any]:
        with self._admit():
            return await self._policies(model_id, request)


@serve.deployment(name=GENERATOR_DEPLOYMENT)
class PolicyGenerator(Decoder):
    """serve.layout=split: the generator behind the Ingress deployment."""

    def __init__(self, cfg: dict[str, Any]):
        config: ServeConfig = config_from_dict("serve", cfg)
        self.store = open_store(config.store)
        self._start_decoder(config)


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress(Edge):
    """serve.layout=split: HTTP and gRPC in front of the PolicyGenerator deployment."""

    def __init__(self, generator: DeploymentHandle, cfg: dict[str, Any]):
        self._start_edge(config_from_dict("serve", cfg))
        self.generator = generator
        self._handles: dict[str, DeploymentHandle] = {}  # model id → the handle with its options

    async def _decode(self, model_id: str, request: dict[str, Any]) -> dict[str, Any]:
        handle = self._handles.get(model_id)
        if handle is None:
            if len(self._handles) >= 64:
                self._handles.clear()
            handle = self._handles[model_id] = self.generator.options(multiplexed_model_id=model_id)
        return await handle.generate.remote(request)


def build(cfg: ServeConfig) -> serve.Application:
    """The application for a composed config: deployment options come from `cfg.serve`."""
    s = cfg.serve
    check_settings(s)
    plain = {**to_dict(cfg), "store": portable_store_config(cfg.store)}  # replicas may run on other nodes
    backpressure = BackpressureConfig(retry_after_s=s.retry_after_s)
    autoscaling = {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                   "target_ongoing_requests": s.target_ongoing_requests}
    resources = {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus}
    if s.layout is ServeLayout.single:
        # Serve lets in every generate request the replica's own queue can hold, so that queue (and
        # its JSON 503) decides; other requests have ingress_max_ongoing_requests beside them
        return PolicyEndpoint.options(
            ray_actor_options=resources, autoscaling_config=autoscaling, backpressure_config=backpressure,
            max_ongoing_requests=s.ingress_max_ongoing_requests + s.max_ongoing_requests + s.max_queued_requests,
            max_queued_requests=s.ingress_max_queued_requests,
        ).bind(plain)
    generator = PolicyGenerator.options(
        ray_actor_options=resources, autoscaling_config=autoscaling, backpressure_config=backpressure,
        max_ongoing_requests=s.max_ongoing_requests, max_queued_requests=s.max_queued_requests,
    ).bind(plain)
    return Ingress.options(
        num_replicas=s.ingress_replicas, ray_actor_options={"num_cpus": s.ingress_num_cpus},
        max_ongoing_requests=s.ingress_max_ongoing_requests, max_queued_requests=s.ingress_max_queued_requests,
        backpressure_config=backpressure,
    ).bind(generator, plain)


def check_settings(s: ServeSettings) -> None:
    """ConfigError naming the first serve.* value that cannot work."""
    for key in ("max_num", "max_population", "max_batch_size", "max_concurrent_batches", "decode_rows",
                "max_ongoing_requests", "max_replicas", "ingress_replicas", "ingress_max_ongoing_requests",
                "torch_threads", "seed_eval_episodes", "seed_concurrency", "seed_workers"):
        if getattr(s, key) < 1:
            raise ConfigError(f"serve.{key} must be >= 1, got {getattr(s, key)}")
    if s.max_body_bytes < 1024:
        raise ConfigError(f"serve.max_body_bytes must be >= 1024, got {s.max_body_bytes}")
    if not 0 <= s.min_replicas <= s.max_replicas:
        raise ConfigError(f"serve.min_replicas must be between 0 and serve.max_replicas, got {s.min_replicas}")
    if s.max_batch_size > s.max_ongoing_requests:
        raise ConfigError(f"serve.max_batch_size ({s.max_batch_size}) cannot exceed serve.max_ongoing_requests"
                          f" ({s.max_ongoing_requests}), which caps how many requests a replica sees at once")
    if s.num_cpus < 0 or s.num_gpus < 0 or s.ingress_num_cpus < 0:
        raise ConfigError("serve.num_cpus, serve.num_gpus and serve.ingress_num_cpus must be >= 0")
    if not 0 <= s.grpc_port < 65536:
        raise ConfigError(f"serve.grpc_port must be a port number, or 0 for no gRPC; got {s.grpc_port}")


def app(args: dict[str, str]) -> serve.Application:
    """Application builder for `serve run serve.app:app key=value ...` and serve/config.yaml `args`."""
    return build(compose_config("serve", [f"{k}={override_value(v)}" for k, v in args.items()]))


def override_value(value: Any) -> str:
    """A YAML `args` value (or a `key=value` string) as a Hydra override value."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def ray_serve_env(s: ServeSettings) -> dict[str, str]:
    """The environment of Serve's processes for `serve.proxy` and `serve.throughput_optimized`. Serve
    reads it when its controller, proxies and replicas start, so it is the cluster's (its nodes'
    environment, cluster/README.md), or `pgen serve`'s for the local Ray it starts."""
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1" if s.proxy is ServeProxy.haproxy else "0",
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if s.throughput_optimized else "0"}


def grpc_options(s: ServeSettings) -> dict[str, Any] | None:
    """Serve's grpc_options for `pgen serve` (None: HTTP only)."""
    return {"port": s.grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]} if s.grpc_port else None


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ while the block runs (a local Ray started in it inherits them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(cfg: ServeConfig, blocking: bool = True) -> None:
    """`pgen serve`: deploy on the Ray cluster at RAY_ADDRESS (else a local one, started with
    `ray_serve_env`), HTTP on serve.host:serve.port, gRPC on serve.grpc_port; blocks until Ctrl-C
    when `blocking`."""
    import ray

    check_settings(cfg.serve)  # before starting anything
    s = cfg.serve
    log = logging.getLogger("pgen")
    if s.host in LOOPBACK and not os.environ.get(s.token_env) and not s.allow_unauthenticated_seed:
        log.info(f"pgen serve on {s.host}: no token in ${s.token_env}, so /v1/seed is open to local clients"
                 " (serve.allow_unauthenticated_seed=true); set the variable to require a bearer token")
        cfg = replace(cfg, serve=replace(s, allow_unauthenticated_seed=True))
    if os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        log.info("pgen serve on a running Ray: its own environment decides Serve's proxy and modes"
                 f" (serve.proxy / serve.throughput_optimized want {ray_serve_env(s)})")
        init_ray(namespace="serve", dashboard=True)
    else:
        with environment(ray_serve_env(s)):
            init_ray(namespace="serve", dashboard=True)
    serve.start(http_options={"host": s.host, "port": s.port}, grpc_options=grpc_options(s))
    serve.run(build(cfg), name=s.app_name, route_prefix="/", blocking=blocking)
