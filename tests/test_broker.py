"""GRPCBroker at the gRPC level: a "plugin" grpc server and a "host" channel in one process.

No Client or serve() here: the plugin side is a real grpc.Server on a unix
socket with plugin_broker() registered, the host side a real channel with
host_broker() on it. Brokered services are grpc health servers, so each test
can tell which server answered by the service name it reports SERVING.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.stream import host_broker, plugin_broker
from plugbay.errors import BrokerClosedError, BrokerTimeoutError, ConfigError
from plugbay.core.protocol.tls import CertKey, generate_cert
from plugbay.runners.base import AttachedRunner


class _Named(health_pb2_grpc.HealthServicer):
    """Reports SERVING only for its own name, so the caller knows who answered."""

    def __init__(self, name: str) -> None:
        self.name = name

    def Check(self, request, context):  # noqa: N802
        if request.service != self.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"I am {self.name}")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def register(name: str):
    return lambda server: health_pb2_grpc.add_HealthServicer_to_server(_Named(name), server)


def check(channel: grpc.Channel, name: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status


@dataclass
class Pair:
    plugin: GRPCBroker
    host: GRPCBroker
    server: grpc.Server
    channel: grpc.Channel
    executor: ThreadPoolExecutor


def _make_pair(tmp: str, plugin_t: BrokerTransport, host_t: BrokerTransport,
               dial_timeout: float = 5.0) -> Pair:
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="plugbay-test-srv")
    server = grpc.server(executor)
    plugin = plugin_broker(server, plugin_t, dial_timeout=dial_timeout)
    path = os.path.join(tmp, "main.sock")
    assert server.add_insecure_port(f"unix:{path}")
    server.start()
    channel = grpc.insecure_channel(f"unix:{path}")
    host = host_broker(channel, host_t, dial_timeout=dial_timeout)
    return Pair(plugin, host, server, channel, executor)


def _close_pair(p: Pair) -> None:
    p.host.close()
    p.plugin.close()
    p.channel.close()
    p.server.stop(grace=None).wait(10)
    p.executor.shutdown(wait=True)


@pytest.fixture
def sockdir() -> Iterator[str]:
    # short path: unix socket paths must stay under 108 bytes
    d = tempfile.mkdtemp(prefix="bk", dir="/tmp")
    try:
        yield d
        leftovers = os.listdir(d)
        assert leftovers == [], f"broker left sockets behind: {leftovers}"
    finally:  # a failed test (or the assertion above) must not leave the folder in /tmp either
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pair(sockdir: str) -> Iterator[Pair]:
    p = _make_pair(sockdir, BrokerTransport(socket_dir=sockdir), BrokerTransport(socket_dir=sockdir))
    yield p
    _close_pair(p)


def test_host_serves_plugin_dials(pair: Pair) -> None:
    sid = pair.host.next_id()
    pair.host.accept_and_serve(sid, register("add-helper"))
    ch = pair.plugin.dial(sid)
    assert check(ch, "add-helper") == health_pb2.HealthCheckResponse.SERVING


def test_plugin_serves_host_dials(pair: Pair) -> None:
    sid = pair.plugin.next_id()
    pair.plugin.accept_and_serve(sid, register("from-plugin"))
    ch = pair.host.dial(sid)
    assert check(ch, "from-plugin") == health_pb2.HealthCheckResponse.SERVING


def test_many_ids_each_reach_their_own_server(pair: Pair) -> None:
    ids = [pair.host.next_id() for _ in range(5)]
    assert len(set(ids)) == 5
    for i in ids:
        pair.host.accept_and_serve(i, register(f"svc{i}"))
    for i in reversed(ids):
        assert check(pair.plugin.dial(i), f"svc{i}") == health_pb2.HealthCheckResponse.SERVING


def test_dial_before_announcement_waits(pair: Pair) -> None:
    sid = pair.host.next_id()
    result: list[object] = []

    def dialer() -> None:
        try:
            result.append(check(pair.plugin.dial(sid, timeout=10), "late"))
        except Exception as exc:  # reported below
            result.append(exc)

    t = threading.Thread(target=dialer, name="plugbay-test-dialer")
    t.start()
    pair.host.accept_and_serve(sid, register("late"))
    t.join(20)
    assert result == [health_pb2.HealthCheckResponse.SERVING]


def test_dial_unknown_id_times_out_with_typed_error(pair: Pair) -> None:
    with pytest.raises(BrokerTimeoutError) as err:
        pair.plugin.dial(4242, timeout=0.5)
    assert "4242" in str(err.value) and "accept_and_serve" in str(err.value)
    assert isinstance(err.value, TimeoutError)


def test_default_dial_timeout_is_bounded(sockdir: str) -> None:
    p = _make_pair(sockdir, BrokerTransport(socket_dir=sockdir), BrokerTransport(socket_dir=sockdir),
                   dial_timeout=0.3)
    try:
        with pytest.raises(BrokerTimeoutError, match="0.3s"):
            p.host.dial(77)
    finally:
        _close_pair(p)


def test_stream_lost_fails_pending_dial(sockdir: str) -> None:
    p = _make_pair(sockdir, BrokerTransport(socket_dir=sockdir), BrokerTransport(socket_dir=sockdir))
    errors: list[BaseException] = []
    # the stream is up and in use: one brokered round trip first
    first = p.plugin.next_id()
    p.plugin.accept_and_serve(first, register("first"))
    assert check(p.host.dial(first), "first") == health_pb2.HealthCheckResponse.SERVING

    def dialer() -> None:
        try:
            p.host.dial(99, timeout=30)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=dialer, name="plugbay-test-dialer")
    t.start()
    try:
        # the plugin goes away: its grpc server stops, the stream breaks
        p.server.stop(grace=None).wait(10)
        t.join(20)
        assert not t.is_alive(), "a pending dial survived the loss of the broker stream"
        assert len(errors) == 1 and isinstance(errors[0], BrokerClosedError)
        assert "99" in str(errors[0]) and "Restart the plugin" in str(errors[0])
        assert p.host.lost_reason is not None
        with pytest.raises(BrokerClosedError):
            p.host.accept_and_serve(p.host.next_id(), register("x"))
    finally:
        _close_pair(p)


def test_close_fails_pending_dial_and_later_calls(pair: Pair) -> None:
    errors: list[BaseException] = []

    def dialer() -> None:
        try:
            pair.plugin.dial(5, timeout=30)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=dialer, name="plugbay-test-dialer")
    t.start()
    pair.plugin.close()
    t.join(20)
    assert len(errors) == 1 and isinstance(errors[0], BrokerClosedError)
    with pytest.raises(BrokerClosedError, match="closed"):
        pair.plugin.dial(5)
    with pytest.raises(BrokerClosedError, match="closed"):
        pair.plugin.accept_and_serve(1, register("x"))
    pair.plugin.close()  # idempotent


def test_close_removes_listener_sockets(sockdir: str) -> None:
    p = _make_pair(sockdir, BrokerTransport(socket_dir=sockdir), BrokerTransport(socket_dir=sockdir))
    try:
        for _ in range(3):
            p.host.accept_and_serve(p.host.next_id(), register("x"))
            p.plugin.accept_and_serve(p.plugin.next_id(), register("y"))
        assert len([n for n in os.listdir(sockdir) if n.startswith("plugin")]) == 6
    finally:
        _close_pair(p)
    assert [n for n in os.listdir(sockdir) if n != "main.sock"] == []
    os.unlink(os.path.join(sockdir, "main.sock")) if os.path.exists(os.path.join(sockdir, "main.sock")) else None


def test_default_socket_dir_is_tmpdir() -> None:
    d = tempfile.mkdtemp(prefix="bk", dir="/tmp")
    p = _make_pair(d, BrokerTransport(), BrokerTransport())
    try:
        sid = p.plugin.next_id()
        p.plugin.accept_and_serve(sid, register("tmp"))
        assert any(n.startswith("plugin") for n in os.listdir(tempfile.gettempdir()))
        assert check(p.host.dial(sid), "tmp") == health_pb2.HealthCheckResponse.SERVING
    finally:
        _close_pair(p)
        for n in os.listdir(d):
            os.unlink(os.path.join(d, n))
        os.rmdir(d)
    assert not any(n.startswith("plugin") for n in os.listdir(tempfile.gettempdir()))


# ------------------------------------------------------------- translation


class _Translator(AttachedRunner):
    """A runner that only maps addresses: the plugin's folder is seen by the host as ``alias``."""

    def __init__(self, real: str, alias: str) -> None:
        self.real, self.alias = real, alias
        self.calls: list[str] = []

    @property
    def id(self) -> str:
        return "translator"

    def wait(self, timeout: float | None = None) -> int | None:
        return None

    def kill(self, grace: float = 2.0) -> None:
        pass

    def plugin_to_host(self, network: str, address: str) -> tuple[str, str]:
        self.calls.append(f"p2h {address}")
        return network, address.replace(self.real, self.alias)

    def host_to_plugin(self, network: str, address: str) -> tuple[str, str]:
        self.calls.append(f"h2p {address}")
        return network, address.replace(self.alias, self.real)


