"""Streams through the gateway: the Python streaming example as the child (server streaming, bidi,
cancellation reaching the plugin), over mTLS on 127.0.0.1."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import grpc

from plugbay.network.gateway import Gateway, GatewayConfig
from tests import netcerts

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "streaming"))
from streamingproto import streaming_pb2, streaming_pb2_grpc  # noqa: E402


def test_streams_and_cancellation_pass_through(tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    cfg = GatewayConfig(cmd=[sys.executable, str(REPO / "examples" / "streaming" / "plugin.py")],
                        cookie=("STREAMING_PLUGIN", "flow"), listen="127.0.0.1:0", cwd=str(tmp_path),
                        cert_file=str(certs.cert_file), key_file=str(certs.key_file),
                        client_ca_file=str(certs.client_ca_file), plugins=("streamer",))
    with Gateway(cfg) as gw, grpc.secure_channel(gw.address, netcerts.channel_credentials(certs), options=[
            ("grpc.ssl_target_name_override", "localhost")]) as ch:
        stub = streaming_pb2_grpc.StreamerStub(ch)
        chunks = list(stub.Generate(streaming_pb2.GenerateRequest(count=50, size=1000), timeout=20))
        assert [c.seq for c in chunks] == list(range(50)) or [c.seq for c in chunks] == list(range(1, 51))
        assert all(len(c.data) == 1000 for c in chunks)
        sent = [streaming_pb2.Chunk(seq=i, data=bytes([i]) * 10) for i in range(5)]
        echoed = list(stub.Echo(iter(sent), timeout=20))
        assert [(c.seq, c.data) for c in echoed] == [(c.seq, c.data) for c in sent]
        # an endless stream, cancelled by the caller: the cancellation reaches the plugin
        before = stub.GetStats(streaming_pb2.StatsRequest(), timeout=10).cancelled
        endless = stub.Generate(streaming_pb2.GenerateRequest(count=0, size=10), timeout=30)
        for _, _chunk in zip(range(20), endless):
            pass
        endless.cancel()
        deadline = time.monotonic() + 10
        stats = stub.GetStats(streaming_pb2.StatsRequest(), timeout=10)
        while stats.cancelled == before and time.monotonic() < deadline:
            time.sleep(0.05)
            stats = stub.GetStats(streaming_pb2.StatsRequest(), timeout=10)
        assert stats.cancelled == before + 1, stats
        assert stats.active == 0, stats
