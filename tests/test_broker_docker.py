"""Brokered callbacks with the counter plugin in a Docker container.

Multiplexed mode carries every brokered connection inside the one connection
to the plugin's address, so it works over the unix socket in the bind mount
and over the published TCP port alike. Per-connection mode needs a fresh
address per callback that both sides can reach: it works through the bind
mount (both sides put their sockets in the mounted folder) and fails across
a published port, with an error that says why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from plugbay.core.host.client import Client, ClientConfig
from plugbay.errors import BrokerClosedError, RunnerError
from plugbay.runners.docker import DockerRunner

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "counter"))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def sum(self, a: int, b: int) -> int:
        self.calls.append((a, b))
        return a + b


def _client(tag: str, transport: str, **kwargs: Any) -> Client:
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                               runner=DockerRunner(tag, transport=transport, writable_dirs=("/tmp", "/data")), **kwargs))


def _stored(docker: Any, client: Client, key: str) -> Any:
    code, out = docker.containers.get(client.runner.id).exec_run(["cat", f"/data/kv_{key}"])
    assert code == 0, out
    return json.loads(out)


@pytest.mark.parametrize("auto_mtls", [False, True], ids=["plain", "automtls"])
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_multiplexed_callbacks_cross_the_container_boundary(plugbay_image: Any, plugbay_docker: Any,
                                                            transport: str, auto_mtls: bool) -> None:
    tag = plugbay_image("counter")
    rec = Recorder()
    with _client(tag, transport, multiplex_broker=True, auto_mtls=auto_mtls) as client:
        assert client.handshake.multiplex
        counter = client.dispense(PLUGIN_NAME)
        counter.put("c", 4, rec)
        counter.put("c", 5, rec)
        assert counter.get("c") == 9
        assert rec.calls == [(0, 4), (4, 5)]
        assert _stored(plugbay_docker, client, "c") == {"Value": 9}


def test_per_connection_fails_across_a_published_port(plugbay_image: Any) -> None:
    tag = plugbay_image("counter")
    with _client(tag, "tcp") as client:
        counter = client.dispense(PLUGIN_NAME)
        with pytest.raises(RunnerError, match="cannot reach host address") as err:
            counter.put("c", 1, Recorder())
        assert "unix transport" in str(err.value) and "multiplex_broker=True" in str(err.value)
        assert "None" not in str(err.value)  # it said "inside the socket folder None": tcp has no folder
        assert client.broker._served == []  # the failed listener was not left behind
        # the main connection is unaffected
        with pytest.raises(Exception, match="no value stored"):
            counter.get("c")


def test_a_reattached_client_across_a_published_port_is_told_what_it_can_do(plugbay_image: Any) -> None:
    # It recommended ClientConfig(multiplex_broker=True), which a reattached Client (and so a
    # PluginContainer's) refuses: the way out is a container started with the unix transport
    from plugbay.core.host.reattach import ReattachConfig

    with _client(plugbay_image("counter"), "tcp") as first:
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                                     reattach=ReattachConfig.from_json(first.reattach_config().to_json())))
        try:
            with pytest.raises(RunnerError, match="cannot reach host address") as err:
                second.dispense(PLUGIN_NAME).put("c", 1, Recorder())
        finally:
            second.close()
    said = str(err.value)
    assert "start it with transport='unix'" in said and "cannot use ClientConfig(multiplex_broker=True)" in said, said
    assert ", or ClientConfig(multiplex_broker=True)" not in said, said


def test_per_connection_through_the_bind_mount(plugbay_image: Any, plugbay_docker: Any) -> None:
    tag = plugbay_image("counter")
    rec = Recorder()
    with _client(tag, "unix") as client:
        assert not client.handshake.multiplex
        counter = client.dispense(PLUGIN_NAME)
        counter.put("u", 6, rec)
        assert counter.get("u") == 6 and rec.calls == [(0, 6)]


def test_per_connection_callbacks_after_a_reattach(plugbay_image: Any) -> None:
    # A reattached Client put its brokered listener in a private folder of its own, which the container
    # never sees: every callback failed ("cannot reach host address"); it goes in the mounted folder now.
    from plugbay.core.host.reattach import ReattachConfig

    tag = plugbay_image("counter")
    with _client(tag, "unix") as first:
        first.dispense(PLUGIN_NAME).put("r", 1, Recorder())
        data = first.reattach_config().to_json()
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                                     reattach=ReattachConfig.from_json(data)))
        try:
            rec = Recorder()
            counter = second.dispense(PLUGIN_NAME)
            counter.put("r", 2, rec)
            assert counter.get("r") == 3 and rec.calls == [(1, 2)]
        finally:
            second.close()


def test_a_second_brokering_host_takes_the_plugins_broker_stream_over(plugbay_image: Any) -> None:
    # The plugin brokers for one host at a time: a reattached host's stream replaces the first host's.
    # The first host's next callback then said "the plugin ... is gone or closed its broker. Restart the
    # plugin (new Client)", of a plugin that still runs; it names the other host and what to do instead.
    from plugbay.core.host.reattach import ReattachConfig

    with _client(plugbay_image("counter"), "unix") as first:
        counter = first.dispense(PLUGIN_NAME)
        counter.put("t", 1, Recorder())
        data = first.reattach_config().to_json()

        def reattached() -> Client:
            return Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                                       reattach=ReattachConfig.from_json(data)))

        second = reattached()
        try:
            second.dispense(PLUGIN_NAME).put("t", 2, Recorder())  # its stream is the plugin's now
        finally:
            second.close()
        with pytest.raises(BrokerClosedError) as err:
            counter.put("t", 3, Recorder())
        said = str(err.value)
        assert "another host that reattached" in said and "the latest wins" in said, said
        assert "Restart the plugin" not in said and "is gone" not in said, said
        assert counter.get("t") == 3  # the plugin lives: calls without callbacks still work
        # what the error advises: a new reattached Client here brokers again
        third = reattached()
        try:
            rec = Recorder()
            third.dispense(PLUGIN_NAME).put("t", 4, rec)
            assert rec.calls == [(3, 4)]
        finally:
            third.close()


def test_per_connection_callbacks_through_a_plugin_container(plugbay_image: Any) -> None:
    # PluginContainer's Client reaches the container by reattaching: the same private-folder failure
    from plugbay.testing import PluginContainer

    rec = Recorder()
    with PluginContainer(plugbay_image("counter"), HANDSHAKE, {PLUGIN_NAME: CounterPlugin()}, transport="unix",
                         client_options={"name": "counter-under-test"}) as plugin:
        counter = plugin.dispense(PLUGIN_NAME)
        counter.put("p", 3, rec)
        assert counter.get("p") == 3 and rec.calls == [(0, 3)]
        assert plugin.get_client().name == "counter-under-test"  # get_client() took no ClientConfig options


@pytest.fixture(scope="module")
def go_counter_image(plugbay_docker: Any) -> str:
    """go-plugin 1.0.1's counter plugin (tests/go/counter_plugin, static) in a plugin image."""
    from plugbay import images, imagesteps
    from tests.gobuild import go_program_or_skip

    plugin = go_program_or_skip("counter_plugin")
    folder = imagesteps.binary_folder(images.CACHE, plugin, "counter_plugin")
    images.build_plugin_image("plugbay-counter-go:test", folder, ["/plugin/counter_plugin"],
                              client=plugbay_docker, progress=lambda line: None)
    return "plugbay-counter-go:test"


