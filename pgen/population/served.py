"""The served generator as a population member sees it: its Serve deployment name and a handle to it.

`serve/` defines the deployment under this name; population members that seed from the generator
(`population.seed.model`, `pgen loop`'s reseeds) reach it through `generator_handle`.
"""

from __future__ import annotations

import asyncio
from typing import Any

GENERATOR_DEPLOYMENT = "PolicyGenerator"  # the deployment name in serve/deployments.py


def generator_handle(app: str | None) -> Any:
    """A DeploymentHandle to the served generator: in Serve application `app`, or in the one
    application that has a PolicyGenerator deployment."""
    from ray import serve

    if app is None:
        apps = [name for name, status in serve.status().applications.items()
                if GENERATOR_DEPLOYMENT in status.deployments]
        if len(apps) != 1:
            raise ValueError(f"population.seed.app is required: Serve applications with a {GENERATOR_DEPLOYMENT}"
                             f" deployment: {apps or 'none (is `pgen serve` running on this cluster?)'}")
        app = apps[0]
    handle = serve.get_deployment_handle(GENERATOR_DEPLOYMENT, app_name=app)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        # a caller without an event loop (a population worker): Serve in throughput-optimised mode
        # (RAY_SERVE_THROUGHPUT_OPTIMIZED=1, pgen serve's and cluster/*'s default) runs a handle's
        # router on the caller's loop, which fails here; give this handle its own router thread
        if not handle.is_initialized:
            handle._init(_run_router_in_separate_loop=True)
    return handle
