"""A user's host program, typed as the README and the guides show: Client, AsyncClient, Supervisor,
AsyncSupervisor, RemoteClient, AsyncRemoteClient and PluginContainer with the KV example's stubs, and their
metrics().

tests/test_typed_api.py type-checks it under mypy --strict with disallow_any_expr (no expression in this file
may be Any: an answer of the public API that leaks Any where it could be typed is an error) and runs these
functions against real plugins, so what the types say is also what they do.
"""

from __future__ import annotations

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, AsyncKVClient, KVClient, KVPlugin

from plugbay import (AsyncClient, AsyncRemoteClient, AsyncSupervisor, Client, ClientConfig, RemoteConfig,
                     StubTypeError, Supervisor, SupervisorMetrics)
from plugbay.network import EndpointMetrics, PoolMetrics, connect
from plugbay.testing import PluginContainer


def kv_config(cmd: list[str], call_timeout: float = 10.0) -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=cmd, call_timeout=call_timeout)


def host(config: ClientConfig) -> bytes:
    with Client(config) as client:
        kv = client.dispense(PLUGIN_NAME, KVClient)  # a KVClient to the type checker, and checked to be one
        kv.put("typed", b"by Client")
        return kv.get("typed")


async def async_host(config: ClientConfig) -> bytes:
    async with AsyncClient(config) as client:
        kv = await client.dispense(PLUGIN_NAME, AsyncKVClient)
        await kv.put("typed", b"by AsyncClient")
        return await kv.get("typed")


def supervised(config: ClientConfig) -> tuple[bytes, SupervisorMetrics]:
    with Supervisor(config, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME, KVClient)
        kv.put("typed", b"by Supervisor")
        metrics = sup.metrics()
        restarts: int = metrics["restarts"]
        state: str = metrics["state"]
        last: str | None = metrics["last_failure"]
        assert (restarts, state, last) == (0, "running", None), metrics
        return kv.get("typed"), metrics


async def async_supervised(config: ClientConfig) -> tuple[bytes, SupervisorMetrics]:
    async with AsyncSupervisor(config, health_interval=None) as sup:
        kv = await sup.dispense(PLUGIN_NAME, AsyncKVClient)
        await kv.put("typed", b"by AsyncSupervisor")
        metrics = sup.metrics()
        circuit: str | None = metrics["circuit"]
        health: str | None = metrics["health"]
        assert (circuit, health) == (None, None), metrics
        return await kv.get("typed"), metrics


def _endpoints_picked(metrics: PoolMetrics) -> int:
    endpoints: dict[str, EndpointMetrics] = metrics["endpoints"]
    picks = 0
    for endpoint in endpoints.values():
        healthy: bool | None = endpoint["healthy"]
        detail: str = endpoint["health_detail"]
        assert healthy is not False, detail
        picks += endpoint["picks"]
    return picks


def remote(target: str) -> tuple[bytes, PoolMetrics]:
    with connect(target, handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, insecure=True) as client:
        kv = client.dispense(PLUGIN_NAME, KVClient)
        kv.put("typed", b"by RemoteClient")
        value = kv.get("typed")
        metrics = client.metrics()
        known: int = metrics["known"]
        assert known >= 1 and _endpoints_picked(metrics) >= 2, metrics
        return value, metrics


async def async_remote(config: RemoteConfig) -> tuple[bytes, PoolMetrics]:
    async with AsyncRemoteClient(config) as client:
        kv = await client.dispense(PLUGIN_NAME, AsyncKVClient)
        await kv.put("typed", b"by AsyncRemoteClient")
        value = await kv.get("typed")
        metrics = client.metrics()
        resends: int = metrics["resends"]
        assert resends >= 0 and _endpoints_picked(metrics) >= 2, metrics
        return value, metrics


def container(image: str) -> bytes:
    with PluginContainer(image, HANDSHAKE, {PLUGIN_NAME: KVPlugin()}, transport="unix") as plugin:
        kv = plugin.dispense(PLUGIN_NAME, KVClient)
        kv.put("typed", b"by PluginContainer")
        return kv.get("typed")


def mistaken(config: ClientConfig) -> str:
    """The async stub's class asked of a sync Client: refused at the dispense, saying which class to pass."""
    with Client(config) as client:
        try:
            client.dispense(PLUGIN_NAME, AsyncKVClient)
        except StubTypeError as refused:
            return str(refused)
        return "dispensed"
