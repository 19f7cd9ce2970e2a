"""Multiplexed brokering at the gRPC level: one connection carries the main channel and every broker stream.

The "plugin" is a real grpc.Server on a private unix socket behind a
PluginFront that owns the announced listener (unix or TCP 127.0.0.1); the
"host" is a HostMux with the main channel on its local socket. Each test
checks that the plugin's listener saw exactly one connection, however many
brokered connections were made.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from plugbay._proto.grpc.health.v1 import health_pb2
from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay.core.transport import yamux
from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.stream import host_broker, plugin_broker
from plugbay.errors import BrokerClosedError, BrokerError, BrokerTimeoutError
from plugbay.core.transport.held import HeldStreams
from plugbay.core.transport.mux import HostMux, PluginFront
from plugbay.core.protocol.tls import CertKey, generate_cert
from plugbay.core.transport import muxsession
from plugbay.core.transport.muxsession import MuxSession
from tests.race_util import PauseAt
from plugbay.core.transport.sockets import open_listener
from tests.test_broker import check, register

SERVING = health_pb2.HealthCheckResponse.SERVING


class CountingListener:
    """Wraps a listening socket and counts accepted connections."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.accepted = 0

    def accept(self):  # type: ignore[no-untyped-def]
        conn, addr = self.sock.accept()
        self.accepted += 1
        return conn, addr

    def __getattr__(self, name):  # type: ignore[no-untyped-def]
        return getattr(self.sock, name)


@dataclass
class MuxPair:
    plugin: GRPCBroker
    host: GRPCBroker
    front: PluginFront
    hostmux: HostMux
    server: grpc.Server
    channel: grpc.Channel
    executor: ThreadPoolExecutor
    counter: CountingListener
    dir: str


def make_mux_pair(network: str, host_cert: CertKey | None = None,
                  plugin_cert: CertKey | None = None) -> MuxPair:
    d = tempfile.mkdtemp(prefix="bkm", dir="/tmp")
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="plugbay-test-srv")
    server = grpc.server(executor)
    private = os.path.join(d, "grpc.sock")
    if plugin_cert is not None and host_cert is not None:
        creds = grpc.ssl_server_credentials([(plugin_cert.key_pem, plugin_cert.cert_pem)],
                                            root_certificates=host_cert.cert_pem, require_client_auth=True)
        assert server.add_secure_port(f"unix:{private}", creds)
    else:
        assert server.add_insecure_port(f"unix:{private}")
    sock = open_listener("unix", os.path.join(d, "plugin.sock")) if network == "unix" \
        else open_listener("tcp", "127.0.0.1:0")
    counter = CountingListener(sock)
    front = PluginFront(counter, ("unix", private))  # type: ignore[arg-type]
    pt = BrokerTransport(tls=plugin_cert, peer_cert_pem=host_cert.cert_pem if host_cert else None,
                         socket_dir=d, multiplex=True, mux=front)
    plugin = plugin_broker(server, pt)
    server.start()
    hostmux = HostMux(*front.address)
    target = f"unix:{hostmux.local_address[1]}"
    if host_cert is not None and plugin_cert is not None:
        ccreds = grpc.ssl_channel_credentials(root_certificates=plugin_cert.cert_pem,
                                              private_key=host_cert.key_pem,
                                              certificate_chain=host_cert.cert_pem)
        channel = grpc.secure_channel(target, ccreds, options=[("grpc.ssl_target_name_override", "localhost")])
    else:
        channel = grpc.insecure_channel(target)
    ht = BrokerTransport(tls=host_cert, peer_cert_pem=plugin_cert.cert_pem if plugin_cert else None,
                         socket_dir=d, multiplex=True, mux=hostmux)
    _connected(channel)
    host = host_broker(channel, ht)
    return MuxPair(plugin, host, front, hostmux, server, channel, executor, counter, d)


