"""A stub built on a Client's own gRPC channel (``client.channel.current``) once it was closed raises
ClientStateError instead of crashing the process.

grpcio (1.85) registers a generated stub's methods on its C channel, NULL once the channel closed
(SIGSEGV). The channel closes when the plugin dies (and stays current) or the Client is killed (code may
still hold it). Each case runs in a host process of its own, where the crash is seen as that process
dying by a signal. grpcio's close waits for the done-callbacks of the calls it cancels: one that builds
a stub, or calls through the Client's channel, while that close runs must not wait for a lock the close
holds (a hang, seen as the close not ending).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

HOST = textwrap.dedent("""
    import os
    import signal
    import sys
    import threading

    sys.path.insert(0, sys.argv[2])
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
    from kvproto import kv_pb2_grpc

    from plugbay import Client, ClientConfig
    from plugbay.errors import ClientStateError

    case = sys.argv[1]
    config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                          cmd=[sys.executable, os.path.join(sys.argv[2], "plugin.py")])
    with Client(config) as client:
        raw = client.channel.current  # held by the program from here on
        raw.unary_unary("/proto.KV/Put", _registered_method=True)  # registered while open
        if case == "died":
            closed = threading.Event()
            client.channel.on_close_current.append(closed.set)
            os.kill(int(client.runner.id), signal.SIGKILL)
            assert closed.wait(60), "the dead plugin's channel was not closed"
            target = client.channel.current  # the dead plugin's channel stays current, closed
        else:
            client.kill()
            target = raw
        assert target is raw and type(target).__module__ == "grpc._channel"  # handed out as it is
        raw.unary_unary("/proto.KV/Put", _registered_method=True)  # only looked up by grpcio: built as before
        try:
            kv_pb2_grpc.KVStub(target)
            print("built")
        except ClientStateError as exc:
            print("refused:", exc)
""")


@pytest.mark.parametrize("case", ["died", "killed"])
def test_a_stub_on_the_closed_current_channel_is_refused_typed(case: str, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run([sys.executable, "-c", HOST, case, str(REPO / "examples" / "kv")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"the host process ended with {run.returncode} (a signal: < 0)\n{run.stderr[-3000:]}"
    assert run.stdout.startswith("refused: cannot build /proto.KV/Get on the gRPC channel of plugin 'plugin'"
                                 " (Client.channel.current): it was closed"), run.stdout




CLOSED_UNDER_CALLBACKS = textwrap.dedent("""
    import os
    import sys
    import threading
    from concurrent import futures

    import grpc

    from plugbay.core.host.channel import ManagedChannel
    from plugbay.core.host.rawguard import refuse_stubs_once_closed
    from plugbay.errors import ClientStateError

    release = threading.Event()

    def hold(request, context):
        yield b"open"
        release.wait(60)

    def slow(request, context):
        release.wait(60)
        return b""

    handlers = grpc.method_handlers_generic_handler("x.Held", {
        "Stream": grpc.unary_stream_rpc_method_handler(hold), "Unary": grpc.unary_unary_rpc_method_handler(slow)})
    with futures.ThreadPoolExecutor(4) as pool:
        server = grpc.server(pool)
        server.add_generic_rpc_handlers((handlers,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")  # as a Client's own (ManagedChannel guards it)
        outcomes = []
        if sys.argv[1] == "raw":  # a stub built on a Client's own grpcio channel (client.channel.current)
            refuse_stubs_once_closed(channel, "plugin")
            close = channel.close

            def build_a_stub(_call):  # grpcio's channel thread runs it as the close cancels the call
                try:
                    channel.unary_unary("/x.Held/Late", _registered_method=True)
                    outcomes.append("built")
                except ClientStateError:
                    outcomes.append("refused")
        else:  # a call through client.channel as the plugin's death closes its connection
            managed = ManagedChannel(channel, None, name="plugin")
            close = managed.close_current

            def build_a_stub(_call):
                try:
                    managed.unary_unary("/x.Held/Unary", _registered_method=True)(b"")
                    outcomes.append("called")
                except grpc.RpcError as exc:
                    outcomes.append(type(exc).__name__)

        stream = channel.unary_stream("/x.Held/Stream", _registered_method=True)(b"")
        next(stream)  # open: its first answer came (a health Watch's, say)
        stream.add_done_callback(build_a_stub)
        channel.unary_unary("/x.Held/Unary", _registered_method=True).future(b"").add_done_callback(build_a_stub)
        closing = threading.Thread(target=close, daemon=True)
        closing.start()
        closing.join(60)
        if closing.is_alive():  # a callback waits for a lock the close holds
            print("the close hung", flush=True)
            os._exit(3)  # the held threads die with the process (the server's and the channel's)
        release.set()
        server.stop(None).wait(60)
    print("closed:", outcomes)
""")


@pytest.mark.parametrize(("closed", "outcome"), [("raw", "refused"), ("managed", "ClientClosed")])
def test_a_close_ends_while_done_callbacks_use_the_closing_channel(closed: str, outcome: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run([sys.executable, "-c", CLOSED_UNDER_CALLBACKS, closed], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, f"ended with {run.returncode}: {run.stdout}\n{run.stderr[-3000:]}"
    assert run.stdout.strip() == f"closed: {[outcome, outcome]}", run.stdout
