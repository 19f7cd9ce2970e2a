"""serve()'s network front: TLS, then plain gRPC or a yamux session with its own plugin instance.

go-plugin's broker is per client: one host, one plugin instance, one
GRPCBroker. A network plugin is shared, so the front gives every host that
wants brokered connections its own instance inside the shared process:

* a TLSRelay (terminate) does mutual TLS with the provided files (a context
  from plugbay.core.transport.certfiles, rebuilt when they change); an
  ssl.SSLSocket must not be read and written from two threads, so yamux never
  runs on it: the relay (on the shared I/O loop) carries plaintext;
* the first bytes after TLS decide: the HTTP/2 client preface goes to the
  shared gRPC server (plain gRPC, no broker: what network mode always served);
  a yamux frame (version byte 0) goes to this module's private listener, where
  the connection becomes a session (AcceptedSession) with a fresh private
  gRPC server: the plugin's services against a fresh GRPCBroker(multiplex=True)
  on that session, health, controller, Discovery. Un-knocked streams of the
  session reach that server; knocked ones the brokered servers;
* the relay sends a yamux connection's session a token of TOKEN_SIZE bytes
  ahead of the peer's bytes (the private listener cannot see who dialed the
  relay), so the session knows its peer's address: the streams all sessions
  from one address carry share a budget (plugbay.core.transport.streamcap);
* a session past a cap (MAX_SESSIONS in all, ``max_peer_sessions`` from one
  peer address: NetworkServe's) is refused: the host is sent a yamux GoAway
  with a refusal code of plugbay's (plugbay.core.transport.yrefuse), then the
  connection is closed, so the host can say why at once;
* anything else, or nothing within FIRST_BYTES_TIMEOUT, or no TLS within
  TLS_TIMEOUT, is dropped; the relay's steps never wait, so an idle
  connection never holds up another;
* when a session ends, its instance (server, broker, sockets) is stopped, on
  a closer thread (SessionCloser): a session may take seconds to stop (the
  gateway's child gets a grace to exit), and the accept loop that admits
  every host and checks their keepalives must not wait for it; a
  host that went silent (no FIN, no RST: a partition, a sleeping laptop) is
  found by the keepalive (plugbay.core.transport.keepalive), so its instance
  does not stay, holding one of MAX_SESSIONS, for good.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from plugbay.core.plugin.closer import SessionCloser
# what the front keeps per host session, in a module of their own (the ~400-line rule)
from plugbay.core.plugin.frontsession import (FrontSession as FrontSession, Instance as Instance,
                                              InstanceFactory as InstanceFactory, InstanceSession as InstanceSession,
                                              SessionFactory as SessionFactory, instance_sessions as instance_sessions)
from plugbay.core.plugin.netconfig import DEFAULT_MAX_PEER_SESSIONS, MAX_SESSIONS
from plugbay.core.plugin.peershare import front_peer
from plugbay.core.transport.certfiles import CertFiles
from plugbay.core.transport.keepalive import DEFAULT, Keepalive
from plugbay.core.transport.relay import TLSRelay
from plugbay.core.transport.relayconn import CHUNK, RelayConn
from plugbay.core.transport.yrefuse import REFUSED_FULL, REFUSED_PEER, refusal_frame
from plugbay.core.transport.sockets import (
    ACCEPT_PAUSE,
    ACCEPT_POLL,
    ACCEPT_SKIPS,
    AcceptShortage,
    close_listener,
    dial_now,
    open_listener,
)

log = logging.getLogger("plugbay.server")

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TLS_TIMEOUT = 5.0  # a connection that does not finish TLS within this is dropped
FIRST_BYTES_TIMEOUT = 5.0  # ... or says nothing after it
REFUSAL_LOG_EVERY = 60.0  # a peer's refused sessions are logged at most once this often
TOKEN_SIZE = 16  # what the relay sends ahead of a session's bytes: which routed connection (so, peer) it is
_DRAIN_READS = 4  # of CHUNK bytes each: what a refused session's host sent is read this far, at most
TOKEN_TIMEOUT = 2.0  # the relay sends it as its dial connects; a connection without one is closed
_ACCEPTOR_JOIN = 5.0  # close() wakes the accept loop: this bounds only a loop stuck elsewhere


def route(first: bytes, grpc_target: tuple[str, str], mux_target: tuple[str, str]) -> tuple[str, str] | None:
    """Where a connection goes, by the first plaintext bytes: gRPC, a yamux session, or nowhere."""
    n = min(len(first), len(HTTP2_PREFACE))
    if n and first[:n] == HTTP2_PREFACE[:n]:
        return grpc_target
    if first[:1] == b"\x00":
        return mux_target
    return None


class NetworkFront:
    """Owns the public listener (through the relay), the session listener and every session's instance."""

    def __init__(self, listener: socket.socket, certs: CertFiles, grpc_target: tuple[str, str],
                 make_session: SessionFactory, private_dir: str,
                 keepalive: tuple[float, ...] = DEFAULT,
                 max_peer_sessions: int = DEFAULT_MAX_PEER_SESSIONS) -> None:
        self._keepalive_figures = keepalive  # checked by NetworkServe, which serve() reads them from
        self._max_peer = max_peer_sessions  # likewise
        self._dir = private_dir
        self._make = make_session
        self._grpc_target = grpc_target
        path = os.path.join(private_dir, "mux.sock")
        self._listener = open_listener("unix", path)
        os.chmod(path, 0o600)
        self._listener.settimeout(ACCEPT_POLL)
        self._mux_target = ("unix", path)
        self._lock = threading.Lock()
        self._sessions: list[FrontSession] = []
        self._keepalives: dict[FrontSession, Keepalive] = {}  # one per session, ticked by the accept loop
        self._count = 0
        self._per_peer: dict[str, int] = {}  # sessions routed per peer address, until their connection closes
        self._tokens: dict[bytes, str] = {}  # routed connections' tokens -> peer, until accepted or closed
        self._logged: dict[str | None, float] = {}  # when a peer's refusal (None: at MAX_SESSIONS) was last logged
        self._closed = threading.Event()
        self._closer = SessionCloser()
        self._acceptor = threading.Thread(target=self._accept, name="plugbay-netmux-accept", daemon=True)
        self._acceptor.start()
        try:
            self._relay = TLSRelay(listener, self._route, certs.ssl_context, "terminate",
                                   handshake_timeout=TLS_TIMEOUT, first_bytes_timeout=FIRST_BYTES_TIMEOUT)
        except BaseException:
            self.close()
            raise

    def _route(self, first: bytes, conn: RelayConn) -> tuple[str, str] | None:
        # on the I/O loop: a session's TLS connection lives as long as the session, so it is
        # counted against its peer from here until that connection closes
        target = route(first, self._grpc_target, self._mux_target)
        if target != self._mux_target:
            if target is not None and conn.peer and target[0] == "unix":  # the server's gate sees this peer
                conn.bind_name, forget = front_peer(conn.peer)
                conn.on_close(forget)
            return target
        peer = conn.peer
        token = b""
        with self._lock:
            held = self._per_peer.get(peer, 0)
            if held < self._max_peer:
                self._per_peer[peer] = held + 1
                while not token or token in self._tokens:
                    token = os.urandom(TOKEN_SIZE)
                self._tokens[token] = peer
        if held >= self._max_peer:
            self._refused(peer)
            _tell_refused(conn, REFUSED_PEER)
            return None
        conn.preamble = token
        conn.on_close(lambda: self._peer_gone(peer, token))
        return target

    def _peer_gone(self, peer: str, token: bytes) -> None:
        with self._lock:
            self._tokens.pop(token, None)  # never accepted
            held = self._per_peer.pop(peer) - 1
            if held:
                self._per_peer[peer] = held

    def _log_due(self, key: str | None) -> bool:
        """(The lock held.) Whether a refusal of ``key`` (a peer address; None: the process's cap) is to
        be logged: at most once per REFUSAL_LOG_EVERY."""
        now = time.monotonic()
        for old in [k for k, at in self._logged.items() if now - at >= REFUSAL_LOG_EVERY]:
            del self._logged[old]  # bounded by the peers refused within the interval
        if key in self._logged:
            return False
        self._logged[key] = now
        return True

    def _refused(self, peer: str) -> None:
        with self._lock:
            due = self._log_due(peer)
        if due:
            log.warning("refusing brokering sessions from %s: it has %d open, the most one peer address may"
                        " (NetworkServe(max_peer_sessions=), PLUGBAY_NETWORK_MAX_PEER_SESSIONS, the gateway's"
                        " --max-peer-sessions; logged once per %gs)", peer or "a local peer", self._max_peer,
                        REFUSAL_LOG_EVERY)

    @property
    def sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _accept(self) -> None:
        # the one thread that admits brokering hosts and reaps their ended sessions: nothing but
        # close() ends it (a moment without descriptors ended it for good, and sessions stayed)
        shortage = AcceptShortage("the brokering front's session listener", log)
        try:
            while not self._closed.is_set():
                self._reap()
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError as exc:
                    if shortage.refused(exc):
                        self._closed.wait(ACCEPT_PAUSE)
                    elif exc.errno not in ACCEPT_SKIPS:
                        if not self._closed.is_set():
                            log.error("the brokering front stopped accepting host sessions: %s", exc)
                        return
                    continue
                shortage.accepted()
                if self._closed.is_set():  # close()'s wake-up call, or a host that came as it closed
                    conn.close()
                    break
                try:
                    self._start_session(conn)
                except Exception:
                    log.exception("could not start a plugin instance for a new host session")
                    conn.close()
        finally:
            close_listener(self._listener)

    def _peer_of(self, conn: socket.socket) -> str | None:
        """The peer address whose routed connection this is, by the token the relay sent first."""
        token = b""
        conn.settimeout(TOKEN_TIMEOUT)
        try:
            while len(token) < TOKEN_SIZE:
                got = conn.recv(TOKEN_SIZE - len(token))  # never past it: the rest is the session's
                if not got:
                    break
                token += got
        except OSError:
            pass
        with self._lock:
            return self._tokens.pop(token, None) if len(token) == TOKEN_SIZE else None

    def _start_session(self, conn: socket.socket) -> None:
        peer = self._peer_of(conn)
        if peer is None:
            log.debug("closing a connection to the session listener that no routed peer made")
            conn.close()
            return
        being_closed = self._closer.pending  # sessions still being closed hold what they free
        with self._lock:
            if len(self._sessions) + being_closed >= MAX_SESSIONS:
                if self._log_due(None):
                    log.warning("refusing brokering hosts: %d sessions are open already (%d of them being"
                                " closed), the most this process may (MAX_SESSIONS; logged once per %gs)",
                                MAX_SESSIONS, being_closed, REFUSAL_LOG_EVERY)
                full = True
            else:
                full = False
                self._count += 1
                number = self._count
        if full:
            try:  # the relay carries it to the host ahead of the close
                conn.sendall(refusal_frame(REFUSED_FULL))
            except OSError:
                pass
            _drained(conn)
            conn.close()
            return
        path = os.path.join(self._dir, f"s{number}.sock")
        session = self._make(conn, path, peer)
        with self._lock:
            closing = self._closed.is_set()  # close() reaped everything while this one was made
            if not closing:
                self._sessions.append(session)
                self._keepalives[session] = Keepalive.of(self._keepalive_figures, "NetworkServe keepalive")
        if closing:
            session.close()
            return
        log.debug("host session %d started (%d open)", number, self.sessions)

    def _reap(self, everything: bool = False) -> None:
        """Take the ended sessions (every one: ``everything``) off the list; the closer closes them."""
        if not everything:
            now = time.monotonic()
            with self._lock:
                watched = list(self._keepalives.items())
            for session, keepalive in watched:  # a silent host's session is aborted: ended below
                try:
                    keepalive.tick(session.host_session(), now)
                    session.tick(now)
                except Exception:  # never the end of this loop: it admits every brokering host
                    log.exception("the keepalive check of a host session failed")
        with self._lock:
            done = [s for s in self._sessions if everything or s.ended]
            self._sessions = [s for s in self._sessions if s not in done]
            for session in done:
                self._keepalives.pop(session, None)
        if done:
            self._closer.close_later(done)

    def close(self) -> None:
        """Stop accepting, end every session and its instance; the listeners' files go too."""
        if self._closed.is_set():
            return
        relay = getattr(self, "_relay", None)
        if relay is not None:
            relay.close()  # no new connections, and the running ones are cut
        self._closed.set()
        self._wake()
        self._acceptor.join(timeout=_ACCEPTOR_JOIN)
        self._reap(everything=True)
        self._closer.drain()  # the ones ended before too; in parallel, all waited for

    def _wake(self) -> None:
        # A connection of its own ends the accept loop's wait now, not at its next ACCEPT_POLL (a
        # plugin's exit waited it out, on top of its host's grace). Not a shutdown() of the listener:
        # the loop closes it (a shutdown racing that close could hit a reused fd number), and a
        # shut-down unix listener fails accept() with EAGAIN, which a socket with a timeout polls again.
        try:
            waker = dial_now(*self._mux_target)
        except OSError:  # the loop ended already, or another process removed the socket file from our private
            return  # folder: the loop ends at its next ACCEPT_POLL (0.2 s), not worth a wake-up pipe per front
        if waker is not None:  # None: a full backlog, whose connections wake the loop as well
            waker.close()


def _tell_refused(conn: RelayConn, code: int) -> None:
    """(On the I/O loop.) Send the refused host the GoAway saying why, ahead of the close: a fresh TLS
    connection's send buffer takes 12 bytes at once, so this never waits (if it would, the host is
    just not told). What the host sent by now is read first (a little, bounded): a close with
    unread bytes is a reset, which could overtake the GoAway."""
    tls = conn.tls
    if tls is None:
        return
    _drained(tls)
    try:
        tls.send(refusal_frame(code))
    except OSError:  # ssl.SSLError is one
        pass


def _drained(conn: socket.socket) -> None:
    """What a refused session's host sent (through TLS, or passed on by the relay), read (bounded, without
    waiting) so the close is no reset."""
    try:
        conn.setblocking(False)
        for _ in range(_DRAIN_READS):
            if not conn.recv(CHUNK):
                break
    except OSError:  # BlockingIOError, SSLWantReadError: nothing more now
        pass