def _connected(channel: grpc.Channel) -> None:
    """Wait for the main channel's connection, as a Client's health check does before any brokered dial
    (docs/broker.md): a dial holds dial_lock, which that first connection through the host's session
    takes too, and the dial's knock travels on it, so a dial made before it is up waits out its timeout."""
    from plugbay._proto.grpc.health.v1 import health_pb2_grpc

    try:  # the plugin's main server here serves no health: any answer means the connection is up
        health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[no-untyped-call]
            health_pb2.HealthCheckRequest(service=""), timeout=10, wait_for_ready=True)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            raise


def close_mux_pair(p: MuxPair) -> None:
    p.host.close()
    p.plugin.close()
    p.channel.close()
    p.hostmux.close()
    p.server.stop(grace=None).wait(10)
    p.front.close()
    p.executor.shutdown(wait=True)
    for n in os.listdir(p.dir):
        os.unlink(os.path.join(p.dir, n))
    os.rmdir(p.dir)


@pytest.fixture(params=["unix", "tcp", "unix-eager"])
def mpair(request: pytest.FixtureRequest) -> Iterator[MuxPair]:
    # eager: the plugin opens its brokered streams right after knocking (a plugbay host holds
    # them until their knock arrives, plugbay.core.transport.held)
    network, _, eager = request.param.partition("-")
    p = make_mux_pair(network)
    p.front.peer_holds = bool(eager)
    yield p
    close_mux_pair(p)


def test_both_directions_over_one_connection(mpair: MuxPair) -> None:
    a = mpair.host.next_id()
    mpair.host.accept_and_serve(a, register("host-side"))
    assert check(mpair.plugin.dial(a), "host-side") == SERVING
    b = mpair.plugin.next_id()
    mpair.plugin.accept_and_serve(b, register("plugin-side"))
    assert check(mpair.host.dial(b), "plugin-side") == SERVING
    assert mpair.counter.accepted == 1
    # nothing announced a per-connection socket
    assert [n for n in os.listdir(mpair.dir) if n.startswith("plugin") and n != "plugin.sock"] == []


def test_many_streams_route_to_their_servers(mpair: MuxPair) -> None:
    ids = [mpair.host.next_id() for _ in range(4)]
    for i in ids:
        mpair.host.accept_and_serve(i, register(f"h{i}"))
    chans = {i: mpair.plugin.dial(i) for i in ids}
    for i in reversed(ids):
        assert check(chans[i], f"h{i}") == SERVING
    # concurrent dials from several threads still land on the right server
    errors: list[str] = []

    def worker(i: int) -> None:
        try:
            assert check(mpair.plugin.dial(i), f"h{i}") == SERVING
        except Exception as exc:
            errors.append(f"{i}: {exc!r}")

    ts = [threading.Thread(target=worker, args=(i,), name="plugbay-test-mux") for i in ids]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert errors == []
    assert mpair.counter.accepted == 1


@pytest.mark.parametrize("before", [0.0, 0.5], ids=["racing", "long-before"])
def test_knock_before_accept_is_answered(mpair: MuxPair, before: float) -> None:
    # long-before: the knock surely arrives first; a peer that opens its stream only once answered
    # (go-plugin's dialer, the non-eager pairs here) must get its stream routed, not "gave up"
    sid = mpair.host.next_id()
    out: list[object] = []

    def dialer() -> None:
        try:
            out.append(check(mpair.plugin.dial(sid, timeout=10), "late"))
        except Exception as exc:
            out.append(exc)

    t = threading.Thread(target=dialer, name="plugbay-test-dialer")
    t.start()
    time.sleep(before)
    mpair.host.accept_and_serve(sid, register("late"))
    t.join(20)
    assert out == [SERVING]


