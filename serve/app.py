"""The pgen Serve application: the HTTP and gRPC endpoint of the batched, multiplexed generator.

    serve run serve.app:app store.uri=<uri> [serve.<key>=<value> ...]     # from the repo root
    serve deploy serve/config.yaml                                       # on a running cluster
    pgen serve store.uri=<uri> serve.port=8000                           # the same, as one command

`app(args)` is the application builder: `key=value` arguments are Hydra overrides of the `serve`
config (`pgen/conf/serve.yaml`, schema `ServeConfig`), so a misspelt key fails with a message.

The package, by job: `schemas.py` (the requests and their validation), `decoder.py` (the batched,
multiplexed generator and the handle API), `edge.py` (the HTTP routes, gRPC `Generate`, /v1/seed),
`deployments.py` (the deployments of the two layouts), this module (the application), and
`launcher.py` (`pgen serve`).

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
`serve/decoder.py`), in both layouts.

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

import json
from typing import Any

from ray import serve
from ray.serve.config import BackpressureConfig

from pgen.config import ConfigError, ServeConfig, ServeLayout, ServeSettings, compose_config, to_dict
from pgen.store import portable_store_config
from serve.deployments import Ingress, PolicyEndpoint, PolicyGenerator


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
