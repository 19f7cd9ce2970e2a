"""serve(): the plugin side, run as real plugin processes (tests/plugins/probe.py, examples/kv)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay._proto.plugin import grpc_controller_pb2, grpc_controller_pb2_grpc, grpc_stdio_pb2_grpc
from plugbay.core import tls as tlsmod
from plugbay.core.handshake import HandshakeInfo, parse_handshake_line
from plugbay.core.server import COOKIE_MESSAGE, MISCONFIGURED_MESSAGE
from plugbay.core.tlsrelay import TLSRelay, open_listener

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "tests" / "plugins" / "probe.py"
KV_PLUGIN = REPO / "examples" / "kv" / "plugin.py"
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402

COOKIE = {"BASIC_PLUGIN": "hello"}
STDOUT, STDERR = 1, 2


class PluginProc:
    """One plugin process: its handshake, a channel to it, and a bounded teardown."""

    def __init__(self, env: dict[str, str], script: Path = PROBE, cwd: Path | None = None) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "PROBE_"))}
        full.update(env)
        self.proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=full, cwd=cwd)
        self.channels: list[grpc.Channel] = []
        self.relays: list[TLSRelay] = []

    def handshake_line(self, timeout: float = 30) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise AssertionError(f"no handshake line within {timeout}s")
        return self.proc.stdout.readline().decode().rstrip("\n")

    def handshake(self) -> HandshakeInfo:
        return parse_handshake_line(self.handshake_line())

    def channel(self, info: HandshakeInfo, creds: grpc.ChannelCredentials | None = None) -> grpc.Channel:
        target = f"unix:{info.address}" if info.network == "unix" else info.address
        if creds is None:
            ch = grpc.insecure_channel(target)
        else:
            ch = grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", "localhost")])
        self.channels.append(ch)
        return ch

    def finish(self, timeout: float = 20) -> tuple[int, str]:
        """Wait for the exit; returns (exit code, stderr)."""
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err.decode()

    def close(self) -> None:
        for ch in self.channels:
            ch.close()
        for relay in self.relays:
            relay.close()
        if self.proc.poll() is None:  # SIGTERM first, so the plugin removes its socket
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.communicate(timeout=20)


@pytest.fixture
def plugins() -> Iterator[list[PluginProc]]:
    started: list[PluginProc] = []
    yield started
    for p in started:
        p.close()


def start(plugins: list[PluginProc], env: dict[str, str] | None = None, **kw: Any) -> PluginProc:
    p = PluginProc({**COOKIE, "PLUGIN_PROTOCOL_VERSIONS": "1", **(env or {})}, **kw)
    plugins.append(p)
    return p


def shutdown(ch: grpc.Channel) -> None:
    grpc_controller_pb2_grpc.GRPCControllerStub(ch).Shutdown(grpc_controller_pb2.Empty(), timeout=10)


def health(ch: grpc.Channel, service: str = "plugin") -> int:
    resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return int(resp.status)


def refused(plugins: list[PluginProc], env: dict[str, str], **kw: Any) -> str:
    """Run a plugin that must fail setup: no handshake line, exit 1; returns stderr."""
    p = PluginProc(env, **kw)
    plugins.append(p)
    code, err = p.finish()
    assert p.proc.stdout is not None
    assert code == 1, err
    return err


# ---------------------------------------------------------------- cookie


def test_missing_cookie_prints_go_plugins_message(plugins: list[PluginProc]) -> None:
    assert refused(plugins, {}, script=KV_PLUGIN) == COOKIE_MESSAGE
    assert COOKIE_MESSAGE.startswith("This binary is a plugin. These are not meant to be executed directly.\n")


def test_wrong_cookie_value_is_refused(plugins: list[PluginProc]) -> None:
    assert refused(plugins, {"BASIC_PLUGIN": "goodbye"}) == COOKIE_MESSAGE


def test_empty_cookie_in_config_is_a_misconfiguration(plugins: list[PluginProc]) -> None:
    err = refused(plugins, {**COOKIE, "PROBE_MISCONFIGURED": "1"})
    assert err == MISCONFIGURED_MESSAGE
    assert err.startswith("Misconfigured ServeConfig given to serve this plugin: no magic cookie")


# ---------------------------------------------------------------- listeners and handshake line


def test_unix_socket_by_default_then_shutdown_exits_0_and_removes_it(plugins: list[PluginProc]) -> None:
    p = start(plugins)
    line = p.handshake_line()
    fields = line.split("|")
    assert fields[:3] == ["1", "1", "unix"] and fields[4:] == ["grpc", ""], line
    path = fields[3]
    assert Path(path).parent == Path(tempfile.gettempdir()) and Path(path).name.startswith("plugin")
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    ch = p.channel(parse_handshake_line(line))
    assert health(ch) == health_pb2.HealthCheckResponse.SERVING
    assert health(ch, "") == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        health(ch, "nonexistent")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    kv = kv_pb2_grpc.KVStub(ch)
    kv.Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=10)
    assert kv.Get(kv_pb2.GetRequest(key="k"), timeout=10).value == b"v"
    shutdown(ch)
    code, err = p.finish()
    assert code == 0, err
    assert not os.path.exists(path)


def test_socket_dir_and_group(plugins: list[PluginProc], tmp_path: Path) -> None:
    p = start(plugins, {"PLUGIN_UNIX_SOCKET_DIR": str(tmp_path), "PLUGIN_UNIX_SOCKET_GROUP": "daemon"})
    info = p.handshake()
    st = os.stat(info.address)
    assert Path(info.address).parent == tmp_path
    import grp
    assert st.st_gid == grp.getgrnam("daemon").gr_gid
    assert stat.S_IMODE(st.st_mode) == 0o660
    shutdown(p.channel(info))
    assert p.finish()[0] == 0
    assert list(tmp_path.iterdir()) == []


def test_unknown_socket_group_fails(plugins: list[PluginProc], tmp_path: Path) -> None:
    err = refused(plugins, {**COOKIE, "PLUGIN_UNIX_SOCKET_DIR": str(tmp_path),
                            "PLUGIN_UNIX_SOCKET_GROUP": "no-such-group-plugbay"})
    assert "failed to find gid from 'no-such-group-plugbay'" in err
    assert list(tmp_path.iterdir()) == []


def _busy_ports(count: int) -> tuple[int, list[socket.socket]]:
    """``count`` consecutive listening ports on 127.0.0.1 (first port, sockets)."""
    for _ in range(50):
        first = socket.socket()
        first.bind(("127.0.0.1", 0))
        base = first.getsockname()[1]
        held = [first]
        try:
            for port in range(base + 1, base + count + 2):  # the held ones, then one free
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                held.append(s)
        except OSError:
            for s in held:
                s.close()
            continue
        held.pop().close()  # base+count stays free for the plugin
        for s in held:
            s.listen()
        return base, held
    raise AssertionError("could not find consecutive free ports")


def test_tcp_within_port_range(plugins: list[PluginProc]) -> None:
    base, held = _busy_ports(2)
    try:
        p = start(plugins, {"PLUGBAY_LISTEN": "tcp", "PLUGIN_MIN_PORT": str(base),
                            "PLUGIN_MAX_PORT": str(base + 5)})
        info = p.handshake()
    finally:
        for s in held:
            s.close()
    assert info.network == "tcp"
    host, port = info.address.rsplit(":", 1)
    assert host == "127.0.0.1" and base + 2 <= int(port) <= base + 5
    ch = p.channel(info)
    assert health(ch) == health_pb2.HealthCheckResponse.SERVING
    shutdown(ch)
    assert p.finish()[0] == 0


def test_port_range_exhausted(plugins: list[PluginProc]) -> None:
    base, held = _busy_ports(2)
    try:
        err = refused(plugins, {**COOKIE, "PLUGBAY_LISTEN": "tcp", "PLUGIN_MIN_PORT": str(base),
                                "PLUGIN_MAX_PORT": str(base + 1)})
    finally:
        for s in held:
            s.close()
    assert f"couldn't bind plugin TCP listener: no free port on 127.0.0.1 in {base}..{base + 1}" in err


@pytest.mark.parametrize("env, expected", [
    ({"PLUGIN_MIN_PORT": "20", "PLUGIN_MAX_PORT": "10"},
     "PLUGIN_MIN_PORT value of 20 is greater than PLUGIN_MAX_PORT value of 10"),
    ({"PLUGIN_MIN_PORT": "ten"}, "couldn't get value from PLUGIN_MIN_PORT: 'ten' is not a port number"),
])
def test_bad_port_range(plugins: list[PluginProc], env: dict[str, str], expected: str) -> None:
    assert expected in refused(plugins, {**COOKIE, "PLUGBAY_LISTEN": "tcp", **env})


def test_plugbay_listen_tcp_announces_that_address(plugins: list[PluginProc]) -> None:
    p = start(plugins, {"PLUGBAY_LISTEN": "tcp:127.0.0.1:0"})
    info = p.handshake()
    assert info.network == "tcp" and info.address.startswith("127.0.0.1:")
    assert int(info.address.rsplit(":", 1)[1]) > 0
    ch = p.channel(info)
    assert health(ch) == health_pb2.HealthCheckResponse.SERVING
    shutdown(ch)
    assert p.finish()[0] == 0


def test_plugbay_listen_unix_path(plugins: list[PluginProc], tmp_path: Path) -> None:
    path = tmp_path / "fixed.sock"
    p = start(plugins, {"PLUGBAY_LISTEN": f"unix:{path}"})
    info = p.handshake()
    assert (info.network, info.address) == ("unix", str(path))
    shutdown(p.channel(info))
    assert p.finish()[0] == 0
    assert not path.exists()


@pytest.mark.parametrize("value", ["bogus", "tcp:4000", "tcp:host:port", "unix:", "udp:1.2.3.4:5"])
def test_bad_plugbay_listen(plugins: list[PluginProc], value: str) -> None:
    err = refused(plugins, {**COOKIE, "PLUGBAY_LISTEN": value})
    assert f"PLUGBAY_LISTEN={value!r} is not a listen address; use 'tcp:HOST:PORT'" in err


def test_unix_path_too_long(plugins: list[PluginProc]) -> None:
    err = refused(plugins, {**COOKIE, "PLUGBAY_LISTEN": "unix:/tmp/" + "x" * 120})
    assert "longer than the 107 bytes the OS allows" in err


def test_multiplex_field_only_when_asked(plugins: list[PluginProc]) -> None:
    plain = start(plugins).handshake_line()
    assert len(plain.split("|")) == 6
    asked = start(plugins, {"PLUGIN_MULTIPLEX_GRPC": "true"}).handshake_line()
    assert asked.split("|")[4:] == ["grpc", "", "true"]
    not_asked = start(plugins, {"PLUGIN_MULTIPLEX_GRPC": "false"}).handshake_line()
    assert len(not_asked.split("|")) == 6


# ---------------------------------------------------------------- versions


@pytest.mark.parametrize("host, expected", [("1,2,3", 3), ("2", 2), ("1,2", 2), ("7,8", 2), ("", 2)])
def test_version_negotiation(plugins: list[PluginProc], host: str, expected: int) -> None:
    p = start(plugins, {"PROBE_VERSIONS": "2,3", "PLUGIN_PROTOCOL_VERSIONS": host})
    info = p.handshake()
    assert info.app_version == expected  # no common version: the lowest, so the host reports it
    if expected in {int(v) for v in host.split(",") if v}:
        kv = kv_pb2_grpc.KVStub(p.channel(info))
        kv.Put(kv_pb2.PutRequest(key="x", value=b"y"), timeout=10)


def test_non_numeric_versions_are_refused(plugins: list[PluginProc]) -> None:
    err = refused(plugins, {**COOKIE, "PLUGIN_PROTOCOL_VERSIONS": "1,two"})
    assert "PLUGIN_PROTOCOL_VERSIONS holds 'two', which is not a version number" in err


# ---------------------------------------------------------------- plugin registration


def test_registration_error(plugins: list[PluginProc]) -> None:
    err = refused(plugins, {**COOKIE, "PROBE_BAD": "register"})
    assert "error registering 'kv_grpc': the probe refuses to register" in err


def test_not_a_grpc_plugin(plugins: list[PluginProc]) -> None:
    err = refused(plugins, {**COOKIE, "PROBE_BAD": "notgrpc"})
    assert "'kv_grpc' is not a GRPC-compatible plugin" in err


# ---------------------------------------------------------------- signals


def test_sigterm_stops_gracefully(plugins: list[PluginProc]) -> None:
    p = start(plugins)
    info = p.handshake()
    assert health(p.channel(info)) == health_pb2.HealthCheckResponse.SERVING
    p.proc.send_signal(signal.SIGTERM)
    code, err = p.finish()
    assert code == 0, err
    assert not os.path.exists(info.address)
    assert "plugin received SIGTERM, stopping" in err


def test_sigint_is_ignored_like_go_plugin(plugins: list[PluginProc]) -> None:
    p = start(plugins)
    info = p.handshake()
    ch = p.channel(info)
    p.proc.send_signal(signal.SIGINT)
    with pytest.raises(subprocess.TimeoutExpired):
        p.proc.wait(1.0)  # still running: the host decides when a plugin stops
    assert health(ch) == health_pb2.HealthCheckResponse.SERVING
    shutdown(ch)
    assert p.finish()[0] == 0


# ---------------------------------------------------------------- stdio and logs


def _collect(ch: grpc.Channel, want: dict[int, bytes], limit: float = 20) -> dict[int, bytes]:
    """Read StreamStdio until each channel's data ends with ``want`` (bounded in time)."""
    got = {STDOUT: b"", STDERR: b""}
    call = grpc_stdio_pb2_grpc.GRPCStdioStub(ch).StreamStdio(empty_pb2.Empty(), timeout=limit)
    try:
        for item in call:
            got[item.channel] += item.data
            if all(got[c].endswith(w) for c, w in want.items()):
                break
    finally:
        call.cancel()
    return got