def test_host_maps_addresses_both_ways(tmp_path: Path) -> None:
    real = tempfile.mkdtemp(prefix="bkr", dir="/tmp")
    alias = real + "-alias"
    os.symlink(real, alias)
    tr = _Translator(real, alias)
    # host sockets live under the alias; the plugin only knows the real folder
    p = _make_pair(real, BrokerTransport(socket_dir=real),
                   BrokerTransport(socket_dir=alias, translator=tr))
    try:
        a = p.plugin.next_id()
        p.plugin.accept_and_serve(a, register("plugin-side"))
        assert check(p.host.dial(a), "plugin-side") == health_pb2.HealthCheckResponse.SERVING
        b = p.host.next_id()
        p.host.accept_and_serve(b, register("host-side"))
        assert check(p.plugin.dial(b), "host-side") == health_pb2.HealthCheckResponse.SERVING
        assert [c.split()[0] for c in tr.calls] == ["p2h", "h2p"]
        assert tr.calls[0].startswith(f"p2h {real}/") and tr.calls[1].startswith(f"h2p {alias}/")
    finally:
        _close_pair(p)
        os.unlink(alias)
        for n in os.listdir(real):
            os.unlink(os.path.join(real, n))
        os.rmdir(real)


def test_translation_is_what_the_host_dials(sockdir: str) -> None:
    tr = _Translator(sockdir, sockdir + "-nowhere")
    p = _make_pair(sockdir, BrokerTransport(socket_dir=sockdir),
                   BrokerTransport(socket_dir=sockdir, translator=tr))
    try:
        sid = p.plugin.next_id()
        p.plugin.accept_and_serve(sid, register("x"))
        with pytest.raises(grpc.RpcError) as err:
            check(p.host.dial(sid), "x")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        _close_pair(p)


