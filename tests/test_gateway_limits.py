"""The gateway under load and with rich errors, in front of a plain-grpcio child (tests/plugins/gateway_child.py),
reached over plaintext gRPC on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay._proto.plugbay import discovery_pb2, discovery_pb2_grpc
from plugbay.errors import ConfigError
from plugbay.network.gateway import Gateway, GatewayConfig
from plugbay.network.gateway.cli import parse

CHILD = Path(__file__).resolve().parent / "plugins" / "gateway_child.py"
# what the child sends as grpc-status-details-bin (a serialized google.rpc.Status)
DETAILS = b"\x08\x03\x12\x03bad"


def config(**kw: object) -> GatewayConfig:
    return GatewayConfig(cmd=[sys.executable, str(CHILD)], cookie=("GWCHILD", "x"), listen="127.0.0.1:0",
                         insecure=True, child_mtls=False, **kw)  # type: ignore[arg-type]


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    with Gateway(config()) as gw:
        yield gw


def _health(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest(service="plugin")
    return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)


def _fill(channel: grpc.Channel, count: int, refusals: int) -> list[grpc.Future]:
    """``count`` held calls, once ``refusals`` of them were refused (or 20 s passed)."""
    hold = channel.unary_unary("/gwchild.S/Hold")
    calls = [hold.future(b"", timeout=60) for _ in range(count)]
    deadline = time.monotonic() + 20
    while sum(call.done() for call in calls) < refusals and time.monotonic() < deadline:
        time.sleep(0.05)
    return calls


def test_busy_forwarded_calls_leave_health_and_discovery_answering() -> None:
    cap = 48  # GatewayConfig.max_calls's default
    # one peer address may take them all here (by default three quarters: see the per-peer test below)
    with Gateway(config(max_peer_calls=cap)) as gateway, grpc.insecure_channel(gateway.address) as ch:
        assert ch.unary_unary("/gwchild.S/Fast")(b"", timeout=10) == b"fast"
        calls = _fill(ch, cap + 16, 16)  # the gateway used to have 64 threads for everything
        try:
            refused = [call for call in calls if call.done()]
            assert len(refused) == 16, f"{len(refused)} of {cap + 16} calls ended while the rest were held"
            for call in refused:
                assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "--max-calls" in str(call.details()) and f"{cap} calls" in str(call.details())
            # the host's health checks still answer, so the gateway stays in its pools' rotation
            assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
            desc = discovery_pb2_grpc.DiscoveryStub(ch).Describe(discovery_pb2.DescribeRequest(), timeout=5)
            assert desc.server.startswith("plugbay-gateway/")
            with pytest.raises(grpc.RpcError) as over:
                ch.unary_unary("/gwchild.S/Fast")(b"", timeout=5)
            assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            for call in calls:
                call.cancel()
        # the held calls' slots come back once they end
        deadline = time.monotonic() + 20
        answer = b""
        while answer != b"fast" and time.monotonic() < deadline:
            try:
                answer = ch.unary_unary("/gwchild.S/Fast")(b"", timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                time.sleep(0.1)
        assert answer == b"fast"
    assert gateway.config.max_calls == cap


def test_max_calls_is_the_configured_cap() -> None:
    with Gateway(config(max_calls=2, max_peer_calls=2)) as gw, grpc.insecure_channel(gw.address) as ch:
        calls = _fill(ch, 3, 1)
        try:
            assert [call.done() for call in calls].count(True) == 1
            refused = next(call for call in calls if call.done())
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 calls" in str(refused.details())
            assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
        finally:
            for call in calls:
                call.cancel()


def test_max_calls_from_the_command_line_and_checked() -> None:
    base = ["--cookie", "A=b", "--insecure"]
    assert parse([*base, "--", "x"], env={}).max_calls == 48
    assert parse([*base, "--max-calls", "7", "--", "x"], env={}).max_calls == 7
    assert parse([*base, "--", "x"], env={"PLUGBAY_GATEWAY_MAX_CALLS": "9"}).max_calls == 9
    for bad in ("0", "-1", "many"):
        with pytest.raises(SystemExit):
            parse([*base, "--max-calls", bad, "--", "x"], env={})
    for value in (0, True, 2.5):
        with pytest.raises(ConfigError, match="max_calls"):
            Gateway(config(max_calls=value))


def test_one_host_holding_calls_open_leaves_the_others_theirs() -> None:
    # one host opened max_calls calls that never ended, and every other host's calls were refused while
    # health said SERVING; "localhost" binds both loopbacks, so there are two peer addresses
    with Gateway(dataclasses.replace(config(max_calls=8), listen="localhost:0")) as gw:
        port = gw.address.rpartition(":")[2]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as greedy, grpc.insecure_channel(f"[::1]:{port}") as other:
            calls = _fill(greedy, 8, 2)  # its share by default: all but a quarter, 6
            try:
                refused = [call for call in calls if call.done()]
                assert len(refused) == 2, f"{len(refused)} of one host's 8 held calls were refused"
                assert all(call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for call in refused)
                details = str(refused[0].details())
                assert "127.0.0.1 already has 6 calls" in details and "--max-peer-calls 6" in details, details
                assert other.unary_unary("/gwchild.S/Fast")(b"", timeout=10) == b"fast"
                held = _fill(other, 2, 0)
                assert not any(call.done() for call in held)  # the quarter kept for the others
                for call in held:
                    call.cancel()
            finally:
                for call in calls:
                    call.cancel()


def test_max_peer_calls_from_the_command_line_and_checked() -> None:
    base = ["--cookie", "A=b", "--insecure"]
    assert parse([*base, "--", "x"], env={}).max_peer_calls is None
    assert parse([*base, "--max-peer-calls", "3", "--", "x"], env={}).max_peer_calls == 3
    assert parse([*base, "--", "x"], env={"PLUGBAY_GATEWAY_MAX_PEER_CALLS": "5"}).max_peer_calls == 5
    for bad in ("0", "many"):
        with pytest.raises(SystemExit):
            parse([*base, "--max-peer-calls", bad, "--", "x"], env={})
    for value in (0, True, 2.5):
        with pytest.raises(ConfigError, match="max_peer_calls"):
            Gateway(config(max_peer_calls=value))
    assert Gateway(config()).peer_calls == 36 and Gateway(config(max_calls=2)).peer_calls == 2
    assert Gateway(config(max_calls=1)).peer_calls == 1
    assert Gateway(config(max_calls=4, max_peer_calls=9)).peer_calls == 4


def test_rich_error_details_reach_the_host(gateway: Gateway) -> None:
    with grpc.insecure_channel(gateway.address) as ch, pytest.raises(grpc.RpcError) as failed:
        ch.unary_unary("/gwchild.S/Rich")(b"", timeout=10)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.value.details() == "bad"
    # Go's status.WithDetails travels in grpc-status-details-bin; hosts decode it from the trailers
    trailers = dict(failed.value.trailing_metadata() or ())
    assert trailers.get("grpc-status-details-bin") == DETAILS
    assert trailers.get("x-app") == "kept"


def test_stdio_streams_of_many_hosts_leave_health_answering() -> None:
    # every go-plugin >= 1.4 host opens GRPCStdio and keeps it open for as long as it is attached
    with Gateway(config(max_calls=2, max_peer_calls=2)) as gw, grpc.insecure_channel(gw.address) as ch:
        calls = _fill(ch, 2, 0)
        stdio = ch.unary_stream("/plugin.GRPCStdio/StreamStdio")
        streams = [stdio(b"", timeout=60) for _ in range(20)]
        try:
            deadline = time.monotonic() + 10
            while sum(s.done() for s in streams) < 16 and time.monotonic() < deadline:
                time.sleep(0.05)
            ended = [s for s in streams if s.done()]
            assert len(ended) == 16, f"{len(ended)} of 20 stdio streams ended at once"
            assert all(s.code() == grpc.StatusCode.OK for s in ended)  # an empty stream: nothing to say
            assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
        finally:
            for call in [*calls, *streams]:
                call.cancel()


def test_a_request_message_over_max_message_is_refused_before_it_is_forwarded() -> None:
    with Gateway(config(max_message=1 << 20)) as gw, grpc.insecure_channel(gw.address) as ch:
        fast = ch.unary_unary("/gwchild.S/Fast")
        assert fast(b"x" * (1 << 19), timeout=10) == b"fast"
        with pytest.raises(grpc.RpcError) as refused:
            fast(b"x" * (2 << 20), timeout=10)  # the child would take it (its limit is 4 MiB)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in str(refused.value.details())
        assert str(1 << 20) in str(refused.value.details())
        assert _health(ch) == health_pb2.HealthCheckResponse.SERVING


def test_max_message_defaults_to_go_plugins_4_mib_and_is_checked() -> None:
    base = ["--cookie", "A=b", "--insecure"]
    assert config().max_message == 4 << 20
    assert parse([*base, "--", "x"], env={}).max_message == 4 << 20
    assert parse([*base, "--max-message", "1024", "--", "x"], env={}).max_message == 1024
    assert parse([*base, "--", "x"], env={"PLUGBAY_GATEWAY_MAX_MESSAGE": "2048"}).max_message == 2048
    for bad in ("0", "-1", "4MiB"):
        with pytest.raises(SystemExit):
            parse([*base, "--max-message", bad, "--", "x"], env={})
    for value in (0, True, 2.5):
        with pytest.raises(ConfigError, match="max_message"):
            Gateway(config(max_message=value))


@pytest.mark.parametrize(("field", "value"), [
    ("protocol_versions", ["x"]), ("protocol_versions", ["1.5"]), ("protocol_versions", "1"),
    ("protocol_versions", [True]), ("protocol_versions", [0]), ("protocol_versions", []),
    ("cookie", ("BASIC_PLUGIN",)), ("cookie", "BASIC_PLUGIN=hello"), ("cookie", ("A", 1)),
    ("plugins", "kv_grpc"), ("plugins", [1]), ("plugins", [""]),
])
def test_malformed_settings_are_config_errors_saying_what_to_pass(field: str, value: object) -> None:
    # int("x") and a cookie that would not unpack raised ValueError; a str of plugins was taken letter by letter
    with pytest.raises(ConfigError, match=f"gateway's {field.replace('_', ' ') if field != 'plugins' else field}"
                       ".*for example"):
        dataclasses.replace(config(), **{field: value}).check()


def test_well_formed_settings_pass() -> None:
    dataclasses.replace(config(protocol_versions=[1, "2"], plugins=("kv_grpc", "other")), cookie=["A", "b"]).check()
    config(protocol_versions={1, 3}, plugins=[]).check()


def test_max_message_above_grpcs_int_limit_is_a_usage_error_not_an_overflow(capsys: pytest.CaptureFixture[str]) -> None:
    # grpcio takes options as C ints: 2**31 failed the gateway's start with an untyped OverflowError
    from plugbay.network.gateway.cli import main

    base = ["--cookie", "A=b", "--insecure"]
    assert main([*base, "--max-message", str(2**31), "--", sys.executable, str(CHILD)]) == 2
    assert "--max-message must be at most 2147483647" in capsys.readouterr().err
    for value in (2**31, 10**30):
        with pytest.raises(ConfigError, match="max_message.*at most 2147483647"):
            Gateway(config(max_message=value))
    with Gateway(config(max_message=2**31 - 1)) as gw, grpc.insecure_channel(gw.address) as ch:
        assert ch.unary_unary("/gwchild.S/Fast")(b"x" * (3 << 20), timeout=10) == b"fast"  # the child takes 4 MiB