def test_stdio_is_captured_in_order_and_logs_stay_separate(plugins: list[PluginProc]) -> None:
    p = start(plugins)
    info = p.handshake()
    ch = p.channel(info)
    kv = kv_pb2_grpc.KVStub(ch)
    writes = [("out", "py-out-1\n"), ("err", "py-err-1\n"), ("fd1", "fd-out-2\n"), ("fd2", "fd-err-2\n"),
              ("sub", "echo child-out-3; echo child-err-3 >&2"), ("log", "a log record"),
              ("out", "py-out-4\n"), ("err", "py-err-4\n")]
    for key, value in writes:  # before the host reads: kept in the buffer
        kv.Put(kv_pb2.PutRequest(key=key, value=value.encode()), timeout=20)
    got = _collect(ch, {STDOUT: b"py-out-4\n", STDERR: b"py-err-4\n"})
    assert got[STDOUT] == b"py-out-1\nfd-out-2\nchild-out-3\npy-out-4\n"
    assert got[STDERR] == b"py-err-1\nfd-err-2\nchild-err-3\npy-err-4\n"
    # output written while the stream is open arrives too
    kv.Put(kv_pb2.PutRequest(key="out", value=b"late\n"), timeout=20)
    assert _collect(ch, {STDOUT: b"late\n"})[STDOUT] == b"late\n"
    shutdown(ch)
    code, err = p.finish()
    assert code == 0
    records = [json.loads(line) for line in err.splitlines()]  # every stderr line is an hclog record
    probe = [r for r in records if r.get("@module") == "probe"]
    assert len(probe) == 1 and probe[0]["@message"] == "a log record" and probe[0]["probe"] is True
    assert probe[0]["@level"] == "info"
    assert all(set(r) >= {"@level", "@message", "@timestamp"} for r in records)
    assert b"a log record" not in got[STDERR]