def test_a_knock_seen_unserved_while_accept_and_serve_runs_is_still_answered(mpair: MuxPair) -> None:
    """The knock's serves() and accept_and_serve's early check must not interleave (an unanswered knock)."""
    sid = mpair.host.next_id()
    acks: list[int] = []
    ack = mpair.host._ack
    mpair.host._ack = lambda id, knocked_at=None: (acks.append(id), ack(id, knocked_at))  # type: ignore[method-assign]
    held = PauseAt(MuxSession.serves.__code__, "return")

    def knock() -> None:
        held.install()
        mpair.host._on_knock(pb.ConnInfo(service_id=sid, knock=pb.ConnInfo.Knock(knock=True)))

    knocker = threading.Thread(target=knock, name="plugbay-test-knock")
    knocker.start()
    held.wait_reached()  # the knock found the id not served yet
    server = threading.Thread(target=mpair.host.accept_and_serve, args=(sid, register("late")),
                              name="plugbay-test-serve")
    server.start()
    server.join(0.5)  # done unless it waits for the knock to decide
    held.release()
    knocker.join(10)
    server.join(10)
    assert acks == [sid] and sid not in mpair.host._early_knocks


def test_a_main_channel_connection_never_opens_between_a_knock_and_its_stream() -> None:
    # the plugin routes its next stream by the knock it was sent; a main-channel connection the
    # host opens meanwhile (gRPC reconnecting) must wait, or it reaches the brokered server and
    # the dial's stream the main one
    p = make_mux_pair("unix")
    dialed: list[grpc.Channel] = []
    failed: list[BaseException] = []
    statuses: list[grpc.StatusCode] = []
    # a connection of its own (grpcio would share the main channel's otherwise)
    second = grpc.insecure_channel(f"unix:{p.hostmux.local_address[1]}",
                                   options=[("grpc.use_local_subchannel_pool", 1)])
    pause = PauseAt(GRPCBroker._open_when_acked.__code__, "call")
    try:
        sid = p.plugin.next_id()
        p.plugin.accept_and_serve(sid, register("brokered"))

        def dial() -> None:
            pause.install()
            try:
                dialed.append(p.host.dial(sid))
            except BaseException as exc:  # noqa: BLE001 - checked on the test's thread
                failed.append(exc)

        def main_call() -> None:  # the main server serves no health: UNIMPLEMENTED is its answer
            try:
                check(second, "brokered")
                statuses.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                statuses.append(exc.code())

        dialer = threading.Thread(target=dial, name="plugbay-test-dial")
        dialer.start()
        pause.wait_reached()  # knock sent, dial_lock held, the stream not opened yet
        for _ in range(250):
            if p.front._knocks:
                break
            threading.Event().wait(0.02)
        assert [k for k, _ in p.front._knocks] == [sid], "the plugin never took the knock"
        caller = threading.Thread(target=main_call, name="plugbay-test-main")
        caller.start()
        # the host accepted the connection and its worker waits for the dial to finish (or, without
        # the lock, its stream took the knock at once)
        for _ in range(500):
            if not p.front._knocks or _blocked_in(p.hostmux, "_connect"):
                break
            threading.Event().wait(0.01)
        assert [k for k, _ in p.front._knocks] == [sid], "a main-channel stream took the brokered dial's knock"
        assert _blocked_in(p.hostmux, "_connect"), "the main-channel connection never waited for the dial"
        pause.release()
        dialer.join(10)
        caller.join(15)
        assert not failed and len(dialed) == 1
        assert check(dialed[0], "brokered") == SERVING
        assert statuses == [grpc.StatusCode.UNIMPLEMENTED], "the main-channel connection reached the brokered server"
    finally:
        pause.release()
        second.close()
        close_mux_pair(p)


def test_unknown_id_times_out(mpair: MuxPair) -> None:
    with pytest.raises(BrokerTimeoutError, match="knock acknowledgement of broker id 31337"):
        mpair.plugin.dial(31337, timeout=0.5)


def test_knock_error_is_reported(mpair: MuxPair) -> None:
    # the peer's ack carries an error (as go-plugin's client muxer sends "no listener for id N")
    mpair.plugin.receive(pb.ConnInfo(service_id=9, knock=pb.ConnInfo.Knock(
        knock=True, ack=True, error="no listener for id 9")))
    with pytest.raises(BrokerError, match="failed to knock for broker id 9: no listener for id 9"):
        mpair.plugin._knock_and_open(9, 1.0)


