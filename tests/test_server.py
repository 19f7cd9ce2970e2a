"""serve(): cookie, listeners and the handshake line, versions, registration, AutoMTLS (real plugin processes)."""

from __future__ import annotations

import grp
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2
from plugbay.core.protocol import tls as tlsmod
from plugbay.core.protocol.handshake import HandshakeInfo, parse_handshake_line, parse_versions
from plugbay.core.plugin.server import COOKIE_MESSAGE, MISCONFIGURED_MESSAGE
from plugbay.core.transport.relay import TLSRelay
from plugbay.core.transport.secure import grpc_target
from plugbay.core.transport.sockets import open_listener
from tests.serverproc import (  # noqa: F401  (plugins is a fixture)
    COOKIE,
    KV_PLUGIN,
    PROBE,
    PluginProc,
    health,
    plugins,
    refused,
    shutdown,
    start,
)
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402  (on sys.path through tests.serverproc)


def test_missing_cookie_prints_go_plugins_message(plugins: list[PluginProc]) -> None:
    assert refused(plugins, {}, script=KV_PLUGIN) == COOKIE_MESSAGE
    assert COOKIE_MESSAGE.startswith("This binary is a plugin. These are not meant to be executed directly.\n")


def test_wrong_cookie_value_is_refused(plugins: list[PluginProc]) -> None:
    assert refused(plugins, {"BASIC_PLUGIN": "goodbye"}) == COOKIE_MESSAGE


def test_empty_cookie_in_config_is_a_misconfiguration(plugins: list[PluginProc]) -> None:
    err = refused(plugins, {**COOKIE, "PROBE_MISCONFIGURED": "1"})
    assert err == MISCONFIGURED_MESSAGE
    assert err.startswith("Misconfigured ServeConfig given to serve this plugin: no magic cookie")


def test_a_host_that_closed_stdout_before_the_line_gets_a_message_saying_so(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)  # the host's end of stdout, gone before the plugin prints its line
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "PROBE_"))}
    try:
        done = subprocess.run([sys.executable, str(PROBE)], stdout=write, stderr=subprocess.PIPE,
                              env={**env, **COOKIE, "PLUGIN_PROTOCOL_VERSIONS": "1",
                                   "PLUGIN_UNIX_SOCKET_DIR": str(tmp_path)}, timeout=60)
    finally:
        os.close(write)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "the handshake line could not be written to stdout" in err and "closed" in err, err
    assert "PLUGIN_UNIX_SOCKET_DIR" not in err  # not a folder or port problem
    assert list(tmp_path.iterdir()) == []  # its socket went too


@pytest.mark.parametrize("config", [None, {"handshake": None}])
def test_serve_refuses_what_is_not_a_serve_config(config: object) -> None:
    from plugbay import ConfigError, serve

    with pytest.raises(ConfigError, match=r"serve\(\) takes a ServeConfig, got .*; pass serve\(ServeConfig\("):
        serve(config)  # type: ignore[arg-type]  # it raised AttributeError


def test_the_plugin_sides_status_and_channel_numbers_are_the_generated_enums() -> None:
    # core/plugin/health.py and stdio.py name them without importing the generated code (it loads at
    # the first Check/StreamStdio call): they must stay the protos' numbers.
    from plugbay._proto.plugin import grpc_stdio_pb2
    from plugbay.core.plugin import health, stdio

    response = health_pb2.HealthCheckResponse
    assert (health.SERVING, health.NOT_SERVING, health.SERVICE_UNKNOWN) == (
        response.SERVING, response.NOT_SERVING, response.SERVICE_UNKNOWN)
    assert (stdio.STDOUT, stdio.STDERR) == (grpc_stdio_pb2.StdioData.STDOUT, grpc_stdio_pb2.StdioData.STDERR)


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
    assert info.value.details() == "unknown service 'nonexistent'"
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

    assert st.st_gid == grp.getgrnam("daemon").gr_gid
    assert stat.S_IMODE(st.st_mode) == 0o660
    shutdown(p.channel(info))
    assert p.finish()[0] == 0
    assert list(tmp_path.iterdir()) == []


def test_socket_in_a_setgid_folder_is_group_writable(plugins: list[PluginProc], tmp_path: Path) -> None:


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


def test_unknown_socket_group_fails(plugins: list[PluginProc], tmp_path: Path) -> None:
    err = refused(plugins, {**COOKIE, "PLUGIN_UNIX_SOCKET_DIR": str(tmp_path),
                            "PLUGIN_UNIX_SOCKET_GROUP": "no-such-group-plugbay"})
    assert "failed to find gid from 'no-such-group-plugbay'" in err
    assert list(tmp_path.iterdir()) == []


