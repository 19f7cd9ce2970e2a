"""A gRPC service registered twice on a plugin's server fails the plugin's setup, naming both registrants.

grpcio takes the second registration silently (its registered methods keep the last, its generic handlers
answer with the first), so two plugins in one process that both serve proto.KV answered each other's calls:
the host dispensed "kv_a" and reached kv_b's store. grpc-go ends a Go plugin at such a registration.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import Client, ClientConfig, ConfigError, PluginExitedError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
sys.path.insert(0, str(REPO / "examples" / "streaming"))

from kv_plugin_def import HANDSHAKE, KVPlugin  # noqa: E402

PROGRAM = """
import sys
sys.path[:0] = [{kv!r}, {src!r}]
from kv_plugin_def import HANDSHAKE, KVPlugin, _KVServicer
import grpc
from kvproto import kv_pb2, kv_pb2_grpc
from plugbay import GRPCPlugin, ServeConfig, serve
from plugbay._proto.grpc.health.v1 import health_pb2_grpc


class Fixed:
    def __init__(self, value):
        self.value = value

    def get(self, key):
        return self.value

    def put(self, key, value):
        pass


class NoOwnService(GRPCPlugin):  # shares the service kv_a registered
    def grpc_server(self, broker, server):
        pass

    def grpc_client(self, broker, channel):
        return None


class PutOnly(GRPCPlugin):  # proto.KV split by method: kv_a's Get (and Put), this one's Put
    def grpc_server(self, broker, server):
        put = grpc.unary_unary_rpc_method_handler(lambda request, context: kv_pb2.Empty(),
                                                  request_deserializer=kv_pb2.PutRequest.FromString,
                                                  response_serializer=kv_pb2.Empty.SerializeToString)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("proto.KV", {{"Put": put}}),))

    def grpc_client(self, broker, channel):
        return None


class OwnHealth(GRPCPlugin):  # plugbay's own health service, which the host's checks reach
    def grpc_server(self, broker, server):
        health_pb2_grpc.add_HealthServicer_to_server(health_pb2_grpc.HealthServicer(), server)

    def grpc_client(self, broker, channel):
        return None


class KVTwice(KVPlugin):
    def grpc_server(self, broker, server):
        super().grpc_server(broker, server)
        kv_pb2_grpc.add_KVServicer_to_server(_KVServicer(self.impl), server)


second = {{"two": KVPlugin(Fixed(b"B")), "shared": NoOwnService(), "health": OwnHealth(),
           "twice": KVTwice(Fixed(b"A")), "split": PutOnly()}}[sys.argv[1]]
plugins = {{"kv_a": KVPlugin(Fixed(b"A"))}} if sys.argv[1] != "twice" else {{}}
serve(ServeConfig(handshake=HANDSHAKE, plugins={{**plugins, "kv_b": second}}))
"""


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "twoplugins.py"
    path.write_text(PROGRAM.format(kv=str(REPO / "examples" / "kv"), src=str(REPO / "src")))
    return path


def client(program: Path, case: str) -> Client:
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={"kv_a": KVPlugin(), "kv_b": KVPlugin()},
                               cmd=[sys.executable, str(program), case], start_timeout=60))


@pytest.mark.parametrize("case, first", [
    ("two", "plugin 'kv_a'"),
    ("twice", "plugin 'kv_b'"),
    ("health", "plugbay itself"),
    ("split", "plugin 'kv_a'"),
])
def test_a_service_registered_twice_fails_the_setup_naming_both(program: Path, case: str, first: str) -> None:
    host = client(program, case)
    try:
        with pytest.raises(PluginExitedError) as failed:
            host.dispense("kv_a")
    finally:
        host.kill()
    service = "grpc.health.v1.Health" if case == "health" else "proto.KV"
    assert f"gRPC service '{service}' is registered twice on the plugin's server: by {first}" in str(failed.value)
    assert "again by plugin 'kv_b'" in str(failed.value)
    assert "even when each registers other methods of it" in str(failed.value)  # true of "split" too


def test_the_setup_error_reaches_a_terminal_and_exits_1(program: Path) -> None:
    env = {**os.environ, HANDSHAKE.magic_cookie_key: HANDSHAKE.magic_cookie_value, "PLUGIN_PROTOCOL_VERSIONS": "1"}
    done = subprocess.run([sys.executable, str(program), "two"], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (1, "")  # no handshake line: a host reports the exit
    assert "Register each service once" in done.stderr.splitlines()[0]


def test_plugins_that_share_one_registration_serve(program: Path) -> None:
    host = client(program, "shared")
    try:
        assert host.dispense("kv_a").get("k") == b"A"
        assert host.dispense("kv_b").get("k") == b"A"
    finally:
        host.kill()


REFLECTING = """
import sys
sys.path[:0] = [{kv!r}, {streaming!r}, {src!r}]
from grpc_reflection.v1alpha import reflection
from kv_plugin_def import HANDSHAKE, KVPlugin
from kvproto import kv_pb2
from streaming_plugin_def import StreamerPlugin
from streamingproto import streaming_pb2
from plugbay import ServeConfig, serve


