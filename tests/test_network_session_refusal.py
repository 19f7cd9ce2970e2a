"""A network plugin that refuses a host's brokering session says why, and the host says it at once.

A network plugin (and the gateway's --multiplex front) holds at most
``max_peer_sessions`` brokering sessions from one peer address. The host past
that cap used to wait out its whole start_timeout, then blame TLS ("a plugin
restarting"): the front just closed the connection, and the host dialed again
and again. Now the front sends a yamux GoAway with a refusal code first, and the
host raises SessionRefusedError naming the cap, the setting that raises it and
``brokered=False``; a host that did not insist on brokering (``multiplex=True``)
falls back to plain gRPC with a warning, its brokered calls refused with that
reason. The plugins are the unmodified counter example (callbacks) in network
mode, the cap set with PLUGBAY_NETWORK_MAX_PEER_SESSIONS, and the gateway.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from plugbay import Gateway, RemoteClient
from plugbay.core.plugin.netconfig import ENV_LISTEN, ENV_MAX_PEER_SESSIONS, NetworkServe
from plugbay.core.transport import muxhost
from plugbay.errors import BrokerError, ConfigError, SessionRefusedError
from plugbay.network.gateway.cli import parse
from plugbay.network.gateway.config import GatewayConfig
from tests import netcerts
from tests.test_network_broker import (
    PLUGIN_NAME,
    Adder,
    CounterReplica,
    _gateway_config,
    host_tls,
    remote,
)

CAP = 2
START = 60.0  # far past what a refusal takes: only a refusal told at once can end the start before it


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


@pytest.fixture
def capped(tmp_path: Path, certs: netcerts.CertSet) -> Iterator[CounterReplica]:
    rep = CounterReplica(tmp_path / "a", certs, {ENV_MAX_PEER_SESSIONS: str(CAP)})
    yield rep
    code, err = rep.stop()
    assert code == 0, err[-2000:]
    assert not list(rep.tmp.iterdir()), "the plugin left sockets or folders behind"
    rep.tmp.rmdir()
    refusals = [line for line in err.splitlines() if "refusing brokering sessions from 127.0.0.1" in line]
    assert len(refusals) == 1, err[-2000:]  # however many were refused: logged once per interval
    assert "max_peer_sessions" in refusals[0]


def test_a_host_past_the_per_address_cap_is_told_why_and_falls_back_to_plain_grpc(
        capped: CounterReplica, certs: netcerts.CertSet, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="plugbay.network")
    tls = host_tls(certs)
    held = [remote([capped], tls, start_timeout=START) for _ in range(CAP)]
    try:
        for client in held:
            client.start()
            assert client.multiplexed
        # insisting on brokered connections: the start fails with why, not at start_timeout
        with pytest.raises(SessionRefusedError) as refused:
            remote([capped], tls, start_timeout=START, multiplex=True).start()
        text = str(refused.value)
        for needed in ("one address", "max_peer_sessions=N", "PLUGBAY_NETWORK_MAX_PEER_SESSIONS",
                       "--max-peer-sessions", "brokered=False"):
            assert needed in text, text
        assert isinstance(refused.value, BrokerError)
        # by default: plain gRPC, a warning, and a brokered call refused with the same reason (not a hang)
        with remote([capped], tls, start_timeout=START) as fallback:
            assert fallback.handshake.multiplex and not fallback.multiplexed
            assert "refused this host's brokering (multiplexed) session" in caplog.text
            counter = fallback.dispense(PLUGIN_NAME)
            with pytest.raises(grpc.RpcError) as answered:  # the plugin answers over plain gRPC
                counter.get("nothing-yet")
            assert answered.value.code() == grpc.StatusCode.NOT_FOUND
            adder = Adder()
            with pytest.raises(BrokerError, match="max_peer_sessions"):
                counter.put("n", 1, adder)
            assert adder.calls == 0
        assert len(capped.session_sockets()) == CAP  # the refused hosts got no instance
        # one of the address's sessions ends: the next host gets one again (bounded: the plugin sees
        # the close on its own time)
        held.pop().close()
        again = _multiplexed_within(capped, tls, attempts=50)
        held.append(again)
        adder = Adder()
        again.dispense(PLUGIN_NAME).put("m", 3, adder)
        assert adder.calls == 1 and capped.value("m") == '{"Value":3}'
    finally:
        for client in held:
            client.close()


def _multiplexed_within(rep: CounterReplica, tls: object, attempts: int) -> RemoteClient:
    for _ in range(attempts):
        client = remote([rep], tls, start_timeout=START, multiplex=True)  # type: ignore[arg-type]
        try:
            client.start()
            return client
        except SessionRefusedError:
            client.close()
            time.sleep(0.1)
    raise AssertionError("no session was accepted again after one of the address's ended")


def test_the_gateways_multiplex_front_refuses_past_its_cap_saying_why(
        tmp_path: Path, certs: netcerts.CertSet) -> None:
    folder = tmp_path / "gw"
    folder.mkdir()
    with Gateway(_gateway_config(certs, folder, multiplex=True, max_peer_sessions=1)) as gw:
        target = [type("Rep", (), {"address": gw.address})()]  # remote() wants .address
        with remote(target, host_tls(certs), start_timeout=START) as first:  # type: ignore[arg-type]
            assert first.multiplexed
            with pytest.raises(SessionRefusedError, match="--max-peer-sessions"):
                remote(target, host_tls(certs), start_timeout=START, multiplex=True).start()  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1, 257, True, 2.0, "3", None])
def test_a_bad_max_peer_sessions_says_what_to_pass(value: object) -> None:
    with pytest.raises(ConfigError, match=r"from 1 to 256.*max_peer_sessions=64"):
        NetworkServe(listen="127.0.0.1:0", insecure=True, max_peer_sessions=value)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"--max-peer-sessions 64"):
        GatewayConfig(cmd=["x"], cookie=("A", "b"), insecure=True, max_peer_sessions=value).check()  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["0", "x", "1.5", "257", "-3", "١"])
def test_a_bad_max_peer_sessions_variable_is_named(text: str) -> None:
    env = {ENV_LISTEN: "127.0.0.1:0", "PLUGBAY_NETWORK_INSECURE": "1", ENV_MAX_PEER_SESSIONS: text}
    with pytest.raises(ConfigError, match="PLUGBAY_NETWORK_MAX_PEER_SESSIONS=64"):
        NetworkServe.from_env(env)
    with pytest.raises(SystemExit):
        parse(["--cookie", "A=b", "--insecure", "--max-peer-sessions", text, "--", "x"], env={})


def test_max_peer_sessions_settings_are_read() -> None:
    env = {ENV_LISTEN: "127.0.0.1:0", "PLUGBAY_NETWORK_INSECURE": "1"}
    served = NetworkServe.from_env(env)
    assert served is not None and served.max_peer_sessions == 64
    served = NetworkServe.from_env({**env, ENV_MAX_PEER_SESSIONS: " 200 "})
    assert served is not None and served.max_peer_sessions == 200
    assert NetworkServe(listen="127.0.0.1:0", insecure=True, max_peer_sessions=1).max_peer_sessions == 1
    base = ["--cookie", "A=b", "--insecure"]
    assert parse([*base, "--", "x"], env={}).max_peer_sessions == 64
    assert parse([*base, "--", "x"], env={"PLUGBAY_GATEWAY_MAX_PEER_SESSIONS": "100"}).max_peer_sessions == 100
    assert parse([*base, "--max-peer-sessions", "7", "--", "x"], env={}).max_peer_sessions == 7


def test_closing_a_brokering_client_waits_for_no_poll(tmp_path: Path, certs: netcerts.CertSet,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # closing took ~0.4 s: grpc's channel-ready poll (0.2 s watches) outlived broker()'s wait and the
    # channel's close waited for it; the session's accept loop was joined at its next poll (POLL). A
    # poll this long shows both: the loop must end because close() woke it, and no poll may be left
    monkeypatch.setattr(muxhost, "POLL", 3600.0)
    rep = CounterReplica(tmp_path / "a", certs)
    try:
        with remote([rep], host_tls(certs), start_timeout=START) as client:
            assert client.multiplexed
            adder = Adder()
            client.dispense(PLUGIN_NAME).put("n", 2, adder)
            assert adder.calls == 1
            assert not _pollers(), "a channel connectivity poll outlived the wait for the session"
        assert not [t for t in threading.enumerate() if t.name == "plugbay-mux-main"], \
            "the session's accept loop outlived close()"
    finally:
        code, err = rep.stop()
        rep.tmp.rmdir()
    assert code == 0, err[-2000:]


def _pollers() -> list[threading.Thread]:
    """grpc's connectivity poll threads (what grpc.channel_ready_future and subscribe() start): their
    argument is the channel's connectivity state."""
    return [t for t in threading.enumerate()
            if any(type(arg).__name__ == "_ChannelConnectivityState" for arg in getattr(t, "_args", ()))]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
