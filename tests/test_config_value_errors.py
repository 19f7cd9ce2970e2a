"""SecureConfig, ReattachConfig, HandshakeConfig and ClientConfig given a wrong value: a ConfigError
naming the field, at construction, never a bare TypeError/ValueError/OSError from inside (nor a
caller's file descriptor read and closed)."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE  # noqa: E402

from plugbay import (  # noqa: E402
    Client,
    ClientConfig,
    ConfigError,
    HandshakeConfig,
    ReattachConfig,
    SecureConfig,
    ServeConfig,
)
from plugbay.core.protocol.handshake import HandshakeInfo, env_problem  # noqa: E402


def test_of_file_refuses_a_file_descriptor_and_leaves_it_open() -> None:
    read, write = os.pipe()
    try:
        os.write(write, b"somebody else's data")
        with pytest.raises(ConfigError, match=r"SecureConfig.of_file takes the path .* got int"):
            SecureConfig.of_file(read)  # type: ignore[arg-type]  # open() took it as an fd and closed it
        os.fstat(read)  # still the caller's
        assert os.read(read, 100) == b"somebody else's data"  # and unread
    finally:
        os.close(read)
        os.close(write)


def _loop(tmp_path: Path) -> str:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    return str(loop)


@pytest.mark.parametrize("path, says", [
    ("/tmp/\0x", "embedded null byte"),
    ("/" + "a" * 5000, "File name too long"),
    ("/etc/passwd/x", "Not a directory"),
    ("LOOP", "Too many levels of symbolic links"),
    (None, "takes the path of the plugin file .* got NoneType"),
    (b"/etc/passwd/x", "Not a directory"),  # a bytes path is read as the OS names files
])
def test_of_file_a_path_it_cannot_read_is_a_config_error(tmp_path: Path, path: Any, says: str) -> None:
    if path == "LOOP":
        path = _loop(tmp_path)
    with pytest.raises(ConfigError, match=says) as info:
        SecureConfig.of_file(path)
    assert len(str(info.value)) < 600  # a 5000-character path is cut in the message


def test_of_file_takes_a_path_like_and_checks_the_hash_name(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin"
    plugin.write_bytes(b"#!/bin/sh\n")
    assert SecureConfig.of_file(plugin).checksum == hashlib.sha256(b"#!/bin/sh\n").digest()
    assert SecureConfig.of_file(str(plugin), "sha512").checksum == hashlib.sha512(b"#!/bin/sh\n").digest()
    for bad in ("nope", None, 5, "shake_128"):  # a shake has no fixed digest size
        with pytest.raises(ConfigError, match="SecureConfig: unknown hash"):
            SecureConfig.of_file(plugin, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw, says", [
    ({"checksum": 5}, "checksum as raw digest bytes; got int 5"),
    ({"checksum": "ab" * 32}, r"raw digest bytes \(bytes.fromhex\(text\) for a hex string\)"),
    ({"checksum": b""}, "checksum as raw digest bytes"),
    ({"checksum": bytearray(31)}, "a sha256 digest is 32 bytes, got 31"),  # a bytearray is taken as bytes
    ({"checksum": b"\0" * 32, "hash": None}, "unknown hash None"),
    ({"checksum": b"\0" * 32, "hash": 256}, "unknown hash 256"),
    ({"checksum": b"\0" * 31}, "a sha256 digest is 32 bytes, got 31"),
    ({"checksum": b"\0" * 32, "path": 5}, "SecureConfig.path must be None .* got int 5"),
])
def test_secure_config_values(kw: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        SecureConfig(**kw)


_INFO = HandshakeInfo(1, 1, "unix", "/tmp/x.sock")


@pytest.mark.parametrize("kw, field", [
    ({"handshake": 5}, "handshake"),
    ({"handshake": None}, "handshake"),
    ({"handshake": _INFO, "runner": 5}, "runner"),
    ({"handshake": _INFO, "client_cert": "pem"}, "client_cert"),
    ({"handshake": _INFO, "name": 5}, "name"),
    ({"handshake": _INFO, "attach": 5}, "attach"),
])
def test_reattach_config_values(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"ReattachConfig\.{field} must be .*ReattachConfig.from_json"):
        ReattachConfig(**kw)


@pytest.mark.parametrize("given, says", [
    (None, r"from_json takes the JSON text, got NoneType; pass the text ReattachConfig.to_json\(\) gave"),
    (123, r"from_json takes the JSON text, got int 123; pass the text ReattachConfig.to_json\(\) gave"),
    ({"handshake": {}}, r"got a dict; pass the dict ReattachConfig.to_dict\(\) gave to ReattachConfig.from_dict"),
])
def test_reattach_from_json_given_no_text(given: Any, says: str) -> None:
    # json.loads raised a bare TypeError (None: an unset environment variable read with os.environ.get)
    with pytest.raises(ConfigError, match=says):
        ReattachConfig.from_json(given)


def test_reattach_from_dict_given_no_dict_and_from_json_given_bytes() -> None:
    with pytest.raises(ConfigError, match=r"from_dict takes a dict, got str '\{\}'; .*ReattachConfig.from_json"):
        ReattachConfig.from_dict("{}")  # type: ignore[arg-type]
    text = ReattachConfig(_INFO, {"kind": "ProcessRunner"}).to_json()
    assert ReattachConfig.from_json(text.encode()) == ReattachConfig.from_json(text)


def test_a_reattach_config_positional_handshake_of_a_wrong_type_never_reaches_client_config() -> None:
    with pytest.raises(ConfigError, match="ReattachConfig.handshake must be the plugin's HandshakeInfo, got int 5"):
        ClientConfig(handshake=HANDSHAKE, reattach=ReattachConfig(5))  # type: ignore[arg-type]
    assert ReattachConfig(_INFO, {"kind": "ProcessRunner"}).runner == {"kind": "ProcessRunner"}


@pytest.mark.parametrize("folder, says", [
    ("/tmp/\0", "unix_socket_temp_dir holds a NUL byte"),
    (Path("/tmp/\0x"), "unix_socket_temp_dir holds a NUL byte"),
    ("/tmp/\ud800", "unix_socket_temp_dir '/tmp/\\\\ud800' is no folder path"),
])
def test_unix_socket_temp_dir_a_path_cannot_hold(folder: Any, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        ClientConfig(handshake=HANDSHAKE, cmd=["true"], unix_socket_temp_dir=folder)
    ClientConfig(handshake=HANDSHAKE, cmd=["true"], unix_socket_temp_dir="/tmp/\udc80")  # a raw byte: a path


@pytest.mark.parametrize("key, value", [("A", "\ud800"), ("\ud800", "x"), ("K", "v\udfff")])
def test_a_cookie_with_a_lone_surrogate_is_refused_at_construction(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match="magic cookie .* holds a lone surrogate"):
        HandshakeConfig(1, key, value)


def test_an_environment_entry_with_a_lone_surrogate_is_named() -> None:
    assert "lone surrogate" in (env_problem("A", "\ud800") or "")
    assert env_problem("A", "\udc80") is None  # a raw byte (surrogateescape): the environment carries it


RAW_COOKIE_PLUGIN = f"""
import sys
sys.path.insert(0, {str(REPO / "examples" / "kv")!r})
from kv_plugin_def import PLUGIN_NAME, KVPlugin
from plugbay import HandshakeConfig, ServeConfig, serve
class Mem(dict):
    def put(self, k, v): self[k] = v
    def get(self, k): return self[k]
