"""The multiplexed connection's keepalive against real TCP connections on loopback.

A silent peer is a real socket that is never read or written (a hung plugin,
or the far side of a partition: TCP says nothing either way). The netns case,
a real partition, is in tests/test_network_faults.py. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.resilience_util import HANDSHAKE, PLUGINS, PY, wait_until

from plugbay import (
    BrokerClosedError,
    Client,
    ClientConfig,
    ConfigError,
    RemoteClient,
    RemoteConfig,
    TargetUnreachableError,
)
from plugbay.core.transport import sockets
from plugbay.core.transport.keepalive import Keepalive
from plugbay.core.transport.muxhost import HostMux
from plugbay.core.transport.muxplugin import AcceptedSession, PluginFront
from plugbay.core.transport.yamux import Session, Stream, StreamClosed


@pytest.fixture()
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(10)
    try:
        yield sock
    finally:
        sock.close()


def ticking(keepalive: Keepalive, session: Session, until: float) -> None:
    """Drive ``keepalive`` as an owner's poll would, until the session ends or ``until`` s pass."""
    deadline = time.monotonic() + until
    while not session.closed and time.monotonic() < deadline:
        keepalive.tick(session, time.monotonic())
        time.sleep(0.05)


def echo(stream: Stream) -> None:
    def run() -> None:
        with contextlib.suppress(StreamClosed):
            while data := stream.read():
                stream.consumed(len(data))
                stream.write(bytes(data))
            stream.close_write()
    threading.Thread(target=run, name="plugbay-test-echo", daemon=True).start()


def accepting(listener: socket.socket, stop: threading.Event,
              take: Callable[[socket.socket], None]) -> threading.Thread:
    """Hand each connection ``listener`` gets to ``take``, until ``stop`` (or the listener closes)."""
    listener.settimeout(0.1)  # accept_each's poll: how soon it sees ``stop``

    def run() -> None:
        for conn in sockets.accept_each(listener, stop.is_set):
            take(conn)
    thread = threading.Thread(target=run, name="plugbay-test-accept", daemon=True)
    thread.start()
    return thread


def test_a_session_whose_peer_went_silent_is_dropped_and_a_writer_stuck_on_it_released(
        listener: socket.socket) -> None:
    conn = socket.create_connection(listener.getsockname(), timeout=10)
    conn.settimeout(None)
    silent, _ = listener.accept()  # never read, never written
    session = Session(conn, client=True, on_stream=lambda s: s.reset(), name="t-silent")
    outcome: list[BaseException | None] = []

    def write_until_stuck() -> None:
        # each stream's first window (256 KiB) goes out without waiting for the peer: 16 MiB
        # overfills loopback's socket buffers, so the writer ends up stuck in the socket send
        try:
            for _ in range(64):
                session.open().write(b"x" * (256 * 1024))
            outcome.append(None)
        except StreamClosed as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write_until_stuck, name="plugbay-test-writer", daemon=True)
    writer.start()
    try:
        ticking(Keepalive(interval=0.3, timeout=0.3), session, until=15)
        assert session.closed, "the keepalive never gave up on a peer that answers nothing"
        assert "keepalive" in session.close_reason and "ping" in session.close_reason
        writer.join(10)
        assert not writer.is_alive()
        assert outcome and isinstance(outcome[0], StreamClosed), outcome
    finally:
        session.abort("test over")
        silent.close()
        writer.join(10)


def test_a_quiet_live_peer_is_pinged_and_kept() -> None:
    a, b = socket.socketpair()
    ours = Session(a, client=True, on_stream=lambda s: s.reset(), name="t-quiet")
    theirs = Session(b, client=False, on_stream=lambda s: s.reset(), name="t-quiet-peer")
    try:
        ticking(Keepalive(interval=0.2, timeout=2.0), ours, until=2.0)  # a loaded machine answers late, not never
        assert not ours.closed, ours.close_reason
        assert theirs.heard >= 3 and ours.heard >= 3  # pings went out, and each was answered
    finally:
        ours.close()
        theirs.close()