def test_unusable_socket_dir(plugins: list[PluginProc], tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    err = refused(plugins, {**COOKIE, "PLUGIN_UNIX_SOCKET_DIR": str(missing)})
    assert f"couldn't create the plugin's unix socket in {missing} (PLUGIN_UNIX_SOCKET_DIR)" in err
    assert "No such file or directory; point PLUGIN_UNIX_SOCKET_DIR at a writable folder" in err


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


def _port_in_time_wait() -> int:
    """A port whose last connection this side closed first: TIME_WAIT holds it for about a minute."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the killed plugin's (grpcio's)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the listening side closes first: its end waits out TIME_WAIT
            client.recv(1)
    return port


def test_port_range_port_in_time_wait_is_used(plugins: list[PluginProc]) -> None:
    # a plugin killed while its host was connected leaves its port so; the restarted plugin must
    # get it again, as grpcio's and Go's listeners (SO_REUSEADDR) do: the free-port probe refused it
    port = _port_in_time_wait()
    p = start(plugins, {"PLUGBAY_LISTEN": "tcp", "PLUGIN_MIN_PORT": str(port), "PLUGIN_MAX_PORT": str(port)})
    line = p.handshake_line()
    assert line, p.finish()[1]
    info = parse_handshake_line(line)
    assert info.address == f"127.0.0.1:{port}"
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


@pytest.mark.parametrize("address, why", [
    ("999.1.1.1:0", "'999.1.1.1' is no IP address or name that resolves"),
    ("192.0.2.1:0", "'192.0.2.1' is not an address of this machine"),  # TEST-NET-1: no machine's
])
def test_plugbay_listen_on_an_address_that_is_none_says_so(plugins: list[PluginProc], address: str,
                                                           why: str) -> None:
    # it said "free that port or choose another": no port would have done
    err = refused(plugins, {**COOKIE, "PLUGBAY_LISTEN": f"tcp:{address}"})
    assert f"couldn't bind plugin TCP listener on {address}: the address is invalid ({why}" in err, err
    assert "free that port" not in err


@pytest.mark.parametrize("env, expected", [
    ({"PLUGIN_MIN_PORT": "20", "PLUGIN_MAX_PORT": "10"},
     "PLUGIN_MIN_PORT value of 20 is greater than PLUGIN_MAX_PORT value of 10"),
    ({"PLUGIN_MIN_PORT": "ten"}, "couldn't get value from PLUGIN_MIN_PORT: 'ten' is not a port number"),
    ({"PLUGIN_MIN_PORT": "10", "PLUGIN_MAX_PORT": "70000"},
     "port range 10..70000 is outside 0..65535; fix PLUGIN_MIN_PORT/PLUGIN_MAX_PORT"),
])
def test_bad_port_range(plugins: list[PluginProc], env: dict[str, str], expected: str) -> None:
    assert expected in refused(plugins, {**COOKIE, "PLUGBAY_LISTEN": "tcp", **env})


@pytest.mark.parametrize("raw", [" 5000", "5000 ", "5_001", "\u0665\u0660\u0660\u0660", "+", "++5", "0x10",
                                 "2147483648", "-2147483649", "9" * 5000])
def test_a_port_bound_go_plugin_refuses_is_refused(raw: str) -> None:
    # go-plugin reads it with strconv.ParseInt(s, 10, 32): int() took spaces, '_' and other scripts' digits
    from plugbay.core.plugin.listener import plan_endpoint
    from plugbay.errors import ConfigError

    for name in ("PLUGIN_MIN_PORT", "PLUGIN_MAX_PORT"):
        with pytest.raises(ConfigError, match=f"couldn't get value from {name}: .* is not a port number"):
            plan_endpoint({"PLUGBAY_LISTEN": "tcp", "PLUGIN_MIN_PORT": "5000", "PLUGIN_MAX_PORT": "6000",
                           name: raw})


def test_a_port_bound_go_plugin_takes_is_taken() -> None:
    from plugbay.core.plugin.listener import plan_endpoint
    from plugbay.errors import ConfigError

    for low, high, expected in (("+5000", "+5001", (5000, 5001)), ("0005000", "-0", None), ("", "", (0, 0))):
        env = {"PLUGBAY_LISTEN": "tcp", "PLUGIN_MIN_PORT": low, "PLUGIN_MAX_PORT": high}
        if expected is None:  # read as Go does (5000 > 0), then refused as go-plugin refuses it
            with pytest.raises(ConfigError, match="PLUGIN_MIN_PORT value of 5000 is greater than PLUGIN_MAX_PORT"
                                                " value of 0"):
                plan_endpoint(env)
        else:
            assert plan_endpoint(env).port_range == expected


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


@pytest.mark.parametrize("value", ["bogus", "tcp:4000", "tcp:host:port", "unix:", "udp:1.2.3.4:5",
                                   # digits to str.isdigit() (the first a ValueError of int(), the second
                                   # taken as port 5000)
                                   "tcp:127.0.0.1:\u00b2", "tcp:127.0.0.1:\u0665\u0660\u0660\u0660"])
def test_bad_plugbay_listen(plugins: list[PluginProc], value: str) -> None:
    err = refused(plugins, {**COOKIE, "PLUGBAY_LISTEN": value})
    assert f"PLUGBAY_LISTEN={value!r} is not a listen address; use 'tcp:HOST:PORT'" in err


def test_a_plugbay_listen_port_past_65535_is_said_to_be_out_of_range(plugins: list[PluginProc]) -> None:
    err = refused(plugins, {**COOKIE, "PLUGBAY_LISTEN": "tcp:127.0.0.1:99999"})
    assert "PLUGBAY_LISTEN='tcp:127.0.0.1:99999': port 99999 is out of range 0-65535 (0: any free port)" in err


def test_plugbay_listen_port_is_ascii_digits_within_0_to_65535() -> None:
    from plugbay.core.plugin.listener import plan_endpoint
    from plugbay.errors import ConfigError

    for port in ("+80", "-1", " 80"):
        with pytest.raises(ConfigError, match="is not a listen address"):
            plan_endpoint({"PLUGBAY_LISTEN": f"tcp:127.0.0.1:{port}"})
    for port in ("65536", "9" * 5000):  # the last a ValueError of int() (over 4300 digits)
        with pytest.raises(ConfigError, match=r"port \d+(\.\.\.)? is out of range 0-65535"):
            plan_endpoint({"PLUGBAY_LISTEN": f"tcp:127.0.0.1:{port}"})
    for port, address in (("0", "127.0.0.1:0"), ("00080", "127.0.0.1:80"), ("65535", "127.0.0.1:65535")):
        assert plan_endpoint({"PLUGBAY_LISTEN": f"tcp:127.0.0.1:{port}"}).address == address


@pytest.mark.parametrize("value", ["unix:rel.sock", "unix:./sub/p.sock", "unix:~/p.sock"])
def test_plugbay_listen_relative_unix_path_is_refused(plugins: list[PluginProc], tmp_path: Path,
                                                      value: str) -> None:
    # it was bound and announced, and the host then refused the line (a handshake's unix path is absolute)
    err = refused(plugins, {**COOKIE, "PLUGBAY_LISTEN": value}, cwd=tmp_path)
    assert f"PLUGBAY_LISTEN={value!r} names a relative unix socket path" in err
    assert "give an absolute path" in err
    assert os.listdir(tmp_path) == []


def test_unix_path_too_long(plugins: list[PluginProc]) -> None:
    err = refused(plugins, {**COOKIE, "PLUGBAY_LISTEN": "unix:/tmp/" + "x" * 120})
    assert "longer than the 107 bytes the OS allows" in err


def test_a_socket_folder_too_long_for_the_fronts_private_socket_is_a_clear_refusal(
        plugins: list[PluginProc]) -> None:
    # the announced socket fits, the multiplexer's private .../plugbay-grpc-XXXXXXXX/grpc.sock did not:
    # serve() died with grpcio's RuntimeError traceback
    with tempfile.TemporaryDirectory(prefix="ln-") as top:
        folder = os.path.join(top, "d" * (80 - len(top) - 1))
        os.mkdir(folder)
        err = refused(plugins, {**COOKIE, "PLUGIN_PROTOCOL_VERSIONS": "1", "PLUGIN_MULTIPLEX_GRPC": "true",
                                "PLUGIN_UNIX_SOCKET_DIR": folder, "TMPDIR": folder}, script=KV_PLUGIN)
        left = os.listdir(folder)
    assert "Traceback" not in err, err
    assert "longer than the 107 bytes the OS allows" in err
    assert "set PLUGIN_UNIX_SOCKET_DIR (or TMPDIR) to a shorter directory" in err
    assert left == []


def test_multiplex_field_only_when_asked(plugins: list[PluginProc]) -> None:
    plain = start(plugins).handshake_line()
    assert len(plain.split("|")) == 6
    asked = start(plugins, {"PLUGIN_MULTIPLEX_GRPC": "true"}).handshake_line()
    assert asked.split("|")[4:] == ["grpc", "", "true"]
    not_asked = start(plugins, {"PLUGIN_MULTIPLEX_GRPC": "false"}).handshake_line()
    assert len(not_asked.split("|")) == 6


@pytest.mark.parametrize("host, expected", [("1,2,3", 3), ("2", 2), ("1,2", 2), ("7,8", 2), ("", 2)])
def test_version_negotiation(plugins: list[PluginProc], host: str, expected: int) -> None:
    p = start(plugins, {"PROBE_VERSIONS": "2,3", "PLUGIN_PROTOCOL_VERSIONS": host})
    info = p.handshake()
    assert info.app_version == expected  # no common version: the lowest, so the host reports it
    if expected in {int(v) for v in host.split(",") if v}:
        kv = kv_pb2_grpc.KVStub(p.channel(info))
        kv.Put(kv_pb2.PutRequest(key="x", value=b"y"), timeout=10)


def test_non_numeric_versions_are_skipped_with_go_plugins_message(plugins: list[PluginProc]) -> None:
    # go-plugin's server skips a piece it cannot read ("server sent invalid plugin version") and
    # serves the versions it could: a Go host sees the same from a Python plugin
    p = start(plugins, {"PLUGIN_PROTOCOL_VERSIONS": "1,two,\u0662"})
    info = p.handshake()
    assert info.app_version == 1
    shutdown(p.channel(info))
    code, err = p.finish()
    assert code == 0
    # Go's %q quoting, one message a line
    assert "server sent invalid plugin version \"two\"\n" in err and "invalid plugin version \"\u0662\"\n" in err


def test_protocol_version_follows_go_plugin() -> None:
    from kv_plugin_def import HANDSHAKE, KVPlugin

    from plugbay.errors import ConfigError
    from plugbay.core.plugin.server import ServeConfig, protocol_version

    a, b, c = KVPlugin(), KVPlugin(), KVPlugin()
    config = ServeConfig(HANDSHAKE, plugins={"kv": a}, versioned_plugins={1: {"kv": b}, 4: {"kv": c}})
    # `plugins` is the set for handshake.protocol_version (1) and wins over versioned_plugins[1]
    assert protocol_version(config, {"PLUGIN_PROTOCOL_VERSIONS": "1"}) == (1, {"kv": a})
    assert protocol_version(config, {"PLUGIN_PROTOCOL_VERSIONS": "1,4"}) == (4, {"kv": c})
    assert protocol_version(config, {"PLUGIN_PROTOCOL_VERSIONS": "2,3"}) == (1, {"kv": a})
    assert protocol_version(config, {}) == (1, {"kv": a})
    assert protocol_version(ServeConfig(HANDSHAKE), {"PLUGIN_PROTOCOL_VERSIONS": "1"}) == (1, {})
    assert protocol_version(config, {"PLUGIN_PROTOCOL_VERSIONS": "x,4"}) == (4, {"kv": c})  # 'x' skipped
    with pytest.raises(ConfigError, match="'x', which is not a version number"):
        parse_versions("x")  # the host's own settings stay strict


@pytest.mark.parametrize("host, chosen, refused", [
    ("1, 2", 1, ['" 2"']),  # strconv.Atoi strips nothing: go-plugin serves 1
    ("1,+2", 2, []),  # and takes a sign
    ("1,,2", 2, ['""']),  # an empty piece is refused (and reported) like any other
    ("2 ,1", 1, ['"2 "']),
    ("1,\t2,\x07,\u00a0", 1, ['"\\t2"', '"\\a"', '"\\u00a0"']),
    ("1,\udcff", 1, ['"\\xff"']),  # a byte that was no UTF-8, as Go quotes it
    ("", 1, []),  # no host versions: the lowest (go-plugin's last one tried)
])
def test_protocol_versions_are_read_as_go_plugins_server_reads_them(
        capsys: pytest.CaptureFixture[str], host: str, chosen: int, refused: list[str]) -> None:
    # go-plugin 1.0.1 protocolVersion(): strconv.Atoi per piece, fmt.Fprintf(os.Stderr,
    # "server sent invalid plugin version %q", s) for each refused one, then the highest common
    from kv_plugin_def import HANDSHAKE, KVPlugin

    from plugbay.core.plugin.server import ServeConfig, protocol_version

    config = ServeConfig(HANDSHAKE, versioned_plugins={1: {"kv": KVPlugin()}, 2: {"kv": KVPlugin()}})
    assert protocol_version(config, {"PLUGIN_PROTOCOL_VERSIONS": host})[0] == chosen
    out, err = capsys.readouterr()
    assert out == ""  # stdout is the handshake's
    assert err == "".join(f"server sent invalid plugin version {piece}\n" for piece in refused)


def test_registration_error(plugins: list[PluginProc]) -> None:
    err = refused(plugins, {**COOKIE, "PROBE_BAD": "register"})
    assert "error registering 'kv_grpc': the probe refuses to register" in err


def test_not_a_grpc_plugin(plugins: list[PluginProc]) -> None:
    err = refused(plugins, {**COOKIE, "PROBE_BAD": "notgrpc"})
    assert "'kv_grpc'] (object) is not a GRPC-compatible plugin" in err


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


@pytest.mark.parametrize("value", ["not a certificate", "abc\udcff"], ids=["text", "undecodable-bytes"])
def test_bad_client_cert_is_refused(plugins: list[PluginProc], value: str) -> None:
    """"abc\udcff" reaches the plugin as the bytes abc\xff (os.environ keeps what is not UTF-8 as
    surrogates): the same typed refusal, no traceback."""
    err = refused(plugins, {**COOKIE, "PLUGIN_CLIENT_CERT": value})
    assert "PLUGIN_CLIENT_CERT does not hold a PEM certificate" in err.splitlines()[-1], err
    assert "Traceback" not in err


@pytest.mark.parametrize("curve", ["P-256", "P-521"])
def test_a_client_cert_openssl_cannot_load_is_a_typed_refusal(plugins: list[PluginProc], curve: str) -> None:
    """A certificate whose outer DER frames parse but whose serial number is mistagged passes
    plugbay's own check, then is refused by TLS: by grpcio's (a plugbay host's P-256, where grpcio
    reports it only as a failed bind) or by OpenSSL in the relay's context, made on a thread (a
    go-plugin host's P-521). serve() must name the certificate, typed, with no traceback."""
    import base64

    from cryptography.hazmat.primitives.asymmetric import ec

    key_curve = ec.SECP256R1() if curve == "P-256" else ec.SECP521R1()
    der = bytearray(tlsmod.pem_to_der(tlsmod.generate_cert(key_curve).cert_pem))
    serial = der.index(b"\x02", 8)  # tbsCertificate: its optional [0] version, then the serial INTEGER
    der[serial] = 0x04
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)) + b"-----END CERTIFICATE-----\n"
    assert tlsmod.grpc_can_use(pem) == (curve == "P-256")  # plugbay's framing check accepts it
    err = refused(plugins, {**COOKIE, "PLUGIN_PROTOCOL_VERSIONS": "1", "PLUGIN_CLIENT_CERT": pem.decode()})
    assert "PLUGIN_CLIENT_CERT holds a certificate OpenSSL cannot load" in err.splitlines()[-1], err
    assert "Traceback" not in err


