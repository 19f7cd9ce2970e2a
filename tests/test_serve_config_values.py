"""A plugin whose ServeConfig holds wrong gRPC server options, logger, network, max_workers or
stdio_buffer_bytes: a ConfigError naming the field (raised by ServeConfig(), or one line from serve() for a
field changed since), never a traceback from grpcio or logging (real plugin processes, started as a host
starts them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_PLUGIN = (
    "import sys\n"
    "sys.path[:0] = [{kv!r}, {src!r}]\n"
    "from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin\n"
    "from plugbay import ServeConfig, serve\n"
    "if sys.argv[1] == 'late':\n"
    "    config = ServeConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}})\n"
    "    setattr(config, sys.argv[2], eval(sys.argv[3]))\n"
    "else:\n"
    "    config = ServeConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}},\n"
    "                         **{{sys.argv[2]: eval(sys.argv[3])}})\n"
    "serve(config)\n"
).format(kv=str(REPO / "examples" / "kv"), src=str(REPO / "src"))

CASES = [
    ("grpc_server_options", "5", "ServeConfig.grpc_server_options must be a list of (name, value) pairs"),
    ("grpc_server_options", "{'a': 1}", "ServeConfig.grpc_server_options must be a list of (name, value) pairs"),
    # values grpc.server() failed on with grpcio's own traceback (TypeError, OverflowError)
    ("grpc_server_options", "[('grpc.max_receive_message_length', None)]",
     "ServeConfig.grpc_server_options: option 'grpc.max_receive_message_length' has the value NoneType"),
    ("grpc_server_options", "[('grpc.max_receive_message_length', object())]",
     "ServeConfig.grpc_server_options: option 'grpc.max_receive_message_length' has the value object"),
    ("grpc_server_options", "[('grpc.max_receive_message_length', 1 << 70)]",
     "ServeConfig.grpc_server_options: option 'grpc.max_receive_message_length' has the value int"),
    ("logger", "'x'", "ServeConfig.logger must be a logging.Logger, got str 'x'"),
    ("network", "5", "ServeConfig.network must be a NetworkServe or None, got int 5"),
    # refused by serve() only: ServeConfig() took them
    ("max_workers", "0", "ServeConfig.max_workers must be a positive int (the plugin's handlers that may run at"
                         " once), got 0"),
    ("max_workers", "'4'", "ServeConfig.max_workers must be a positive int"),
    ("max_workers", "True", "ServeConfig.max_workers must be a positive int"),
    ("stdio_buffer_bytes", "-1", "ServeConfig.stdio_buffer_bytes must be a whole number of bytes, 0 or more"),
    ("stdio_buffer_bytes", "1.5", "ServeConfig.stdio_buffer_bytes must be a whole number of bytes, 0 or more"),
]


def _run(tmp_path: Path, when: str, field: str, value: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_"))}
    env.update(BASIC_PLUGIN="hello", PLUGIN_PROTOCOL_VERSIONS="1", PLUGIN_UNIX_SOCKET_DIR=str(tmp_path),
               PYTHONDONTWRITEBYTECODE="1", **extra)
    return subprocess.run([sys.executable, "-c", _PLUGIN, when, field, value], env=env, cwd=tmp_path,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("field, value, says", CASES)
def test_serve_config_refuses_the_value(tmp_path: Path, field: str, value: str, says: str) -> None:
    done = _run(tmp_path, "at-construction", field, value)
    assert done.returncode == 1 and done.stdout == "", done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("plugbay.errors.ConfigError: " + says), done.stderr  # was TypeError/AttributeError
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field, value, says", CASES)
def test_serve_refuses_a_value_set_after_construction_in_one_line(tmp_path: Path, field: str, value: str,
                                                                  says: str) -> None:
    done = _run(tmp_path, "late", field, value)
    assert done.returncode == 1 and done.stdout == "", done.stderr  # no handshake line
    # no traceback: the line, and (no plugbay host set PLUGBAY_HOST_SESSION: a go-plugin host's, which logs
    # plain lines at DEBUG only) the same as an hclog JSON record at level error
    lines = done.stderr.splitlines()
    plain = lines[0]
    if field == "network":  # set: no go-plugin host launched a plugin meant for the network, no record
        assert plain.startswith(says) and len(lines) == 1, done.stderr
        return
    assert plain.startswith(says) and len(lines) == 2 and json.loads(lines[1])["@level"] == "error", done.stderr
    assert json.loads(lines[1])["@message"] == plain
    plugbay_host = _run(tmp_path, "late", field, value, PLUGBAY_HOST_SESSION="1:2")
    assert plugbay_host.stderr == plain + "\n"  # a plugbay host reads the line once
    assert list(tmp_path.iterdir()) == []  # no socket left behind
