"""The streams one authenticated peer opens in a network plugin are bounded per session and per process.

Every stream a host opens in its yamux session is bridged to the session's own
gRPC server: a worker thread and a local socket pair each. A peer with a valid
client certificate opened a few sessions of 512 streams each and never read
(yamux's per-session cap times the front's 256 sessions): thousands of threads
and descriptors, until other hosts' calls failed with "Too many open files".
Now the process carries at most streamcap.MAX_CARRIED of them, one session at
most MAX_SESSION_CARRIED; the rest are reset. The plugin is the unmodified KV
example in network mode (some caps lowered in its process to keep this small).
"""

from __future__ import annotations

from pathlib import Path

from plugbay.core.transport import streamcap
from plugbay.core.transport.yamux import MAX_STREAMS
from tests import netcerts
from tests.netflood import LoweredPlugin, peer, ping, proc_counts, session_until, syns, until_pong
from tests.test_network_serve import kv_pb2, kv_pb2_grpc, secure

MARGIN = 40  # the well-behaved host's call, grpc's own threads, slack


def _kv_call(certs: netcerts.CertSet, address: str, value: bytes) -> None:
    with secure(certs, address) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        kv.Put(kv_pb2.PutRequest(key="k", value=value), timeout=30)
        assert kv.Get(kv_pb2.GetRequest(key="k"), timeout=30).value == value


def test_streams_past_the_session_and_process_caps_are_reset_and_freed_when_a_session_ends(
        tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    total, per_session, opened = 40, 16, 30
    plugin = LoweredPlugin(tmp_path, certs, {"plugbay.core.transport.streamcap": {
        "MAX_CARRIED": total, "MAX_SESSION_CARRIED": per_session}})
    socks = []
    try:
        carried = 0
        for n in range(3):  # 16, then 16, then the 8 the process has left
            s = peer(plugin.address, certs)
            socks.append(s)
            s.sendall(syns(1, opened) + ping(100 + n))
            resets = until_pong(s, 100 + n)
            assert resets is not None
            accepted = min(per_session, total - carried)
            # the first ones are carried, in the order they came; every one past the cap is reset
            assert resets == {1 + 2 * i for i in range(accepted, opened)}, (n, sorted(resets))
            carried += accepted
        _kv_call(certs, plugin.address, b"during")  # plain gRPC is not held up
        # a session that ends gives its streams back: a new one is carried again (bounded wait for
        # the plugin to notice the end and close the bridges)
        socks.pop(0).close()
        socks.append(session_until(plugin.address, certs, syns(1, 1), 7, lambda resets: resets == set(),
                                   "the ended session's streams were never given back"))
    finally:
        for s in socks:
            s.close()
        code, err = plugin.stop()
    assert code == 0, err
    assert "resetting the peer's new streams until some end" in err, err
    assert "Too many open files" not in err, err


def test_one_peer_flooding_sessions_with_streams_holds_threads_and_descriptors_under_the_caps(
        tmp_path: Path) -> None:
    # the real caps: each session offers yamux's full MAX_STREAMS, never reads a byte
    certs = netcerts.write_set(tmp_path / "tls")
    plugin = LoweredPlugin(tmp_path, certs, {})
    sessions = 3
    socks = []
    try:
        _kv_call(certs, plugin.address, b"before")
        threads0, fds0 = proc_counts(plugin.proc.pid)
        for n in range(sessions):
            s = peer(plugin.address, certs)
            socks.append(s)
            s.sendall(syns(1, MAX_STREAMS) + ping(n + 1))
            assert until_pong(s, n + 1) is not None  # every SYN before it was routed or reset
        threads, fds = proc_counts(plugin.proc.pid)
        carried = min(streamcap.MAX_CARRIED, sessions * streamcap.MAX_SESSION_CARRIED)
        assert carried < sessions * MAX_STREAMS  # what the test is about
        # a carried stream: one worker thread, two descriptors (the bridge's end, the server's)
        assert threads <= threads0 + carried + sessions * 4 + MARGIN, (threads0, threads)
        assert fds <= fds0 + 2 * carried + sessions * 6 + MARGIN, (fds0, fds)
        _kv_call(certs, plugin.address, b"during")
    finally:
        for s in socks:
            s.close()
        code, err = plugin.stop()
    assert code == 0, err
    assert "Too many open files" not in err, err


def test_one_peer_address_gets_a_share_of_the_process_streams_across_its_sessions(tmp_path: Path) -> None:
    # one peer address with a few sessions under MAX_PEER_SESSIONS, each under the session cap, took
    # the whole process's budget: another host's streams were reset. Its sessions now share one budget.
    certs = netcerts.write_set(tmp_path / "tls")
    total, per_session, per_peer = 12, 4, 6
    plugin = LoweredPlugin(tmp_path, certs, {"plugbay.core.transport.streamcap": {
        "MAX_CARRIED": total, "MAX_SESSION_CARRIED": per_session, "MAX_PEER_CARRIED": per_peer}})
    flooder, other = "127.0.0.2", "127.0.0.3"
    socks = []
    try:
        carried = 0
        for n in range(3):  # 4, then the 2 the peer has left, then none
            s = peer(plugin.address, certs, flooder)
            socks.append(s)
            s.sendall(syns(1, per_session) + ping(100 + n))
            accepted = min(per_session, per_peer - carried)
            assert until_pong(s, 100 + n) == {1 + 2 * i for i in range(accepted, per_session)}, n
            carried += accepted
        s = peer(plugin.address, certs, other)  # the process has room: another address is carried
        socks.append(s)
        s.sendall(syns(1, per_session) + ping(200))
        assert until_pong(s, 200) == set()
        # an ended session gives its slots back to its peer (bounded wait for the plugin to see the end)
        socks.pop(0).close()
        session_until(plugin.address, certs, syns(1, 1), 7, lambda resets: resets == set(),
                      "the ended session's streams were never given back to its peer", flooder).close()
    finally:
        for s in socks:
            s.close()
        code, err = plugin.stop()
    assert code == 0, err
    assert f"the sessions from {flooder} carry {per_peer} streams it opened" in err, err