def test_hclog_timestamp_layout_is_go_plugins(plugins: list[PluginProc]) -> None:
    import re

    p = start(plugins)
    ch = p.channel(p.handshake())
    kv_pb2_grpc.KVStub(ch).Put(kv_pb2.PutRequest(key="log", value=b"stamp"), timeout=10)
    shutdown(ch)
    _, err = p.finish()
    record = next(json.loads(line) for line in err.splitlines() if "stamp" in line)
    # go-plugin 1.0.1 parses "2006-01-02T15:04:05.000000Z07:00"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", record["@timestamp"])


def test_stdio_buffer_is_bounded_and_writers_never_block(plugins: list[PluginProc]) -> None:
    p = start(plugins, {"PROBE_STDIO_MAX": str(64 * 1024)})
    ch = p.channel(p.handshake())
    kv = kv_pb2_grpc.KVStub(ch)
    block = b"".join(b"%07d\n" % i for i in range(8192))  # 64 KiB of numbered lines
    for _ in range(16):  # 1 MiB with nobody reading: must not block the plugin
        kv.Put(kv_pb2.PutRequest(key="fd1", value=block), timeout=20)
    kv.Put(kv_pb2.PutRequest(key="fd1", value=b"THE-END\n"), timeout=20)
    got = _collect(ch, {STDOUT: b"THE-END\n"})[STDOUT]
    assert len(got) <= 64 * 1024
    assert got.endswith(block[-4096:] + b"THE-END\n")  # the newest output is kept
    shutdown(ch)
    _, err = p.finish()
    assert err.count("stdio buffer full: dropping the oldest output") == 1  # once per episode


