"""A plugin program that closed its stdout before serve(): told at once, not a handshake lost or a traceback.

With fd 1 closed, the next descriptor serve() opened took its number and the handshake line went there:
the host waited for its start timeout while the plugin served unseen. With only sys.stdout closed (fd 1
still open), serve()'s capture stopped at sys.stdout.reconfigure() with a ValueError traceback, and in network
mode (no capture) its flush of sys.stdout before the handshake line did.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from plugbay import Client, ClientConfig, PluginExitedError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

PROGRAM = """
import os, sys
sys.path[:0] = [{kv!r}, {src!r}]
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import ServeConfig, serve


class Fixed:
    def get(self, key):
        return b"served"

    def put(self, key, value):
        pass


if sys.argv[1] == "fd":
    os.close(1)
else:
    sys.stdout.close()  # the object only: Python leaves fd 1 open
serve(ServeConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin(Fixed())}}))
"""


def client(tmp_path: Path, how: str) -> Client:
    program = tmp_path / "closer.py"
    program.write_text(PROGRAM.format(kv=str(REPO / "examples" / "kv"), src=str(REPO / "src")))
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                               cmd=[sys.executable, str(program), how], start_timeout=20))


def test_a_closed_stdout_descriptor_fails_the_setup_saying_so(tmp_path: Path) -> None:
    host = client(tmp_path, "fd")
    try:
        with pytest.raises(PluginExitedError) as failed:  # not the start timeout
            host.dispense(PLUGIN_NAME)
    finally:
        host.kill()
    assert "the plugin's stdout (file descriptor 1) was closed before serve()" in str(failed.value)


def test_a_closed_sys_stdout_object_still_serves(tmp_path: Path) -> None:
    host = client(tmp_path, "object")
    try:
        assert host.dispense(PLUGIN_NAME).get("k") == b"served"
    finally:
        host.kill()


def test_a_closed_sys_stdout_object_still_serves_on_the_network(tmp_path: Path) -> None:
    # serve() flushed sys.stdout before the handshake line: a ValueError out of the server's start, exit 1
    import grpc
    from kvproto import kv_pb2, kv_pb2_grpc

    from tests.test_network_serve import NetPlugin

    program = tmp_path / "closer.py"
    program.write_text(PROGRAM.format(kv=str(REPO / "examples" / "kv"), src=str(REPO / "src")))
    plugin = NetPlugin(tmp_path, {"PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0", "PLUGBAY_NETWORK_INSECURE": "1"},
                       argv=[sys.executable, str(program), "object"])  # raises if the plugin exits instead
    try:
        with grpc.insecure_channel(plugin.address) as channel:
            got = kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key="k"), timeout=20)
    finally:
        code, err = plugin.stop()
    assert got.value == b"served"
    assert code == 0, err


CLOSED_STDERR = """
import os, sys
sys.path[:0] = [{kv!r}, {src!r}]
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import ServeConfig, serve

os.close(2)
try:
    serve(ServeConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}}))
except BaseException as exc:
    print(type(exc).__name__, getattr(exc, "code", None), flush=True)
"""


def test_a_closed_stderr_descriptor_still_ends_the_setup_with_exit_1(tmp_path: Path) -> None:
    # the setup error's flush to the closed fd 2 raised OSError out of serve() instead of its SystemExit(1)
    import os
    import subprocess

    program = tmp_path / "closes_stderr.py"
    program.write_text(CLOSED_STDERR.format(kv=str(REPO / "examples" / "kv"), src=str(REPO / "src")))
    env = {**os.environ, HANDSHAKE.magic_cookie_key: HANDSHAKE.magic_cookie_value, "PLUGIN_PROTOCOL_VERSIONS": "1"}
    done = subprocess.run([sys.executable, str(program)], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout == "SystemExit 1\n"
