"""Starting Serve in tests: the environment of a test's local Ray."""

from __future__ import annotations

from tests.s3server import free_ports


def local_serve_env() -> dict[str, str]:
    """The environment of a test's local Ray: the mode `pgen serve` defaults to, with the fixed side
    ports of Serve's HAProxy ingress (stats, metrics, fallback proxies) moved to free ones, so that
    test runs beside each other on one machine do not collide, and a short drain on shutdown."""
    from pgen.config import ServeSettings
    from serve.launcher import ray_serve_env

    stats, metrics, http, grpc = free_ports(4)
    return {**ray_serve_env(ServeSettings()), "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics), "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(http),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(grpc), "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