# ---------------------------------------------------------------- AutoMTLS


def test_automtls_with_grpcio_tls(plugins: list[PluginProc]) -> None:
    client = tlsmod.generate_cert()
    p = start(plugins, {"PLUGIN_CLIENT_CERT": client.cert_pem.decode()})
    info = p.handshake()
    assert info.server_cert is not None
    server_pem = tlsmod.der_to_pem(info.server_cert)
    creds = grpc.ssl_channel_credentials(root_certificates=server_pem, private_key=client.key_pem,
                                         certificate_chain=client.cert_pem)
    ch = p.channel(info, creds)
    assert health(ch) == health_pb2.HealthCheckResponse.SERVING
    # a client without the certificate the host announced is refused
    stranger = tlsmod.generate_cert()
    bad = p.channel(info, grpc.ssl_channel_credentials(root_certificates=server_pem,
                                                       private_key=stranger.key_pem,
                                                       certificate_chain=stranger.cert_pem))
    with pytest.raises(grpc.RpcError) as err:
        health(bad)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    plain = p.channel(info)
    with pytest.raises(grpc.RpcError):
        health(plain)
    shutdown(ch)
    assert p.finish()[0] == 0


def test_automtls_with_a_go_hosts_p521_cert_uses_openssl(plugins: list[PluginProc], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    client = tlsmod.generate_cert(ec.SECP521R1())
    p = start(plugins, {"PLUGIN_CLIENT_CERT": client.cert_pem.decode()})
    info = p.handshake()
    assert info.network == "unix" and info.server_cert is not None
    # What plugbay's host does facing such a peer: OpenSSL under a plaintext channel.
    ctx = tlsmod.client_context(client, tlsmod.der_to_pem(info.server_cert))
    front = open_listener("unix", str(tmp_path / "relay.sock"))
    relay = TLSRelay(front, (info.network, info.address), ctx, mode="originate")
    p.relays.append(relay)
    ch = p.channel(HandshakeInfo(1, 1, "unix", relay.address[1]))
    assert health(ch) == health_pb2.HealthCheckResponse.SERVING
    kv = kv_pb2_grpc.KVStub(ch)
    kv.Put(kv_pb2.PutRequest(key="tls", value=b"ok"), timeout=10)
    assert kv.Get(kv_pb2.GetRequest(key="tls"), timeout=10).value == b"ok"
    shutdown(ch)
    assert p.finish()[0] == 0
    assert not os.path.exists(info.address)


def test_bad_client_cert_is_refused(plugins: list[PluginProc]) -> None:
    err = refused(plugins, {**COOKIE, "PLUGIN_CLIENT_CERT": "not a certificate"})
    assert "PLUGIN_CLIENT_CERT does not hold a PEM certificate" in err



def test_health_watch_ends_at_shutdown(plugins: list[PluginProc]) -> None:
    p = start(plugins)
    ch = p.channel(p.handshake())
    watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="plugin"), timeout=20)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    shutdown(ch)
    rest = [r.status for r in watch]  # ends (status OK) instead of holding the stop up
    assert rest == [health_pb2.HealthCheckResponse.NOT_SERVING]
    assert p.finish()[0] == 0