# --------------------------------------------------------------- AutoMTLS


def _tls_pair(sockdir: str, host_cert: CertKey, plugin_cert: CertKey) -> Pair:
    return _make_pair(
        sockdir,
        BrokerTransport(tls=plugin_cert, peer_cert_pem=host_cert.cert_pem, socket_dir=sockdir),
        BrokerTransport(tls=host_cert, peer_cert_pem=plugin_cert.cert_pem, socket_dir=sockdir),
    )


@pytest.mark.parametrize("curve", ["p256", "p521"])
def test_automtls_both_directions(sockdir: str, curve: str) -> None:
    # P-521 certificates (go-plugin's own) go through the OpenSSL relay
    make = (lambda: generate_cert(ec.SECP521R1())) if curve == "p521" else generate_cert
    p = _tls_pair(sockdir, make(), make())
    try:
        a = p.host.next_id()
        p.host.accept_and_serve(a, register("h"))
        assert check(p.plugin.dial(a), "h") == health_pb2.HealthCheckResponse.SERVING
        b = p.plugin.next_id()
        p.plugin.accept_and_serve(b, register("p"))
        assert check(p.host.dial(b), "p") == health_pb2.HealthCheckResponse.SERVING
    finally:
        _close_pair(p)


def test_automtls_refuses_a_stranger(sockdir: str) -> None:
    host_cert, plugin_cert, stranger = generate_cert(), generate_cert(), generate_cert()
    p = _tls_pair(sockdir, host_cert, plugin_cert)
    # a dialer that holds the wrong certificate (not the one the host trusts)
    rogue = GRPCBroker(BrokerTransport(tls=stranger, peer_cert_pem=host_cert.cert_pem), "plugin")
    try:
        sid = p.host.next_id()
        p.host.accept_and_serve(sid, register("h"))
        info = p.plugin._wait_announcement(sid, 5)
        ch = rogue._channel_to(info.network, info.address)
        with pytest.raises(grpc.RpcError) as err:
            check(ch, "h")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        rogue.close()
        _close_pair(p)


