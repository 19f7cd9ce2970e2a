"""The typed forms of the public API, as a user's checker and a user's program see them.

``dispense(name, stub_type)`` is typed as ``stub_type`` on every host type and refuses, with a StubTypeError
that says which class to pass, a stub of another class; ``dispense(name)`` is unchanged. Every ``metrics()``
is a TypedDict whose keys are exactly what a real pool or Supervisor returns. tests/typing_user/typed_host.py
is the user's program: type-checked here with no expression allowed to be Any, and run against real plugins.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path
from typing import Any, Optional

import pytest

import plugbay
from plugbay import (AsyncClient, AsyncRemoteClient, AsyncSupervisor, Client, ClientStateError, RemoteClient,
                     StubTypeError, Supervisor, SupervisorMetrics)
from plugbay.network import EndpointMetrics, PoolMetrics
from tests import netcerts
from tests.kv_user_mypy import mypy_kv_user
from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, Replica
from tests.resilience_util import KV_EXAMPLE, PY
from tests.test_network_pool import replicas  # noqa: F401 (a fixture)
from tests.typing_user import typed_host

from kv_plugin_def import KV, AsyncKVClient, KVClient  # noqa: E402 (on the path through tests.resilience_util)

REPO = Path(__file__).resolve().parent.parent
PROGRAM = REPO / "tests" / "typing_user" / "typed_host.py"

# what a user who did not use the typed forms writes: each line's answer is Any, which the check must see
UNTYPED = '''
from kv_plugin_def import PLUGIN_NAME
from plugbay import Client, Supervisor


def untyped(client: Client, sup: Supervisor) -> None:
    client.dispense(PLUGIN_NAME).put("k", b"v")
    print(sup.dispense(PLUGIN_NAME))
'''


def test_the_users_program_type_checks_with_no_expression_any(tmp_path: Path) -> None:
    """mypy --strict, and disallow_any_expr on the user's own files: dispense() with the stub's class and every
    metrics() read are typed. The untyped file beside it shows the check sees an Any where one comes back."""
    shutil.copy(PROGRAM, tmp_path / "typed_host.py")  # a top-level module, as a user's
    (tmp_path / "untyped.py").write_text(UNTYPED)
    out = mypy_kv_user(tmp_path, "typed_host.py", "untyped.py",
                       more_ini="[mypy-typed_host,untyped]\ndisallow_any_expr = True\n")
    errors = [line for line in out.stdout.splitlines() if ": error: " in line]
    # The KV example's stub classes take a grpc.Channel, which is Any here (grpcio ships no types and no
    # grpc-stubs are installed), so naming the class is an expression whose type holds an Any: the example's and
    # grpc's, not plugbay's. Every other expression of the program is typed.
    grpc_any = [e for e in errors if e.startswith("typed_host.py:") and e.endswith(
        (': error: Expression type contains "Any" (has type "type[KVClient]")  [misc]',
         ': error: Expression type contains "Any" (has type "type[AsyncKVClient]")  [misc]'))]
    assert len(grpc_any) == 8, out.stdout + out.stderr  # one per dispense(name, stub_type) in the program
    assert [e for e in errors if e not in grpc_any] == [
        'untyped.py:7: error: Expression has type "Any"  [misc]',
        'untyped.py:8: error: Expression has type "Any"  [misc]'], out.stdout + out.stderr


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the KV example writes kv_<key> files where it runs
    return tmp_path


def _keys(typed: Any) -> frozenset[str]:
    assert not typed.__optional_keys__  # every key is always there
    return frozenset(typed.__required_keys__)


def test_typed_dispense_on_clients_and_supervisors_and_the_supervisor_metrics_keys(in_tmp: Path) -> None:
    config = typed_host.kv_config([PY, KV_EXAMPLE])
    assert typed_host.host(config) == b"by Client"
    assert asyncio.run(typed_host.async_host(config)) == b"by AsyncClient"
    value, metrics = typed_host.supervised(config)
    assert value == b"by Supervisor" and set(metrics) == _keys(SupervisorMetrics)
    value, metrics = asyncio.run(typed_host.async_supervised(config))
    assert value == b"by AsyncSupervisor" and set(metrics) == _keys(SupervisorMetrics)
    assert (in_tmp / "kv_typed").read_bytes() == b"by AsyncSupervisor"


def test_dispense_by_name_alone_is_unchanged_and_gives_the_typed_forms_stub(in_tmp: Path) -> None:
    config = typed_host.kv_config([PY, KV_EXAMPLE])
    with Client(config) as client, Supervisor(typed_host.kv_config([PY, KV_EXAMPLE]), health_interval=None) as sup:
        assert client.dispense(PLUGIN_NAME, KVClient) is client.dispense(PLUGIN_NAME)
        assert sup.dispense(PLUGIN_NAME) is sup.dispense(PLUGIN_NAME, KVClient)
        assert client.dispense(PLUGIN_NAME, object) is client.dispense(PLUGIN_NAME)  # any base class fits


def test_a_stub_of_another_class_is_a_stub_type_error_saying_which_class_to_pass(in_tmp: Path) -> None:
    config = typed_host.kv_config([PY, KV_EXAMPLE])
    assert typed_host.mistaken(config) == (
        "Client.dispense('kv_grpc', AsyncKVClient): the plugin definition's grpc_client() built a stub of class"
        " KVClient, not AsyncKVClient (nor a subclass). Pass the class grpc_client() returns (KVClient), or"
        " dispense('kv_grpc') for the stub untyped")

    async def on_asyncio() -> StubTypeError:
        async with AsyncClient(config) as client:
            with pytest.raises(StubTypeError) as refused:
                await client.dispense(PLUGIN_NAME, KVClient)
            kv = await client.dispense(PLUGIN_NAME, AsyncKVClient)  # the client is still usable
            await kv.put("after", b"refused")
            assert await kv.get("after") == b"refused"
            return refused.value

    refused = asyncio.run(on_asyncio())
    assert isinstance(refused, TypeError) and (refused.name, refused.expected, refused.built) == (
        PLUGIN_NAME, KVClient, AsyncKVClient)
    assert str(refused).startswith("AsyncClient.dispense('kv_grpc', KVClient): the plugin definition's"
                                   " grpc_client_async() built a stub of class AsyncKVClient, not KVClient")

    with Client(config) as client:
        with pytest.raises(StubTypeError, match=r"KV cannot be checked with isinstance\(\) .*pass the concrete"
                                                r" class the plugin definition's grpc_client\(\) returns"):
            client.dispense(PLUGIN_NAME, KV)  # type: ignore[type-abstract]  # a Protocol: no isinstance()
        with pytest.raises(StubTypeError, match=r"^Client.dispense\('kv_grpc', 'KVClient'\): the second argument is"
                                                r" no class: pass the stub class"):
            client.dispense(PLUGIN_NAME, "KVClient")  # type: ignore[call-overload]
        assert client.dispense(PLUGIN_NAME, KVClient).get("after") == b"refused"


def test_supervisors_refuse_a_stub_of_another_class(in_tmp: Path) -> None:
    """Supervisor and AsyncSupervisor check the stub as the clients do, first dispensed or not."""
    config = typed_host.kv_config([PY, KV_EXAMPLE])
    with Supervisor(config, health_interval=None) as sup:
        with pytest.raises(StubTypeError) as refused:
            sup.dispense(PLUGIN_NAME, AsyncKVClient)
        assert (refused.value.name, refused.value.expected, refused.value.built) == (
            PLUGIN_NAME, AsyncKVClient, KVClient)
        assert str(refused.value).startswith("Supervisor.dispense('kv_grpc', AsyncKVClient): the plugin"
                                             " definition's grpc_client() built a stub of class KVClient")
        sup.dispense(PLUGIN_NAME, KVClient).put("sup", b"refused once")  # still usable
        with pytest.raises(StubTypeError, match=r"^Supervisor.dispense\('kv_grpc', AsyncKVClient\): "):
            sup.dispense(PLUGIN_NAME, AsyncKVClient)  # dispensed already: checked again

    async def on_asyncio() -> StubTypeError:
        async with AsyncSupervisor(config, health_interval=None) as asup:
            with pytest.raises(StubTypeError) as refused:
                await asup.dispense(PLUGIN_NAME, KVClient)
            await (await asup.dispense(PLUGIN_NAME, AsyncKVClient)).put("asup", b"refused once")
            with pytest.raises(StubTypeError, match=r"^AsyncSupervisor.dispense\('kv_grpc', KVClient\): "):
                await asup.dispense(PLUGIN_NAME, KVClient)  # dispensed already: checked again
            return refused.value

    refused_async = asyncio.run(on_asyncio())
    assert (refused_async.name, refused_async.expected, refused_async.built) == (
        PLUGIN_NAME, KVClient, AsyncKVClient)
    assert str(refused_async).startswith("AsyncSupervisor.dispense('kv_grpc', KVClient): the plugin definition's"
                                         " grpc_client_async() built a stub of class AsyncKVClient")
    assert (in_tmp / "kv_sup").read_bytes() == b"refused once" and (in_tmp / "kv_asup").read_bytes() == b"refused once"


def test_a_stub_dispensed_before_is_checked_again(in_tmp: Path) -> None:
    """The untyped dispense() keeps the stub; a typed dispense() of it after is checked all the same."""
    config = typed_host.kv_config([PY, KV_EXAMPLE])
    with Client(config) as client:
        assert isinstance(client.dispense(PLUGIN_NAME), KVClient)
        with pytest.raises(StubTypeError, match=r"^Client.dispense\('kv_grpc', AsyncKVClient\): the plugin"
                                                r" definition's grpc_client\(\) built a stub of class KVClient"):
            client.dispense(PLUGIN_NAME, AsyncKVClient)

    async def on_asyncio() -> None:
        async with AsyncClient(config) as aclient:
            assert isinstance(await aclient.dispense(PLUGIN_NAME), AsyncKVClient)
            with pytest.raises(StubTypeError, match=r"^AsyncClient.dispense\('kv_grpc', KVClient\): "):
                await aclient.dispense(PLUGIN_NAME, KVClient)

    asyncio.run(on_asyncio())


# a stub_type isinstance() cannot check: no class, a Protocol without @runtime_checkable, a subscripted generic
NO_STUB_TYPES: list[Any] = ["KVClient", KV, Optional[KVClient], list[KVClient]]


def test_a_stub_type_that_cannot_be_checked_is_refused_before_the_plugin_starts(in_tmp: Path) -> None:
    """A wrong second argument is refused before dispense() starts the plugin (it was refused only once the
    plugin had started): the plugin's command, which marks its start, never ran."""
    marked = ["/bin/sh", "-c", ': > started; exec "$@"', "sh", PY, KV_EXAMPLE]
    client = Client(typed_host.kv_config(marked))
    try:
        for stub_type in NO_STUB_TYPES:
            with pytest.raises(StubTypeError, match=r"^Client.dispense\('kv_grpc', "):
                client.dispense(PLUGIN_NAME, stub_type)
        assert not (in_tmp / "started").exists()
        with pytest.raises(ClientStateError):
            client.handshake  # not started
        assert isinstance(client.dispense(PLUGIN_NAME, KVClient), KVClient)  # the command does start it
        assert (in_tmp / "started").exists()
    finally:
        client.kill()
    (in_tmp / "started").unlink()

    async def on_asyncio() -> None:
        async with AsyncClient(typed_host.kv_config(marked)) as started:  # a started one refuses them as well
            await started.dispense(PLUGIN_NAME, AsyncKVClient)
        (in_tmp / "started").unlink()
        aclient = AsyncClient(typed_host.kv_config(marked))
        try:
            for stub_type in NO_STUB_TYPES:
                with pytest.raises(StubTypeError, match=r"^AsyncClient.dispense\('kv_grpc', "):
                    await aclient.dispense(PLUGIN_NAME, stub_type)
            assert not (in_tmp / "started").exists()
        finally:
            await aclient.kill()

    asyncio.run(on_asyncio())