def test_output_written_before_shutdown_reaches_the_stream(plugins: list[PluginProc]) -> None:
    p = start(plugins)
    ch = p.channel(p.handshake())
    kv = kv_pb2_grpc.KVStub(ch)
    stream = grpc_stdio_pb2_grpc.GRPCStdioStub(ch).StreamStdio(empty_pb2.Empty(), timeout=20)
    for i in range(50):
        kv.Put(kv_pb2.PutRequest(key="fd1" if i % 2 else "fd2", value=b"line %d\n" % i), timeout=10)
    shutdown(ch)
    got = {STDOUT: b"", STDERR: b""}
    for item in stream:  # the stream ends on its own once the plugin has drained its pipes
        got[item.channel] += item.data
    assert got[STDOUT] == b"".join(b"line %d\n" % i for i in range(1, 50, 2))
    assert got[STDERR] == b"".join(b"line %d\n" % i for i in range(0, 50, 2))
    assert p.finish()[0] == 0


def test_a_second_stdio_caller_takes_the_stream_over(plugins: list[PluginProc]) -> None:
    p = start(plugins)
    ch = p.channel(p.handshake())
    kv = kv_pb2_grpc.KVStub(ch)
    first = grpc_stdio_pb2_grpc.GRPCStdioStub(ch).StreamStdio(empty_pb2.Empty(), timeout=20)
    kv.Put(kv_pb2.PutRequest(key="out", value=b"one\n"), timeout=10)
    assert next(first).data == b"one\n"
    second = grpc_stdio_pb2_grpc.GRPCStdioStub(ch).StreamStdio(empty_pb2.Empty(), timeout=20)
    assert list(first) == []  # the earlier caller's stream ends cleanly once the new one is in
    kv.Put(kv_pb2.PutRequest(key="out", value=b"two\n"), timeout=10)
    assert next(second).data == b"two\n"
    second.cancel()
    shutdown(ch)
    assert p.finish()[0] == 0


