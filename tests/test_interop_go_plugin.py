"""Python host (plugbay Client) -> real go-plugin 1.0.1 Go plugins, built from Debian's sources.

The Go plugin's AutoMTLS certificate is P-521, which grpcio's TLS cannot
handshake with, so with AutoMTLS the Client must fall back to its OpenSSL relay
("relay-tls"), transparently. The error paths run real misbehaving Go plugins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import sys
from pathlib import Path

import grpc
import pytest

from tests import gobuild

_reason = gobuild.go_missing_reason()
pytestmark = [pytest.mark.go, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import (  # noqa: E402
    CallTimeoutError,
    ChecksumMismatchError,
    Client,
    ClientConfig,
    HandshakeConfig,
    HandshakeTimeoutError,
    MalformedHandshakeError,
    PluginDiedError,
    PluginExitedError,
    ReattachConfig,
    SecureConfig,
    UnknownPluginError,
    UnsupportedProtocolError,
    VersionMismatchError,
)

PLUGINS = {PLUGIN_NAME: KVPlugin()}


@pytest.fixture(scope="module")
def kv_plugin() -> str:
    return str(gobuild.build_go("kv_plugin"))


@pytest.fixture(scope="module")
def misbehave() -> str:
    return str(gobuild.build_go("misbehave"))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def cfg(cmd: str, mode: str | None = None, env: dict[str, str] | None = None, **kw: object) -> ClientConfig:
    env = dict(env or {})
    if mode is not None:
        env["MISBEHAVE_MODE"] = mode
        env.setdefault("MISBEHAVE_MAX_SECONDS", "60")
    return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[cmd], env=env, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("auto_mtls", [False, True])
def test_kv_round_trip(kv_plugin: str, tmp_path: Path, auto_mtls: bool) -> None:
    with Client(cfg(kv_plugin, auto_mtls=auto_mtls)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("hello", b"from python \xff")
        assert kv.get("hello") == b"from python \xff"
        assert (tmp_path / "kv_hello").read_bytes() == b"from python \xff"
        assert client.connection_mode == ("relay-tls" if auto_mtls else "plaintext")
        assert (client.handshake.server_cert is not None) == auto_mtls
        proc = client.runner
    assert proc.wait(0) == 0  # GRPCController.Shutdown ended the Go plugin gracefully
    assert list(tmp_path.iterdir()) == [tmp_path / "kv_hello"]


@pytest.mark.parametrize("auto_mtls", [False, True])
def test_env_and_reattach(misbehave: str, auto_mtls: bool) -> None:
    first = Client(cfg(misbehave, "kv", auto_mtls=auto_mtls))
    try:
        first.start()
        env = json.loads(first.dispense(PLUGIN_NAME).get("__env__"))
        assert env["BASIC_PLUGIN"] == "hello" and env["PLUGIN_PROTOCOL_VERSIONS"] == "1"
        assert ("PLUGIN_CLIENT_CERT" in env) == auto_mtls
        first.dispense(PLUGIN_NAME).put("k", b"v")
        reattach = ReattachConfig.from_json(first.reattach_config().to_json())
        with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=reattach)) as second:
            assert second.dispense(PLUGIN_NAME).get("k") == b"v"
        assert first.runner.wait(10) is not None
    finally:
        first.kill()


def test_hclog_lines_become_records(misbehave: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(5, logger="plugbay.plugin")
    with Client(cfg(misbehave, "kv", name="gokv")) as client:
        assert client.dispense(PLUGIN_NAME).get("__log__") == b"logged"
    got = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "plugbay.plugin.gokv"]
    assert (5, "trace message n=1") in got
    assert (logging.DEBUG, "debug message n=2") in got
    assert (logging.INFO, "info message key=value n=3") in got
    assert (logging.WARNING, "warn message n=4") in got
    assert (logging.ERROR, 'error message error="something broke" n=5') in got
    assert (logging.INFO, "a raw stderr line that is not JSON") in got
    rec = next(r for r in caplog.records if r.getMessage().startswith("warn message"))
    assert rec.plugin_module == "misbehave"  # type: ignore[attr-defined]
    assert rec.plugin_fields == {"n": 4}  # type: ignore[attr-defined]


@pytest.mark.parametrize("auto_mtls", [False, True])
def test_plugin_dies_mid_call(misbehave: str, auto_mtls: bool) -> None:
    with Client(cfg(misbehave, "kv", {"MISBEHAVE_EXIT_CODE": "42"}, auto_mtls=auto_mtls,
                    call_timeout=60)) as client:
        with pytest.raises(PluginDiedError, match="exited with code 42") as info:
            client.dispense(PLUGIN_NAME).get("__die__")
        assert isinstance(info.value, grpc.RpcError)
        assert "dying during a call" in str(info.value)


def test_a_go_panic_shows_its_panic_line(misbehave: str) -> None:
    # the error showed the last five stderr lines: the end of the goroutine dump, never what panicked
    with Client(cfg(misbehave, "kv", call_timeout=60)) as client:
        with pytest.raises(PluginDiedError, match="exited with code 2") as info:
            client.dispense(PLUGIN_NAME).get("__panic__")
        tail = client.stderr_tail()
    assert tail[-1] != "panic: misbehave: panicking during a call, as asked"  # a dump follows it
    message = str(info.value)
    assert "(last stderr: panic: misbehave: panicking during a call, as asked; …; " in message, message
    assert f"; {tail[-1]})" in message  # and the dump's last lines, as before


def test_deadline_maps_to_call_timeout(misbehave: str) -> None:
    with Client(cfg(misbehave, "kv", call_timeout=0.5)) as client:
        kv = client.dispense(PLUGIN_NAME)
        for _ in range(3):  # the Go server's own deadline may answer first (UNKNOWN): a timeout all the same
            with pytest.raises(CallTimeoutError, match="exceeded its deadline") as caught:
                kv.get("__hang__")
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # what retries and breakers count
        kv.put("after", b"ok")
        assert kv.get("after") == b"ok"


def test_wrong_cookie_shows_go_plugins_message(kv_plugin: str) -> None:
    wrong = ClientConfig(handshake=HandshakeConfig(1, "NOT_BASIC_PLUGIN", "x"), plugins=PLUGINS,
                         cmd=[kv_plugin])
    with pytest.raises(PluginExitedError, match="(?s)code 1.*This binary is a plugin") as info:
        with Client(wrong):
            pass
    assert info.value.exit_code == 1


def test_exit_before_handshake(misbehave: str) -> None:
    with pytest.raises(PluginExitedError, match="(?s)code 5.*disk on fire") as info:
        with Client(cfg(misbehave, "exit", {"MISBEHAVE_EXIT_CODE": "5",
                                            "MISBEHAVE_STDERR": "disk on fire"})):
            pass
    assert "disk on fire" in info.value.stderr_tail


def test_exit_before_handshake_shows_a_crash_line_further_back(misbehave: str) -> None:
    # the error keeps the last 20 stderr lines: a long goroutine dump pushed its panic line out
    dump = "\n".join(["panic: disk on fire", "", "goroutine 1 [running]:"]
                     + [f"main.frame{i}()\n\t/src/main.go:{i} +0x1" for i in range(15)])
    with pytest.raises(PluginExitedError, match="code 2") as info:
        with Client(cfg(misbehave, "exit", {"MISBEHAVE_EXIT_CODE": "2", "MISBEHAVE_STDERR": dump})):
            pass
    tail = info.value.stderr_tail
    assert tail[:2] == ["panic: disk on fire", "…"] and tail[-1] == "\t/src/main.go:14 +0x1", tail
    assert len(tail) == 22


def test_handshake_timeout(misbehave: str) -> None:
    client = Client(cfg(misbehave, "silent", start_timeout=1.5))
    with pytest.raises(HandshakeTimeoutError, match="(?s)within 1.5s.*misbehave starting"):
        client.start()
    assert client.runner.wait(0) is not None
    client.kill()


def test_malformed_line(misbehave: str) -> None:
    with pytest.raises(MalformedHandshakeError, match="'hello there'"):
        with Client(cfg(misbehave, "line", {"MISBEHAVE_LINE": "hello there"})):
            pass


def test_real_netrpc_plugin_is_refused(misbehave: str) -> None:
    with pytest.raises(UnsupportedProtocolError, match="netrpc.*serve gRPC"):
        with Client(cfg(misbehave, "netrpc")):
            pass


def test_version_mismatch(misbehave: str) -> None:
    # go-plugin 1.0.1 falls back to its lowest version when none is common
    with pytest.raises(VersionMismatchError, match=r"host supports \[1\], plugin supports \[2\]"):
        with Client(cfg(misbehave, "kv", {"MISBEHAVE_VERSIONS": "2,3"})):
            pass


def test_versioned_negotiation(misbehave: str) -> None:
    config = ClientConfig(handshake=HANDSHAKE, versioned_plugins={1: {}, 2: PLUGINS, 4: {}},
                          cmd=[misbehave], env={"MISBEHAVE_VERSIONS": "2,3"})
    with Client(config) as client:
        assert client.negotiated_version == 2
        assert json.loads(client.dispense(PLUGIN_NAME).get("__env__"))["PLUGIN_PROTOCOL_VERSIONS"] == "1,2,4"


def test_unknown_dispense_name(kv_plugin: str) -> None:
    with Client(cfg(kv_plugin)) as client:
        with pytest.raises(UnknownPluginError, match=r"'kv'.*\['kv_grpc'\]"):
            client.dispense("kv")


def test_checksum(kv_plugin: str) -> None:
    digest = hashlib.sha256(Path(kv_plugin).read_bytes()).digest()
    with Client(cfg(kv_plugin, secure_config=SecureConfig(digest))) as client:
        client.dispense(PLUGIN_NAME).put("a", b"b")
    client = Client(cfg(kv_plugin, secure_config=SecureConfig(bytes(32))))
    with pytest.raises(ChecksumMismatchError, match=f"found {digest.hex()}"):
        client.start()
    client.kill()


def test_lingering_plugin_is_force_killed(misbehave: str, caplog: pytest.LogCaptureFixture) -> None:
    client = Client(cfg(misbehave, "linger", kill_grace=0.5))
    client.start()
    client.dispense(PLUGIN_NAME).put("a", b"b")
    runner = client.runner
    client.kill()
    client.kill()
    # it ignored Shutdown, so after kill_grace it was killed, not waited for (MISBEHAVE_MAX_SECONDS)
    assert runner.wait(0) == -signal.SIGKILL
    assert any("did not exit within 0.5s of Shutdown; killing it" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("auto_mtls", [False, True])
def test_a_percent_in_the_hosts_socket_folder_reaches_the_go_plugin(kv_plugin: str, auto_mtls: bool) -> None:
    # the Go plugin binds the path as it is, and announces it so; grpcio would percent-decode
    # '%41' into 'A' when dialing (a TMPDIR or unix_socket_temp_dir named so is the host's to choose)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gp-") as parent:
        folder = Path(parent) / "h%41"
        folder.mkdir()
        with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[kv_plugin], auto_mtls=auto_mtls,
                                 unix_socket_temp_dir=str(folder))) as client:
            assert client.handshake.address.startswith(str(folder) + "/")
            kv = client.dispense(PLUGIN_NAME)
            kv.put("pct", b"v")
            assert kv.get("pct") == b"v"
        assert list(folder.iterdir()) == []
