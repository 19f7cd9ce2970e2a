"""Brokered callbacks over the network: the counter example served in network mode over mTLS.

Each replica is examples/counter/plugin.py with PLUGBAY_NETWORK_* (its own working folder, so
the kv_<key> files show which replica served a Put). A RemoteClient with a static:/// target of
two replicas opens one TLS connection carrying yamux per replica; every host session gets its own
plugin instance and broker on the plugin side.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from plugbay import Gateway, GatewayConfig, NetworkTLS, RemoteClient, RemoteConfig
from plugbay.core.plugin.netconfig import NetworkServe
from plugbay.core.protocol.handshake import parse_handshake_line
from plugbay.errors import ConfigError, GatewayError, ProtocolMismatchError, RemoteTLSError
from tests import netcerts, procs
from tests.net_util import first_check_passed
from tests.replicas import replica_pair

REPO = Path(__file__).resolve().parent.parent
COUNTER = REPO / "examples" / "counter"
sys.path.insert(0, str(COUNTER))

from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402
from counterproto import counter_pb2, counter_pb2_grpc  # noqa: E402


class CounterReplica:
    """examples/counter/plugin.py (or ``script``) in network mode, in its own folder (and its own TMPDIR, to
    watch sockets)."""

    def __init__(self, folder: Path, certs: netcerts.CertSet, extra: dict[str, str] | None = None,
                 listen: str = "127.0.0.1:0", script: Path = COUNTER / "plugin.py") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="nb-"))  # short: socket paths must stay under 108 bytes
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
        env.update({"PYTHONPATH": str(REPO / "src"), "TMPDIR": str(self.tmp),
                    "PLUGBAY_NETWORK_LISTEN": listen, "PLUGBAY_NETWORK_CERT": str(certs.cert_file),
                    "PLUGBAY_NETWORK_KEY": str(certs.key_file),
                    "PLUGBAY_NETWORK_CLIENT_CA": str(certs.client_ca_file), **(extra or {})})
        self.proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=folder)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line:
            raise AssertionError(f"counter plugin exited: {self.stop()[1]}")
        self.address = parse_handshake_line(line).address

    def value(self, key: str) -> str:
        return (self.folder / f"kv_{key}").read_text()

    def session_sockets(self) -> list[str]:
        """The per-session gRPC sockets of the plugin's live host sessions."""
        return sorted(p.name for d in self.tmp.glob("plugbay-net-*") for p in d.glob("s*.sock"))

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, err.decode()


class Adder:
    def __init__(self, bonus: int = 0) -> None:
        self.bonus = bonus
        self.calls = 0

    def sum(self, a: int, b: int) -> int:
        self.calls += 1
        return a + b + self.bonus


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


def host_tls(certs: netcerts.CertSet, client: netcerts.Issued | None = None) -> NetworkTLS:
    who = client or certs.client
    folder = certs.dir.parent / f"host-{who.cert.serial_number}"
    folder.mkdir(exist_ok=True)
    (folder / "host.crt").write_bytes(who.cert_pem)
    (folder / "host.key").write_bytes(who.key_pem)
    (folder / "ca.crt").write_bytes(certs.server_ca.cert_pem)
    return NetworkTLS(str(folder / "host.crt"), str(folder / "host.key"), str(folder / "ca.crt"),
                      server_name="localhost")


@pytest.fixture
def replicas(tmp_path: Path, certs: netcerts.CertSet) -> Iterator[list[CounterReplica]]:
    reps = [CounterReplica(tmp_path / name, certs) for name in ("a", "b")]
    yield reps
    for rep in reps:
        code, err = rep.stop()
        assert code == 0, err[-2000:]
        assert not list(rep.tmp.iterdir()), "the plugin left sockets or folders behind"
        rep.tmp.rmdir()


def killable_pair(folder: Path, certs: netcerts.CertSet, script: Path = COUNTER / "plugin.py"
                  ) -> Iterator[list[CounterReplica]]:
    """Two replicas of ``script`` for a test that kills one with -9: both stopped after, their folders removed
    (a killed replica leaves its sockets)."""
    made: list[CounterReplica] = []

    def make(sub: Path) -> CounterReplica:
        made.append(CounterReplica(sub, certs, script=script))
        return made[-1]

    try:
        with replica_pair(make, folder) as reps:
            yield reps
    finally:
        for rep in made:
            shutil.rmtree(rep.tmp, ignore_errors=True)


