"""A user's grpc_options (grpc_server_options) override plugbay's own: grpcio 1.85 keeps the first of a
repeated channel argument, so plugbay leaves out a default the user names."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from tests.net_util import HANDSHAKE as NET_HANDSHAKE
from tests.net_util import PLUGIN_NAME as NET_PLUGIN
from tests.net_util import PLUGINS as NET_PLUGINS
from tests.net_util import Replica
from tests.test_network_grpc_keepalive import replica  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig, RemoteClient, RemoteConfig  # noqa: E402
from plugbay.core.protocol.handshake import parse_handshake_line  # noqa: E402

KV = [sys.executable, str(REPO / "examples" / "kv" / "plugin.py")]
SMALL = [("grpc.max_receive_message_length", 1000)]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the KV plugin writes kv_<key> files in its cwd


def _client(options: list[tuple[str, int]]) -> Client:
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=KV,
                               grpc_options=options))


def test_a_users_idle_timeout_lets_the_plugins_connection_go_idle() -> None:
    with _client([("grpc.client_idle_timeout_ms", 1000)]) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        channel = client._conn.channel  # the grpc.Channel the calls went on
        deadline = time.monotonic() + 8
        state = None
        while time.monotonic() < deadline:
            state = channel._channel.check_connectivity_state(False)
            if state == grpc.ChannelConnectivity.IDLE.value[0]:
                break
            time.sleep(0.2)
        assert state == grpc.ChannelConnectivity.IDLE.value[0], state
        assert kv.get("k") == b"v"  # an idle channel reconnects for the next call


def test_a_users_message_limit_applies_to_the_plugins_connection() -> None:
    with _client(SMALL) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("big", b"x" * 5000)
        with pytest.raises(grpc.RpcError) as err:
            kv.get("big")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value


def test_a_users_message_limit_applies_to_a_pools_endpoints(replica: Replica) -> None:
    config = RemoteConfig(target=f"static:///{replica.address}", handshake=NET_HANDSHAKE, plugins=NET_PLUGINS,
                          insecure=True, call_timeout=5.0, grpc_options=SMALL, name="kv-small")
    with RemoteClient(config) as client:
        kv = client.dispense(NET_PLUGIN)
        kv.put("big", b"x" * 5000)
        with pytest.raises(grpc.RpcError) as err:
            kv.get("big")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value


SERVER = """
import sys
sys.path.insert(0, {src!r})
sys.path.insert(0, {kv!r})
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugin import FileKV
from plugbay import ServeConfig, serve
serve(ServeConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin(FileKV())}},
                  grpc_server_options=[("grpc.so_reuseport", 1)]))
"""


def test_a_plugins_server_option_overrides_plugbays_own(tmp_path: Path) -> None:
    script = tmp_path / "reuseport_kv.py"
    script.write_text(SERVER.format(src=str(REPO / "src"), kv=str(REPO / "examples" / "kv")))
    config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=[sys.executable, str(script)],
                          env={"PLUGBAY_LISTEN": "tcp:127.0.0.1:0"})
    with Client(config) as client:
        host, _, port = client.handshake.address.rpartition(":")
        # the plugin asked for SO_REUSEPORT: another socket that asks for it too may bind the same port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            other.bind((host, int(port)))


def test_a_multiplexed_endpoint_takes_replies_past_grpcs_4_mib(tmp_path: Path) -> None:
    """plugbay's channels receive messages of any size a plugin's server sends; a multiplexed endpoint's
    channel was made with the user's options only, so grpc's 4 MiB default refused larger replies."""
    from tests import netcerts
    from tests.test_network_broker import host_tls

    certs = netcerts.write_set(tmp_path / "tls")
    folder = tmp_path / "kv"
    folder.mkdir()
    (folder / "kv_big").write_bytes(b"y" * (5 << 20))  # the KV plugin's Get answers its file
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
    env.update({"PYTHONPATH": str(REPO / "src"), "PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0",
                "PLUGBAY_NETWORK_CERT": str(certs.cert_file), "PLUGBAY_NETWORK_KEY": str(certs.key_file),
                "PLUGBAY_NETWORK_CLIENT_CA": str(certs.client_ca_file)})
    proc = subprocess.Popen(KV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=folder)
    try:
        assert proc.stdout is not None
        address = parse_handshake_line(proc.stdout.readline().decode()).address
        config = RemoteConfig(target=f"static:///{address}", handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                              tls=host_tls(certs), multiplex=True, call_timeout=20.0, name="kv-big")
        with RemoteClient(config) as client:
            assert client.multiplexed
            assert client.dispense(PLUGIN_NAME).get("big") == b"y" * (5 << 20)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err[-2000:]