class Fixed:
    def get(self, key):
        return b"A"

    def put(self, key, value):
        pass


class ReflectingKV(KVPlugin):  # each opts into reflection in its grpc_server(), as docs/cli.md says
    def grpc_server(self, broker, server):
        super().grpc_server(broker, server)
        reflection.enable_server_reflection(["proto.KV", reflection.SERVICE_NAME], server,
                                            pool=kv_pb2.DESCRIPTOR.pool)


class ReflectingStreamer(StreamerPlugin):
    def grpc_server(self, broker, server):
        super().grpc_server(broker, server)
        reflection.enable_server_reflection(["streaming.Streamer", reflection.SERVICE_NAME], server,
                                            pool=streaming_pb2.DESCRIPTOR.pool)


serve(ServeConfig(handshake=HANDSHAKE, plugins={{"kv_a": ReflectingKV(Fixed()), "streamer": ReflectingStreamer()}}))
"""


def test_two_plugins_that_each_register_reflection_serve_and_reflection_answers_for_both(tmp_path: Path) -> None:
    from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
    from streaming_plugin_def import StreamerPlugin

    program = tmp_path / "reflecting.py"
    program.write_text(REFLECTING.format(kv=str(REPO / "examples" / "kv"),
                                         streaming=str(REPO / "examples" / "streaming"), src=str(REPO / "src")))
    host = Client(ClientConfig(handshake=HANDSHAKE, plugins={"kv_a": KVPlugin(), "streamer": StreamerPlugin()},
                               cmd=[sys.executable, str(program)], start_timeout=60))
    try:
        assert host.dispense("kv_a").get("k") == b"A"  # not a setup error naming reflection twice
        host.dispense("streamer").stats()
        stub = reflection_pb2_grpc.ServerReflectionStub(host.channel)
        asked = [reflection_pb2.ServerReflectionRequest(list_services=""),
                 *(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
                   for symbol in ("streaming.Streamer", "proto.KV", "no.Such"))]
        answers = list(stub.ServerReflectionInfo(iter(asked), timeout=20))
    finally:
        host.kill()
    # one reflection service serves every registration: the services of both plugins (only the first
    # registration's were listed, and the second plugin's could not be described), each file from its pool
    listed = [service.name for service in answers[0].list_services_response.service]
    assert sorted(listed) == sorted(["proto.KV", "streaming.Streamer", reflection.SERVICE_NAME])
    streamer, kv, missing = answers[1:]
    assert streamer.WhichOneof("message_response") == "file_descriptor_response", streamer
    assert kv.WhichOneof("message_response") == "file_descriptor_response", kv
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def one_method_service(name: str) -> Any:
    return grpc.method_handlers_generic_handler(name, {"M": grpc.unary_unary_rpc_method_handler(lambda r, c: b"")})


def test_a_refused_batch_leaves_none_of_its_names_taken() -> None:
    from plugbay.core.plugin.gate import HandlerGate
    from plugbay.core.plugin.gatedserver import GatedServer, plugin_service_names

    with futures.ThreadPoolExecutor(2) as pool:
        server = grpc.server(pool)
        names = plugin_service_names()
        GatedServer(server, HandlerGate(1), names=names, owner="plugin 'a'").add_generic_rpc_handlers(
            (one_method_service("s.Taken"),))
        second = GatedServer(server, HandlerGate(1), names=names, owner="plugin 'b'")
        with pytest.raises(ConfigError, match="'s.Taken' is registered twice"):
            second.add_generic_rpc_handlers((one_method_service("s.Free"), one_method_service("s.Taken")))
        second.add_generic_rpc_handlers((one_method_service("s.Free"),))  # never added: still free
        with pytest.raises(ConfigError, match="'s.Free' is registered twice"):  # and now taken
            second.add_generic_rpc_handlers((one_method_service("s.Free"),))
        server.stop(None)


def test_one_plugin_registering_reflection_twice_in_one_batch_is_dropped_as_across_batches() -> None:
    """A plugin's second reflection registration is dropped like another plugin's, in one batch as in two
    (one batch of two was refused as registered "by plugin 'a' and again by plugin 'a'")."""
    from plugbay.core.plugin.gate import HandlerGate
    from plugbay.core.plugin.gatedserver import GatedServer, plugin_service_names

    reflection_name = "grpc.reflection.v1alpha.ServerReflection"
    with futures.ThreadPoolExecutor(2) as pool:
        server = grpc.server(pool)
        try:
            gated = GatedServer(server, HandlerGate(1), names=plugin_service_names(), owner="plugin 'a'")
            gated.add_generic_rpc_handlers((one_method_service(reflection_name), one_method_service(reflection_name)))
            gated.add_generic_rpc_handlers((one_method_service(reflection_name),))  # an earlier holder: dropped
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # the first one answers
                assert channel.unary_unary(f"/{reflection_name}/M")(b"", timeout=10) == b""
        finally:
            server.stop(None)
