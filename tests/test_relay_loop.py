"""The OpenSSL relay runs on the shared I/O loop: a relayed plugin costs the host no thread of its own.

Real parts: go-plugin 1.0.1 Go plugins (tests/gobuild.py) with AutoMTLS (P-521,
so the host relays), and relay pairs (terminate + originate, real TLS) in front
of a real echo server for the stream-level cases: large payloads, many
connections at once, a peer that stops reading, a peer that never finishes TLS.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from plugbay.core.protocol import tls
from plugbay.core.transport import aioloop, ioloop, relayconn, sockets
from plugbay.core.transport.relay import TLSRelay
from tests import gobuild

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig, PluginDiedError  # noqa: E402
from tests.thread_util import plugbay_threads, wait_for  # noqa: E402


# ---------------------------------------------------------------- the loop's additions the relay uses


def test_the_loop_watches_writes_runs_timers_and_calls_from_other_threads() -> None:
    loop = ioloop.IOLoop("plugbay-io-test")
    a, b = socket.socketpair()
    a.setblocking(False)
    events: list[str] = []
    filled = threading.Event()

    def on_a() -> None:
        assert reg.fired & ioloop.WRITE
        try:
            while True:
                a.send(b"x" * 65536)
        except BlockingIOError:
            pass
        if not filled.is_set():
            filled.set()
            events.append("full")
            reg.want(0)  # nothing until the timer asks again
            loop.call_later(0.05, lambda: events.append("timer"))
            dropped = loop.call_later(0.01, lambda: events.append("cancelled timer ran"))
            dropped.cancel()

    try:
        reg = loop.add(a.fileno(), on_a, events=ioloop.WRITE)
        wait_for(filled.is_set, "the socket to fill")
        wait_for(lambda: "timer" in events, "the timer")
        ran = threading.Event()
        loop.call_soon(lambda: (events.append("soon"), ran.set()) and None)
        wait_for(ran.is_set, "call_soon")
        assert events == ["full", "timer", "soon"]  # no write callback while watching nothing
        reg.cancel()
        wait_for(lambda: not loop.running, "the idle loop to end")
        assert loop.join_idle(5)
    finally:
        a.close()
        b.close()
    assert "plugbay-io-test" not in plugbay_threads()


# ---------------------------------------------------------------- an echo server on one thread


class Echo:
    """Echoes every connection, non-blocking, with a bounded buffer each (it stops reading when full)."""

    def __init__(self, path: str) -> None:
        self.listener = sockets.open_listener("unix", path)
        self.listener.setblocking(False)
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="plugbay-test-echo", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, None)
        sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        bufs: dict[socket.socket, bytearray] = {}
        try:
            while True:
                for key, mask in sel.select(1.0):
                    if key.data == "stop":
                        return
                    if key.data is None:
                        conn, _ = self.listener.accept()
                        conn.setblocking(False)
                        bufs[conn] = bytearray()
                        sel.register(conn, selectors.EVENT_READ, "conn")
                        continue
                    conn = key.fileobj  # type: ignore[assignment]
                    buf = bufs[conn]
                    try:
                        if len(buf) < 256 * 1024 and mask & selectors.EVENT_READ:
                            data = conn.recv(65536)
                            if not data:
                                raise ConnectionError("eof")
                            buf += data
                        if buf:
                            try:
                                del buf[:conn.send(buf)]
                            except BlockingIOError:
                                pass
                    except OSError:
                        sel.unregister(conn)
                        conn.close()
                        del bufs[conn]
                        continue
                    sel.modify(conn, (selectors.EVENT_READ if len(buf) < 256 * 1024 else 0)
                               | (selectors.EVENT_WRITE if buf else 0) or selectors.EVENT_WRITE, "conn")
        finally:
            for conn in bufs:
                conn.close()
            sel.close()

    def close(self) -> None:
        self._stop_w.send(b"x")
        self._thread.join(timeout=10)
        self._stop_r.close()
        self._stop_w.close()
        sockets.close_listener(self.listener)


@pytest.fixture
def relay_pair(tmp_path: Path) -> Iterator[tuple[TLSRelay, TLSRelay]]:
    echo = Echo(str(tmp_path / "echo.sock"))
    server, client = tls.generate_cert(ec.SECP521R1()), tls.generate_cert(ec.SECP521R1())
    term = TLSRelay(sockets.open_listener("tcp", "127.0.0.1:0"), ("unix", str(tmp_path / "echo.sock")),
                    tls.server_context(server, client.cert_pem), "terminate", handshake_timeout=2.0,
                    drain_timeout=0.5)
    # a short drain timeout: a peer that holds back while both sides are open is never cut off
    orig = TLSRelay(sockets.open_listener("unix", str(tmp_path / "orig.sock")), term.address,
                    tls.client_context(client, server.cert_pem), "originate", drain_timeout=0.5)
    try:
        yield term, orig
    finally:
        orig.close()
        term.close()
        echo.close()
    assert ioloop.shared().join_idle()  # the relays' registrations are gone: the loop ended


def _round_trip(path: str, payload: bytes) -> bytes:
    with sockets.dial("unix", path, timeout=30) as sock:
        writer = threading.Thread(target=sock.sendall, args=(payload,), name="plugbay-test-writer")
        writer.start()
        got = bytearray()
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        writer.join(timeout=30)
    return bytes(got)


def test_relays_run_on_the_shared_loop_without_threads_of_their_own(relay_pair: tuple[TLSRelay, TLSRelay]) -> None:
    term, orig = relay_pair
    payload = os.urandom(6_000_000)
    assert _round_trip(orig.address[1], payload) == payload
    assert [t for t in plugbay_threads() if t.startswith("plugbay-tlsrelay")] == []
    assert "plugbay-io" in plugbay_threads()


def test_many_concurrent_connections_each_get_their_own_bytes(relay_pair: tuple[TLSRelay, TLSRelay]) -> None:
    _, orig = relay_pair
    payloads = [os.urandom(200_000 + i) for i in range(40)]
    results: list[bytes] = [b""] * len(payloads)

    def one(i: int) -> None:
        results[i] = _round_trip(orig.address[1], payloads[i])

    threads = [threading.Thread(target=one, args=(i,), name="plugbay-test-client") for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [r == p for r, p in zip(results, payloads)] == [True] * len(payloads)


def test_a_peer_that_stops_reading_is_held_back_and_others_keep_working(
        relay_pair: tuple[TLSRelay, TLSRelay]) -> None:
    term, orig = relay_pair
    stuck = sockets.dial("unix", orig.address[1], timeout=10)
    try:
        stuck.setblocking(False)
        # write and never read: the echo fills our receive buffer, then every buffer back to us
        block = os.urandom(65536)
        written, limit, idle_since = 0, 64 * 1024 * 1024, time.monotonic()
        while written < limit and time.monotonic() - idle_since < 2.0:
            try:
                written += stuck.send(block)
                idle_since = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
        assert written < limit, "the relay buffered without bound"
        for relay in (term, orig):  # each direction's buffer stays within its cap (plus one read)
            for conn in list(relay._conns):
                assert len(conn.to_tls) <= relayconn.CAP + relayconn.CHUNK
                assert len(conn.to_plain) <= relayconn.CAP + relayconn.CHUNK
        # meanwhile another connection goes through the same relays
        payload = os.urandom(500_000)
        assert _round_trip(orig.address[1], payload) == payload
        # and once the stuck peer reads, it gets its bytes back in order
        stuck.setblocking(True)
        stuck.settimeout(30)
        got = bytearray()
        while len(got) < written:
            chunk = stuck.recv(1 << 20)
            assert chunk, "the relay dropped the held-back connection"
            got += chunk
        assert bytes(got[:65536]) == block and len(got) == written
    finally:
        stuck.close()


def test_a_tls_server_that_never_answers_times_out_and_others_are_served(
        tmp_path: Path, relay_pair: tuple[TLSRelay, TLSRelay]) -> None:
    _, orig = relay_pair
    client = tls.generate_cert(ec.SECP521R1())
    silent = sockets.open_listener("tcp", "127.0.0.1:0")  # accepts (backlog) and never speaks TLS
    mute = TLSRelay(sockets.open_listener("unix", str(tmp_path / "mute.sock")), sockets.listener_address(silent),
                    tls.client_context(client, client.cert_pem), "originate", handshake_timeout=1.0)
    try:
        waiting = [sockets.dial("unix", mute.address[1], timeout=10) for _ in range(10)]
        payload = os.urandom(100_000)
        assert _round_trip(orig.address[1], payload) == payload  # served while those wait
        for sock in waiting:
            sock.settimeout(30)
            try:
                assert sock.recv(1) == b""  # closed by the handshake bound
            except ConnectionResetError:
                pass
            sock.close()
        wait_for(lambda: mute.connections == 0, "the timed-out connections to be dropped")
    finally:
        mute.close()
        sockets.close_listener(silent)


class TLSPeer:
    """A TLS server (real OpenSSL, on a thread) for one connection, with small socket buffers so a
    peer that does not read makes the relay hold bytes; ``behave`` decides what it does after the
    handshake, until ``stop``."""

    def __init__(self, behave: Callable[[ssl.SSLSocket, threading.Event], None]) -> None:
        self.server, self.client = tls.generate_cert(ec.SECP521R1()), tls.generate_cert(ec.SECP521R1())
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # the accepted one's
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.listener.settimeout(30)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self._behave = behave
        self._thread = threading.Thread(target=self._run, name="plugbay-test-tlspeer", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, str]:
        return ("tcp", "%s:%d" % self.listener.getsockname())

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(30)
            with tls.server_context(self.server, self.client.cert_pem).wrap_socket(conn, server_side=True) as peer:
                self._behave(peer, self.stop)
        except BaseException as exc:  # reported by close()
            self.errors.append(exc)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the TLS peer is still running"

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.join(30)


def _fill(sock: socket.socket, block: bytes, idle: float = 1.0) -> int:
    """Write ``block`` over and over, never reading, until nothing moves for ``idle`` s (64 MB at most)."""
    sock.setblocking(False)
    written, idle_since = 0, time.monotonic()
    while written < 64 * 1024 * 1024 and time.monotonic() - idle_since < idle:
        try:
            written += sock.send(block)
            idle_since = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
    return written


def test_a_silent_tls_peer_is_dropped_once_the_plaintext_side_hung_up(tmp_path: Path) -> None:
    # a partition while the host was writing: its bytes fill every buffer up to the relay's cap,
    # then the host gives up (the keepalive) and closes; the relay must not wait for TCP's minutes
    peer = TLSPeer(lambda conn, stop: stop.wait(60) and None)  # handshakes, then never reads
    relay = TLSRelay(sockets.open_listener("unix", str(tmp_path / "orig.sock")), peer.address,
                     tls.client_context(peer.client, peer.server.cert_pem), "originate", drain_timeout=0.5)
    try:
        host = sockets.dial("unix", relay.address[1], timeout=10)
        with host:
            written = _fill(host, os.urandom(65536))
            assert written >= relayconn.CAP, "the relay never held bytes back"
            assert relay.connections == 1
        wait_for(lambda: relay.connections == 0, "the relay to drop the connection to its silent peer",
                 timeout=15)
    finally:
        relay.close()
        peer.close()
    assert ioloop.shared().join_idle()


def test_a_slow_tls_peer_behind_full_socket_buffers_gets_every_byte_after_the_hang_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the peer reads a little at a time: the kernel's send queue shrinks, but it frees room for the
    # relay's own buffer only every megabyte or so, so for seconds no byte is handed to the socket.
    # That is progress all the same: only a peer that takes nothing is dropped.
    payload = os.urandom(4_500_000)  # fits the buffers: the host hangs up long before the peer has read it
    got = bytearray()
    checks_after_the_end: list[int] = []
    check = relayconn.RelayConn._drain_check

    def counting(conn: relayconn.RelayConn) -> None:
        if conn._plain_eof or sockets.hung_up(conn.plain):
            checks_after_the_end.append(len(conn.to_tls))
        check(conn)

    monkeypatch.setattr(relayconn.RelayConn, "_drain_check", counting)

    def slowly(conn: ssl.SSLSocket, stop: threading.Event) -> None:
        deadline = time.monotonic() + 60
        while len(got) < len(payload) and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.1)  # several reads per drain timeout, each well under a third of the queue
            step = len(got) + 100_000
            while len(got) < step:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                got.extend(chunk)

    peer = TLSPeer(slowly)
    relay = TLSRelay(sockets.open_listener("unix", str(tmp_path / "orig.sock")), peer.address,
                     tls.client_context(peer.client, peer.server.cert_pem), "originate", drain_timeout=0.5)
    try:
        with sockets.dial("unix", relay.address[1], timeout=10) as host:
            host.sendall(payload)
        peer.join(90)
        assert peer.errors == []
        assert len(got) == len(payload) and bytes(got) == payload
        assert [held for held in checks_after_the_end if held], "no drain check ran with bytes held after the hang-up"
        wait_for(lambda: relay.connections == 0, "the relay to close the delivered connection")
    finally:
        relay.close()
        peer.close()
    assert ioloop.shared().join_idle()


def test_a_drain_timeout_that_is_not_positive_is_refused(tmp_path: Path) -> None:
    for bad in (0, -1.0, float("nan")):
        listener = sockets.open_listener("unix", str(tmp_path / "r.sock"))
        try:
            with pytest.raises(ValueError, match="drain_timeout must be a positive number"):
                TLSRelay(listener, ("unix", "/nowhere"), ssl.create_default_context(), "originate",
                         drain_timeout=bad)
        finally:
            sockets.close_listener(listener)


def test_a_brokering_endpoints_relay_gives_a_silent_peer_the_keepalives_timeout(tmp_path: Path) -> None:
    from plugbay.core.transport.keepalive import Keepalive
    from plugbay.network.muxconn import MuxEndpoint
    from plugbay.network.resolver import Endpoint

    with socket.create_server(("127.0.0.1", 0)) as gone:
        address = "%s:%d" % gone.getsockname()  # nothing listens there once closed: the relay's dial fails
    peer = tls.generate_cert(ec.SECP521R1())
    for keepalive, expected in ((Keepalive(1.0, 3.5), 3.5), (None, 10.0)):
        endpoint = MuxEndpoint(Endpoint("tcp", address), tls.client_context(peer, peer.cert_pem), "localhost",
                               keepalive=keepalive)
        try:
            assert endpoint._relay is not None and endpoint._relay._setup.drain_timeout == expected
        finally:
            endpoint.close()
    assert ioloop.shared().join_idle()


def test_close_drops_connections_in_every_stage(tmp_path: Path, relay_pair: tuple[TLSRelay, TLSRelay]) -> None:
    term, orig = relay_pair
    raw_host, raw_port = term.address[1].rsplit(":", 1)
    handshaking = socket.create_connection((raw_host, int(raw_port)), timeout=10)  # never speaks TLS
    pumping = sockets.dial("unix", orig.address[1], timeout=10)
    pumping.sendall(b"ping")
    pumping.settimeout(10)
    assert pumping.recv(4) == b"ping"
    wait_for(lambda: term.connections == 2, "both connections at the terminating relay")
    term.close()
    orig.close()
    assert term.connections == 0 and orig.connections == 0
    for sock in (handshaking, pumping):
        sock.settimeout(10)
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
        sock.close()


def test_a_target_named_by_host_name_is_looked_up_off_the_loop(tmp_path: Path) -> None:
    echo = Echo(str(tmp_path / "echo.sock"))
    server, client = tls.generate_cert(ec.SECP521R1()), tls.generate_cert(ec.SECP521R1())
    term = TLSRelay(sockets.open_listener("tcp", "127.0.0.1:0"), ("unix", str(tmp_path / "echo.sock")),
                    tls.server_context(server, client.cert_pem), "terminate")
    port = term.address[1].rsplit(":", 1)[1]
    # "localhost" comes from the hosts file: getaddrinfo runs on a short-lived thread, joined by close()
    orig = TLSRelay(sockets.open_listener("unix", str(tmp_path / "orig.sock")), ("tcp", f"localhost:{port}"),
                    tls.client_context(client, server.cert_pem), "originate")
    try:
        payload = os.urandom(300_000)
        assert _round_trip(orig.address[1], payload) == payload
    finally:
        orig.close()
        term.close()
        echo.close()
    assert ioloop.shared().join_idle()


def test_work_on_the_shared_thread_closes_a_relay_in_place_without_waiting_for_itself(tmp_path: Path) -> None:
    """The broker streams' asyncio work and the I/O loop share one thread: a relay closed from there
    (or join_idle asked there) must run in place, never wait for the thread it is on."""
    server, client = tls.generate_cert(ec.SECP521R1()), tls.generate_cert(ec.SECP521R1())
    relay = TLSRelay(sockets.open_listener("unix", str(tmp_path / "relay.sock")),
                     ("unix", str(tmp_path / "nobody.sock")), tls.server_context(server, client.cert_pem),
                     "terminate")
    lease = aioloop.shared().acquire()  # as a broker stream holds it
    try:
        assert lease.thread.name == "plugbay-io" and plugbay_threads() == ["plugbay-io"]  # one thread for both

        async def close_there() -> tuple[bool, bool]:
            on_loop = ioloop.shared().on_loop()
            relay.close()
            return on_loop, ioloop.shared().join_idle()

        assert lease.run(close_there()).result(60) == (True, True)  # a deadlock would end in TimeoutError
        assert ioloop.shared().registrations == 0
    finally:
        lease.release()
    assert ioloop.shared().join_idle() and plugbay_threads() == []


# ---------------------------------------------------------------- real Go plugins with AutoMTLS

_reason = gobuild.go_missing_reason()
needs_go = pytest.mark.skipif(_reason is not None, reason=_reason or "")


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the Go KV plugin writes kv_<key> files in its cwd


@needs_go
@pytest.mark.usefixtures("in_tmp")
def test_live_go_plugins_with_automtls_cost_no_relay_thread() -> None:
    exe = str(gobuild.build_go("kv_plugin"))
    before = set(threading.enumerate())
    clients = [Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=[exe],
                                   auto_mtls=True, name=f"go{i}")) for i in range(3)]
    try:
        for client in clients:
            kv = client.dispense(PLUGIN_NAME)
            kv.put("k", b"v")
            assert kv.get("k") == b"v"
            assert client.connection_mode == "relay-tls"
        # relays on the I/O loop, broker streams on the asyncio loop (plus grpc.aio's one poller):
        # the same three threads for three plugins as for one (each host's short GRPCStdio call to a
        # go-plugin 1.0.1 plugin, started after its first call, ends by itself)
        wait_for(lambda: plugbay_threads() == ["plugbay-io"], "the short GRPCStdio calls to end")
        gained = sorted(t.name for t in threading.enumerate() if t not in before and t.is_alive())
        # plugbay-io, and grpc.aio's poller unless it ran before (an earlier test's grpc.aio channel not yet
        # collected keeps it running): nothing else
        poller = [t.name for t in threading.enumerate() if t.name.endswith("(_poll_wrapper)")]
        assert poller, gained  # the broker streams' grpc.aio channels run it
        expected = sorted(["plugbay-io"] + (poller if poller[0] in gained else []))
        assert gained == expected, gained
    finally:
        for client in clients:
            client.kill()
    assert plugbay_threads() == []
    assert ioloop.shared().registrations == 0


@needs_go
@pytest.mark.usefixtures("in_tmp")
def test_megabytes_both_ways_through_the_relay_to_a_go_plugin() -> None:
    exe = str(gobuild.build_go("kv_plugin"))
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=[exe],
                             auto_mtls=True)) as client:
        kv = client.dispense(PLUGIN_NAME)
        value = os.urandom(4_000_000)  # go-plugin 1.0.1 servers keep gRPC's 4 MiB receive limit
        kv.put("big", value)  # host -> plugin
        assert Path("kv_big").read_bytes() == value
        assert kv.get("big") == value  # plugin -> host


@needs_go
@pytest.mark.usefixtures("in_tmp")
def test_kill_9_of_the_plugin_mid_call_is_a_typed_error_and_leaves_nothing() -> None:
    exe = str(gobuild.build_go("misbehave"))
    config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=[exe], auto_mtls=True,
                          env={"MISBEHAVE_MODE": "kv", "MISBEHAVE_MAX_SECONDS": "60"}, call_timeout=60)
    with Client(config) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        pid = client.runner.pid
        assert pid is not None
        killer = threading.Timer(0.5, os.kill, args=(pid, signal.SIGKILL))
        killer.name = "plugbay-test-killer"
        killer.start()
        try:
            with pytest.raises(PluginDiedError):
                kv.get("__hang__")
        finally:
            killer.join(timeout=10)
    assert plugbay_threads() == []
    assert ioloop.shared().registrations == 0
