"""RemoteClient against the real serving side: serve() in network mode and the gateway with go-plugin's Go KV plugin.

The examples' Python KV plugin is put on the network by its environment
(PLUGBAY_NETWORK_*); go-plugin's own Go KV plugin goes through the gateway.
One static target lists both: the pool spreads calls over the two.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import gobuild
from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, SERVER_NAME, first_check_passed, make_pki
from tests.resilience_util import wait_until

from plugbay import Gateway, GatewayConfig, NetworkTLS, RemoteClient, RemoteConfig, RemoteTLSError

REPO = Path(__file__).resolve().parent.parent


def first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(0.2):
                return proc.stdout.readline()
    return ""


@pytest.fixture()
def pki(tmp_path: Path) -> dict[str, str]:
    return make_pki(tmp_path)


@pytest.fixture()
def served_kv(pki: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """examples/kv/plugin.py served on the network over mTLS; yields its HOST:PORT."""
    env = {**os.environ, "PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0", "PLUGBAY_NETWORK_CERT": pki["server"],
           "PLUGBAY_NETWORK_KEY": pki["server_key"], "PLUGBAY_NETWORK_CLIENT_CA": pki["ca"]}
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "kv" / "plugin.py")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = first_line(proc, 30)
        assert line.startswith("1|1|tcp|"), line
        yield line.split("|")[3]
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def tls(pki: dict[str, str], rogue: bool = False) -> NetworkTLS:
    prefix = "rogue_" if rogue else ""
    return NetworkTLS(pki[f"{prefix}client"], pki[f"{prefix}client_key"], pki["ca"], server_name=SERVER_NAME)


def test_a_python_plugin_served_in_network_mode(served_kv: str, pki: dict[str, str], tmp_path: Path) -> None:
    cfg = RemoteConfig(target=f"static:///{served_kv}", handshake=HANDSHAKE, plugins=PLUGINS, tls=tls(pki),
                       name="kv-served")
    with RemoteClient(cfg) as client:
        assert client.negotiated_version == 1
        assert client.description is not None and client.description.server.startswith("plugbay")
        kv = client.dispense(PLUGIN_NAME)
        kv.put("greeting", b"hello")
        assert kv.get("greeting") == b"hello"
        assert (tmp_path / "kv_greeting").read_text() == "hello"  # the plugin's own store
    with pytest.raises(RemoteTLSError, match="refused the host's certificate"):
        with RemoteClient(RemoteConfig(target=f"static:///{served_kv}", handshake=HANDSHAKE, plugins=PLUGINS,
                                       tls=tls(pki, rogue=True), start_timeout=10)):
            pass


def test_go_plugin_behind_the_gateway_and_a_python_replica_share_one_target(
        served_kv: str, pki: dict[str, str], tmp_path: Path) -> None:
    reason = gobuild.go_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    kv_bin = str(gobuild.build_go("kv_plugin"))
    gw_cfg = GatewayConfig(cmd=[kv_bin], cookie=("BASIC_PLUGIN", "hello"), listen="127.0.0.1:0",
                           cert_file=pki["server"], key_file=pki["server_key"], client_ca_file=pki["ca"],
                           plugins=("kv_grpc",), cwd=str(tmp_path))
    with Gateway(gw_cfg) as gw:
        cfg = RemoteConfig(target=f"static:///{gw.address},{served_kv}", handshake=HANDSHAKE, plugins=PLUGINS,
                           tls=tls(pki), name="kv-mixed")
        with RemoteClient(cfg) as client:
            kv = client.dispense(PLUGIN_NAME)
            first_check_passed(client, f"tcp:{gw.address}", f"tcp:{served_kv}")  # else the puts may skip one
            for i in range(6):  # both replicas write kv_<key> files into tmp_path
                kv.put(f"k{i}", b"v")
            picks = {key: e["picks"] for key, e in client.metrics()["endpoints"].items()}
            assert picks[f"tcp:{gw.address}"] >= 3 and picks[f"tcp:{served_kv}"] >= 3, picks
            assert sorted(p.name for p in tmp_path.glob("kv_k*")) == [f"kv_k{i}" for i in range(6)]
            assert kv.get("k0") == b"v"  # either replica reads the shared folder


def test_streaming_calls_go_through_the_pool(tmp_path: Path) -> None:
    """Server streaming, bidirectional streaming and cancellation, against the streaming example served plaintext."""
    sys.path.insert(0, str(REPO / "examples" / "streaming"))
    from streaming_plugin_def import HANDSHAKE as STREAM_HANDSHAKE
    from streaming_plugin_def import PLUGIN_NAME as STREAMER
    from streaming_plugin_def import StreamerPlugin
    from streamingproto import streaming_pb2

    env = {**os.environ, "PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0", "PLUGBAY_NETWORK_INSECURE": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "streaming" / "plugin.py")], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = first_line(proc, 30).split("|")[3]
        cfg = RemoteConfig(target=f"static:///{address}", handshake=STREAM_HANDSHAKE,
                           plugins={STREAMER: StreamerPlugin()}, insecure=True, name="streamer")
        with RemoteClient(cfg) as client:
            streamer = client.dispense(STREAMER)
            assert [len(c.data) for c in streamer.generate(5, 10, timeout=10)] == [10] * 5
            chunks = [streaming_pb2.Chunk(data=bytes([i]) * 3) for i in range(4)]
            assert [c.data for c in streamer.echo(iter(chunks), timeout=10)] == [c.data for c in chunks]
            stream = streamer.generate(1000, 1024, timeout=30)
            next(stream)
            stream.cancel()
            key = f"tcp:{address}"
            assert wait_until(lambda: client.metrics()["endpoints"][key]["inflight"] == 0, 5)  # done callbacks ran
            endpoint = client.metrics()["endpoints"][key]
            assert endpoint["failures"] == 0  # a cancel is not the endpoint's fault
            assert endpoint["picks"] >= 3
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