def test_a_failed_start_with_automtls_leaves_no_tls_context_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """AutoMTLS for a go-plugin host (its P-521 certificate: the OpenSSL relay) sets up its context on
    a thread; a start that fails after that (here a bad listen address) must not leave it behind."""
    import threading
    import time

    from cryptography.hazmat.primitives.asymmetric import ec

    from plugbay import HandshakeConfig, ServeConfig
    from plugbay.core.plugin.server import _PluginServer
    from plugbay.core.transport.secure import MutualTLS
    from plugbay.errors import ConfigError

    real = MutualTLS.relay_server_context

    def slow(self: MutualTLS, ctx: object) -> object:  # a loaded machine: the thread outlives the failure
        time.sleep(0.5)
        return real(self, ctx)  # type: ignore[arg-type]

    monkeypatch.setattr(MutualTLS, "relay_server_context", slow)

    host = tlsmod.generate_cert(ec.SECP521R1())
    env = {"PLUGIN_CLIENT_CERT": host.cert_pem.decode(), "PLUGBAY_LISTEN": "nowhere"}
    server = _PluginServer(ServeConfig(handshake=HandshakeConfig(1, "K", "V"), plugins={}), env)
    try:
        with pytest.raises(ConfigError, match="PLUGBAY_LISTEN='nowhere' is not a listen address"):
            server.start()
        assert server.tls is not None and server.tls.relay is not None  # the relay path was taken
    finally:
        server.close()
    assert [t.name for t in threading.enumerate() if t.name == "plugbay-tls-context"] == []