@pytest.mark.go
def test_go_101_plugin_in_a_container_calls_back_through_the_bind_mount(go_counter_image: str,
                                                                         plugbay_docker: Any) -> None:
    # go-plugin 1.0.1 dials the host's brokered socket at the path the host announced,
    # mapped into the container's mount by host_to_plugin
    rec = Recorder()
    with _client(go_counter_image, "unix") as client:
        counter = client.dispense(PLUGIN_NAME)
        counter.put("g", 3, rec)
        counter.put("g", 4, rec)
        assert counter.get("g") == 7 and rec.calls == [(0, 3), (3, 4)]
        assert _stored(plugbay_docker, client, "g") == {"Value": 7}


def test_each_brokered_dial_into_a_container_lets_go_of_its_socket_handle(tmp_path: Path) -> None:
    # The host dials a container's sockets through handles it holds (see runners/docker/sockethandles);
    # a brokered channel's handle stayed open after the channel closed, so a long-lived host ran out
    # of them (and of fds) after a few hundred callbacks.
    import os

    sys.path.insert(0, str(REPO / "examples" / "kv"))
    from counterproto import counter_pb2, counter_pb2_grpc
    from kv_plugin_def import HANDSHAKE as KV_HANDSHAKE, PLUGIN_NAME as KV, KVPlugin

    class Raw(KVPlugin):
        def grpc_client(self, broker: Any, channel: Any) -> Any:
            return broker, channel

    runner = DockerRunner("plugbay-kv:latest", entrypoint=["python3", "/repo/tests/plugins/async_plugins.py", "kv"],
                          mounts=[f"{REPO}:/repo:ro"], writable_dirs=("/tmp", "/data"),
                          env={"PYTHONDONTWRITEBYTECODE": "1"})
    client = Client(ClientConfig(handshake=KV_HANDSHAKE, plugins={KV: Raw()}, runner=runner, call_timeout=20.0))

    def handles() -> int:
        folder = runner.reattach_data()["host_socket_dir"]
        held = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                held += os.readlink(f"/proc/self/fd/{fd}").startswith(folder + "/")
            except OSError:  # closed meanwhile
                pass
        return held

    with client:
        broker, channel = client.dispense(KV)
        from kvproto import kv_pb2, kv_pb2_grpc

        kv = kv_pb2_grpc.KVStub(channel)
        before = handles()
        for _ in range(30):
            sid = int(kv.Get(kv_pb2.GetRequest(key="__helper__"), timeout=20).value)
            brokered = broker.dial(sid)
            try:
                helper = counter_pb2_grpc.AddHelperStub(brokered)
                assert helper.Sum(counter_pb2.SumRequest(a=3, b=4), timeout=20).r == 12
            finally:
                brokered.close()
        assert handles() == before  # the plugin's own socket's handle only
