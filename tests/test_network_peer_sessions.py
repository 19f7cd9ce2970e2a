"""One peer address may hold at most max_peer_sessions brokering sessions of a network plugin.

The front's cap (MAX_SESSIONS) is per process: one peer with a valid client
certificate opening that many idle sessions (one ping each keeps them alive)
refused every other host's session. Now each peer address has its own cap (not
per certificate: replicas of a Deployment share one); its sessions past it are
dropped, logged once per interval, while another address still gets a session
and the peer gets one again once one of its own ends. Each refused session is
first sent a yamux GoAway with a refusal code of plugbay's, so the host can say
why (tests/test_network_session_refusal.py). The plugin is the unmodified KV
example in network mode, the per-peer cap set with
PLUGBAY_NETWORK_MAX_PEER_SESSIONS (the process's cap lowered in its process).
"""

from __future__ import annotations

from pathlib import Path

import ssl

from plugbay.core.transport.yrefuse import REFUSED_FULL, REFUSED_PEER
from tests import netcerts
from tests.netflood import LoweredPlugin, peer, ping, session_until, split_frames, until_pong
from tests.test_network_serve import NetPlugin, tls_env

GO_AWAY = 3

CAP = 4


def test_sessions_past_a_peers_cap_are_refused_and_another_address_still_gets_one(tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    plugin = NetPlugin(tmp_path, {**tls_env(certs), "PLUGBAY_NETWORK_MAX_PEER_SESSIONS": str(CAP)})
    held = []
    try:
        for n in range(CAP):
            s = peer(plugin.address, certs, "127.0.0.1")
            held.append(s)
            s.sendall(ping(n + 1))
            assert until_pong(s, n + 1) == set(), n
        for n in range(3):  # past the cap: told so, then dropped (the plugin closes the connection, no answer)
            s = peer(plugin.address, certs, "127.0.0.1")
            try:
                s.sendall(ping(50 + n))
                assert go_aways(s) == [REFUSED_PEER], n
            finally:
                s.close()
        other = peer(plugin.address, certs, "127.0.0.2")  # another host, the same certificate
        try:
            other.sendall(ping(60))
            assert until_pong(other, 60) == set()
        finally:
            other.close()
        # one of the peer's sessions ends: it gets a new one (bounded wait for the close to be seen)
        held.pop().close()
        held.append(session_until(plugin.address, certs, b"", 70, lambda answer: answer is not None,
                                  "the peer never got a session back after one of its own ended", "127.0.0.1"))
    finally:
        for s in held:
            s.close()
        code, err = plugin.stop()
    assert code == 0, err
    refusals = [line for line in err.splitlines() if "refusing brokering sessions from 127.0.0.1" in line]
    assert len(refusals) == 1, err  # three refused, logged once


def go_aways(sock: ssl.SSLSocket) -> list[int]:
    """The GoAway codes the plugin sent on ``sock`` until it closed it (no other frame may come)."""
    data, codes = b"", []
    sock.settimeout(30)
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionError, ssl.SSLError):
            break
        if not chunk:
            break
        got, data = split_frames(data + chunk)
        for kind, _, _, length in got:
            assert kind == GO_AWAY, (kind, length)
            codes.append(length)
    return codes


def test_a_session_past_the_processs_cap_is_told_so(tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    plugin = LoweredPlugin(tmp_path, certs, {"plugbay.core.plugin.netmux": {"MAX_SESSIONS": 1}})
    try:
        held = peer(plugin.address, certs)
        try:
            held.sendall(ping(1))
            assert until_pong(held, 1) == set()
            refused = peer(plugin.address, certs)
            try:
                refused.sendall(ping(2))
                assert go_aways(refused) == [REFUSED_FULL]
            finally:
                refused.close()
        finally:
            held.close()
    finally:
        code, err = plugin.stop()
    assert code == 0, err
    assert "refusing brokering hosts: 1 sessions are open already" in err
