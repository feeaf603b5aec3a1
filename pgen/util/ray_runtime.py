"""Connecting to Ray: one place for how every pgen command starts or joins a cluster."""

from __future__ import annotations

import os


def init_ray(namespace: str | None = None, dashboard: bool = False) -> None:
    """Connect to RAY_ADDRESS (a cluster, `ray job submit`) or start a local Ray, once per process.

    `dashboard`: a local Ray also starts its dashboard (`pgen serve`: `serve status` reads it)."""
    # members' lines differ only in numbers, which Ray's log deduplication (read at import) would fold
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    if not ray.is_initialized():
        # RAY_ADDRESS (a cluster, or `ray job submit`) is honoured by ray.init itself
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=dashboard, log_to_driver=True,
                 configure_logging=False, namespace=namespace)
