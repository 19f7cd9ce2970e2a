"""Additions to a plugin's gRPC server once it stopped raise ServerStoppedError instead of crashing the process.

grpcio (1.85) frees a stopped server's C side, and add_insecure_port(), add_secure_port() and
add_registered_method_handlers() on it then end the process (SIGSEGV). A plugin's code may keep the
server its grpc_server() got and add to it later: each addition runs in a process of its own, where the
crash is seen as that process dying by a signal. (add_generic_rpc_handlers() did not crash: grpcio took the
handlers and never served them; it is refused as well, so the mistake shows.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LATE_ADDS = REPO / "tests" / "plugins" / "late_adds.py"
ADDITIONS = ["add_insecure_port", "add_secure_port", "add_registered_method_handlers", "add_generic_rpc_handlers",
             "add_CounterServicer_to_server"]


@pytest.mark.parametrize("addition", ADDITIONS)
def test_an_addition_after_serve_returned_is_refused_typed(addition: str, tmp_path: Path) -> None:
    env = dict(os.environ, BASIC_PLUGIN="hello", PLUGIN_UNIX_SOCKET_DIR=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    for name in ("PLUGBAY_LISTEN", "PLUGIN_CLIENT_CERT", "PLUGBAY_NETWORK_LISTEN"):
        env.pop(name, None)
    plugin = subprocess.Popen([sys.executable, str(LATE_ADDS), addition], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert plugin.stdout is not None
        line = plugin.stdout.readline()  # the handshake: serve() is serving
        assert line.count("|") >= 4, line
        plugin.send_signal(signal.SIGTERM)  # serve() stops its server and returns
        _, err = plugin.communicate(timeout=60)
    finally:
        if plugin.poll() is None:
            plugin.kill()
            plugin.communicate()
    assert plugin.returncode == 0, f"the plugin process ended with {plugin.returncode} (a signal: < 0)\n{err}"
    outcome = (tmp_path / "late_add").read_text()
    assert outcome.startswith("ServerStoppedError: "), outcome
    first = "add_generic_rpc_handlers" if addition == "add_CounterServicer_to_server" else addition  # generated code's
    assert f"{first}() on the plugin's gRPC server after it stopped" in outcome, outcome


STOPPED_BY_ITS_HOLDER = textwrap.dedent("""
    from concurrent import futures

    import grpc

    from plugbay.core.plugin.gate import HandlerGate
    from plugbay.core.plugin.gatedserver import GatedServer
    from plugbay.errors import ServerStoppedError

    with futures.ThreadPoolExecutor(2) as pool:
        server = GatedServer(grpc.server(pool), HandlerGate(1))
        server.add_insecure_port("127.0.0.1:0")
        server.start()
        assert server.stop(None).wait(60)
        try:
            server.add_insecure_port("127.0.0.1:0")
        except ServerStoppedError as exc:
            print("refused:", exc)
""")


def test_a_port_added_after_the_holder_stopped_the_server_is_refused_typed() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run([sys.executable, "-c", STOPPED_BY_ITS_HOLDER], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, f"ended with {run.returncode} (a signal: < 0)\n{run.stderr}"
    assert run.stdout.startswith("refused: add_insecure_port() on the plugin's gRPC server after it stopped"), \
        run.stdout


def test_a_port_added_to_an_ended_network_host_sessions_server_is_refused_typed(tmp_path: Path) -> None:
    from plugbay import RemoteClient
    from tests import netcerts
    from tests.test_network_broker import PLUGIN_NAME, CounterReplica, counter_config, host_tls, wait_until

    certs = netcerts.write_set(tmp_path / "tls")
    replica = CounterReplica(tmp_path / "replica", certs, script=REPO / "tests" / "plugins" / "late_adds_net.py")
    try:
        with RemoteClient(counter_config([replica], host_tls(certs))) as client:
            assert client.multiplexed
            client.dispense(PLUGIN_NAME)  # pinned to the replica's session
            assert wait_until(lambda: len(replica.session_sockets()) == 1, 30)  # the session's own server
        assert wait_until(lambda: not replica.session_sockets(), 30)  # its server stopped, its socket removed
        (replica.folder / "add_now").touch()
        assert wait_until(lambda: (replica.folder / "late_add").exists() or replica.proc.poll() is not None, 30)
    finally:
        code, err = replica.stop()
        shutil.rmtree(replica.tmp, ignore_errors=True)
    assert code == 0, f"the plugin process ended with {code} (a signal: < 0)\n{err[-3000:]}"
    outcome = (replica.folder / "late_add").read_text()
    assert outcome.startswith("ServerStoppedError: add_insecure_port() on the network host session's gRPC server"
                              " after it stopped"), outcome
