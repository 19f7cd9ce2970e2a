"""A brokering host opening streams past a session's cap through the gateway (--multiplex): the
streams past it are reset, and the gateway's splice threads (two per stream) stay bounded; one peer
address's sessions together get only their share of the gateway's streams."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pytest

from plugbay import Gateway
from plugbay.core.transport import streamcap
from plugbay.core.transport.yamux import MAX_STREAMS
from tests import netcerts
from tests.netflood import peer, ping, syns, until_pong
from tests.test_network_broker import _gateway_config, _silent_host, certs  # noqa: F401 (a fixture)

_HDR = struct.Struct(">BBHII")
_WINDOW_UPDATE, _SYN, _RST = 1, 1, 8


def _resets_until(sock: object, wanted: set[int], timeout: float) -> set[int]:
    """The stream ids the gateway reset, read until ``wanted`` are among them (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    data, resets = b"", set()
    while not wanted <= resets and time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))  # type: ignore[attr-defined]
        try:
            chunk = sock.recv(65536)  # type: ignore[attr-defined]
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        while len(data) >= _HDR.size:
            _, kind, flags, sid, length = _HDR.unpack(data[:_HDR.size])
            size = _HDR.size + (length if kind == 0 else 0)
            if len(data) < size:
                break
            data = data[size:]
            if kind == _WINDOW_UPDATE and flags & _RST:
                resets.add(sid)
    return resets


def test_streams_a_host_opens_past_the_cap_are_reset_and_splice_threads_stay_bounded(
        tmp_path: Path, certs: netcerts.CertSet) -> None:  # noqa: F811
    folder = tmp_path / "gw"
    folder.mkdir()
    extra = 200
    with Gateway(_gateway_config(certs, folder, multiplex=True)) as gw:
        host = _silent_host(gw.address, certs)
        try:
            host.sendall(b"".join(_HDR.pack(0, _WINDOW_UPDATE, _SYN, 2 * i + 1, 0)
                                  for i in range(MAX_STREAMS + extra)))
            past = {2 * i + 1 for i in range(MAX_STREAMS, MAX_STREAMS + extra)}
            resets = _resets_until(host, past, 60)
            assert past <= resets, f"{len(past - resets)} of the {extra} streams past the cap were not reset"
            splices = [t for t in threading.enumerate() if t.name.startswith("plugbay-splice")]
            assert len(splices) <= 2 * MAX_STREAMS, len(splices)
        finally:
            host.close()


def test_one_peer_address_gets_a_share_of_the_gateways_streams_across_its_sessions(
        tmp_path: Path, certs: netcerts.CertSet, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    # one address's sessions, each under the session cap, took the gateway's whole budget before
    total, per_session, per_peer = 12, 4, 6
    for name, value in (("MAX_CARRIED", total), ("MAX_SESSION_CARRIED", per_session), ("MAX_PEER_CARRIED", per_peer)):
        monkeypatch.setattr(streamcap, name, value, raising=False)
    folder = tmp_path / "gw"
    folder.mkdir()
    socks = []
    with Gateway(_gateway_config(certs, folder, multiplex=True)) as gw:
        try:
            carried = 0
            for n in range(3):  # 4, then the 2 the peer has left, then none
                s = peer(gw.address, certs, "127.0.0.2")
                socks.append(s)
                s.sendall(syns(1, per_session) + ping(100 + n))  # answered once the session's child is up
                accepted = min(per_session, per_peer - carried)
                assert until_pong(s, 100 + n, timeout=60) == {1 + 2 * i for i in range(accepted, per_session)}, n
                carried += accepted
            s = peer(gw.address, certs, "127.0.0.3")
            socks.append(s)
            s.sendall(syns(1, per_session) + ping(200))
            assert until_pong(s, 200, timeout=60) == set()
        finally:
            for s in socks:
                s.close()
