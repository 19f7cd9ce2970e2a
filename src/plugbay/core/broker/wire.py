"""The broker's end of its StartStream: what the stream side (plugbay.core.broker.stream,
aiostream) calls to attach, feed and detach it, and how messages wait for it.

A base class of GRPCBroker sharing its state (like knock.Multiplexed): one
stream at a time feeds receive() and drains the send queue it attached; what
is sent before a stream exists waits in the outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay.core.broker.knock import MAX_UNCLAIMED, UNCLAIMED_TTL
from plugbay.errors import BrokerClosedError

log = logging.getLogger("plugbay.broker")
# a host-side stream the plugin ended cleanly (no error status): how a newer host's stream replaces it
PLUGIN_ENDED_STREAM = "the plugin ended the stream"

# A unix socket path is at most 107 bytes and a host:port a few hundred, so a longer network or
# address is no address; kept whole (up to MAX_UNCLAIMED of them, each as big as gRPC lets a message
# be: 2 GiB) it would only hold memory. A knock's error text is cut to this too.
MAX_FIELD = 4096


if TYPE_CHECKING:  # types only: three Protocol classes cost ~0.1 ms at every plugin start
    from typing import Protocol

    class Outbox(Protocol):
        """Where this side's ConnInfo messages go for the stream to send (None ends the stream's requests)."""

        def put(self, item: pb.ConnInfo | None) -> None: ...


    class Opening(Protocol):
        """A stream being opened without blocking its opener (aiostream.Opening); wait() until it is attached."""

        def wait(self) -> None: ...

        def hurry(self) -> None: ...


    class Reader(Protocol):
        """What reads the stream: a thread, or a task on the shared asyncio loop; close() joins it."""

        def start(self) -> None: ...

        def join(self, timeout: float | None = None) -> None: ...


class StreamEnd:
    """Attaching, sending on and receiving from the broker stream (GRPCBroker's state)."""

    _cond: threading.Condition
    _closed: bool
    side: str  # "plugin" or "host"
    _opener: Callable[[float], Opening | None] | None
    _opening: Opening | None
    _threads: list[Reader]
    _send_q: Outbox | None
    _lost: str | None
    _outbox: list[pb.ConnInfo]
    _acks: dict[int, tuple[pb.ConnInfo, float]]  # and when each came
    _late_acks: set[int]
    _gave_up: set[int]
    _announced: dict[int, tuple[pb.ConnInfo, float]]
    call: Any
    _on_knock: Callable[[pb.ConnInfo], None]  # knock.Multiplexed's
    _told_oversized = False  # an oversized announcement was logged as a warning (later ones: debug)
    _take_route: Callable[[int], None]  # knock.Multiplexed's
    # what a use after close() raises when its owner closed it and said so: a Client closed or killed by its user
    # makes core.host.callerrors.BrokerClientClosed (also a ClientClosed, as that Client's calls then raise)
    closed_error: Callable[[str], BrokerClosedError] | None = None

    def _closed_error(self, message: str) -> BrokerClosedError:
        return (self.closed_error or BrokerClosedError)(message)

    def open_stream_with(self, opener: Callable[[float], Opening | None]) -> None:
        """Open the stream by calling ``opener`` on first use, not now (host_broker(lazy=True)).

        ``opener(delay)`` either opens it before returning (None) or starts opening it
        (``delay`` seconds later at most) and returns the Opening to wait on."""
        with self._cond:
            self._opener = opener

    def open_stream(self, wait: bool = True, delay: float = 0.0) -> None:
        """Open the host's broker stream now if it opens lazily (a no-op otherwise).

        ``wait=False``: only start opening it where that does not block (the grpc.aio
        stream opens on the shared loop meanwhile; what this side sends waits in the
        outbox), beginning within ``delay`` seconds (math.inf: not by itself) or at hurry_stream(); the next use
        (next_id, accept_and_serve, dial) begins it at once and waits for it."""
        with self._cond:
            opener, self._opener = self._opener, None
            if self._closed:
                return
            opening = self._opening
        if opener is not None:  # until it attaches, what this side sends waits in the outbox
            opening = opener(0.0 if wait else delay)
            with self._cond:
                self._opening = opening
        if wait and opening is not None:
            try:
                opening.wait()
            finally:
                with self._cond:  # reported once; later uses see the broker's lost reason
                    if self._opening is opening:
                        self._opening = None

    def hurry_stream(self) -> None:
        """Begin a delayed opening (open_stream(wait=False, delay=...)) now; a no-op otherwise."""
        with self._cond:
            opening = self._opening
        if opening is not None:
            opening.hurry()

    def _ensure_stream(self) -> None:
        self.open_stream()

    def set_call(self, call: Any) -> bool:
        """Keep the host's StartStream call for close() to cancel; False if the broker closed already."""
        with self._cond:
            if self._closed:
                return False
            self.call = call
            return True

    def start_reader(self, reader: Reader) -> bool:
        """Start the stream's reader unless the broker is closed (close() joins it)."""
        with self._cond:  # close() joins _threads: never let it see an unstarted one
            if self._closed:
                return False
            # a host may call StartStream again and again (each replaces the last): an ended reader
            # thread needs no join, and kept it would make the list grow by one every call
            self._threads = [t for t in self._threads if not (isinstance(t, threading.Thread) and not t.is_alive())]
            self._threads.append(reader)
            reader.start()
            return True

    def attach_stream(self, send_q: Outbox) -> None:
        with self._cond:
            old = self._send_q
            self._send_q = send_q
            self._lost = None
            for msg in self._outbox:
                send_q.put(msg)
            self._outbox.clear()
        if old is not None:
            old.put(None)

    def end_stream(self, reason: str) -> None:
        """The other side is gone (its process exited): end the stream and fail what waits on it, now.

        A connection that outlives its peer (a published port) would otherwise
        keep the stream up; a stream not opened yet is not opened any more.
        """
        with self._cond:
            call, self._opener = self.call, None
            self._lost = reason
            self._cond.notify_all()
        if call is not None:
            call.cancel()

    def mark_lost(self, reason: str) -> None:
        """The stream could not be opened: what this side sends from now on fails with ``reason``."""
        with self._cond:
            self._lost = reason
            self._cond.notify_all()

    def detach_stream(self, send_q: Outbox, reason: str) -> None:
        with self._cond:
            if self._send_q is not send_q:
                return  # a newer stream took over
            self._send_q = None
            self._lost = reason
            self._cond.notify_all()
        log.debug("broker stream ended: %s", reason)

    def _final_loss(self) -> str | None:
        """Why the stream ended if that ends this side's brokering (under the lock), else None.

        The host's stream ending means the plugin is gone: what waits on it fails at once. The
        plugin's does not: a reattached host opens another, and its StartStream (a separate
        connection, opened lazily) may come after its first call names a broker id. Failing then
        answered the new host's call with the earlier host's loss; it waits for the next stream
        instead, for its own timeout at most (a go-plugin host that is gone for good kills its
        plugin; close() still fails what waits at once).
        """
        return None if self.side == "plugin" else self._lost

    def _send(self, msg: pb.ConnInfo) -> None:
        with self._cond:
            if self._closed:
                raise self._closed_error("the broker is closed; no more brokered connections can be made")
            if self._send_q is None:
                # a knock's ack answers the stream the knock came on: no later host asked for it
                if self._lost is not None and (self._final_loss() is not None or msg.knock.ack):
                    raise BrokerClosedError(self._lost_message())
                self._outbox.append(msg)
                return
            self._send_q.put(msg)

    def receive(self, msg: pb.ConnInfo) -> None:
        if msg.HasField("knock") and msg.knock.knock and not msg.knock.ack:
            self._on_knock(msg)
            return
        if msg.HasField("knock"):
            if len(msg.knock.error) > MAX_FIELD:  # kept until its dial takes it: kept small
                msg = pb.ConnInfo(service_id=msg.service_id, knock=pb.ConnInfo.Knock(
                    knock=msg.knock.knock, ack=msg.knock.ack, error=_clipped(msg.knock.error)))
            elif len(msg.network) > MAX_FIELD or len(msg.address) > MAX_FIELD:
                msg = pb.ConnInfo(service_id=msg.service_id, knock=msg.knock)  # an ack has no address
        elif len(msg.network) > MAX_FIELD or len(msg.address) > MAX_FIELD:
            self._drop_oversized(msg)
            return
        now = time.monotonic()
        routed: bool | None = None
        with self._cond:
            if msg.HasField("knock"):
                if msg.service_id in self._late_acks:  # its dial returned already (knock.py)
                    self._late_acks.discard(msg.service_id)
                    return
                if msg.service_id in self._gave_up:  # its dial timed out: nothing waits for it
                    self._gave_up.discard(msg.service_id)
                    routed = not msg.knock.error
                else:
                    self._acks.pop(msg.service_id, None)  # oldest first, as announcements
                    self._acks[msg.service_id] = (msg, now)
                if len(self._acks) > MAX_UNCLAIMED:  # the oldest: no dial waits that long
                    del self._acks[next(iter(self._acks))]
            else:
                # oldest first (a re-announced id moves to the end): drop from the front what has
                # waited past the TTL, and past MAX_UNCLAIMED the oldest; each message does O(1)
                # work however many wait (a full scan per message made a flood quadratic)
                announced = self._announced
                announced.pop(msg.service_id, None)
                while announced:
                    oldest = next(iter(announced))
                    if now - announced[oldest][1] <= UNCLAIMED_TTL and len(announced) < MAX_UNCLAIMED:
                        break
                    del announced[oldest]
                announced[msg.service_id] = (msg, now)
            self._cond.notify_all()
        if routed:
            self._take_route(msg.service_id)

    def _wait_for(self, table: dict[int, Any], id: int, timeout: float, what: str) -> Any:
        raise NotImplementedError  # GRPCBroker's

    def _wait_announcement(self, id: int, timeout: float) -> pb.ConnInfo:
        with self._cond:  # receive() drops old ones only as others come: this one may have waited long
            kept = self._announced.get(id)
            if kept is not None and time.monotonic() - kept[1] > UNCLAIMED_TTL:
                del self._announced[id]
        info, _ = self._wait_for(self._announced, id, timeout, "the connection info")
        assert isinstance(info, pb.ConnInfo)
        return info

    def _drop_oversized(self, msg: pb.ConnInfo) -> None:
        """An announcement whose network or address no socket can have: not kept, so its dial times out."""
        level = logging.DEBUG if self._told_oversized else logging.WARNING
        self._told_oversized = True
        log.log(level, "broker: dropping the announcement of broker id %s: its network (%d characters) or"
                " address (%d characters) is longer than any socket's (%d at most); the other side is"
                " broken or hostile", msg.service_id, len(msg.network), len(msg.address), MAX_FIELD)

    def _lost_message(self) -> str:
        if self._lost == PLUGIN_ENDED_STREAM:
            # A plugin ends a host's stream cleanly (an OK status, so its connection was up) when another
            # host that reattached opens a stream of its own, which replaces this one: not "the plugin is gone"
            return ("the plugin ended this host's broker stream while its connection stayed up: another host that"
                    " reattached to the plugin opened a broker stream of its own, which replaced this one (a plugin"
                    " brokers for one host at a time; the latest wins), unless the plugin is stopping. The plugin"
                    " still answers calls without callbacks; to broker from this host again, reattach a new Client"
                    " here (ClientConfig(reattach=this Client's reattach_config())) once the other host is done"
                    " brokering: its stream then wins")
        return (f"the broker stream to the other side ended ({self._lost}); the plugin or host"
                " is gone or closed its broker. Restart the plugin (new Client) to broker again")


def _clipped(text: str) -> str:
    """``text`` cut to MAX_FIELD characters, saying so."""
    return f"{text[:MAX_FIELD]}... ({len(text) - MAX_FIELD} more characters dropped)"
