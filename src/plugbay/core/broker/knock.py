"""The multiplexed half of GRPCBroker: go-plugin's knock protocol over the broker stream.

A dialer *knocks* (``ConnInfo.knock``) for an id; the side serving that id
acknowledges, and routes the next yamux stream the dialer opens to that id's
server. Knock-and-open is serialised per side (go-plugin's dialMutex), so the
peer routes streams in knock order; on the plugin side un-knocked streams go
to the main gRPC server, on the host side they are refused.

While the knock travels, the dialer already makes what the stream will carry:
the local listener gRPC dials, its accept loop (on the session's reused
workers), and the gRPC channel, which starts connecting at once; its first
bytes wait in the local socket until the acknowledged stream is bridged.
The order on the wire is go-plugin's: knock, ack, then the stream's SYN;
towards a plugbay host that holds early streams (``MuxSession.peer_holds``,
plugbay.core.transport.held) the SYN follows the knock without waiting, and
the dial succeeds at the ack or at the first bytes the host's server sends on
that stream, whichever comes first (it fails only with the ack's error).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc

from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay.errors import BrokerClosedError, BrokerError, BrokerTimeoutError, PlugbayError

if TYPE_CHECKING:
    from plugbay.core.broker.channels import BrokeredChannel, Served
    from plugbay.core.transport.muxbridge import StreamBridge
    from plugbay.core.transport.muxsession import MuxSession
    from plugbay.core.transport.yamux import Session, Stream

log = logging.getLogger("plugbay.broker")
_BRIDGE_JOIN = 10.0
# Knocks for ids not served yet, and acks nobody waits for, are kept at most this many: the
# peer sends them, and a peer is not trusted to stay within what the other side asked for.
MAX_UNCLAIMED = 1024
# An announcement nobody dialed, or a knock's ack no dial took, is dropped this long after it came,
# as go-plugin's timeoutWait drops either (grpc_broker.go). A host attaching to a running plugin
# numbers its broker ids from 1 again: a gone host's unclaimed id kept longer would be dialed for the
# new host's same id. An ack left by a late one (a dial took the ack of an earlier knock) kept longer
# would be a much later dial's, whose stream then reached the peer before its knock did.
UNCLAIMED_TTL = 5.0
# What an eager dial takes for its ack once the peer's first bytes arrive on its stream: a
# holding peer routes a held stream only for a knock it accepts (and resets it otherwise), and
# the server there speaks first (HTTP/2 settings, a TLS server hello), so those bytes come a
# broker-stream hop (two gRPC streaming thread hand-offs each way) before the ack does.
_ROUTED = pb.ConnInfo(knock=pb.ConnInfo.Knock(knock=True, ack=True))


class Multiplexed:
    """GRPCBroker's knock/ack and multiplexed serve/dial (a base class: it shares the broker's state)."""

    _cond: threading.Condition
    _acks: dict[int, tuple[pb.ConnInfo, float]]  # and when each came
    _early_knocks: dict[int, float]
    dial_timeout: float
    _late_acks: set[int]
    _gave_up: set[int]  # ids whose knock's ack we stopped waiting for (see _take_route)
    _bridges: list[StreamBridge]
    _closed: bool

    # provided by GRPCBroker
    def _mux_session(self) -> MuxSession | None:
        raise NotImplementedError

    def _send(self, msg: pb.ConnInfo) -> None:
        raise NotImplementedError

    def _wait_for(self, table: dict[int, Any], id: int, timeout: float, what: str,
                  instead: Callable[[], Any] | None = None) -> Any:
        raise NotImplementedError

    def _private_dir_path(self) -> str:
        raise NotImplementedError

    def _channel_to(self, network: str, address: str, cleanup: list[Callable[[], None]] | None = None,
                    options: Sequence[tuple[str, Any]] = ()) -> BrokeredChannel:
        raise NotImplementedError

    # ------------------------------------------------------------- serving

    def _mux(self) -> MuxSession:
        mux = self._mux_session()
        assert mux is not None
        return mux

    def _serve_multiplexed(self, id: int, served: Served, path: str) -> None:
        mux = self._mux()
        served.cleanup.append(lambda: mux.forget(id))
        # a knock that came before this accept_and_serve is answered now (go-plugin buffers it);
        # under the lock _on_knock checks serves() with, so a knock is either early or seen served
        with self._cond:
            mux.expect(id, ("unix", path))
            knocked = self._early_knocks.pop(id, None)
        # a knock older than a dial waits for its ack is its dialer's no more: acked, it would route
        # the peer's next stream (another id's) here
        if knocked is not None and time.monotonic() - knocked <= self.dial_timeout:
            self._ack(id, knocked_at=knocked)

    def _on_knock(self, msg: pb.ConnInfo) -> None:
        mux = self._mux_session()
        if mux is None:
            self._send(pb.ConnInfo(service_id=msg.service_id, knock=pb.ConnInfo.Knock(
                knock=True, ack=True, error="this side does not multiplex brokered connections")))
            return
        mux.knocked()
        now = time.monotonic()
        with self._cond:
            early = not mux.serves(msg.service_id)
            # the knocks before this one are done too (see MuxSession.knocked): at most one waits
            self._early_knocks.clear()
            if early:
                self._early_knocks[msg.service_id] = now
        if early:
            return
        self._ack(msg.service_id)

    def _ack(self, id: int, knocked_at: float | None = None) -> None:
        from plugbay.core.transport.muxsession import KNOCK_TTL  # loaded with the session already

        error = self._mux().accept_knock(id, max(self.dial_timeout, KNOCK_TTL), knocked_at)
        self._send_quietly(pb.ConnInfo(service_id=id, knock=pb.ConnInfo.Knock(knock=True, ack=True, error=error)))

    def _send_quietly(self, msg: pb.ConnInfo) -> None:
        try:
            self._send(msg)
        except BrokerClosedError:
            pass

    # ------------------------------------------------------------- dialing

    @contextmanager
    def _turn(self, mux: MuxSession, id: int, timeout: float) -> Iterator[float]:
        """Hold dial_lock, waited for within ``timeout``; yields what is left of it for the ack.

        go-plugin's dialMutex.Lock() waits without bound; here each dial keeps its own deadline,
        whatever the dials before it wait for (each up to its own timeout for its knock's ack)."""
        began = time.monotonic()
        if not mux.dial_lock.acquire(timeout=max(timeout, 0.0)):
            raise BrokerTimeoutError(
                f"timed out after {timeout:g}s waiting to dial broker id {id}: multiplexed dials knock one at"
                " a time, and an earlier one still waits for its knock's answer (the other side is busy,"
                " stopped, or does not serve that id yet); dial again, or with a longer timeout")
        try:
            yield max(0.0, timeout - (time.monotonic() - began))
        finally:
            mux.dial_lock.release()

    def _knock_and_open(self, id: int, timeout: float) -> Stream:
        mux = self._mux()
        with self._turn(mux, id, timeout) as left:
            session = mux.session  # the knock's stream must follow it on the same connection
            self._knock(id)
            return self._open_when_acked(id, left, session)

    def _knock(self, id: int) -> None:
        with self._cond:  # an ack for ``id`` from now on is this knock's, even after a dial that gave up
            self._gave_up.discard(id)
            kept = self._acks.get(id)  # one left by an earlier dial (it took a late ack): this knock's
            if kept is not None and time.monotonic() - kept[1] > UNCLAIMED_TTL:  # only while go-plugin's would be
                del self._acks[id]
        self._send(pb.ConnInfo(service_id=id, knock=pb.ConnInfo.Knock(knock=True)))

    def _open_when_acked(self, id: int, timeout: float, session: Session | None) -> Stream:
        self._wait_ack(id, timeout)
        return self._mux().open_stream(on=session)

    def _wait_ack(self, id: int, timeout: float, routed: threading.Event | None = None) -> None:
        def proven() -> tuple[pb.ConnInfo, float] | None:  # under self._cond
            if routed is None or not routed.is_set():
                return None
            self._late_acks.add(id)  # the ack still comes: receive() drops it
            if len(self._late_acks) > MAX_UNCLAIMED:
                self._late_acks.pop()
            return _ROUTED, 0.0

        try:
            ack, _ = self._wait_for(self._acks, id, timeout, "the knock acknowledgement", proven)
        except BrokerTimeoutError:
            with self._cond:  # its ack may still come: the peer would route our next stream to id
                self._gave_up.add(id)
                if len(self._gave_up) > MAX_UNCLAIMED:
                    self._gave_up.pop()
            raise
        assert isinstance(ack, pb.ConnInfo)
        if not ack.knock.ack:
            raise BrokerError(f"handshake failed for multiplexing on id {id}: expected knock and ack,"
                              f" got {ack.knock}; the peer speaks a different broker protocol")
        if ack.knock.error:
            raise BrokerError(f"failed to knock for broker id {id}: {ack.knock.error}; the other side"
                              " must call accept_and_serve with this id first")

    def _take_route(self, id: int) -> None:
        """A knock we gave up on was acked after all: the peer routes our next stream to ``id``.
        Open one now and reset it, so that route takes nothing else (a main-channel reconnect).
        Not while a dial is under way: its knock ended ours at the peer. Not with a peer that
        holds eager streams: it took the stream our dial reset."""
        mux = self._mux_session()
        if mux is None or mux.peer_holds or mux.session is None or not mux.dial_lock.acquire(blocking=False):
            return
        try:
            mux.open_stream(timeout=0.5, on=mux.session).reset()
        except PlugbayError as exc:
            log.debug("broker: taking the route of broker id %s: %s", id, exc)
        finally:
            mux.dial_lock.release()

    def _dial_multiplexed(self, id: int, timeout: float) -> grpc.Channel:
        try:
            return self._dial_knocked(id, timeout)
        except BrokerClosedError as exc:  # a stream or session just lost: their words, shared, name no id
            said = str(exc)
            if f"broker id {id}" not in said:
                reword = getattr(exc, "reword", None)  # a Client's closed broker (str() is its message)
                if callable(reword):
                    reword(f"dial of broker id {id}: {said}")
                elif exc.args and isinstance(exc.args[0], str):
                    exc.args = (f"dial of broker id {id}: {exc.args[0]}", *exc.args[1:])
            raise

    def _dial_knocked(self, id: int, timeout: float) -> grpc.Channel:
        # each connection the channel makes is one knocked stream (gRPC may reconnect)
        mux = self._mux()
        # imported here: the first multiplexed dial loads it
        from plugbay.core.broker.channels import local_socket_error
        from plugbay.core.transport.grpcoptions import BRIDGED_OPTIONS
        from plugbay.core.transport.muxbridge import StreamBridge
        from plugbay.core.transport.tempdirs import private_socket

        try:
            path = private_socket(self._private_dir_path(), "d")
        except OSError as exc:
            raise local_socket_error(f"dial broker id {id}", exc, self._closed) from exc
        with self._turn(mux, id, timeout) as left:
            session = mux.session  # the knock's stream must follow it on the same connection
            self._knock(id)
            # while the knock travels: the local listener, its accept loop and the channel
            try:
                bridge = StreamBridge(mux, path, None, lambda: self._knock_and_open(id, timeout),
                                      name=f"plugbay-mux-dial-{id}")
            except OSError as exc:
                raise local_socket_error(f"dial broker id {id}", exc, self._closed) from exc
            try:
                bridge.start()
            except BaseException:
                bridge.abandon()
                raise
            # on failure it stops the bridge
            channel = self._channel_to("unix", path, [bridge.stop], BRIDGED_OPTIONS)
            first, routed = None, None
            try:
                if mux.peer_holds:
                    first, routed = self._open_eagerly(session)
                    bridge.set_first(first)
                channel.connect_now()
                if first is None:
                    bridge.set_first(self._open_when_acked(id, left, session))
                else:
                    self._wait_ack(id, left, routed)
            except BaseException:
                if first is not None:
                    # before the next knock (dial_lock): the peer must not route this stream to it
                    first.reset()
                channel.close()
                raise
        with self._cond:  # close() joins the bridges' accept loops
            self._bridges[:] = [b for b in self._bridges if not b.finished]
            self._bridges.append(bridge)
        return channel

    def _open_eagerly(self, session: Session | None) -> tuple[Stream, threading.Event]:
        """Open the stream before the ack (the peer holds it for the knock): the gRPC handshake
        travels while the knock does. The ack still decides whether dial() fails; the peer's
        first bytes on the stream (it routed it: it took the knock) tell success as well, sooner
        (the returned event is set then)."""
        stream = self._mux().open_stream(on=session)
        routed = threading.Event()

        def on_data() -> None:  # the session reader: the peer routed the stream, so it took the knock
            with self._cond:
                routed.set()
                self._cond.notify_all()

        stream.on_first_data(on_data)
        return stream, routed

    def _join_bridges(self) -> None:
        with self._cond:
            bridges, self._bridges = self._bridges, []
        for bridge in bridges:  # all woken first: each loop's end is then waited for at once
            bridge.stop()
        for bridge in bridges:
            bridge.join(_BRIDGE_JOIN)