def test_socket_in_a_setgid_folder_is_group_writable(plugins: list[PluginProc], tmp_path: Path) -> None:
    import grp

    shared = tmp_path / "shared"
    shared.mkdir()
    gid = grp.getgrnam("daemon").gr_gid
    os.chown(shared, -1, gid)
    shared.chmod(0o2770)  # what a runner prepares for a container user
    p = start(plugins, {"PLUGIN_UNIX_SOCKET_DIR": str(shared)})
    info = p.handshake()
    st = os.stat(info.address)
    assert st.st_gid == gid and stat.S_IMODE(st.st_mode) == 0o660
    shutdown(p.channel(info))
    assert p.finish()[0] == 0
    assert list(shared.iterdir()) == []


def test_unusable_socket_dir(plugins: list[PluginProc], tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    err = refused(plugins, {**COOKIE, "PLUGIN_UNIX_SOCKET_DIR": str(missing)})
    assert f"couldn't create the plugin's unix socket in {missing} (PLUGIN_UNIX_SOCKET_DIR)" in err
    assert "No such file or directory; point PLUGIN_UNIX_SOCKET_DIR at a writable folder" in err


def test_fixed_unix_path_reuses_a_stale_socket_but_not_a_live_one(plugins: list[PluginProc],
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "fixed.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crashed plugin leaves
    p = start(plugins, {"PLUGBAY_LISTEN": f"unix:{path}"})
    info = p.handshake()
    assert info.address == str(path)
    err = refused(plugins, {**COOKIE, "PLUGBAY_LISTEN": f"unix:{path}"})
    assert f"couldn't listen on unix socket {path}: another process is listening there" in err
    shutdown(p.channel(info))
    assert p.finish()[0] == 0
    path.write_text("not a socket")
    err = refused(plugins, {**COOKIE, "PLUGBAY_LISTEN": f"unix:{path}"})
    assert "a file that is not a socket is there" in err


def test_shutdown_lets_an_in_flight_call_finish(plugins: list[PluginProc], tmp_path: Path) -> None:
    p = start(plugins)
    ch = p.channel(p.handshake())
    kv = kv_pb2_grpc.KVStub(ch)
    marker = tmp_path / "started"
    slow = kv.Put.future(kv_pb2.PutRequest(key="sub", value=f"touch {marker}; sleep 0.5".encode()),
                         timeout=20)
    for _ in range(200):  # bounded: at most 20 s
        if marker.exists():
            break
        time.sleep(0.1)
    assert marker.exists()
    shutdown(ch)
    slow.result()  # completed inside the grace period, not cut off
    assert p.finish()[0] == 0


def test_protocol_version_follows_go_plugin() -> None:
    from kv_plugin_def import HANDSHAKE, KVPlugin

    from plugbay.core.errors import ConfigError
    from plugbay.core.server import ServeConfig, protocol_version

    a, b, c = KVPlugin(), KVPlugin(), KVPlugin()
    config = ServeConfig(HANDSHAKE, plugins={"kv": a}, versioned_plugins={1: {"kv": b}, 4: {"kv": c}})
    # `plugins` is the set for handshake.protocol_version (1) and wins over versioned_plugins[1]
    assert protocol_version(config, {"PLUGIN_PROTOCOL_VERSIONS": "1"}) == (1, {"kv": a})
    assert protocol_version(config, {"PLUGIN_PROTOCOL_VERSIONS": "1,4"}) == (4, {"kv": c})
    assert protocol_version(config, {"PLUGIN_PROTOCOL_VERSIONS": "2,3"}) == (1, {"kv": a})
    assert protocol_version(config, {}) == (1, {"kv": a})
    assert protocol_version(ServeConfig(HANDSHAKE), {"PLUGIN_PROTOCOL_VERSIONS": "1"}) == (1, {})
    with pytest.raises(ConfigError, match="'x', which is not a version number"):
        protocol_version(config, {"PLUGIN_PROTOCOL_VERSIONS": "x"})