def test_a_percent_in_the_socket_folder_is_bound_where_it_is_announced(plugins: list[PluginProc]) -> None:
    # grpcio percent-decodes unix: targets: unencoded, '%41' would bind in a folder named 'A' instead
    with tempfile.TemporaryDirectory(prefix="pc-") as parent:
        folder, decoded = Path(parent) / "s%41", Path(parent) / "sA"
        folder.mkdir()
        decoded.mkdir()
        p = start(plugins, {"PLUGIN_UNIX_SOCKET_DIR": str(folder)})
        info = p.handshake()
        assert info.network == "unix" and os.path.dirname(info.address) == str(folder)
        assert Path(info.address).is_socket() and list(decoded.iterdir()) == []
        channel = grpc.insecure_channel(grpc_target("unix", info.address))  # dialed encoded too
        p.channels.append(channel)
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING
        shutdown(channel)
        assert p.finish()[0] == 0
        assert list(folder.iterdir()) == []


@pytest.mark.parametrize("front", [False, True], ids=["plain-grpc", "brokering-tls-front"])
def test_network_mode_on_a_unix_path_refuses_a_live_socket_and_reuses_a_stale_one(
        plugins: list[PluginProc], front: bool) -> None:
    from tests.netcerts import write_set

    with tempfile.TemporaryDirectory(prefix="nu-") as parent:
        path = os.path.join(parent, "svc.sock")
        if front:
            certs = write_set(Path(parent) / "tls")
            env = {"PLUGBAY_NETWORK_CERT": str(certs.cert_file), "PLUGBAY_NETWORK_KEY": str(certs.key_file),
                   "PLUGBAY_NETWORK_CLIENT_CA": str(certs.client_ca_file)}
        else:
            env = {"PLUGBAY_NETWORK_INSECURE": "1"}
        env["PLUGBAY_NETWORK_LISTEN"] = f"unix:{path}"
        other = socket.socket(socket.AF_UNIX)
        try:
            other.bind(path)
            other.listen(1)
            inode = os.stat(path).st_ino
            err = refused(plugins, {**COOKIE, **env})
            assert f"couldn't listen on unix socket {path}: another process is listening there" in err
            assert os.stat(path).st_ino == inode  # the other server keeps its path
        finally:
            other.close()  # its file stays, nobody listens: what a crashed plugin leaves
        p = start(plugins, env)
        info = p.handshake()
        assert (info.network, info.address) == ("unix", path)
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)  # the stale file was replaced by the plugin's live socket
        finally:
            probe.close()
        p.proc.terminate()
        assert p.finish()[0] == 0