def test_large_and_streamed_payloads_cross_the_window(mpair: MuxPair) -> None:
    # health Check carries little; use the broker's own message size limit with a big service name
    sid = mpair.host.next_id()
    name = "x" * (3 * yamux.WINDOW + 17)
    mpair.host.accept_and_serve(sid, register(name))
    assert check(mpair.plugin.dial(sid), name) == SERVING


def test_plugin_gone_fails_dial(mpair: MuxPair) -> None:
    sid = mpair.plugin.next_id()
    mpair.plugin.accept_and_serve(sid, register("p"))
    assert check(mpair.host.dial(sid), "p") == SERVING
    mpair.front.close()  # the plugin's end of the one connection goes away
    with pytest.raises(BrokerClosedError, match="(?s)the plugin or host is gone.*Restart the plugin"):
        mpair.host.dial(mpair.plugin.next_id(), timeout=10)


@pytest.mark.parametrize("curve", ["p256", "p521"])
def test_automtls_multiplexed(curve: str) -> None:
    make = (lambda: generate_cert(ec.SECP521R1())) if curve == "p521" else generate_cert
    host_cert, plugin_cert = generate_cert(), generate_cert()
    broker_host, broker_plugin = make(), make()
    p = make_mux_pair("tcp", host_cert, plugin_cert)
    try:
        # main connection uses grpcio TLS; brokered ones use the broker transports' certs
        p.host.transport = BrokerTransport(tls=broker_host, peer_cert_pem=broker_plugin.cert_pem,
                                           multiplex=True, mux=p.hostmux)
        p.plugin.transport = BrokerTransport(tls=broker_plugin, peer_cert_pem=broker_host.cert_pem,
                                             multiplex=True, mux=p.front)
        a = p.host.next_id()
        p.host.accept_and_serve(a, register("h"))
        assert check(p.plugin.dial(a), "h") == SERVING
        b = p.plugin.next_id()
        p.plugin.accept_and_serve(b, register("p"))
        assert check(p.host.dial(b), "p") == SERVING
        assert p.counter.accepted == 1
    finally:
        close_mux_pair(p)


def test_yamux_refuses_unknocked_stream_on_host(mpair: MuxPair) -> None:
    # the plugin opens a stream without knocking: the host holds it for a knock a while
    # (here 0.3 s), then resets it
    mpair.hostmux._held = HeldStreams(hold=0.3)
    stream = mpair.front.open_stream()
    assert stream.read() == b""
    assert stream.done