def test_a_remote_client_refuses_a_stub_type_that_cannot_be_checked_before_it_dials() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    config = plugbay.RemoteConfig(target=f"static:///127.0.0.1:{listener.getsockname()[1]}", handshake=HANDSHAKE,
                                  plugins=PLUGINS, insecure=True, start_timeout=5.0)
    try:
        client = RemoteClient(config)  # not a with: that would start it
        try:
            for stub_type in NO_STUB_TYPES:
                with pytest.raises(StubTypeError, match=r"^RemoteClient.dispense\('kv_grpc', "):
                    client.dispense(PLUGIN_NAME, stub_type)
        finally:
            client.close()

        async def on_asyncio() -> None:
            aclient = AsyncRemoteClient(config)
            try:
                for stub_type in NO_STUB_TYPES:
                    with pytest.raises(StubTypeError, match=r"^AsyncRemoteClient.dispense\('kv_grpc', "):
                        await aclient.dispense(PLUGIN_NAME, stub_type)
            finally:
                await aclient.close()

        asyncio.run(on_asyncio())
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing dialled it
    finally:
        listener.close()


def test_the_refusals_name_what_was_passed_and_tell_two_classes_of_one_name_apart(in_tmp: Path) -> None:
    """A subscripted generic is shown as written (its __name__ is its origin's: "Optional"), and two classes of
    one name by module, or, of one module too (a reloaded module's), by identity, in the advice as well."""
    same_module = type("KVClient", (), {"__module__": KVClient.__module__})
    other_module = type("KVClient", (), {"__module__": "my_stubs"})
    with Client(typed_host.kv_config([PY, KV_EXAMPLE])) as client:
        with pytest.raises(StubTypeError) as generic:
            client.dispense(PLUGIN_NAME, Optional[KVClient])  # type: ignore[call-overload]
        with pytest.raises(StubTypeError) as reloaded:
            client.dispense(PLUGIN_NAME, same_module)
        with pytest.raises(StubTypeError) as elsewhere:
            client.dispense(PLUGIN_NAME, other_module)
    assert str(generic.value) == (
        "Client.dispense('kv_grpc', typing.Optional[kv_plugin_def.KVClient]): the second argument is a subscripted"
        " generic, which isinstance() cannot check: pass the plain class, such as the one the plugin definition's"
        " grpc_client() returns, or use dispense('kv_grpc') for an untyped stub")
    built, passed = f"kv_plugin_def.KVClient at {id(KVClient):#x}", f"kv_plugin_def.KVClient at {id(same_module):#x}"
    assert str(reloaded.value) == (
        f"Client.dispense('kv_grpc', KVClient): the plugin definition's grpc_client() built a stub of class {built},"
        f" not {passed} (nor a subclass): another class of the same name, e.g. from a reloaded module. Pass the"
        f" class grpc_client() returns ({built}), or dispense('kv_grpc') for the stub untyped")
    assert str(elsewhere.value) == (
        "Client.dispense('kv_grpc', KVClient): the plugin definition's grpc_client() built a stub of class"
        " kv_plugin_def.KVClient, not my_stubs.KVClient (nor a subclass). Pass the class grpc_client() returns"
        " (kv_plugin_def.KVClient), or dispense('kv_grpc') for the stub untyped")