def counter_config(reps: list[CounterReplica], tls: NetworkTLS, **kw: object) -> RemoteConfig:
    target = "static:///" + ",".join(r.address for r in reps)
    return RemoteConfig(target=target, handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                        tls=tls, name="counter", **{"start_timeout": 20, **kw})  # type: ignore[arg-type]


def remote(reps: list[CounterReplica], tls: NetworkTLS, **kw: object) -> RemoteClient:
    return RemoteClient(counter_config(reps, tls, **kw))


def wait_until(check: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_brokered_put_works_on_both_replicas(replicas: list[CounterReplica], certs: netcerts.CertSet) -> None:
    with remote(replicas, host_tls(certs)) as client:
        assert client.multiplexed and client.handshake.multiplex
        first_check_passed(client, *(f"tcp:{r.address}" for r in replicas))  # else both may pin to one
        adder = Adder()
        first, second = client.dispense(PLUGIN_NAME), client.dispense(PLUGIN_NAME)  # pinned round robin
        first.put("n", 5, adder)
        second.put("n", 7, adder)
        first.put("n", 1, adder)
        assert adder.calls == 3
        assert sorted((replicas[0].value("n"), replicas[1].value("n"))) == ['{"Value":6}', '{"Value":7}']
        assert first.get("n") + second.get("n") == 13
        # the whole client's broker is ambiguous with two endpoints: refused, saying what to use
        with pytest.raises(Exception, match="use the broker the dispensed stub was built with"):
            client.broker.dial(1)
        assert all(len(r.session_sockets()) == 1 for r in replicas)
    # the host is gone: each replica stops that session's instance and removes its socket
    assert wait_until(lambda: all(not r.session_sockets() for r in replicas))


def test_brokered_false_declines_brokered_connections_for_plain_grpc(replicas: list[CounterReplica],
                                                                      certs: netcerts.CertSet) -> None:
    # a host that never brokers can skip the yamux session (and its TLS relay) on every call
    with remote(replicas, host_tls(certs), brokered=False) as client:
        assert client.handshake.multiplex and not client.multiplexed  # offered, declined
        counter = client.dispense(PLUGIN_NAME)
        with pytest.raises(grpc.RpcError) as answered:  # the plugin answered over plain gRPC
            counter.get("nothing-yet")
        assert answered.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(Exception, match=r"RemoteConfig\(brokered=False\).*drop brokered=False"):
            counter.put("n", 1, Adder())
        assert all(not r.session_sockets() for r in replicas)  # no host session was opened anywhere
    with pytest.raises(ConfigError, match="pass one of the two"):
        remote(replicas, host_tls(certs), brokered=False, multiplex=True)


def test_each_host_session_has_its_own_broker(replicas: list[CounterReplica], certs: netcerts.CertSet) -> None:
    one = replicas[:1]
    with remote(one, host_tls(certs)) as c1, remote(one, host_tls(certs)) as c2:
        assert len(replicas[0].session_sockets()) == 2
        s1, s2 = c1.dispense(PLUGIN_NAME), c2.dispense(PLUGIN_NAME)
        a1, a2 = Adder(), Adder(bonus=1000)
        errors: list[BaseException] = []

        def puts(stub: object, key: str, adder: Adder) -> None:
            try:
                for _ in range(5):
                    stub.put(key, 1, adder)  # type: ignore[attr-defined]
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=puts, args=(s1, "k1", a1)),
                   threading.Thread(target=puts, args=(s2, "k2", a2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert (a1.calls, a2.calls) == (5, 5)  # every callback reached its own host
        assert (s1.get("k1"), s2.get("k2")) == (5, 5005)


def test_plain_grpc_still_works_on_the_same_port(replicas: list[CounterReplica], certs: netcerts.CertSet) -> None:
    (replicas[0].folder / "kv_plain").write_text('{"Value":42}')
    with grpc.secure_channel(replicas[0].address, netcerts.channel_credentials(certs),
                             options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
        assert counter_pb2_grpc.CounterStub(ch).Get(counter_pb2.GetRequest(key="plain"), timeout=10).value == 42
    with remote(replicas, host_tls(certs)) as client:  # a brokering host at the same time
        client.dispense(PLUGIN_NAME).put("plain", 1, Adder())
    assert replicas[0].session_sockets() == [] or wait_until(lambda: not replicas[0].session_sockets())


def test_an_idle_connection_does_not_block_a_new_host(replicas: list[CounterReplica],
                                                      certs: netcerts.CertSet) -> None:
    host, _, port = replicas[0].address.rpartition(":")
    silent = socket.create_connection((host, int(port)), timeout=5)  # never speaks TLS
    ctx = netcerts.client_context(certs)
    quiet_raw = socket.create_connection((host, int(port)), timeout=5)
    quiet = ctx.wrap_socket(quiet_raw, server_hostname="localhost")  # TLS done, then nothing
    try:
        started = time.monotonic()
        with remote(replicas[:1], host_tls(certs)) as client:
            client.dispense(PLUGIN_NAME).put("idle", 3, Adder())
        assert time.monotonic() - started < 10
        assert replicas[0].value("idle") == '{"Value":3}'
        # both idle connections are dropped after a few seconds
        silent.settimeout(15)
        assert silent.recv(1) == b""
        quiet.settimeout(15)
        assert quiet.recv(1) == b""
    finally:
        silent.close()
        quiet.close()


def _silent_host(address: str, certs: netcerts.CertSet) -> ssl.SSLSocket:
    """A brokering host that opens its yamux session (a ping), then neither reads nor writes again."""
    host, _, port = address.rpartition(":")
    ctx = netcerts.client_context(certs)
    raw = socket.create_connection((host, int(port)), timeout=5)
    try:
        sock = ctx.wrap_socket(raw, server_hostname="localhost")
        sock.sendall(struct.pack(">BBHII", 0, 2, 1, 0, 7))  # yamux PING SYN: the front opens a session
    except BaseException:
        raw.close()
        raise
    return sock


def _frames_until_closed(sock: ssl.SSLSocket, timeout: float) -> list[tuple[int, int]]:
    """(type, flags) of every yamux frame the plugin sent, read once it gave up on us (bounded)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:  # past the deadline: the plugin kept the silent session
        left = deadline - time.monotonic()
        assert left > 0, f"the plugin kept a silent host's session for {timeout} s"
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    frames = []
    while len(data) >= 12:
        _, kind, flags, _, length = struct.unpack(">BBHII", data[:12])
        frames.append((kind, flags))
        data = data[12 + (length if kind == 0 else 0):]
    return frames


def test_a_brokering_host_that_went_silent_is_dropped_and_its_instance_stopped(
        tmp_path: Path, certs: netcerts.CertSet) -> None:
    # pings after 0.3 quiet seconds; 2 s for an answer: ample for the live host, quick for the test
    rep = CounterReplica(tmp_path / "ka", certs, extra={"PLUGBAY_NETWORK_KEEPALIVE": "0.3,2"})
    try:
        with remote([rep], host_tls(certs)) as client:  # a live host: it answers the plugin's pings
            counter = client.dispense(PLUGIN_NAME)
            counter.put("live", 1, Adder())
            assert rep.session_sockets() == ["s1.sock"]
            silent = _silent_host(rep.address, certs)
            try:
                frames = _frames_until_closed(silent, timeout=15)
            finally:
                silent.close()
            assert (2, 2) in frames and (2, 1) in frames  # our ping answered, then the plugin's own unanswered
            assert wait_until(lambda: rep.session_sockets() == ["s1.sock"])  # the silent host's instance went
            time.sleep(1.5)  # several keepalive periods: the live host is pinged, answers, and stays
            counter.put("live", 1, Adder())
            assert rep.session_sockets() == ["s1.sock"] and rep.value("live") == '{"Value":2}'
    finally:
        code, err = rep.stop()
        shutil.rmtree(rep.tmp, ignore_errors=True)
    assert code == 0, err


def test_the_gateway_drops_a_brokering_host_that_went_silent_and_stops_its_child(
        tmp_path: Path, certs: netcerts.CertSet) -> None:
    folder = tmp_path / "gw"
    folder.mkdir()
    with Gateway(_gateway_config(certs, folder, multiplex=True, keepalive=(0.3, 2.0))) as gw:
        shared = gw.child_pid
        silent = _silent_host(gw.address, certs)
        try:
            assert wait_until(lambda: len(_live_children() - {shared}) >= 1, timeout=15)  # its own child
            frames = _frames_until_closed(silent, timeout=20)
        finally:
            silent.close()
        assert (2, 1) in frames  # the gateway pinged the silent host before dropping it
        assert wait_until(lambda: _live_children() == {shared}, timeout=15)


@pytest.mark.parametrize("value", ["30", "a,b", "1,2,3,4", "1,2,0", "0,10", "30,-1", "nan,1"])
def test_a_bad_keepalive_setting_says_what_to_set(value: str) -> None:
    env = {"PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0", "PLUGBAY_NETWORK_KEEPALIVE": value}
    with pytest.raises(ConfigError, match="PLUGBAY_NETWORK_KEEPALIVE=.*INTERVAL,TIMEOUT"):
        NetworkServe.from_env(env)
    with pytest.raises(ConfigError, match="NetworkServe keepalive"):
        NetworkServe(keepalive=(30.0, 0.0))
    assert NetworkServe.from_env({**env, "PLUGBAY_NETWORK_KEEPALIVE": " 5,2 "}).keepalive == (5.0, 2.0)  # type: ignore[union-attr]


def test_untrusted_hosts_are_refused(replicas: list[CounterReplica], certs: netcerts.CertSet,
                                     tmp_path: Path) -> None:
    stranger = netcerts.issue(netcerts.make_ca("someone else"), "stranger", server=False)
    with pytest.raises(RemoteTLSError, match="refused the host's certificate"):
        remote(replicas[:1], host_tls(certs, stranger), start_timeout=5).start()
    # a yamux frame right after a handshake with a stranger's certificate never reaches a session
    ctx = netcerts.client_context(certs, stranger)
    host, _, port = replicas[0].address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(bytes([0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]))  # yamux SYN of stream 1
                if not tls.recv(1):
                    raise OSError("closed")
    assert replicas[0].session_sockets() == []


def test_cert_rotation_keeps_serving(replicas: list[CounterReplica], certs: netcerts.CertSet) -> None:
    rep = replicas[:1]
    with remote(rep, host_tls(certs)) as before:
        stub = before.dispense(PLUGIN_NAME)
        stub.put("r", 1, Adder())
        new = netcerts.issue(certs.server_ca, "localhost", server=True)
        for name, data in (("tls.crt.new", new.cert_pem + certs.server_ca.cert_pem), ("tls.key.new", new.key_pem)):
            (certs.dir / name).write_bytes(data)
        os.replace(certs.dir / "tls.key.new", certs.key_file)
        os.replace(certs.dir / "tls.crt.new", certs.cert_file)
        with remote(rep, host_tls(certs)) as after:  # a new connection: the new certificate
            after.dispense(PLUGIN_NAME).put("r", 1, Adder())
        stub.put("r", 1, Adder())  # the established session keeps working
    assert rep[0].value("r") == '{"Value":3}'
    host, _, port = rep[0].address.rpartition(":")
    ctx = netcerts.client_context(certs)
    with ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=5), server_hostname="localhost") as s:
        der = s.getpeercert(binary_form=True)
    from cryptography import x509
    assert x509.load_der_x509_certificate(der).serial_number == new.cert.serial_number


def test_a_replica_that_comes_back_brokers_again(tmp_path: Path, certs: netcerts.CertSet) -> None:
    rep = CounterReplica(tmp_path / "r1", certs)
    address = rep.address
    try:
        with remote([rep], host_tls(certs), health_interval=0.2,
                    grpc_options=[("grpc.initial_reconnect_backoff_ms", 100),
                                  ("grpc.max_reconnect_backoff_ms", 300)]) as client:
            client.dispense(PLUGIN_NAME).put("back", 1, Adder())
            rep.proc.kill()
            rep.stop()
            rep.tmp.rmdir() if not list(rep.tmp.iterdir()) else shutil.rmtree(rep.tmp)  # kill -9 leaves them
            rep = CounterReplica(tmp_path / "r1", certs, listen=address)  # same address, same files
            assert wait_until(lambda: client.metrics()["healthy"] == 1)
            # a new session, so a new plugin instance and a new broker for the next stub
            client.dispense(PLUGIN_NAME).put("back", 1, Adder())
        assert rep.value("back") == '{"Value":2}'
    finally:
        assert rep.stop()[0] == 0
        rep.tmp.rmdir()


def test_multiplex_option_needs_tls_and_a_brokering_plugin(tmp_path: Path, certs: netcerts.CertSet) -> None:
    with pytest.raises(ConfigError, match="needs TLS"):
        RemoteClient(RemoteConfig(target="static:///127.0.0.1:1", handshake=HANDSHAKE, insecure=True,
                                  multiplex=True))
    rep = CounterReplica(tmp_path / "plain", certs, {"PLUGBAY_NETWORK_MULTIPLEX": "0"})
    try:
        with pytest.raises(ProtocolMismatchError, match="does not multiplex them"):
            remote([rep], host_tls(certs), multiplex=True).start()
        with remote([rep], host_tls(certs)) as client:  # without the option: plain calls, no broker
            assert not client.multiplexed
            with pytest.raises(Exception, match="serves plain gRPC calls only"):
                client.dispense(PLUGIN_NAME).put("x", 1, Adder())
    finally:
        assert rep.stop()[0] == 0
        assert not list(rep.tmp.iterdir())
        rep.tmp.rmdir()


def test_counter_example_host_does_a_brokered_put(replicas: list[CounterReplica], certs: netcerts.CertSet,
                                                  tmp_path: Path) -> None:
    tls = host_tls(certs)
    flags = ["--target", f"static:///{replicas[0].address}", "--cert", str(tls.cert_file), "--key",
             str(tls.key_file), "--ca", tls.ca_file, "--server-name", "localhost"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for args, want in ((["put", "ex", "4"], ""), (["put", "ex", "2"], ""), (["get", "ex"], "6\n")):
        out = subprocess.run([sys.executable, str(COUNTER / "host.py"), *flags, *args], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
        assert (out.returncode, out.stdout) == (0, want), out.stderr
    assert replicas[0].value("ex") == '{"Value":6}'
    # --multiplex insists on brokering: fine here
    out = subprocess.run([sys.executable, str(COUNTER / "host.py"), *flags, "--multiplex", "put", "ex", "1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert replicas[0].value("ex") == '{"Value":7}'


def _gateway_config(certs: netcerts.CertSet, folder: Path, **kw: object) -> GatewayConfig:
    return GatewayConfig(cmd=[sys.executable, str(COUNTER / "plugin.py")], cookie=("BASIC_PLUGIN", "hello"),
                         listen="127.0.0.1:0", cert_file=str(certs.cert_file), key_file=str(certs.key_file),
                         client_ca_file=str(certs.client_ca_file), plugins=["counter"], cwd=str(folder),
                         env={"PYTHONPATH": str(REPO / "src")}, **kw)  # type: ignore[arg-type]


def test_the_gateway_brokers_with_a_child_per_host_session(tmp_path: Path, certs: netcerts.CertSet,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="plugbay.network")
    folder = tmp_path / "gw"
    folder.mkdir()
    with Gateway(_gateway_config(certs, folder, multiplex=True)) as gw:
        shared = gw.child_pid
        target = [type("Rep", (), {"address": gw.address})()]  # remote() wants .address
        with remote(target, host_tls(certs)) as c1, remote(target, host_tls(certs)) as c2:  # type: ignore[arg-type]
            assert c1.multiplexed and c2.multiplexed
            # the gateway answered Discovery; the sessions' children do not serve it, as expected
            assert "does not serve plugbay.network.v1.Discovery" not in caplog.text
            # each host session's child is still starting: its first health check may time out,
            # and dispense pins a stub to an endpoint that is healthy now
            assert wait_until(lambda: c1.pool.metrics()["available"] >= 1 and c2.pool.metrics()["available"] >= 1,
                              timeout=15)
            a1, a2 = Adder(), Adder(bonus=100)
            c1.dispense(PLUGIN_NAME).put("g1", 2, a1)
            c2.dispense(PLUGIN_NAME).put("g2", 2, a2)
            assert (a1.calls, a2.calls) == (1, 1)
            assert (folder / "kv_g1").read_text() == '{"Value":2}'
            assert (folder / "kv_g2").read_text() == '{"Value":102}'
            # each session has its own child, besides the shared one plain gRPC reaches
            kids = {p for p in _live_children()} - {shared}
            assert len([p for p in kids if p is not None]) >= 2
            with grpc.secure_channel(gw.address, netcerts.channel_credentials(certs),
                                     options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
                assert counter_pb2_grpc.CounterStub(ch).Get(counter_pb2.GetRequest(key="g2"), timeout=10).value == 102
        # the hosts left: their children are stopped
        assert wait_until(lambda: _live_children() == {shared}, timeout=15)
    assert not list(Path(tempfile.gettempdir()).glob("plugbay-gwchild-*"))


def test_the_gateway_refuses_multiplex_without_tls_or_a_multiplexing_child(tmp_path: Path,
                                                                            certs: netcerts.CertSet) -> None:
    with pytest.raises(ConfigError, match="only over TLS"):
        Gateway(GatewayConfig(cmd=["x"], cookie=("A", "b"), insecure=True, multiplex=True))
    folder = tmp_path / "gw"
    folder.mkdir()
    # a child that cannot multiplex: go-plugin 1.0.1's KV plugin ignores PLUGIN_MULTIPLEX_GRPC
    from tests import gobuild

    kv = str(gobuild.go_program_or_skip("kv_plugin"))
    cfg = GatewayConfig(cmd=[kv], cookie=("BASIC_PLUGIN", "hello"), listen="127.0.0.1:0",
                        cert_file=str(certs.cert_file), key_file=str(certs.key_file),
                        client_ca_file=str(certs.client_ca_file), cwd=str(folder), multiplex=True)
    # refused when the gateway starts (tests/test_gateway_multiplex_check.py): offered in Discovery, every
    # host would have waited out its start_timeout on sessions the gateway closed
    with pytest.raises(GatewayError, match="does not multiplex brokered connections.*without --multiplex"):
        Gateway(cfg).start()


def test_setup_errors_say_what_to_do(tmp_path: Path, certs: netcerts.CertSet,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from plugbay.network.gateway.cli import parse

    with pytest.raises(SystemExit):
        parse(["--insecure", "--multiplex", "--cookie", "A=b", "--", "x"], env={})
    assert "--multiplex needs mutual TLS" in capsys.readouterr().err
    # a client certificate with another certificate's key: the session's OpenSSL context refuses it
    tls = host_tls(certs)
    other = netcerts.issue(certs.client_ca, "other", server=False)
    Path(tls.key_file or "").write_bytes(other.key_pem)
    with pytest.raises(ConfigError, match="cannot be used together"):
        tls.ssl_context()
    # the private sockets of the front must fit the OS's limit
    long_tmp = tmp_path / ("x" * 90)
    long_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
    env.update({"PYTHONPATH": str(REPO / "src"), "TMPDIR": str(long_tmp), "PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0",
                "PLUGBAY_NETWORK_CERT": str(certs.cert_file), "PLUGBAY_NETWORK_KEY": str(certs.key_file),
                "PLUGBAY_NETWORK_CLIENT_CA": str(certs.client_ca_file)})
    out = subprocess.run([sys.executable, str(COUNTER / "plugin.py")], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1 and "set TMPDIR to a short" in out.stderr, out.stderr[-2000:]
    assert not list(long_tmp.iterdir())


def _live_children() -> set[int]:
    return set(procs.children(os.getpid(), zombies=False))
