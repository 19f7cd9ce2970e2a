"""The core of one side of the multiplexed connection: routing the peer's streams, opening streams.

go-plugin's internal/grpcmux. The broker (plugbay.core.broker) owns the knock
protocol and tells a MuxSession, through ``expect``, ``forget``,
``accept_knock``, ``open_stream`` and ``connect_local``, where the peer's next
stream goes; a stream that arrives without a knock goes to ``default_target``
(the plugin side: its main gRPC server) or is refused (the host side). The
sides themselves: plugbay.core.transport.muxplugin and .muxhost.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from plugbay.core.transport import sockets
from plugbay.core.transport.bridges import bridge
from plugbay.core.transport.held import HeldStreams
from plugbay.core.transport.streamcap import Share
from plugbay.core.transport.workers import Workers
from plugbay.core.transport.yamux import Session, Stream, StreamClosed
from plugbay.errors import BrokerClosedError

log = logging.getLogger("plugbay.mux")

SESSION_WAIT = 5.0  # go-plugin waits 5 s for the session to be established
POLL = 0.2  # the accept loops' poll (how soon they see a close)
_ROUTE_DIAL = 2.0  # a routed stream's local target that does not take the connection by then is gone
# Routed streams whose dial may wait on a worker at once; past this the peer's new stream is reset,
# as hashicorp/yamux resets a stream past its AcceptBacklog (256): each waiting dial holds a thread
# for up to _ROUTE_DIAL, and the peer decides how many streams it opens.
ROUTE_WAITING_MAX = 256
# An acked knock whose stream has not come by then is dropped: its dialer (which waits this long
# for the ack, as go-plugin's, from before it was sent) gave up and opens nothing; kept, it would
# take the peer's next stream, knocked for another id.
KNOCK_TTL = 5.0
# An eager dialer's stream follows its knock at once (the same connection, a frame later); one
# held this much after the knock is a later dial's (this dial timed out, its stream gone).
_EAGER_SLACK = 0.1
# Acknowledged knocks in a row whose stream never came. A dialer knocks once per dial and opens
# its stream once answered (or, given up, resets one when the late ack comes), so an honest peer's
# count stays near 0; each such knock costs a reply (its ack) that waits in gRPC's buffers for as
# long as the peer grants no window, without bound: past this, the session is closed.
MAX_UNFOLLOWED_KNOCKS = 256


class MuxSession:
    """One side of the multiplexed connection: routes streams, opens streams."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._session: Session | None = None
        self._closed = False
        self._targets: dict[int, tuple[str, str]] = {}
        self._knocks: deque[tuple[int, float]] = deque()  # (id, until when its stream is awaited)
        self._waiting = 0  # routed dials on workers now (ROUTE_WAITING_MAX)
        self._workers = Workers("plugbay-mux-copy")  # the bridges' copy loops (and StreamBridge's accepts)
        self.default_target: tuple[str, str] | None = None
        # held from knock to stream open, so the peer routes streams in knock order
        self.dial_lock = threading.Lock()
        # this side may open a brokered stream right after its knock: the peer holds a
        # stream that arrives before its knock (plugbay.core.transport.held)
        self.peer_holds = False
        self._held: HeldStreams | None = None  # this side holds such streams (a host)
        self._eager_peer = False  # the peer has opened a stream before its knock was answered
        self._share: Share | None = None  # counts the peer's routed streams (network mode: streamcap)
        self.peer = "the peer"  # who is at the other end, for log lines
        self._unfollowed = 0  # knocks since the peer's last stream (MAX_UNFOLLOWED_KNOCKS)

    # -- routing of streams the peer opens (runs on the session reader thread)

    def _on_stream(self, stream: Stream) -> None:
        with self._lock:
            self._unfollowed = 0
            now = time.monotonic()
            while self._knocks and self._knocks[0][1] < now:
                log.debug("%s: dropping the knock for broker id %s: its stream never came", self.name,
                          self._knocks.popleft()[0])
            sid = self._knocks.popleft()[0] if self._knocks else None
            target = self._targets.get(sid) if sid is not None else self.default_target
            if sid is None and target is None and self._held is not None and self._held.hold(stream):
                self._eager_peer = True
                return  # its knock is on the way (an eager dialer)
        if target is None:
            log.debug("%s: refusing a stream nobody knocked for", self.name)
            stream.reset()
            return
        share = self._share
        if share is None:
            self._route(stream, target, sid)
        elif share.take():
            self._route(stream, target, sid, share.give)
        else:
            if (why := share.first_refusal()) is not None:
                log.warning("%s: resetting the peer's new streams until some end: %s", self.name, why)
            stream.reset()

    def _route(self, stream: Stream, target: tuple[str, str], sid: int | None,
               done: Callable[[], None] = lambda: None) -> None:
        """Bridge ``stream`` to ``target``; ``done`` runs once, when nothing carries it any more."""
        # on the session's reader: a dial that would wait (a listener with a full backlog, a
        # tcp target) waits on a worker, so the session's other streams are never held up
        try:
            conn = sockets.dial_now(*target)
        except (OSError, ValueError) as exc:  # refused, gone, a path no socket can have
            self._unreachable(stream, target, sid, exc)
            done()
            return
        if conn is not None:
            self._bridge(stream, conn, done)
            return
        with self._lock:
            full = self._waiting >= ROUTE_WAITING_MAX
            if not full:
                self._waiting += 1
        if full:
            log.warning("%s: refusing a stream for broker id %s: %d streams already wait for their local"
                        " target to take a connection (%s is not accepting)", self.name, sid,
                        ROUTE_WAITING_MAX, target)
            stream.reset()
            done()
            return
        try:
            self.spawn(lambda: self._route_waiting(stream, target, sid, done))
        except BrokerClosedError:
            self._done_waiting()
            stream.reset()
            done()

    def _done_waiting(self) -> None:
        with self._lock:
            self._waiting -= 1

    def _route_waiting(self, stream: Stream, target: tuple[str, str], sid: int | None,
                       done: Callable[[], None]) -> None:
        """A worker's dial for _route, given up when the session closes or the stream ends meanwhile."""
        def given_up() -> bool:
            return self._closed or stream.done

        try:
            conn = sockets.dial_until(*target, time.monotonic() + _ROUTE_DIAL, given_up)
        except Exception as exc:  # OSError, or a malformed address: the stream ends either way
            self._unreachable(stream, target, sid, exc)
            done()
            return
        finally:
            self._done_waiting()
        if conn is None or given_up():  # closed or reset while the dial waited: nothing to carry
            if conn is not None:
                conn.close()
            stream.reset()
            done()
            return
        self._bridge(stream, conn, done)

    def _unreachable(self, stream: Stream, target: tuple[str, str], sid: int | None, exc: Exception) -> None:
        log.warning("%s: cannot reach %s for broker id %s: %s", self.name, target, sid, exc)
        stream.reset()

    def _bridge(self, stream: Stream, conn: socket.socket, done: Callable[[], None]) -> None:
        try:
            bridge(stream, conn, self._workers, done)
        except RuntimeError:  # closing: bridge reset the stream, closed conn and ran done
            pass

    def knocked(self) -> None:
        """The peer knocked: the knocks before it are done. Its dialer knocks only once its last
        knock's stream is open or given up (go-plugin's dialMutex), and that stream's SYN came
        before this knock on the connection, so a knock still queued was given up."""
        with self._lock:
            if self._knocks:  # answered, and its stream never came (a knock nobody serves costs no reply)
                self._unfollowed += 1
            self._knocks.clear()
            flood = self._unfollowed == MAX_UNFOLLOWED_KNOCKS + 1  # once: the session ends below
            session = self._session
        if flood:
            log.warning("%s: closing the multiplexed session with %s: %d of its knocks in a row were answered"
                        " and it opened no stream (a dialer knocks once per dial), and each answer waits unread",
                        self.name, self.peer, MAX_UNFOLLOWED_KNOCKS + 1)
            if session is not None:
                session.abort(f"{self.peer} knocked {MAX_UNFOLLOWED_KNOCKS + 1} times without opening a stream",
                              join=False)

    def expect(self, id: int, target: tuple[str, str]) -> None:
        with self._lock:
            self._targets[id] = target

    def forget(self, id: int) -> None:
        with self._lock:
            self._targets.pop(id, None)

    def serves(self, id: int) -> bool:
        with self._lock:
            return id in self._targets

    def accept_knock(self, id: int, ttl: float = KNOCK_TTL, knocked_at: float | None = None) -> str:
        """Route the peer's next stream (opened within ``ttl``) to ``id``; an error text if nothing serves it.

        ``knocked_at``: a knock that came then, before ``id`` was served, answered only now.
        """
        with self._lock:
            if self._held is None:
                early = None
            elif knocked_at is not None:
                # an eager dialer opens its stream right after its knock: the stream held then is
                # its own, even one reset since (it gave up); one held later is a later dial's
                early = self._held.pop_oldest(knocked_at + _EAGER_SLACK)
                if early is None and self._eager_peer:
                    return f"the dial of id {id} gave up before it was served; dial again"
                # a peer that opens its stream only once answered (go-plugin's): routed below
            else:
                early = self._held.pop()  # opened before its knock
            target = self._targets.get(id)
            if target is not None and early is None:
                self._knocks.append((id, time.monotonic() + ttl))
        if target is None:
            if early is not None:
                early.reset()  # the dialer resets it too, on hearing the error
            return f"no listener for id {id}"
        if early is not None and not early.done:
            self._route(early, target, id)
        return ""

    # -- opening streams

    @property
    def session(self) -> Session | None:
        """The current yamux session (None before the first)."""
        return self._session

    def _attach(self, session: Session) -> None:
        """Put ``session`` (made with ``start=False``) in place, then start it: its first stream
        is routed only once the old connection's knocks are gone."""
        stale: list[Stream] = []
        with self._ready:
            late = self._closed  # a dial that outlasted close(): nothing would ever end this session
            if not late:
                if self._session is not None:
                    # knocks and held streams were the old connection's: on the new one, the
                    # peer's next stream (a main-channel reconnect) would go to a brokered server
                    self._knocks.clear()
                    if self._held is not None:
                        stale = self._held.drain()
                # started before anyone can see it (close() joins its reader); its first
                # _on_stream waits for this lock, so it routes with the old knocks gone
                session.start()
                self._session = session
                self._ready.notify_all()
        if late:
            session.start()
            session.abort("the multiplexed connection was closed while it was being made")
        for stream in stale:
            stream.reset()

    def open_stream(self, timeout: float = SESSION_WAIT, on: Session | None = None) -> Stream:
        """A new stream to the peer. ``on``: only on that session (a knocked stream: the knock
        went over it), BrokerClosedError if it was replaced or lost meanwhile."""
        if on is not None:
            with self._ready:
                current = self._session
            if current is not on or on.closed:
                raise BrokerClosedError("the multiplexed connection was lost between the knock and its stream"
                                        f" ({on.close_reason or 'replaced'}); dial again")
            try:
                return on.open()
            except StreamClosed as exc:
                raise BrokerClosedError(f"{exc}; dial again") from exc
        with self._ready:
            if self._session is None or self._session.closed:
                self._ready.wait_for(lambda: self._closed or (self._session is not None
                                                              and not self._session.closed), timeout)
            session = self._session
            if self._closed or session is None or session.closed:
                why = session.close_reason if session is not None else "never established"
                raise BrokerClosedError(f"the multiplexed connection to the plugin is not up ({why});"
                                        " the plugin or host is gone, restart the plugin")
        try:
            return session.open()
        except StreamClosed as exc:
            raise BrokerClosedError(f"{exc}; restart the plugin") from exc

    def connect_local(self, conn: socket.socket, stream: Stream) -> None:
        try:
            bridge(stream, conn, self._workers)
        except RuntimeError:
            raise BrokerClosedError(f"{self.name} is closed; restart the plugin") from None

    def spawn(self, task: Callable[[], None]) -> None:
        """Run ``task`` (an accept loop) on the session's reused workers; BrokerClosedError once closed."""
        try:
            self._workers.run(task)
        except RuntimeError:
            raise BrokerClosedError(f"{self.name} is closed; restart the plugin") from None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._ready:
            if self._closed:
                return
            self._closed = True
            session = self._session
            self._ready.notify_all()
        if session is not None:
            session.close()
        self._close_extra()
        self._workers.close()

    def _close_extra(self) -> None:
        pass
