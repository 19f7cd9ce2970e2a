"""The host side (Client) against real Python plugins run by plugbay.serve()."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import (  # noqa: E402
    AsyncClient,
    CallTimeoutError,
    ChecksumMismatchError,
    Client,
    ClientConfig,
    ClientStateError,
    ConfigError,
    HandshakeConfig,
    HandshakeError,
    HandshakeTimeoutError,
    MalformedHandshakeError,
    PlugbayError,
    PluginDiedError,
    PluginExitedError,
    ProtocolMismatchError,
    ReattachConfig,
    SecureConfig,
    UnknownPluginError,
    UnsupportedProtocolError,
    VersionMismatchError,
)
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from tests.procs import gone  # noqa: E402

PY = sys.executable
TRAP = str(REPO / "tests" / "plugins" / "trap_kv.py")
MISBEHAVE = str(REPO / "tests" / "plugins" / "misbehave.py")
PLUGINS = {PLUGIN_NAME: KVPlugin()}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the KV plugins write kv_<key> files in their cwd


def config(cmd: list[str] | None = None, **kw: object) -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=cmd or [PY, TRAP], **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("auto_mtls", [False, True])
def test_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auto_mtls: bool) -> None:
    monkeypatch.chdir(tmp_path)
    with Client(config(auto_mtls=auto_mtls)) as client:
        kv = client.dispense(PLUGIN_NAME)
        assert client.dispense(PLUGIN_NAME) is kv  # cached
        kv.put("greeting", b"hello \x00 world")
        assert kv.get("greeting") == b"hello \x00 world"
        assert (tmp_path / "kv_greeting").read_bytes() == b"hello \x00 world"
        assert client.negotiated_version == 1
        assert client.handshake.network == "unix"
        assert client.connection_mode == ("grpc-tls" if auto_mtls else "plaintext")
        assert (client.handshake.server_cert is not None) == auto_mtls
        env = json.loads(kv.get("__env__"))
        assert env["BASIC_PLUGIN"] == "hello"
        assert env["PLUGIN_PROTOCOL_VERSIONS"] == "1"
        assert env["PLUGIN_MIN_PORT"] == "10000" and env["PLUGIN_MAX_PORT"] == "25000"
        assert Path(env["PLUGIN_UNIX_SOCKET_DIR"]).is_dir()
        assert ("PLUGIN_CLIENT_CERT" in env) == auto_mtls
        assert "PLUGIN_MULTIPLEX_GRPC" not in env
        # the user's own stubs go through the Client's channel too
        health = health_pb2_grpc.HealthStub(client.channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="plugin")).status == \
            health_pb2.HealthCheckResponse.SERVING
        socket_dir = Path(env["PLUGIN_UNIX_SOCKET_DIR"])
        proc = client.runner
    assert not socket_dir.exists()
    assert proc.wait(0) == 0  # Shutdown made it exit by itself
    assert client.exited


def test_a_host_that_is_a_plugin_passes_on_none_of_its_hosts_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # a host run as a plugin by an AutoMTLS, multiplexing host has that host's variables in its environment;
    # a plugin inheriting them served TLS (and yamux) to this host, which dialled plaintext until start_timeout
    from plugbay.core.protocol.tls import generate_cert

    monkeypatch.setenv("PLUGIN_CLIENT_CERT", generate_cert().cert_pem.decode())
    monkeypatch.setenv("PLUGIN_MULTIPLEX_GRPC", "true")
    monkeypatch.setenv("PLUGIN_UNIX_SOCKET_GROUP", "99999999999")
    with Client(config(start_timeout=10)) as client:  # with them it waited this out: HandshakeTimeoutError
        assert client.connection_mode == "plaintext" and client.handshake.server_cert is None
        env = json.loads(client.dispense(PLUGIN_NAME).get("__env__"))
    assert not {"PLUGIN_CLIENT_CERT", "PLUGIN_MULTIPLEX_GRPC", "PLUGIN_UNIX_SOCKET_GROUP"} & set(env)
    assert env["BASIC_PLUGIN"] == "hello"  # the rest of the host's environment still reaches it
    with Client(config(auto_mtls=True, multiplex_broker=True)) as client:  # what this host asks for, it gets
        env = json.loads(client.dispense(PLUGIN_NAME).get("__env__"))
        assert env["PLUGIN_CLIENT_CERT"] != os.environ["PLUGIN_CLIENT_CERT"]
        assert env["PLUGIN_MULTIPLEX_GRPC"] == "true" and client.connection_mode == "grpc-tls"


def test_each_client_gets_a_fresh_certificate() -> None:
    with Client(config(auto_mtls=True)) as a, Client(config(auto_mtls=True)) as b:
        ca = json.loads(a.dispense(PLUGIN_NAME).get("__env__"))["PLUGIN_CLIENT_CERT"]
        cb = json.loads(b.dispense(PLUGIN_NAME).get("__env__"))["PLUGIN_CLIENT_CERT"]
        assert ca != cb
        assert a.handshake.server_cert != b.handshake.server_cert


def test_plugin_logs_reach_python_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="plugbay.plugin")
    with Client(config()) as client:
        assert client.dispense(PLUGIN_NAME).get("__log__") == b"logged"
    records = [r for r in caplog.records if r.name == "plugbay.plugin.trap_kv"
               and getattr(r, "plugin_module", "") == "trap_kv"]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.DEBUG, "debug line n=1"), (logging.INFO, "info line"),
        (logging.WARNING, "warn line"), (logging.ERROR, "error line")]


def test_grpc_stdio_goes_to_the_sinks() -> None:
    out: list[bytes] = []
    err: list[bytes] = []
    with Client(config(stdout_sink=out.append, stderr_sink=err.append)) as client:
        assert client.dispense(PLUGIN_NAME).get("__print__") == b"printed"
        deadline = time.monotonic() + 10
        while (b"to-stdout" not in b"".join(out) or b"to-stderr" not in b"".join(err)) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
    assert b"".join(out) == b"to-stdout\n"
    assert b"".join(err) == b"to-stderr\n"


def test_call_timeout_default_and_per_call() -> None:
    with Client(config(call_timeout=0.5)) as client:
        kv = client.dispense(PLUGIN_NAME)
        with pytest.raises(CallTimeoutError, match="exceeded its deadline") as info:
            kv.get("__hang__")
        assert isinstance(info.value, grpc.RpcError)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        stub = kv._stub
        from kvproto import kv_pb2
        with pytest.raises(CallTimeoutError, match="exceeded its deadline"):
            stub.Get(kv_pb2.GetRequest(key="__hang__"), timeout=0.2)
        kv.put("k", b"v")  # the channel still works afterwards
        assert kv.get("k") == b"v"


def test_plugin_killed_mid_call_fails_fast() -> None:
    with Client(config(call_timeout=60)) as client:
        kv = client.dispense(PLUGIN_NAME)
        with pytest.raises(PluginDiedError, match="exited with code 9") as info:
            kv.get("__die__")
        assert isinstance(info.value, grpc.RpcError)
        deadline = time.monotonic() + 10
        while not client.exited and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.exited and client.exit_code == 9
        with pytest.raises(PluginDiedError, match="(?s)it exited with code 9.*start a new Client"):
            kv.get("x")


def test_plugin_killed_from_outside_during_a_hanging_call() -> None:
    import os
    import signal

    with Client(config(call_timeout=60)) as client:
        kv = client.dispense(PLUGIN_NAME)
        pid = int(client.runner.id)
        timer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))
        timer.start()
        try:
            with pytest.raises(PluginDiedError, match="SIGKILL|code -9"):
                kv.get("__hang__")
        finally:
            timer.join()


def test_kill_is_idempotent_and_calls_after_kill_fail() -> None:
    client = Client(config())
    client.start()
    client.start()  # no effect
    kv = client.dispense(PLUGIN_NAME)
    client.kill()
    client.kill()
    with pytest.raises(ClientStateError, match="killed"):
        kv.get("a")
    with pytest.raises(ClientStateError, match="killed"):
        client.dispense(PLUGIN_NAME)
    with pytest.raises(ClientStateError, match="was killed; make a new Client"):
        client.start()


def test_kill_before_start_and_properties_before_start() -> None:
    client = Client(config())
    with pytest.raises(ClientStateError, match="after start"):
        _ = client.handshake
    client.kill()


def test_unknown_dispense_name_lists_available() -> None:
    with Client(config()) as client:
        with pytest.raises(UnknownPluginError, match=r"'nope'.*\['kv_grpc'\]"):
            client.dispense("nope")


def test_versioned_plugins_pick_the_plugins_version() -> None:
    cfg = ClientConfig(handshake=HANDSHAKE, versioned_plugins={1: {}, 2: {}, 3: PLUGINS},
                       cmd=[PY, TRAP], env={"TRAP_VERSIONS": "2,3"})
    with Client(cfg) as client:
        assert client.negotiated_version == 3
        env = json.loads(client.dispense(PLUGIN_NAME).get("__env__"))
        assert env["PLUGIN_PROTOCOL_VERSIONS"] == "1,2,3"
    cfg = ClientConfig(handshake=HANDSHAKE, versioned_plugins={1: PLUGINS, 2: {}},
                       cmd=[PY, TRAP], env={"TRAP_VERSIONS": "2"})
    with Client(cfg) as client:
        assert client.negotiated_version == 2
        with pytest.raises(UnknownPluginError, match=r"\[\]"):
            client.dispense(PLUGIN_NAME)


def test_version_mismatch_lists_both_sides() -> None:
    cfg = ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[PY, MISBEHAVE, "line",
                       "1|7|unix|/nonexistent.sock|grpc|"])
    with pytest.raises(VersionMismatchError, match=r"host supports \[1\], plugin supports \[7\]"):
        with Client(cfg):
            pass


def test_plugin_without_the_cookie_explains_itself() -> None:
    wrong = HandshakeConfig(1, "OTHER_COOKIE", "x")
    cfg = ClientConfig(handshake=wrong, plugins=PLUGINS, cmd=[PY, TRAP], skip_host_env=True)
    with pytest.raises(PluginExitedError, match="(?s)code 1.*not meant to be executed directly") as info:
        with Client(cfg):
            pass
    assert info.value.exit_code == 1


def test_exit_before_handshake_shows_code_and_stderr() -> None:
    with pytest.raises(PluginExitedError, match="(?s)code 3.*fatal: no database configured") as info:
        Client(config([PY, MISBEHAVE, "exit"])).start()
    assert info.value.stderr_tail[-1] == "misbehave: fatal: no database configured"


def test_exit_while_a_grandchild_holds_stdout() -> None:
    with pytest.raises(PluginExitedError, match="(?s)code 4.*leaving a child behind"):
        with Client(config([PY, MISBEHAVE, "grandchild"], start_timeout=30)):
            pass


def test_exit_right_after_the_handshake(caplog: pytest.LogCaptureFixture) -> None:
    # a plain 5-field line although AutoMTLS was asked for: the host warns, then sees the exit
    cfg = config([PY, MISBEHAVE, "line-exit", "1|1|unix|/nonexistent/plugin.sock|grpc"], auto_mtls=True,
                 start_timeout=30)
    with pytest.raises(PluginExitedError, match=r"(?s)code 6 after printing its handshake line.*stopped serving"
                       r" \(or never served\)") as info:
        with Client(cfg):
            pass
    assert info.value.stderr_tail[-1] == "misbehave: served nothing, bye"
    assert any("sent no AutoMTLS certificate; connecting in plaintext" in r.getMessage()
               for r in caplog.records)


def test_stdout_closed_by_a_live_plugin_fails_without_waiting_for_the_timeout() -> None:
    client = Client(config([PY, MISBEHAVE, "close-out"], start_timeout=120))
    with pytest.raises(HandshakeError, match=r"(?s)closed its stdout without printing a handshake line but"
                       r" kept running, so it was killed.*does not close or redirect its stdout"):
        client.start()
    assert client.runner.wait(0) is not None
    client.kill()


def test_more_than_64_kib_on_stdout_before_a_newline_fails_without_waiting_for_the_timeout() -> None:
    # go-plugin's host gives up at once there too (bufio.Scanner: "token too long")
    client = Client(config([PY, "-c", "import os, time; os.write(1, b'a' * 300000); time.sleep(60)"],
                           start_timeout=20))
    began = time.monotonic()
    with pytest.raises(MalformedHandshakeError, match=r"(?s)wrote more than 65536 bytes to stdout before its first"
                       r" newline, so no handshake line can follow.*to stderr, not stdout"):
        client.start()
    assert time.monotonic() - began < 10
    assert client.runner.wait(5) is not None
    client.kill()


def test_handshake_timeout_kills_the_plugin() -> None:
    client = Client(config([PY, MISBEHAVE, "silent"], start_timeout=1.0))
    with pytest.raises(HandshakeTimeoutError, match=r"(?s)within 1.0s.*process \d+"):
        client.start()
    assert client.runner.wait(0) is not None
    client.kill()


@pytest.mark.parametrize("line, error, message", [
    ("hello, I am not a plugin", MalformedHandshakeError, "'hello, I am not a plugin'"),
    ("1|1|tcp|127.0.0.1:1234|netrpc", UnsupportedProtocolError, "netrpc"),
    ("2|1|tcp|127.0.0.1:1234|grpc", ProtocolMismatchError, "core API version"),
    ("1|1|udp|127.0.0.1:1|grpc", MalformedHandshakeError, "unknown address type"),
    ("1|1|unix|/x.sock|grpc|" + "QUFB" * 20, MalformedHandshakeError, "not a DER X.509 certificate"),
    # these used to be dialled: a bad port cost the whole start timeout, a relative path met the cwd
    ("1|1|tcp|127.0.0.1:abc|grpc", MalformedHandshakeError, "port 'abc' of tcp address '127.0.0.1:abc'"),
    ("1|1|unix|plugin.sock|grpc", MalformedHandshakeError, "unix socket path 'plugin.sock' is not absolute"),
])
def test_bad_handshake_lines(line: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        with Client(config([PY, MISBEHAVE, "line", line])):
            pass


def test_multiplex_requested_but_not_offered() -> None:
    with pytest.raises(ProtocolMismatchError, match="multiplexed gRPC broker"):
        with Client(config([PY, MISBEHAVE, "line", "1|1|unix|/x.sock|grpc|"], multiplex_broker=True)):
            pass


def test_a_multiplex_field_that_is_no_boolean_is_refused_where_the_host_asked_to_multiplex() -> None:
    with pytest.raises(MalformedHandshakeError, match="multiplex field 'v2' is not a boolean.*multiplex_broker=False"):
        with Client(config([PY, MISBEHAVE, "line", "1|1|unix|/x.sock|grpc||v2"], multiplex_broker=True)):
            pass


@pytest.mark.parametrize("kind", ["missing", "regular-file", "closed-port", "non-numeric", "no-port"])
def test_multiplexed_bad_announced_address_is_typed(tmp_path: Path, kind: str, closed_port: int) -> None:
    # the host's mux dials the announced address itself: each failure is a plugbay error
    regular = tmp_path / "not-a-socket"
    regular.write_text("x")
    address, error, message = {
        # no dial at all: as without multiplexing (tests/test_missing_socket.py)
        "missing": (f"unix|{tmp_path / 'gone.sock'}", HandshakeError, r"gone.sock' in its handshake line but never"
                    r" created it"),
        # a path that is there and no socket is refused before any dial (tests/test_missing_socket.py)
        "regular-file": (f"unix|{regular}", MalformedHandshakeError,
                         r"not-a-socket', but that path is a regular file, not a socket, so the host does not dial"),
        # proven before any dial, from the socket tables: waited for until start_timeout, as without multiplexing
        "closed-port": (f"tcp|127.0.0.1:{closed_port}", HandshakeTimeoutError, r"nothing listen"),
        "non-numeric": ("tcp|127.0.0.1:grpc", MalformedHandshakeError,
                        r"port 'grpc' of tcp address '127.0.0.1:grpc' is not a number in 1-65535"),
        "no-port": ("tcp|127.0.0.1", MalformedHandshakeError, r"'127.0.0.1' is not HOST:PORT \(no host or no port\)"),
    }[kind]
    client = Client(config([PY, MISBEHAVE, "line", f"1|1|{address}|grpc||true"], multiplex_broker=True,
                           start_timeout=10.0))
    with pytest.raises(error, match=message):
        client.start()
    assert client.runner.wait(5) is not None  # the plugin was stopped on the way out
    client.kill()


def test_secure_config(tmp_path: Path) -> None:
    script = tmp_path / "plugin.sh"
    script.write_text(f"#!/bin/sh\nexec {PY} {TRAP}\n")
    script.chmod(0o755)
    good = SecureConfig(hashlib.sha256(script.read_bytes()).digest())
    with Client(config([str(script)], secure_config=good)) as client:
        client.dispense(PLUGIN_NAME).put("a", b"b")
    bad = SecureConfig(hashlib.sha256(b"something else").digest())
    client = Client(config([str(script)], secure_config=bad))
    with pytest.raises(ChecksumMismatchError, match="checksums did not match.*plugin.sh"):
        client.start()
    client.kill()
    with pytest.raises(ConfigError, match="32 bytes"):
        SecureConfig(b"short")
    with pytest.raises(ConfigError, match="needs the expected checksum"):
        SecureConfig(b"")
    with pytest.raises(ConfigError, match="unknown hash"):
        SecureConfig(b"x" * 32, hash="nohash")


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS))
    with pytest.raises(ConfigError, match="exactly one"):
        Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=["x"], reattach=ReattachConfig(
            handshake=__import__("plugbay").HandshakeInfo(1, 1, "unix", "/x"))))
    with pytest.raises(ConfigError, match="min_port 30000 is above max_port 20000"):
        Client(config(min_port=30000, max_port=20000))
    with pytest.raises(ConfigError, match="multiplexed broker cannot be used with reattach"):
        Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, multiplex_broker=True, reattach=ReattachConfig(
            handshake=__import__("plugbay").HandshakeInfo(1, 1, "unix", "/x"))))


@pytest.mark.parametrize("auto_mtls", [False, True])
def test_reattach(auto_mtls: bool) -> None:
    first = Client(config(auto_mtls=auto_mtls))
    try:
        first.start()
        first.dispense(PLUGIN_NAME).put("shared", b"state")
        text = first.reattach_config().to_json()
        reattach = ReattachConfig.from_json(text)
        assert reattach.version == 1 and reattach.protocol == "grpc"
        assert (reattach.client_cert is not None) == auto_mtls
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=reattach))
        with second:
            assert second.dispense(PLUGIN_NAME).get("shared") == b"state"
            assert second.runner.id == first.runner.id
        # the second client's kill() shut the plugin down
        assert first.runner.wait(10) is not None
    finally:
        first.kill()


def test_no_reattach_config_once_kill_stopped_the_plugin() -> None:
    # it gave a config naming the dead plugin's pid and socket; close() of a reattached client leaves the
    # plugin running, so that one's config still holds
    first = Client(config([PY, str(REPO / "examples" / "kv" / "plugin.py")]))
    try:
        first.start()
        saved = first.reattach_config()
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=saved))
        second.start()
        second.close()
        assert second.reattach_config().runner["pid"] == saved.runner["pid"]
        first.kill()
        assert gone(saved.runner["pid"])
        with pytest.raises(ClientStateError, match=r"plugin '.*' was killed, so there is nothing to reattach to;"
                                                   r" make a new Client"):
            first.reattach_config()
    finally:
        first.kill()


def test_no_reattach_config_once_an_async_client_killed_its_plugin() -> None:
    async def main() -> None:
        client = AsyncClient(config([PY, str(REPO / "examples" / "kv" / "plugin.py")]))
        await client.start()
        pid = client.reattach_config().runner["pid"]
        await client.kill()
        assert gone(pid)
        with pytest.raises(ClientStateError, match="was killed, so there is nothing to reattach to"):
            client.reattach_config()

    asyncio.run(main())


def test_no_reattach_config_after_a_failed_start() -> None:
    # refused after its handshake was read (it announced no certificate): the config named that plugin
    client = Client(config([PY, MISBEHAVE, "line", "1|1|unix|/nonexistent.sock|grpc|"], auto_mtls=True,
                           require_tls=True))
    with pytest.raises(HandshakeError):
        client.start()
    with pytest.raises(ClientStateError, match=r"failed to start, so there is nothing to reattach to"):
        client.reattach_config()


def test_no_reattach_config_once_the_plugin_exited_by_itself() -> None:
    # it gave a config naming the dead plugin's pid and socket, which a reattach then refused
    with Client(config([PY, str(REPO / "examples" / "kv" / "plugin.py")])) as client:
        pid = client.reattach_config().runner["pid"]
        os.kill(pid, signal.SIGKILL)
        assert client.runner.wait(10) is not None
        with pytest.raises(ClientStateError, match=r"has exited with code -9 \(killed by SIGKILL\), so there is"):
            client.reattach_config()


def test_kill_of_a_stopped_plugin_ends_it_by_sigterm_not_sigkill() -> None:
    # a SIGSTOPped plugin answers no Shutdown and acted on no SIGTERM: kill() waited out the Shutdown
    # and the whole grace, then SIGKILLed it; continued after the SIGTERM, it stops as asked
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, kill_grace=30,
                                 cmd=[PY, str(REPO / "examples" / "kv" / "plugin.py")]))
    client.start()
    try:
        client.dispense(PLUGIN_NAME).put("k", b"v")
        pid = client.reattach_config().runner["pid"]
        os.kill(pid, signal.SIGSTOP)
        client.kill()
        assert client.runner.wait(0) == 0  # its own graceful stop on SIGTERM, not -SIGKILL
    finally:
        client.kill()


def test_a_failed_reattach_says_the_config_it_was_given_holds() -> None:
    # a reattach that fails leaves the plugin as it was: not "failed to start ... make a new Client"
    first = Client(config([PY, str(REPO / "examples" / "kv" / "plugin.py")]))
    try:
        first.start()
        saved = first.reattach_config()
        os.kill(saved.runner["pid"], signal.SIGKILL)
        assert first.runner.wait(10) is not None
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=saved, start_timeout=5))
        with pytest.raises(PlugbayError):
            second.start()
        with pytest.raises(ClientStateError, match=r"attaching to plugin '.*' failed \(.*\); the ReattachConfig"):
            second.reattach_config()
    finally:
        first.kill()


def test_the_plugins_own_statuses_come_through_as_grpcs_errors() -> None:
    # README "Errors" and host-side.md say so: the plugin's answers are passed on as from any gRPC stub
    # (as go-plugin does), plugbay's own failures are PlugbayErrors
    cfg = config([PY, str(REPO / "examples" / "kv" / "plugin.py")])

    def check(err: BaseException, code: grpc.StatusCode) -> None:
        assert isinstance(err, grpc.RpcError) and not isinstance(err, PlugbayError), type(err).__mro__
        assert err.code() == code

    with Client(cfg) as client:
        kv = client.dispense(PLUGIN_NAME)
        with pytest.raises(grpc.RpcError) as missing:
            kv.get("missing")
        check(missing.value, grpc.StatusCode.NOT_FOUND)
        with pytest.raises(grpc.RpcError) as raised:
            kv.put("no/such/folder", b"x")  # the handler's open() raises
        check(raised.value, grpc.StatusCode.UNKNOWN)

    async def on_asyncio() -> None:
        async with AsyncClient(cfg) as client:
            kv = await client.dispense(PLUGIN_NAME)
            with pytest.raises(grpc.RpcError) as missing:
                await kv.get("missing")
            check(missing.value, grpc.StatusCode.NOT_FOUND)

    asyncio.run(on_asyncio())


def test_reattach_config_errors() -> None:
    with pytest.raises(ConfigError, match="not JSON"):
        ReattachConfig.from_json("{nope")
    with pytest.raises(ConfigError, match="not a plugbay reattach config"):
        ReattachConfig.from_json('{"runner": {}}')
    with pytest.raises(ConfigError, match="must be an object; pass ReattachConfig.to_json"):
        ReattachConfig.from_json('["not", "an", "object"]')
    # an edited handshake names what is wrong in it, not Python's words for it
    with pytest.raises(ConfigError, match=r"handshake facts must be a JSON object, got int 5; pass"):
        ReattachConfig.from_json('{"handshake": 5}')
    with pytest.raises(ConfigError, match=r"handshake facts lack the field 'network'; pass"):
        ReattachConfig.from_json('{"handshake": {"address": "/tmp/x"}}')


def test_go_plugins_reattach_json_is_refused_as_such() -> None:
    # go-plugin's own shape failed "not a plugbay reattach config (KeyError: 'handshake')": right to
    # refuse (it proves nothing), wrong not to say what it is; here it names a live plugbay plugin
    with Client(config()) as client:
        own = client.reattach_config().to_dict()
        go = {"Protocol": "grpc", "ProtocolVersion": 1, "Pid": own["runner"]["pid"], "Test": False,
              "Addr": {"Network": client.handshake.network, "String": client.handshake.address}}
        for given in (lambda: ReattachConfig.from_json(json.dumps(go)), lambda: ReattachConfig.from_dict(go)):
            with pytest.raises(ConfigError, match=r"go-plugin's ReattachConfig .*not plugbay's.* only to a plugin"
                               r" a plugbay host started.*Client.reattach_config\(\).to_json\(\)"):
                given()
        assert ReattachConfig.from_dict(own) == client.reattach_config()  # plugbay's own still loads


def test_start_failure_inside_with_cleans_up() -> None:
    client = Client(config([PY, MISBEHAVE, "line", "garbage"]))
    with pytest.raises(MalformedHandshakeError):
        with client:
            pass
    assert client.exited
    assert client.runner.wait(0) is not None


@pytest.mark.parametrize("auto_mtls", [False, True])
def test_multiplexed_broker(auto_mtls: bool) -> None:
    with Client(config(multiplex_broker=True, auto_mtls=auto_mtls)) as client:
        assert client.handshake.multiplex
        kv = client.dispense(PLUGIN_NAME)
        kv.put("m", b"muxed")
        assert kv.get("m") == b"muxed"
        assert json.loads(kv.get("__env__"))["PLUGIN_MULTIPLEX_GRPC"] == "true"


def test_channel_can_be_replaced_under_user_stubs() -> None:
    from plugbay.core.host.connect import dial
    from plugbay.core.host.channel import ManagedChannel

    with Client(config()) as a, Client(config()) as b:
        kv = a.dispense(PLUGIN_NAME)
        dir_a = json.loads(kv.get("__env__"))["PLUGIN_UNIX_SOCKET_DIR"]
        dir_b = json.loads(b.dispense(PLUGIN_NAME).get("__env__"))["PLUGIN_UNIX_SOCKET_DIR"]
        assert dir_a != dir_b
        managed = a.channel
        assert isinstance(managed, ManagedChannel)
        to_b = dial(b.handshake.network, b.handshake.address)
        old = managed.replace(to_b.channel)
        try:
            assert json.loads(kv.get("__env__"))["PLUGIN_UNIX_SOCKET_DIR"] == dir_b
        finally:
            managed.replace(old)  # type: ignore[arg-type]
            to_b.close()
        assert json.loads(kv.get("__env__"))["PLUGIN_UNIX_SOCKET_DIR"] == dir_a


def test_unreachable_address_times_out_on_health(tmp_path: Path) -> None:
    import socket

    stale = tmp_path / "stale.sock"  # a socket file no one listens on any more: dials are refused
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))
    client = Client(config([PY, MISBEHAVE, "line", f"1|1|unix|{stale}|grpc|"], start_timeout=2.0))
    # nothing to prove the plugin's (runners.ownsocket), waited for until the start timeout, as gRPC's redials were
    with pytest.raises(HandshakeTimeoutError, match="nothing listened at the unix address it announced .* within"
                                                    r" the start timeout \(2.0s\)"):
        client.start()
    with pytest.raises(ClientStateError, match="make a new Client"):
        client.start()  # a Client starts once
    client.kill()


def test_streaming_call_fails_fast_when_the_plugin_dies() -> None:
    import os
    import signal

    with Client(config(call_timeout=60)) as client:
        watch = health_pb2_grpc.HealthStub(client.channel).Watch(
            health_pb2.HealthCheckRequest(service="plugin"))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        os.kill(int(client.runner.id), signal.SIGKILL)
        with pytest.raises(PluginDiedError, match="SIGKILL|code -9"):
            next(watch)


def test_unix_socket_group_and_temp_dir() -> None:
    import shutil
    import tempfile

    parent = Path(tempfile.mkdtemp(prefix="sk-"))  # short: unix socket paths are limited to 107 bytes
    try:
        _group_and_temp_dir(parent)
    finally:
        shutil.rmtree(parent)


def _group_and_temp_dir(parent: Path) -> None:
    import grp
    import os
    import stat

    gid = grp.getgrnam("daemon").gr_gid if "daemon" in [g.gr_name for g in grp.getgrall()] else os.getgid()
    with Client(config(unix_socket_group=gid, unix_socket_temp_dir=str(parent))) as client:
        env = json.loads(client.dispense(PLUGIN_NAME).get("__env__"))
        socket_dir = Path(env["PLUGIN_UNIX_SOCKET_DIR"])
        assert socket_dir.parent == parent
        assert env["PLUGIN_UNIX_SOCKET_GROUP"] == str(gid)
        info = socket_dir.stat()
        assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, 0o770)
    assert list(parent.iterdir()) == []
    with pytest.raises(ConfigError, match="not a group"):
        Client(config(unix_socket_group="no-such-group-xyz")).start()


def test_a_relative_socket_temp_dir_is_made_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil
    import tempfile

    parent = Path(tempfile.mkdtemp(prefix="sk-"))  # short: unix socket paths are limited to 107 bytes
    try:
        monkeypatch.chdir(parent)
        (parent / "rel").mkdir()
        with Client(config(unix_socket_temp_dir="rel")) as client:
            env = json.loads(client.dispense(PLUGIN_NAME).get("__env__"))
            # the plugin may run in another folder (and a Go plugin resolves it against its own)
            assert Path(env["PLUGIN_UNIX_SOCKET_DIR"]).parent == parent / "rel"
            os.chdir("/")  # the host moves on while the plugin runs: kill() still finds the folder
        assert list((parent / "rel").iterdir()) == []
    finally:
        shutil.rmtree(parent)


def test_a_host_that_exits_without_kill_still_stops_its_plugin(tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'examples' / 'kv')!r})\n"
        "from kv_plugin_def import HANDSHAKE, KVPlugin\n"
        "from plugbay import Client, ClientConfig\n"
        f"c = Client(ClientConfig(HANDSHAKE, plugins={{'kv_grpc': KVPlugin()}}, cmd=[{PY!r}, {TRAP!r}]))\n"
        "c.start()\n"
        "print(c.runner.id, flush=True)\n"  # and exit without kill()
    )
    import subprocess

    out = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.strip())
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("auto_mtls", [False, True])
def test_tcp_transport(auto_mtls: bool) -> None:
    with Client(config(env={"PLUGBAY_LISTEN": "tcp:127.0.0.1:0"}, auto_mtls=auto_mtls)) as client:
        assert client.handshake.network == "tcp"
        assert client.handshake.address.startswith("127.0.0.1:")
        kv = client.dispense(PLUGIN_NAME)
        kv.put("t", b"over tcp")
        assert kv.get("t") == b"over tcp"
        assert client.connection_mode == ("grpc-tls" if auto_mtls else "plaintext")


def test_reattach_from_another_process() -> None:
    import os
    import subprocess

    first = Client(config(auto_mtls=True))
    try:
        first.start()
        first.dispense(PLUGIN_NAME).put("cross", b"process")
        script = (
            "import os, sys\n"
            f"sys.path.insert(0, {str(REPO / 'examples' / 'kv')!r})\n"
            "from kv_plugin_def import HANDSHAKE, KVPlugin\n"
            "from plugbay import Client, ClientConfig, ReattachConfig\n"
            "cfg = ClientConfig(HANDSHAKE, plugins={'kv_grpc': KVPlugin()},"
            " reattach=ReattachConfig.from_json(os.environ['REATTACH']))\n"
            "c = Client(cfg)\n"
            "print(c.dispense('kv_grpc').get('cross').decode(), flush=True)\n"
            "if sys.argv[1] == 'kill':\n"
            "    c.kill()\n"
        )
        env = {**os.environ, "REATTACH": first.reattach_config().to_json()}
        # a reattached client that exits without kill() disconnects and leaves the plugin running
        out = subprocess.run([PY, "-c", script, "leave"], env=env, capture_output=True, text=True, timeout=60)
        assert (out.returncode, out.stdout) == (0, "process\n"), out.stderr
        assert first.runner.wait(0.5) is None
        # kill() from a process that is not the plugin's parent (watched through /proc)
        out = subprocess.run([PY, "-c", script, "kill"], env=env, capture_output=True, text=True, timeout=60)
        assert (out.returncode, out.stdout) == (0, "process\n"), out.stderr
        assert first.runner.wait(10) == 0
    finally:
        first.kill()


def test_close_is_for_reattached_clients_only() -> None:
    with Client(config()) as client:
        with pytest.raises(ClientStateError, match="stop it with kill"):
            client.close()
        reattached = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS,
                                         reattach=client.reattach_config()))
        reattached.start()
        reattached.close()
        reattached.close()
        with pytest.raises(ClientStateError):
            reattached.dispense(PLUGIN_NAME)
        assert client.dispense(PLUGIN_NAME).get("__env__")  # the plugin still runs


def test_a_closed_reattached_client_says_it_was_closed_and_the_plugin_runs_on() -> None:
    # its refusals said "was killed; make a new Client" / "(the Client was killed)": the plugin runs on, and a
    # new Client would start a second one; what the user wants is another reattach
    with Client(config()) as client:
        reattached = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS,
                                         reattach=client.reattach_config()))
        kv = reattached.dispense(PLUGIN_NAME)
        reattached.close()
        with pytest.raises(ClientStateError) as refused:
            reattached.dispense(PLUGIN_NAME)
        with pytest.raises(ClientStateError) as failed:
            kv.get("__env__")
        for error in (refused.value, failed.value):
            assert "killed" not in str(error) and "was closed" in str(error), str(error)
            assert "the plugin runs on" in str(error) and "reattach a new Client" in str(error), str(error)
        assert isinstance(failed.value, grpc.RpcError) and failed.value.code() == grpc.StatusCode.CANCELLED
        assert client.dispense(PLUGIN_NAME).get("__env__")  # it does run on


def test_a_closed_reattached_client_whose_plugin_exited_does_not_say_it_runs_on() -> None:
    # the original Client kills the plugin, the reattached one learns of the exit, then is closed: its
    # dispense() said "the plugin runs on; reattach a new Client", and there is nothing left to reattach to
    client = Client(config())
    try:
        client.start()
        reattached = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=client.reattach_config()))
        reattached.dispense(PLUGIN_NAME)
    finally:
        client.kill()
    assert reattached.runner.wait(30) is not None  # the exit watch tells the Client as it tells the runner
    for _ in range(300):
        if reattached.exit_code is not None:
            break
        time.sleep(0.1)
    assert reattached.exit_code is not None
    reattached.close()
    with pytest.raises(ClientStateError) as refused:
        reattached.dispense(PLUGIN_NAME)
    said = str(refused.value)
    assert "runs on" not in said and "reattach a new" not in said, said
    assert "was closed, and the plugin has" in said and "make a new Client to run it again" in said, said


def test_kill_tears_down_even_when_saying_why_the_plugin_ended_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # kill() first reads why the plugin ended (its last stderr lines: the plugin's to write); a
    # failure there must not skip the teardown, or the plugin and its folder outlive the Client
    client = Client(config([PY, str(REPO / "examples" / "kv" / "plugin.py")]))
    client.start()
    folder, pid = client._tmpdir, client.reattach_config().runner["pid"]
    assert folder is not None and Path(folder).is_dir()
    channel = client._channel
    assert channel is not None

    def failing(*_: object) -> None:  # begin_close(brokered_open)
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(channel, "begin_close", failing)
    with pytest.raises(RecursionError):
        client.kill()
    assert not Path(folder).exists()
    assert client.runner.wait(10) is not None, f"plugin {pid} still runs"


def test_a_plugin_ended_by_a_real_time_signal_fails_calls_typed_and_is_described() -> None:
    # SIGRTMIN..SIGRTMAX are valid signals with no name in signal.Signals: describing such an
    # exit raised ValueError from calls, diagnose() and kill() (which then skipped its teardown)
    import os
    import signal

    client = Client(config([PY, str(REPO / "examples" / "kv" / "plugin.py")]))
    client.start()
    folder = client._tmpdir
    assert folder is not None
    try:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("a", b"1")
        pid = client.reattach_config().runner["pid"]
        os.kill(pid, signal.SIGRTMIN + 6)
        assert client.runner.wait(10) == -(signal.SIGRTMIN + 6)
        with pytest.raises(PluginDiedError, match=r"killed by SIGRTMIN\+6"):
            kv.get("a")
        assert "killed by SIGRTMIN+6" in client.runner.diagnose()  # type: ignore[attr-defined]
    finally:
        client.kill()
    assert not Path(folder).exists()
