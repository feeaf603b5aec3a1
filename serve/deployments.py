"""The Serve deployments of the two layouts (`serve.layout`): `single`, one `PolicyGenerator` that is
the HTTP/gRPC ingress and the generator; `split`, an `Ingress` calling `PolicyGenerator` through a
DeploymentHandle, so the two scale apart."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from pgen.config import ServeConfig, config_from_dict
from pgen.population.served import GENERATOR_DEPLOYMENT
from pgen.store import open_store
from serve.decoder import Decoder
from serve.edge import Edge, api


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
