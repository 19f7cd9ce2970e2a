"""A host, a network host and a test, written as a user under mypy --strict: tests/test_public_typing.py
type-checks this file (it is never run). Each ``assert_type`` is what the docs promise a checker sees."""

from __future__ import annotations

import sys
from typing import Any, Unpack, assert_type

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, AsyncKVClient, KVClient, KVPlugin

from plugbay import (AsyncClient, CallTimeoutError, CircuitBreaker, CircuitOpenError, CircuitState, Client,
                     ClientConfig, EventKind, GRPCPlugin, ManagedChannel, NoEndpointsError, PlugbayError,
                     PluginDiedError, PluginUnavailableError, RemoteClient, Supervisor, SupervisorEvent,
                     SupervisorState)
from plugbay.network import EndpointPool
from plugbay.testing import ClientOptions, StartPluginContainer, StartPluginProcess

CONFIG = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                      cmd=[sys.executable, "examples/kv/plugin.py"])


def host() -> bytes | None:
    with Client(CONFIG) as client:
        assert_type(client.channel, ManagedChannel)  # docs: client.channel.current, the grpcio channel
        kv = KVPlugin().grpc_client(client.broker, client.channel)
        assert_type(kv, KVClient)
        stub = client.dispense(PLUGIN_NAME, KVClient)  # dispense() goes by name: the stub's class types it
        assert_type(stub, KVClient)
        untyped: KVClient = client.dispense(PLUGIN_NAME)  # the name alone still works, as Any
        assert untyped is stub
        try:
            return stub.get("hello")
        # every instance of these comes from a call, and is also a grpc.RpcError: code(), details(), sent
        except PluginDiedError as died:
            print(died.code(), died.details(), died.sent)
        except CallTimeoutError as late:
            assert_type(late.sent, bool)
            assert_type(late.details(), str)
        except PluginUnavailableError as unreachable:
            print(unreachable.code(), unreachable.sent)
        except CircuitOpenError as circuit_open:
            assert_type(circuit_open.retry_in, float)
            print(circuit_open.code(), circuit_open.last_failure)
        except NoEndpointsError as no_endpoint:
            assert_type(no_endpoint.details(), str)
        except PlugbayError:
            pass
        return None


async def asynchronous() -> bytes:
    async with AsyncClient(CONFIG) as client:
        assert_type(KVPlugin().grpc_client_async(client.broker, client.channel), AsyncKVClient)
        kv = await client.dispense(PLUGIN_NAME, AsyncKVClient)
        assert_type(kv, AsyncKVClient)
        return await kv.get("hello")


class MyPool(EndpointPool):
    pass


def remote(client: RemoteClient, pool: MyPool) -> int:
    assert_type(client.plugin_for(PLUGIN_NAME), GRPCPlugin)
    assert_type(pool.start(), MyPool)
    client.reattach_config()  # always refused (ClientStateError): nothing to return after it


def states(breaker: CircuitBreaker, sup: Supervisor, event: SupervisorEvent) -> list[str]:
    """A state compared, changed by a call, compared again: no "non-overlapping" check, and the rest of the
    function is still checked (the ignore below is used; strict mode flags an unused one)."""
    assert breaker.state == "closed"
    breaker.trip("test")
    assert breaker.state == "open"
    assert sup.state == "running"
    sup.stop()
    assert sup.state == "stopped"
    still_checked: int = "a str"  # type: ignore[assignment]
    kind: EventKind = event.kind
    words: list[SupervisorState | CircuitState] = ["running", "half_open"]
    return [kind, *words, str(still_checked)]


def on_change(old: CircuitState, new: CircuitState, reason: str) -> None:
    print(old, "->", new, reason)


BREAKER = CircuitBreaker(on_change=on_change)


def test_kv_process(plugin_process: StartPluginProcess) -> None:
    client = plugin_process([sys.executable, "examples/kv/plugin.py"], HANDSHAKE, {PLUGIN_NAME: KVPlugin()},
                            call_timeout=5.0)
    assert_type(client, Client)


def test_kv_container(plugin_container: StartPluginContainer, plugbay_image: Any) -> None:
    client = plugin_container(plugbay_image("kv"), HANDSHAKE, {PLUGIN_NAME: KVPlugin()}, runner={"transport": "tcp"})
    assert_type(client, Client)


def start_kv(plugin_process: StartPluginProcess, **options: Unpack[ClientOptions]) -> Client:
    return plugin_process([sys.executable, "examples/kv/plugin.py"], HANDSHAKE, {PLUGIN_NAME: KVPlugin()}, **options)
