"""A call in flight when the gateway's child dies says so: the plugin behind the gateway exited, with its code.

grpcio's own words for the broken hop to the child ("Stream removed (Socket closed)") read, to the host and to
`plugbay call`, as the gateway's connection failing; and by the time anyone looks, the gateway has restarted
its child and its health is SERVING again. A plugin's own UNAVAILABLE answer keeps its words.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from plugbay.network.gateway import Gateway, GatewayConfig
from tests import gobuild
from tests.resilience_util import FAULTY, PY

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402

COOKIE = ("BASIC_PLUGIN", "hello")
_reason = gobuild.go_missing_reason()


def _gateway(cmd: list[str], cwd: Path) -> Gateway:
    return Gateway(GatewayConfig(cmd=cmd, cookie=COOKIE, listen="127.0.0.1:0", insecure=True,
                                 plugins=("kv_grpc",), cwd=str(cwd)))


@pytest.fixture
def kv_gateway(tmp_path: Path) -> Iterator[tuple[Gateway, kv_pb2_grpc.KVStub]]:
    with _gateway([PY, FAULTY], tmp_path) as gw, grpc.insecure_channel(gw.address) as ch:
        yield gw, kv_pb2_grpc.KVStub(ch)


def test_a_python_child_dying_mid_call_is_named_with_its_exit_code(
        kv_gateway: tuple[Gateway, kv_pb2_grpc.KVStub]) -> None:
    gw, kv = kv_gateway
    # the child's own UNAVAILABLE answer is its to word: it runs
    kv.Put(kv_pb2.PutRequest(key="__fail_text__", value=b"the database is down"), timeout=20)
    kv.Put(kv_pb2.PutRequest(key="__fail__", value=b"1"), timeout=20)
    with pytest.raises(grpc.RpcError) as failed:
        kv.Get(kv_pb2.GetRequest(key="a"), timeout=20)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
    assert failed.value.details() == "the database is down"
    assert gw.keeper.client is not None and not gw.keeper.client.exited

    with pytest.raises(grpc.RpcError) as died:
        kv.Get(kv_pb2.GetRequest(key="__die__"), timeout=20)
    assert died.value.code() == grpc.StatusCode.UNAVAILABLE, died.value
    details = died.value.details()
    assert "the plugin behind the gateway exited with code 9 during the call" in details, details
    assert "retry the call if it is safe to repeat" in details, details


@pytest.mark.go
@pytest.mark.skipif(_reason is not None, reason=_reason or "")
def test_a_go_child_panicking_mid_call_is_named_with_its_exit_code(tmp_path: Path) -> None:
    with _gateway([str(gobuild.build_go("misbehave"))], tmp_path) as gw, grpc.insecure_channel(gw.address) as ch:
        with pytest.raises(grpc.RpcError) as died:
            kv_pb2_grpc.KVStub(ch).Get(kv_pb2.GetRequest(key="__panic__"), timeout=20)
    assert died.value.code() == grpc.StatusCode.UNAVAILABLE, died.value
    details = died.value.details()
    assert "the plugin behind the gateway exited with code 2 during the call" in details, details


@pytest.mark.parametrize("words", ["overloaded, back off", "failed to connect to all addresses; Connection refused"])
def test_a_live_childs_own_unavailable_is_not_held_for_a_health_check(
        kv_gateway: tuple[Gateway, kv_pb2_grpc.KVStub], tmp_path: Path, words: str) -> None:
    # An overloaded child: its health checks wait 2 s, its calls answer at once. Its own UNAVAILABLE ("back off")
    # went back only after a health check (0.25 s) and an exit wait of up to 0.5 s, within all that was left of the
    # call's deadline: a 0.7 s call got DEADLINE_EXCEEDED, which a retry policy on UNAVAILABLE does not retry (found
    # in review). Only
    # gRPC's words for a broken hop make the gateway look for the child's exit.
    gw, kv = kv_gateway
    # the second: a Go plugin passing on its own backend's dial failure in grpc-go's words (found in review)
    kv.Put(kv_pb2.PutRequest(key="__fail_text__", value=words.encode()), timeout=20)
    kv.Put(kv_pb2.PutRequest(key="__fail__", value=b"1"), timeout=20)
    (tmp_path / "stall_health").touch()
    try:
        with pytest.raises(grpc.RpcError) as failed:
            kv.Get(kv_pb2.GetRequest(key="a"), timeout=0.7)
    finally:
        (tmp_path / "stall_health").unlink()
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
    assert failed.value.details() == words