def test_a_host_certificate_the_grpc_library_refuses_is_named_as_the_cause(plugins: list[PluginProc]) -> None:
    # OpenSSL takes it (junk digits in its validity); grpcio refuses it only as the port is added,
    # with "Failed to bind": the message must point at the certificate too, not only the address
    from plugbay.core.protocol import der

    cert = bytearray(tlsmod.generate_cert().cert_der)
    # the first UTCTime (tag 0x17, 13 bytes, digits and Z): not merely the first 0x17 byte, which a
    # random serial number holds in one certificate of about sixteen
    found = re.search(rb"\x17\x0d[0-9]{12}Z", cert)
    assert found is not None
    at = found.start()
    cert[at + 2:at + 4] = b"ZZ"
    der.certificate_key(bytes(cert))  # its outline still parses
    err = refused(plugins, {**COOKIE, "PLUGIN_PROTOCOL_VERSIONS": "1",
                            "PLUGIN_CLIENT_CERT": der.pem("CERTIFICATE", bytes(cert)).decode()})
    assert "check the host's certificate in PLUGIN_CLIENT_CERT" in err


def test_a_live_socket_with_a_full_backlog_is_not_taken_for_a_stale_one() -> None:
    # its connect answers EAGAIN, not "refused": the path is another server's, still listening
    from plugbay.core.transport.sockets import check_unix_path
    from plugbay.errors import ConfigError

    from tests.busy_socket import busy_listener

    with tempfile.TemporaryDirectory(prefix="bk-") as folder:
        path = os.path.join(folder, "busy.sock")
        with busy_listener(path):
            with pytest.raises(ConfigError, match="another process is listening there"):
                check_unix_path(path, "choose a shorter path")
            assert os.path.exists(path)
