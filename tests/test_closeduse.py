"""The suite's watch on closed gRPC objects (tests/closeduse.py), on a pytest run of its own.

Without it, the first of these tests ends the whole run (SIGSEGV), as the third did the CI's once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MISUSES = '''
import asyncio
from concurrent import futures

import grpc
import grpc.aio


def test_a_stub_made_on_a_closed_channel():
    channel = grpc.insecure_channel("127.0.0.1:1")
    channel.close()
    try:  # swallowed, as code that takes grpcio's ValueError for "closed" would
        channel.unary_unary("/x.Y/Late", _registered_method=True)
    except ValueError:
        pass


def test_a_method_registered_while_open_is_only_looked_up_once_closed():
    channel = grpc.insecure_channel("127.0.0.1:1")
    channel.unary_unary("/x.Y/Early", _registered_method=True)
    channel.close()
    late = channel.unary_unary("/x.Y/Early", _registered_method=True)
    try:
        late(b"", timeout=1)
    except ValueError as exc:  # grpcio's own refusal of a call on a closed channel
        assert "closed channel" in str(exc)


def test_an_aio_stub_made_on_a_closed_channel():
    async def main():
        channel = grpc.aio.insecure_channel("127.0.0.1:1")
        await channel.close()
        channel.stream_stream("/x.Y/Late", _registered_method=True)

    asyncio.run(main())


def test_a_port_added_to_a_stopped_server():
    with futures.ThreadPoolExecutor(1) as pool:
        server = grpc.server(pool)
        server.add_insecure_port("127.0.0.1:0")
        server.start()
        assert server.stop(None).wait(60)
        server.add_insecure_port("127.0.0.1:0")


def test_a_swallowed_refusal_of_a_stub_on_a_clients_closed_channel():
    from plugbay.core.host.rawguard import refuse_stubs_once_closed
    from plugbay.errors import ClientStateError

    channel = grpc.insecure_channel("127.0.0.1:1")
    refuse_stubs_once_closed(channel, "kv")  # as a Client's ManagedChannel guards its own
    channel.close()
    try:  # swallowed: plugbay's guard answered before grpcio's watch could
        channel.unary_unary("/x.Y/Guarded", _registered_method=True)
    except ClientStateError:
        pass


def test_a_swallowed_refusal_of_a_port_on_a_stopped_plugin_server():
    from plugbay.core.plugin.gate import HandlerGate
    from plugbay.core.plugin.gatedserver import GatedServer
    from plugbay.errors import ServerStoppedError

    with futures.ThreadPoolExecutor(1) as pool:
        server = GatedServer(grpc.server(pool), HandlerGate(1))
        assert server.stop(None).wait(60)  # its holder's stop() closes its guard, started or not
        try:  # swallowed: plugbay's guard answered before grpcio's watch could
            server.add_generic_rpc_handlers(())
        except ServerStoppedError:
            pass


def test_a_port_added_to_a_server_never_started():
    with futures.ThreadPoolExecutor(1) as pool:
        server = grpc.server(pool)
        assert server.stop(None).wait(60)  # nothing to free: grpcio keeps it as it was
        assert server.add_insecure_port("127.0.0.1:0") > 0
        server.start()
        assert server.stop(None).wait(60)
'''


def test_each_use_of_a_freed_grpc_object_fails_its_test_and_the_run_goes_on(tmp_path: Path) -> None:
    test = tmp_path / "test_misuses.py"
    test.write_text(MISUSES)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(ROOT / "src"), str(ROOT))), PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.closeduse",
                          "--rootdir", str(tmp_path), "-rf", str(test)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = run.stdout
    assert run.returncode == 1, (run.returncode, out, run.stderr)  # failed tests, not a signal
    assert "5 failed, 2 passed" in out, out
    for name, what in (("test_a_stub_made_on_a_closed_channel", "/x.Y/Late built on a closed grpc.Channel"),
                       ("test_an_aio_stub_made_on_a_closed_channel", "/x.Y/Late built on a closed grpc.aio.Channel"),
                       ("test_a_port_added_to_a_stopped_server", "add_insecure_port() on a grpc server that was"
                                                                  " stopped"),
                       ("test_a_swallowed_refusal_of_a_stub_on_a_clients_closed_channel",
                        "/x.Y/Guarded built on the closed grpc.Channel of plugin 'kv'"),
                       ("test_a_swallowed_refusal_of_a_port_on_a_stopped_plugin_server",
                        "add_generic_rpc_handlers() on the plugin's gRPC server after it stopped")):
        assert f"FAILED test_misuses.py::{name}" in out, out
        assert what in out, out
    assert "in test_a_stub_made_on_a_closed_channel" in out, "no stack of where it was made"
    assert "in test_a_swallowed_refusal_of_a_stub_on_a_clients_closed_channel" in out, "no stack of plugbay's refusal"