serve(ServeConfig(handshake=HandshakeConfig(1, "RAW_COOKIE", "v\\udcff"), plugins={{PLUGIN_NAME: KVPlugin(Mem())}}))
"""


def test_a_cookie_with_a_raw_byte_starts_a_process_plugin(in_tmp: Path) -> None:
    """'\\udcff' is how os.environ and argv show a byte that is not UTF-8: a process's environment
    carries it as that byte (it was refused as a lone surrogate)."""
    from kv_plugin_def import PLUGIN_NAME, KVPlugin

    handshake = HandshakeConfig(1, "RAW_COOKIE", "v\udcff")
    with Client(ClientConfig(handshake=handshake, plugins={PLUGIN_NAME: KVPlugin()}, start_timeout=20,
                             cmd=[sys.executable, "-c", RAW_COOKIE_PLUGIN])) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("a", b"1")
        assert kv.get("a") == b"1"


def test_a_client_with_a_surrogate_cookie_never_starts(tmp_path: Path) -> None:
    # The old failure: a RunnerError about a utf-8 codec at start, naming no cookie.
    with pytest.raises(ConfigError, match="HandshakeConfig's magic cookie"):
        with Client(ClientConfig(handshake=HandshakeConfig(1, "A", "\ud800"), cmd=[sys.executable, "-c", "pass"],
                                 start_timeout=5)):
            pass


@pytest.mark.parametrize("name, value", [
    ("call_timeout", 1e300), ("call_timeout", 10**400), ("start_timeout", 1e10), ("kill_grace", 2e9),
])
def test_a_client_wait_too_long_for_grpcio_or_threading_is_refused(name: str, value: float) -> None:
    # call_timeout=1e300 overflowed grpcio's deadline: every call failed at once as a timeout
    with pytest.raises(ConfigError, match=rf"ClientConfig.{name} .*at most 1000000000"):
        ClientConfig(handshake=HANDSHAKE, cmd=["true"], **{name: value})


@pytest.mark.parametrize("kw, says", [
    ({"grpc_server_options": 5}, "ServeConfig.grpc_server_options must be a list of .name, value. pairs"),
    ({"grpc_server_options": {"a": 1}}, "ServeConfig.grpc_server_options must be a list"),
    ({"grpc_server_options": [("a",)]}, "ServeConfig.grpc_server_options must be a list"),
    ({"logger": "x"}, "ServeConfig.logger must be a logging.Logger, got str 'x'"),
    ({"network": 5}, "ServeConfig.network must be a NetworkServe or None, got int 5"),
    ({"handshake": 5}, "ServeConfig.handshake must be a HandshakeConfig, got int 5"),
])
def test_serve_config_values(kw: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        ServeConfig(**{"handshake": HANDSHAKE, **kw})
    ServeConfig(HANDSHAKE, grpc_server_options=[("grpc.so_reuseport", 0)], logger=logging.getLogger("x"))


def _numpy_bool() -> object:
    np = pytest.importorskip("numpy", reason="numpy is not installed")
    return np.bool_(True)  # has __int__ and is no numbers.Number: grpcio would read it as a pointer


@pytest.mark.parametrize("value", [None, object(), 1 << 31, -(1 << 31) - 1, 1 << 70, 1.5, [1], _numpy_bool])
def test_a_grpc_option_value_grpcio_cannot_take_is_refused(value: object) -> None:
    value = value() if callable(value) and value is _numpy_bool else value
    # grpc.server() and grpc channels raised TypeError or OverflowError from grpcio's Cython (a float
    # passed there, read as a pointer's address)
    for make, name in ((lambda o: ServeConfig(HANDSHAKE, grpc_server_options=o), "ServeConfig.grpc_server_options"),
                       (lambda o: ClientConfig(handshake=HANDSHAKE, cmd=["true"], grpc_options=o),
                        "ClientConfig.grpc_options")):
        with pytest.raises(ConfigError, match=rf"{name}: option 'grpc.max_receive_message_length' has the value"):
            make([("grpc.max_receive_message_length", value)])


def test_grpc_option_values_grpcio_takes_pass() -> None:
    from grpc.experimental import session_cache

    options = [("grpc.max_receive_message_length", (1 << 31) - 1), ("grpc.so_reuseport", -(1 << 31)),
               ("grpc.enable_retries", True), ("grpc.primary_user_agent", "x"), (b"grpc.lb_policy_name", b"pick_first"),
               ("grpc.ssl_session_cache", session_cache.ssl_session_cache_lru(1))]  # a pointer object
    ServeConfig(HANDSHAKE, grpc_server_options=options)
    ClientConfig(handshake=HANDSHAKE, cmd=["true"], grpc_options=options)


def test_client_config_keeps_its_wording_for_options_and_logger() -> None:
    with pytest.raises(ConfigError, match=r"ClientConfig.grpc_options must be a list of \(name, value\) pairs"):
        ClientConfig(handshake=HANDSHAKE, cmd=["true"], grpc_options={"a": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ClientConfig.logger must be a logging.Logger, got str 'x'"):
        ClientConfig(handshake=HANDSHAKE, cmd=["true"], logger="x")  # type: ignore[arg-type]
