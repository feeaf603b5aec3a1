"""`pgen serve`: the Serve application on a local Ray (or the cluster at RAY_ADDRESS), HTTP and gRPC.

How Serve itself runs (its proxy, its event loops) is not the application's: environment variables
read when Serve's processes start (`ray_serve_env`). `pgen serve` sets them for the Ray it starts
from `serve.proxy` and `serve.throughput_optimized`; a cluster sets them on its nodes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import replace
from typing import Any, Iterator

from ray import serve

from pgen.config import ServeConfig, ServeProxy, ServeSettings
from pgen.util.ray_runtime import init_ray
from serve.app import build, check_settings

LOOPBACK = ("127.0.0.1", "localhost", "::1")  # `pgen serve` hosts only this machine can reach
# the gRPC servicer of serve/pgen.proto, for Serve's grpc_options (serve/config.yaml, `pgen serve`)
GRPC_SERVICER = "serve.pgen_pb2_grpc.add_PolicyGeneratorServicer_to_server"


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