class Stalled:
    """A unix listener whose backlog our own connections fill: a further connect must wait."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, "stuck.sock")
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.path)
        self.listener.listen(0)
        self.listener.settimeout(10)
        self.fillers: list[socket.socket] = []
        for _ in range(64):
            filler = socket.socket(socket.AF_UNIX)
            filler.setblocking(False)
            self.fillers.append(filler)
            try:
                filler.connect(self.path)
            except BlockingIOError:
                return
        pytest.fail("the backlog never filled")

    def close(self) -> None:
        for sock in (self.listener, *self.fillers):
            sock.close()


@pytest.fixture
def stalled_pair(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[MuxPair, Stalled]]:
    monkeypatch.setattr(muxsession, "_ROUTE_DIAL", 30.0)  # however loaded the machine, the dial still waits
    pair = make_mux_pair("unix")
    d = tempfile.mkdtemp(prefix="bkslow", dir="/tmp")
    stalled: Stalled | None = None
    try:
        stalled = Stalled(d)
        yield pair, stalled
    finally:
        if stalled is not None:
            stalled.close()
        close_mux_pair(pair)
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)


def _route_to_stalled(pair: MuxPair, stalled: Stalled) -> yamux.Stream:
    """A knocked stream from the plugin, with a byte on it, whose host-side dial waits on a worker."""
    pair.hostmux.expect(1, ("unix", stalled.path))
    assert pair.hostmux.accept_knock(1) == ""
    stream = pair.front.open_stream()
    stream.write(b"x")
    assert wait_for_workers(pair.hostmux), "the routed dial never went to a worker"
    return stream


def test_close_does_not_wait_for_a_routed_stream_whose_target_is_stalled(
        stalled_pair: tuple[MuxPair, Stalled]) -> None:
    pair, stalled = stalled_pair
    waiting = _route_to_stalled(pair, stalled)
    started = time.monotonic()
    pair.hostmux.close()
    assert time.monotonic() - started < 3, "close() waited for the stalled dial"  # its workers are joined for 5 s
    assert waiting.read() == b"" and waiting.done


def test_a_stream_reset_while_its_dial_waits_is_never_connected(stalled_pair: tuple[MuxPair, Stalled]) -> None:
    pair, stalled = stalled_pair
    gone = _route_to_stalled(pair, stalled)
    session = pair.hostmux.session
    assert session is not None
    host_side = session._streams[gone.id]
    gone.reset()
    for _ in range(250):
        if host_side.done:
            break
        threading.Event().wait(0.02)
    assert host_side.done, "the host never saw the reset"
    for filler in stalled.fillers:
        filler.close()  # room in the backlog: the dial could go through now
    stalled.listener.settimeout(0.5)
    arrived = []
    for _ in range(len(stalled.fillers) + 2):
        try:
            conn, _ = stalled.listener.accept()
        except socket.timeout:
            break
        with conn:
            conn.settimeout(2)
            try:
                arrived.append(conn.recv(1))
            except (ConnectionResetError, socket.timeout):
                pass
    assert b"x" not in arrived, "a reset stream was connected to its target"


def test_routed_streams_waiting_on_a_stalled_target_are_capped(
        stalled_pair: tuple[MuxPair, Stalled], monkeypatch: pytest.MonkeyPatch) -> None:
    # each waiting dial holds a worker thread: past the cap the peer's new stream is reset at once
    # (as yamux's accept backlog), and a stream that stops waiting frees its place
    monkeypatch.setattr(muxsession, "ROUTE_WAITING_MAX", 2)
    pair, stalled = stalled_pair
    first, second = _route_to_stalled(pair, stalled), _route_to_stalled(pair, stalled)
    assert _waiting_dials(pair.hostmux, 2), "two routed dials should wait on workers"
    refused = _knocked_stream(pair, stalled)
    for _ in range(250):  # the reset comes at once; the dial it would get waits 30 s (stalled_pair)
        if refused.done:
            break
        threading.Event().wait(0.02)
    assert refused.done and refused.read() == b"", "a stream past the cap was not reset"
    assert not first.done and not second.done, "the cap ended streams that were already waiting"
    assert _waiting_dials(pair.hostmux, 2)
    first.reset()  # its dial gives up: the place is free again
    assert _waiting_dials(pair.hostmux, 1)
    third = _knocked_stream(pair, stalled)
    assert _waiting_dials(pair.hostmux, 2), "a freed place was not given to the next stream"
    assert not third.done


def _knocked_stream(pair: MuxPair, stalled: Stalled) -> yamux.Stream:
    # no byte written: the host routes (or refuses) a stream when it opens, and a refused
    # stream's reset may beat a write, which would then raise StreamClosed
    pair.hostmux.expect(1, ("unix", stalled.path))
    assert pair.hostmux.accept_knock(1) == ""
    return pair.front.open_stream()


def _blocked_in(mux: MuxSession, name: str) -> bool:
    """Whether a worker of ``mux`` waits in function ``name`` itself now (its innermost Python frame:
    blocked on a lock that function takes, not in something it called)."""
    frames = sys._current_frames()
    return any((frame := frames.get(thread.ident or -1)) is not None and frame.f_code.co_name == name
               for thread in list(mux._workers._threads))


def _waiting_dials(mux: MuxSession, count: int) -> bool:
    """True once exactly ``count`` workers of ``mux`` wait in a routed stream's dial (bounded: 5 s)."""
    for _ in range(250):
        frames = sys._current_frames()
        waiting = 0
        for thread in list(mux._workers._threads):
            frame = frames.get(thread.ident or -1)
            while frame is not None and frame.f_code.co_name != "_route_waiting":
                frame = frame.f_back
            waiting += frame is not None
        if waiting == count:
            return True
        threading.Event().wait(0.02)
    return False


