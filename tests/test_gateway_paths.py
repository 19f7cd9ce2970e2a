"""Method paths the gateway forwards: only "/service/method", so a host cannot reach the shared Go child's
own services (controller, broker, stdio, health) by a path grpc-go reads differently than the gateway."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
import pytest

from plugbay.network.gateway import Gateway, GatewayConfig
from plugbay.network.gateway.forward import split_method
from tests import gobuild, netcerts, procs

_reason = gobuild.go_missing_reason()
pytestmark = [pytest.mark.go, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402

# grpc-go drops one leading '/' and splits at the last '/': each of these names a service of the child
# or is no method at all; none may be forwarded.
MALFORMED_UNARY = (
    "plugin.GRPCController/Shutdown",
    "grpc.health.v1.Health/Check",
    "proto.KV/Get",
    "/proto.KV/Get/",
    "//proto.KV/Get",
    "/proto.KV//Get",
    "/proto.KV/",
    "//Get",
    "/",
)
MALFORMED_STREAMS = ("plugin.GRPCBroker/StartStream", "plugin.GRPCStdio/StreamStdio")


def test_split_method() -> None:
    assert split_method("/proto.KV/Get") == ("proto.KV", "Get")
    assert split_method("/plugin.GRPCController/Shutdown") == ("plugin.GRPCController", "Shutdown")
    for path in MALFORMED_UNARY + MALFORMED_STREAMS + ("",):
        assert split_method(path) is None, path


def test_malformed_paths_never_reach_the_child(tmp_path: Path, in_tmp: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    cfg = GatewayConfig(cmd=[str(gobuild.build_go("kv_plugin"))], cookie=("BASIC_PLUGIN", "hello"),
                        listen="127.0.0.1:0", cert_file=str(certs.cert_file), key_file=str(certs.key_file),
                        client_ca_file=str(certs.client_ca_file), plugins=("kv_grpc",))
    with Gateway(cfg) as gw, grpc.secure_channel(gw.address, netcerts.channel_credentials(certs), options=[
            ("grpc.ssl_target_name_override", "localhost")]) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        kv.Put(kv_pb2.PutRequest(key="p", value=b"1"), timeout=10)
        pid = gw.child_pid
        assert pid is not None
        for path in MALFORMED_UNARY:
            with pytest.raises(grpc.RpcError) as refused:
                ch.unary_unary(path)(b"", timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, (path, refused.value.details())
        for path in MALFORMED_STREAMS:
            with pytest.raises(grpc.RpcError) as refused:
                list(ch.stream_stream(path)(iter([]), timeout=10))
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, (path, refused.value.details())
        # the shared child never saw them: still the same process, still answering
        assert kv.Get(kv_pb2.GetRequest(key="p"), timeout=10).value == b"1"
        assert gw.child_pid == pid
        assert pid in procs.children(os.getpid(), zombies=False)
        assert (in_tmp / "kv_p").read_bytes() == b"1"