def _pool_keys(metrics: PoolMetrics) -> None:
    assert set(metrics) == _keys(PoolMetrics)
    assert metrics["endpoints"] and all(set(e) == _keys(EndpointMetrics) for e in metrics["endpoints"].values())


def test_remote_clients_typed_dispense_and_the_pool_metrics_keys(replicas: Any, in_tmp: Path) -> None:  # noqa: F811
    replica = replicas(cwd=in_tmp)  # one: each net_kv replica keeps its own values
    assert isinstance(replica, Replica)
    target = f"static:///{replica.address}"
    value, metrics = typed_host.remote(target)
    assert value == b"by RemoteClient"
    _pool_keys(metrics)
    config = plugbay.RemoteConfig(target=target, handshake=HANDSHAKE, plugins=PLUGINS, insecure=True)
    value, metrics = asyncio.run(typed_host.async_remote(config))
    assert value == b"by AsyncRemoteClient"
    _pool_keys(metrics)
    with RemoteClient(config) as client:
        _pool_keys(client.pool.metrics())
        with pytest.raises(StubTypeError, match=r"^RemoteClient.dispense\('kv_grpc', AsyncKVClient\): "):
            client.dispense(PLUGIN_NAME, AsyncKVClient)


def test_brokering_remote_clients_check_their_pinned_stubs(tmp_path: Path) -> None:
    """With brokered connections each dispense() builds a stub pinned to one endpoint: checked as well."""
    from tests.test_network_broker import CounterReplica, counter_config, host_tls

    from counter_plugin_def import PLUGIN_NAME as COUNTER, AsyncCounterClient, CounterClient

    certs = netcerts.write_set(tmp_path / "tls")
    rep = CounterReplica(tmp_path / "r", certs)
    try:
        config = counter_config([rep], host_tls(certs))
        with RemoteClient(config) as client:
            assert isinstance(client.dispense(COUNTER, CounterClient), CounterClient) and client.multiplexed
            with pytest.raises(StubTypeError, match=r"^RemoteClient.dispense\('counter', AsyncCounterClient\): the"
                                                    r" plugin definition's grpc_client\(\) built a stub of class"
                                                    r" CounterClient"):
                client.dispense(COUNTER, AsyncCounterClient)

        async def on_asyncio() -> None:
            async with AsyncRemoteClient(config) as client:
                stub = await client.dispense(COUNTER, AsyncCounterClient)
                assert isinstance(stub, AsyncCounterClient) and client.multiplexed
                with pytest.raises(StubTypeError, match=r"^AsyncRemoteClient.dispense\('counter', CounterClient\):"
                                                        r" the plugin definition's grpc_client_async\(\) built"):
                    await client.dispense(COUNTER, CounterClient)

        asyncio.run(on_asyncio())
    finally:
        code, err = rep.stop()
        shutil.rmtree(rep.tmp, ignore_errors=True)
    assert code == 0, err[-2000:]


@pytest.mark.docker
def test_plugin_container_typed_dispense(plugbay_image: Any) -> None:
    from plugbay.testing import PluginContainer

    assert typed_host.container(plugbay_image("kv")) == b"by PluginContainer"
    with PluginContainer(plugbay_image("kv"), HANDSHAKE, PLUGINS, transport="unix") as plugin:
        with pytest.raises(StubTypeError, match=r"^PluginContainer.dispense\('kv_grpc', AsyncKVClient\): "):
            plugin.dispense(PLUGIN_NAME, AsyncKVClient)