def wait_for_workers(mux: MuxSession) -> bool:
    """True once a worker of ``mux`` waits in a routed stream's dial (bounded: 5 s)."""
    for _ in range(250):
        frames = sys._current_frames()
        for thread in list(mux._workers._threads):
            frame = frames.get(thread.ident or -1)
            while frame is not None:
                if frame.f_code.co_name == "_route_waiting":
                    return True
                frame = frame.f_back
        threading.Event().wait(0.02)
    return False


def test_a_routed_stream_whose_target_is_slow_to_accept_holds_up_no_other_stream(
        stalled_pair: tuple[MuxPair, Stalled]) -> None:
    # the host routes a knocked stream to its brokered server: a server whose backlog is full
    # (busy, stalled) is waited for on a worker, not on the session's reader, which the
    # session's every other stream needs
    pair, stalled_target = stalled_pair
    d = os.path.dirname(stalled_target.path)
    stuck, fillers = stalled_target.listener, stalled_target.fillers
    good = socket.socket(socket.AF_UNIX)
    try:
        good.bind(os.path.join(d, "good.sock"))
        good.listen(4)
        good.settimeout(10)
        pair.hostmux.expect(1, ("unix", os.path.join(d, "stuck.sock")))
        pair.hostmux.expect(2, ("unix", os.path.join(d, "good.sock")))
        assert pair.hostmux.accept_knock(1) == "" and pair.hostmux.accept_knock(2) == ""
        slow, fast = pair.front.open_stream(), pair.front.open_stream()
        slow.write(b"slow")
        fast.write(b"fast")
        conn, _ = good.accept()
        with conn:
            conn.settimeout(10)
            assert conn.recv(4) == b"fast"
            conn.sendall(b"FAST")
            assert bytes(fast.read()) == b"FAST"
        assert not slow.done, "the slow target's stream was given up before the other one was served"
        for filler in fillers:  # room in the backlog: the waiting dial goes through
            filler.close()
        for _ in range(len(fillers) + 2):  # the fillers' connections end at once; then the routed one
            conn, _ = stuck.accept()
            with conn:
                conn.settimeout(10)
                try:
                    first = conn.recv(4)
                except ConnectionResetError:
                    continue
                if first:
                    assert first == b"slow"
                    conn.sendall(b"SLOW")
                    assert bytes(slow.read()) == b"SLOW"
                    break
        else:
            pytest.fail("the slow target's stream never arrived")
    finally:
        good.close()


def test_closing_a_dialed_channel_frees_its_bridge(mpair: MuxPair) -> None:
    sid = mpair.host.next_id()
    mpair.host.accept_and_serve(sid, register("h"))
    # a dial's bridge listens on "d<pid>-<serial>" (tempdirs.private_socket) in the plugin's private folder
    stem = re.compile(rf"d{os.getpid():x}-[0-9a-f]+")

    def bridge_sockets() -> list[str]:
        return [n for n in os.listdir(mpair.plugin._private_dir or "/") if stem.fullmatch(n)]

    for _ in range(10):
        with mpair.plugin.dial(sid) as ch:
            assert check(ch, "h") == SERVING
            assert bridge_sockets(), "no bridge socket where this test looks for one: it would check nothing"
    assert mpair.plugin._channels == []
    # each bridge's accept loop is woken by the close, then frees its socket
    for _ in range(50):
        if not bridge_sockets():
            break
        threading.Event().wait(0.1)
    assert bridge_sockets() == []


def test_a_peer_flooding_knocks_and_acks_cannot_grow_the_broker_without_bound(mpair: MuxPair) -> None:
    # knocks for ids nobody serves, and acks nobody asked for, come from the peer: a knock ends
    # the ones before it (the peer knocks once its last knock is done), acks are dropped oldest first
    from plugbay.core.broker.knock import MAX_UNCLAIMED

    host = mpair.host
    for i in range(MAX_UNCLAIMED + 50):
        host.receive(pb.ConnInfo(service_id=100_000 + i, knock=pb.ConnInfo.Knock(knock=True)))
        host.receive(pb.ConnInfo(service_id=200_000 + i, knock=pb.ConnInfo.Knock(knock=True, ack=True)))
    assert list(host._early_knocks) == [100_000 + MAX_UNCLAIMED + 49]
    assert len(host._acks) == MAX_UNCLAIMED and 200_000 not in host._acks
    # and brokering still works
    sid = host.next_id()
    host.accept_and_serve(sid, register("after-flood"))
    assert check(mpair.plugin.dial(sid), "after-flood") == SERVING