def test_the_host_side_drops_a_silent_connection_and_the_next_stream_dials_a_new_one(
        listener: socket.socket) -> None:
    address = "%s:%d" % listener.getsockname()
    mux = HostMux("tcp", address, timeout=5, keepalive=Keepalive(interval=0.2, timeout=0.3))
    live: list[Session] = []
    try:
        silent, _ = listener.accept()
        first = mux._session
        assert first is not None
        assert wait_until(lambda: first.closed, 10), "the host side kept a connection nothing answers on"
        assert "keepalive" in first.close_reason

        def serve_second() -> None:
            conn, _ = listener.accept()
            live.append(Session(conn, client=False, on_stream=echo, name="t-second"))

        server = threading.Thread(target=serve_second, name="plugbay-test-accept", daemon=True)
        server.start()
        stream = mux.open_stream()  # dials again: the plugin answers on a new connection
        server.join(10)
        stream.write(b"hello")
        stream.close_write()
        assert stream.read() == b"hello"
        time.sleep(1.0)  # several keepalive periods: a peer that answers is kept
        assert mux._session is not first and not mux._session.closed  # type: ignore[union-attr]
    finally:
        mux.close()
        silent.close()
        for session in live:
            session.close()


def test_a_connection_arriving_while_a_writer_is_stuck_does_not_stop_the_keepalive(
        listener: socket.socket) -> None:
    # the host's accept loop ticks the keepalive; were it to open the new connection's stream
    # itself, it would wait behind the stuck writer for good, and nothing would end the session
    address = "%s:%d" % listener.getsockname()
    # 3 s before the first ping: time to see the writer stuck first, even on a loaded machine
    mux = HostMux("tcp", address, timeout=5, keepalive=Keepalive(interval=3.0, timeout=0.5))
    silent, _ = listener.accept()
    first = mux.session
    assert first is not None
    outcome: list[BaseException | None] = []
    opened = [0]

    def write_until_stuck() -> None:
        try:
            for _ in range(256):
                first.open().write(b"x" * (256 * 1024))
                opened[0] += 1
            outcome.append(None)
        except StreamClosed as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write_until_stuck, name="plugbay-test-writer", daemon=True)
    local = socket.socket(socket.AF_UNIX)
    try:
        writer.start()
        # the writer is stuck once it stops opening streams (the socket full, the peer silent)
        last, still_since = -1, time.monotonic()
        while time.monotonic() - still_since < 0.3 and not outcome:
            if opened[0] != last:
                last, still_since = opened[0], time.monotonic()
            time.sleep(0.02)
        assert not outcome and not first.closed, "the writer never got stuck (64 MiB fitted in the socket?)"
        local.connect(mux.local_address[1])  # e.g. gRPC reconnecting: its stream waits behind the writer
        assert wait_until(lambda: first.closed, 15), "the keepalive stopped while a stream waited to open"
        assert "keepalive" in first.close_reason
        writer.join(10)
        assert not writer.is_alive() and outcome and isinstance(outcome[0], StreamClosed), outcome
    finally:
        local.close()
        mux.close()
        silent.close()
        writer.join(10)


def test_working_connections_lost_again_and_again_are_always_dialed_again(listener: socket.socket) -> None:
    # the redial cap (20) is for a forward that accepts and drops at once; a connection that
    # worked and was lost (a keepalive drop, a restarted proxy) does not count towards it
    address = "%s:%d" % listener.getsockname()
    peers: list[Session] = []
    stop = threading.Event()

    server = accepting(listener, stop, lambda conn: peers.append(Session(conn, client=False, on_stream=echo,
                                                                           name="t-peer")))
    mux = HostMux("tcp", address, timeout=5)
    try:
        for round in range(25):
            stream = mux.open_stream()
            stream.write(b"round %d" % round)
            stream.close_write()
            assert stream.read() == b"round %d" % round
            session = mux.session
            assert session is not None
            session.abort("test: the connection is lost")
    finally:
        mux.close()
        stop.set()
        server.join(10)
        for peer in peers:
            peer.close()


def _mux_folders() -> set[str]:
    return {entry.name for entry in Path(tempfile.gettempdir()).glob("plugbay-mux-*")}


def test_a_host_mux_that_cannot_dial_leaves_no_folder_or_listener(closed_port: int) -> None:
    address = f"127.0.0.1:{closed_port}"  # nothing listens there
    before = _mux_folders()
    with pytest.raises(TargetUnreachableError, match="check that the plugin is still running"):
        HostMux("tcp", address, timeout=5)
    assert _mux_folders() == before