def test_automtls_plaintext_dialer_refused(sockdir: str) -> None:
    p = _tls_pair(sockdir, generate_cert(), generate_cert())
    plain = GRPCBroker(BrokerTransport(), "plugin")
    try:
        sid = p.host.next_id()
        p.host.accept_and_serve(sid, register("h"))
        info = p.plugin._wait_announcement(sid, 5)
        with pytest.raises(grpc.RpcError) as err:
            check(plain._channel_to(info.network, info.address), "h")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        plain.close()
        _close_pair(p)


def test_transport_config_errors() -> None:
    with pytest.raises(ConfigError, match="peer_cert_pem"):
        GRPCBroker(BrokerTransport(tls=generate_cert()), "host")
    with pytest.raises(ConfigError, match="needs the mux session"):
        GRPCBroker(BrokerTransport(multiplex=True), "host")


def test_unusable_socket_dir_is_reported(sockdir: str) -> None:
    from plugbay.errors import BrokerError

    missing = os.path.join(sockdir, "missing")
    p = _make_pair(sockdir, BrokerTransport(socket_dir=missing), BrokerTransport(socket_dir=sockdir))
    try:
        with pytest.raises(BrokerError, match=f"could not listen on unix socket '{missing}/.*check that"
                                              " its folder exists, is writable"):
            p.plugin.accept_and_serve(p.plugin.next_id(), register("x"))
        # the failed server was stopped; the broker still serves from a usable folder
        sid = p.host.next_id()
        p.host.accept_and_serve(sid, register("ok"))
        assert check(p.plugin.dial(sid), "ok") == health_pb2.HealthCheckResponse.SERVING
    finally:
        _close_pair(p)
        if os.path.exists(os.path.join(sockdir, "main.sock")):
            os.unlink(os.path.join(sockdir, "main.sock"))


def test_unknown_network_announced(pair: Pair) -> None:
    from plugbay._proto.plugin import grpc_broker_pb2 as pb
    from plugbay.errors import BrokerError

    pair.host.receive(pb.ConnInfo(service_id=3, network="udp", address="x"))
    with pytest.raises(BrokerError, match="unknown network 'udp'"):
        pair.host.dial(3)