def test_a_dial_whose_connection_is_replaced_between_knock_and_stream_fails_instead_of_misrouting() -> None:
    # the knock went over the first connection; its stream may not go over the next one (the
    # plugin would route it to its main server, and the dial would "succeed" to the wrong place)
    p = make_mux_pair("unix")
    try:
        b = p.plugin.next_id()
        p.plugin.accept_and_serve(b, register("plugin-side"))
        wait_ack = p.host._wait_ack

        def lost_after_the_ack(*args: object, **kw: object) -> None:
            wait_ack(*args, **kw)  # type: ignore[arg-type]
            first = p.hostmux.session
            assert first is not None
            first.abort("test: lost between the knock and its stream")
            p.hostmux.open_stream().reset()  # the main channel dials again meanwhile
            assert p.hostmux.session is not first

        p.host._wait_ack = lost_after_the_ack  # type: ignore[method-assign]
        with pytest.raises(BrokerClosedError, match="between the knock and its stream"):
            p.host.dial(b, timeout=5)
    finally:
        close_mux_pair(p)


def test_a_busy_session_whose_socket_is_full_keeps_the_plugin(tmp_path: object) -> None:
    # the host's session carries a stream and its socket is full for a moment (bulk traffic);
    # a second host connection's ping then waits for room: the live session keeps the plugin
    import struct
    import time

    d = str(tmp_path)
    target = open_listener("unix", os.path.join(d, "target.sock"))  # the stream's local end: held
    front = PluginFront(open_listener("unix", os.path.join(d, "plugin.sock")),
                        ("unix", os.path.join(d, "target.sock")))
    host = socket.socket(socket.AF_UNIX)
    host.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    intruder = socket.socket(socket.AF_UNIX)
    held: list[socket.socket] = []
    host_session: yamux.Session | None = None
    try:
        host.connect(front.address[1])
        host.sendall(struct.pack(">BBHII", 0, yamux.WINDOW_UPDATE, yamux.SYN, 1, 0))
        target.settimeout(10)
        held.append(target.accept()[0])  # the plugin routed stream 1: its session is live and busy
        # the session's reader routes its first stream before the front stores the session
        deadline = time.monotonic() + 10
        while front._session is None and time.monotonic() < deadline:
            time.sleep(0.01)
        session = front._session
        assert session is not None and session.open_streams == 1
        stale_ack = struct.pack(">BBHII", 0, yamux.PING, yamux.ACK, 0, 0xFFFF)  # answers no ping
        while True:  # the plugin's socket to the host is full (the host reads later)
            try:
                session._sock.send(stale_ack, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
        intruder.settimeout(10)
        intruder.connect(front.address[1])
        intruder.sendall(struct.pack(">BBHII", 0, yamux.WINDOW_UPDATE, yamux.SYN, 1, 0))
        # the plugin pings its host now, on the full socket (2 s to get it out and answered)
        deadline = time.monotonic() + 10
        while not session._pings and time.monotonic() < deadline:
            time.sleep(0.005)
        assert session._pings, "the plugin never pinged its host about the second connection"
        time.sleep(0.1)  # the ping waits for room; then the host reads
        host_session = yamux.Session(host, client=True, on_stream=lambda s: s.reset(), name="t-host")
        assert intruder.recv(1) == b""  # refused (a hang guard: 10 s)
        assert front._session is session and not session.closed
    finally:
        intruder.close()
        if host_session is not None:
            host_session.abort("test over")
        else:
            host.close()
        front.close()
        for conn in held:
            conn.close()
        target.close()