def test_a_host_mux_that_cannot_listen_says_so_and_dials_nothing(
        listener: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_room(network: str, address: str) -> socket.socket:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sockets, "open_listener", no_room)
    before = _mux_folders()
    with pytest.raises(ConfigError, match="point TMPDIR at a short, writable folder"):
        HostMux("tcp", "%s:%d" % listener.getsockname(), timeout=5)
    assert _mux_folders() == before
    listener.settimeout(0.5)
    with pytest.raises(socket.timeout):
        listener.accept()  # the plugin was never dialed


def test_a_host_mux_without_a_writable_tmpdir_says_so_and_other_os_errors_stay_os_errors(
        listener: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    address = "%s:%d" % listener.getsockname()

    def refused(prefix: str, dir: str | None = None) -> str:
        raise PermissionError(13, "Permission denied", "/unwritable")

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    with pytest.raises(ConfigError, match=r"private folder .*Permission denied.*point TMPDIR at a writable folder"):
        HostMux("tcp", address, timeout=5)

    def exhausted(prefix: str, dir: str | None = None) -> str:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(tempfile, "mkdtemp", exhausted)
    with pytest.raises(OSError, match="Too many open files") as raised:
        HostMux("tcp", address, timeout=5)
    assert not isinstance(raised.value, ConfigError)


def test_a_host_mux_that_fails_after_its_dial_ends_the_session_it_made(
        listener: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    start = threading.Thread.start

    def failing_start(thread: threading.Thread) -> None:
        if thread.name == "plugbay-mux-main":
            raise RuntimeError("test: can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", failing_start)
    address = "%s:%d" % listener.getsockname()
    before = _mux_folders()
    with pytest.raises(RuntimeError, match="can't start new thread"):
        HostMux("tcp", address, timeout=5)
    peer, _ = listener.accept()
    with peer:
        peer.settimeout(10)
        while peer.recv(4096):  # a go-away frame may come first
            pass
    assert _mux_folders() == before


def test_a_dial_that_outlasts_close_leaves_no_session_behind(listener: socket.socket) -> None:
    address = "%s:%d" % listener.getsockname()
    mux = HostMux("tcp", address, timeout=5)
    peer, _ = listener.accept()
    dial = mux._dial
    dialing = threading.Event()

    def slow_dial() -> Session:
        dialing.set()
        time.sleep(1.0)  # close() runs meanwhile
        return dial()

    mux._dial = slow_dial  # type: ignore[method-assign]
    first = mux.session
    assert first is not None
    first.abort("test: lost")
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            mux.open_stream()
        except Exception as exc:
            errors.append(exc)

    opener = threading.Thread(target=open_one, name="plugbay-test-open", daemon=True)
    late: socket.socket | None = None
    try:
        opener.start()
        assert dialing.wait(10)
        mux.close()
        late, _ = listener.accept()  # the slow dial arrives after close()
        opener.join(10)
        assert not opener.is_alive()
        assert mux.session is first, "a session made after close() was kept"
        late.settimeout(10)
        assert late.recv(1) == b""  # and the connection it made was ended
    finally:
        mux.close()
        peer.close()
        if late is not None:
            late.close()
        opener.join(10)


def test_a_knock_taken_on_a_lost_connection_does_not_route_the_next_connections_stream(tmp_path: Path) -> None:
    # the plugin took a knock, then the host's connection was dropped (say, by the keepalive)
    # before the knocked stream came: the new connection's first stream (opened at once, as a
    # host's main channel does) must reach the main server, never the knock's brokered one
    hits: list[str] = []
    stop = threading.Event()
    listeners = {name: sockets.open_listener("unix", str(tmp_path / name)) for name in ("main", "brokered", "front")}
    accepts = [accepting(listeners[name], stop, lambda conn, name=name: (hits.append(name), conn.close()))
               for name in ("main", "brokered")]
    front = PluginFront(listeners["front"], ("unix", str(tmp_path / "main")))
    front.expect(7, ("unix", str(tmp_path / "brokered")))
    hosts: list[Session] = []
    try:
        for round in range(8):
            before = front.session
            conn = socket.socket(socket.AF_UNIX)
            conn.connect(str(tmp_path / "front"))
            host = Session(conn, client=True, on_stream=lambda s: s.reset(), name="t-host")
            hosts.append(host)
            host.open().write(b"PRI")  # at once: the front's reader may see it before anything else
            assert wait_until(lambda: len(hits) > round, 10), hits
            assert hits == ["main"] * (round + 1), (round, hits)
            assert wait_until(lambda: front.session is not before and front.session is not None
                              and not front.session.closed, 10)
            assert front.accept_knock(7) == ""  # a knock the host will never follow up
            host.abort("test: lost")
            assert wait_until(lambda: front.session is not None and front.session.closed, 10)
    finally:
        front.close()
        for session in hosts:
            session.abort("test over")
        stop.set()
        for thread in accepts:
            thread.join(10)
        for listener in listeners.values():
            listener.close()


def test_a_knocked_stream_is_never_opened_on_a_connection_the_knock_did_not_go_over(
        listener: socket.socket) -> None:
    address = "%s:%d" % listener.getsockname()
    mux = HostMux("tcp", address, timeout=5)
    peers: list[Session] = []
    accept = threading.Thread(target=lambda: peers.append(Session(listener.accept()[0], client=False, on_stream=echo,
                                                                  name="t-peer2")), daemon=True)
    try:
        peers.append(Session(listener.accept()[0], client=False, on_stream=echo, name="t-peer"))
        knocked_on = mux.session
        assert knocked_on is not None
        knocked_on.abort("test: lost after the knock")
        with pytest.raises(BrokerClosedError, match="between the knock and its stream"):
            mux.open_stream(on=knocked_on)
        assert mux.session is knocked_on  # no new connection was made for it
        accept.start()
        replaced = mux.open_stream()  # a main-channel stream dials again
        assert mux.session is not knocked_on
        replaced.close_write()
        with pytest.raises(BrokerClosedError, match="between the knock and its stream"):
            mux.open_stream(on=knocked_on)
    finally:
        mux.close()
        if accept.is_alive():
            accept.join(15)
        for peer in peers:
            peer.close()


def test_closing_while_a_new_connection_is_being_put_in_place_ends_everything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # close() met a session that was in place but not reading yet, and failed half-way
    a, b = socket.socketpair()
    mux = AcceptedSession(("unix", "/nonexistent/plugbay-test.sock"))
    start = Session.start
    in_start = threading.Event()

    def slow_start(self: Session) -> None:
        in_start.set()
        time.sleep(0.3)  # the window close() used to fall into
        start(self)

    monkeypatch.setattr(Session, "start", slow_start)
    runner = threading.Thread(target=lambda: mux.run(a), name="plugbay-test-run", daemon=True)
    try:
        runner.start()
        assert in_start.wait(10)
        mux.close()  # raised RuntimeError (a reader joined before it started), leaving the rest open
        runner.join(10)
        assert mux.closed and mux.ended
        assert mux.session is not None and mux.session.closed
        b.settimeout(10)  # the connection was ended: a GoAway at most, then EOF (a hang guard: 10 s)
        said = b""
        while chunk := b.recv(4096):
            said += chunk
        assert said in (b"", struct.pack(">BBHII", 0, 3, 0, 0, 0)), said
    finally:
        mux.close()
        runner.join(10)
        b.close()


@pytest.mark.parametrize("figures", [(0.0, 10.0), (30.0, -1.0), (float("nan"), 10.0), (30.0,), 30.0,
                                     (True, True), ("30", 10), (30, 10, 5, 1), (30, 10, 0)])
def test_bad_keepalive_figures_fail_before_anything_runs(figures: tuple[float, float]) -> None:
    with pytest.raises(ConfigError, match="mux_keepalive"):
        Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[PY, "-c", "raise SystemExit(9)"],
                            multiplex_broker=True, mux_keepalive=figures))
    with pytest.raises(ConfigError, match="mux_keepalive"):
        RemoteClient(RemoteConfig(target="static:///127.0.0.1:1", handshake=HANDSHAKE, plugins=PLUGINS,
                                  insecure=True, mux_keepalive=figures))