def test_next_id_unique_across_threads(pair: Pair) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(200):
            i = pair.host.next_id()
            with lock:
                seen.append(i)

    ts = [threading.Thread(target=take, name="plugbay-test-ids") for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert len(seen) == 800 and len(set(seen)) == 800


def test_closing_a_dialed_channel_frees_its_relay(sockdir: str) -> None:
    p = _tls_pair(sockdir, generate_cert(ec.SECP521R1()), generate_cert(ec.SECP521R1()))
    from plugbay.core.transport import ioloop

    try:
        before = ioloop.shared().registrations
        sid = p.host.next_id()
        p.host.accept_and_serve(sid, register("h"))
        ch = p.plugin.dial(sid)
        assert check(ch, "h") == health_pb2.HealthCheckResponse.SERVING
        # both relays (serving and dialing side) and their connection live on the shared loop
        assert ioloop.shared().registrations >= before + 4
        assert not any(t.name.startswith("plugbay-tlsrelay") for t in threading.enumerate())
        ch.close()
        ch.close()  # idempotent
        assert p.plugin._channels == []
        p.host.stop_serving(sid)
        assert ioloop.shared().registrations == before
        with pytest.raises(BrokerClosedError, match="closed"):
            check(ch, "h")  # a closed channel refuses calls, typed
    finally:
        _close_pair(p)


def test_register_may_only_add_services(pair: Pair) -> None:
    from plugbay.errors import BrokerError

    for misuse in (lambda s: s.add_insecure_port("unix:/tmp/x"), lambda s: s.start(),
                   lambda s: s.stop(None), lambda s: s.add_secure_port("unix:/tmp/x", None),
                   lambda s: s.wait_for_termination(1)):
        with pytest.raises(BrokerError, match=r"called \w+\(\); the broker binds, starts and stops brokered"
                                              r" servers itself, so register only adds services"):
            pair.host.accept_and_serve(pair.host.next_id(), misuse)
    sid = pair.host.next_id()
    pair.host.accept_and_serve(sid, register("after-misuse"))
    assert check(pair.plugin.dial(sid), "after-misuse") == health_pb2.HealthCheckResponse.SERVING


def test_registered_method_handlers_alone_are_served(pair: Pair) -> None:
    # the broker's servers are started before register runs; handlers given only as
    # registered methods (which grpcio ignores on a started server) must still be served
    servicer = _Named("registered-only")
    handlers = {"Check": grpc.unary_unary_rpc_method_handler(
        servicer.Check, request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString)}
    sid = pair.plugin.next_id()
    pair.plugin.accept_and_serve(sid, lambda s: s.add_registered_method_handlers("grpc.health.v1.Health", handlers))
    assert check(pair.host.dial(sid), "registered-only") == health_pb2.HealthCheckResponse.SERVING


def test_each_id_gets_its_own_socket_freed_on_stop(pair: Pair, sockdir: str) -> None:
    announced: set[str] = set()
    for n in range(4):  # from the second call on, the server was started ahead of time
        sid = pair.host.next_id()
        pair.host.accept_and_serve(sid, register(f"call{n}"))
        listed = [n for n in os.listdir(sockdir) if n != "main.sock"]
        assert len(listed) == 1 and listed[0] not in announced
        path = os.path.join(sockdir, listed[0])
        announced.add(listed[0])
        ch = pair.plugin.dial(sid)
        assert check(ch, f"call{n}") == health_pb2.HealthCheckResponse.SERVING
        pair.host.stop_serving(sid)
        assert not os.path.exists(path)
        with pytest.raises(grpc.RpcError):
            check(ch, f"call{n}")  # the stopped server's connection is gone
        ch.close()
    assert [n for n in os.listdir(sockdir) if n != "main.sock"] == []  # spares stay private


def test_sockets_in_a_setgid_folder_get_its_group(sockdir: str) -> None:
    # a folder shared with a container user is setgid; a brokered socket (made ahead of
    # time elsewhere and moved in) must carry the folder's group like one made there
    import stat

    if os.geteuid() != 0:
        pytest.skip("needs root to hand the folder to another group")
    shared = os.path.join(sockdir, "shared")
    os.mkdir(shared)
    os.chown(shared, -1, 4242)
    os.chmod(shared, 0o2770)
    p = _make_pair(sockdir, BrokerTransport(socket_dir=sockdir), BrokerTransport(socket_dir=shared))
    try:
        for n in range(3):  # the first server is made on the spot, later ones ahead of time
            sid = p.host.next_id()
            p.host.accept_and_serve(sid, register(f"g{n}"))
            (name,) = os.listdir(shared)
            info = os.stat(os.path.join(shared, name))
            assert info.st_gid == 4242 and stat.S_IMODE(info.st_mode) & 0o660 == 0o660
            assert check(p.plugin.dial(sid), f"g{n}") == health_pb2.HealthCheckResponse.SERVING
            p.host.stop_serving(sid)
    finally:
        _close_pair(p)
        os.rmdir(shared)
        if os.path.exists(os.path.join(sockdir, "main.sock")):
            os.unlink(os.path.join(sockdir, "main.sock"))


def test_socket_folder_on_another_mount_binds_there_directly(sockdir: str) -> None:
    # spares are started in a private folder and moved (hard-linked) into the socket
    # folder; a folder on another file system (a bind mount, tmpfs) cannot take that,
    # so servers are bound there directly, every call still reaching its own server
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("needs /dev/shm on another file system than the temp folder")
    other = tempfile.mkdtemp(prefix="bk", dir="/dev/shm")
    p = _make_pair(sockdir, BrokerTransport(socket_dir=sockdir), BrokerTransport(socket_dir=other))
    try:
        for n in range(3):
            sid = p.host.next_id()
            p.host.accept_and_serve(sid, register(f"m{n}"))
            assert len(os.listdir(other)) == 1
            assert check(p.plugin.dial(sid), f"m{n}") == health_pb2.HealthCheckResponse.SERVING
            p.host.stop_serving(sid)
            assert os.listdir(other) == []
    finally:
        _close_pair(p)
        os.rmdir(other)
        if os.path.exists(os.path.join(sockdir, "main.sock")):
            os.unlink(os.path.join(sockdir, "main.sock"))


_STUB_AFTER_CLOSE = """
import os, sys, tempfile, shutil
from concurrent.futures import ThreadPoolExecutor
import grpc
from plugbay._proto.grpc.health.v1 import health_pb2_grpc
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.stream import host_broker, plugin_broker
from plugbay.errors import BrokerClosedError

tmp = tempfile.mkdtemp(prefix="bk", dir="/tmp")
executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="plugbay-test-srv")
server = grpc.server(executor)
plugin = plugin_broker(server, BrokerTransport(socket_dir=tmp))
server.add_insecure_port("unix:" + os.path.join(tmp, "main.sock"))
server.start()
main = grpc.insecure_channel("unix:" + os.path.join(tmp, "main.sock"))
host = host_broker(main, BrokerTransport(socket_dir=tmp))
sid = host.next_id()
host.accept_and_serve(sid, lambda s: None)
channel = plugin.dial(sid)
plugin.close()  # e.g. the plugin shutting down while a handler still holds the channel
try:
    health_pb2_grpc.HealthStub(channel)  # go-plugin's pattern: a stub per call on the dialed conn
    print("built")
except BrokerClosedError as exc:
    print("typed:", exc)
host.close()
main.close()
server.stop(grace=None).wait(10)
executor.shutdown(wait=True)
shutil.rmtree(tmp, ignore_errors=True)
"""


def test_a_stub_on_a_closed_brokered_channel_is_a_typed_error_not_a_crash() -> None:
    """grpcio crashes the process when a call factory is built on a closed channel: refuse it, typed."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _STUB_AFTER_CLOSE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"the process died with {done.returncode}: {done.stderr[-2000:]}"
    assert "typed:" in done.stdout and "closed" in done.stdout and "Client" in done.stdout, done.stdout


def test_a_closed_broker_makes_no_private_folder_close_would_miss(pair: Pair) -> None:
    # a dial or accept_and_serve that raced close() past its own check must not create the folder
    # after close() removed it (it would be left behind)
    before = set(os.listdir(tempfile.gettempdir()))
    pair.plugin.close()
    with pytest.raises(BrokerClosedError, match="closed"):
        pair.plugin._private_dir_path()
    made = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("plugbay-broker-")} - before
    assert made == set()


def test_unclaimed_announcements_are_capped_oldest_first() -> None:
    """A peer announcing ids nobody dials cannot grow the table without bound (nor make each
    announcement scan it): past MAX_UNCLAIMED the oldest go, the newest stay claimable."""
    from plugbay._proto.plugin import grpc_broker_pb2 as pb
    from plugbay.core.broker.knock import MAX_UNCLAIMED

    broker = GRPCBroker(BrokerTransport(), "plugin")
    try:
        count = MAX_UNCLAIMED * 3
        for sid in range(1, count + 1):
            broker.receive(pb.ConnInfo(service_id=sid, network="unix", address=f"/nonexistent/{sid}"))
        assert len(broker._announced) == MAX_UNCLAIMED
        assert broker._wait_announcement(count, 1.0).address == f"/nonexistent/{count}"  # the newest stays
        with pytest.raises(BrokerTimeoutError):
            broker._wait_announcement(1, 0.05)  # the oldest went
        broker.receive(pb.ConnInfo(service_id=count - 5, network="unix", address="/again"))  # re-announced
        assert list(broker._announced)[-1] == count - 5
    finally:
        broker.close()


@pytest.mark.parametrize("network, address, why", [
    ("unix", "plugin.sock", "is not absolute"),
    ("unix", "/tmp/a\x00b", "holds a control character"),
    ("tcp", "127.0.0.1:0", "port '0'"),
    ("tcp", "a b:80", "host 'a b'"),
])
def test_an_announced_address_is_checked_as_strictly_as_a_handshake_address(
        pair: Pair, network: str, address: str, why: str) -> None:
    from plugbay._proto.plugin import grpc_broker_pb2 as pb
    from plugbay.errors import BrokerError

    pair.host.receive(pb.ConnInfo(service_id=4, network=network, address=address))
    with pytest.raises(BrokerError, match=f"broker id 4 was announced at an address plugbay will not dial: .*{why}"):
        pair.host.dial(4)
