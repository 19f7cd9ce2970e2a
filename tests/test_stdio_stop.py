"""GRPCStdio across a stop, against go-plugin's way of stopping: what a plugin wrote before it was
stopped reaches the other side, whichever side is go-plugin's.

tests/go/stdio_peer plays go-plugin's part (go-plugin 1.0.1 with GRPCStdio served and read as
go-plugin >= 1.4 does): as a plugin, its Shutdown is grpc's Server.Stop(), which cuts the connection
at once; as a host, it closes the connection as soon as Shutdown has answered.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay import Client, ClientConfig, ProcessRunner
from tests import gobuild
from tests.gobuild import build_go, run_program
from tests.test_stdio import Sink

_reason = gobuild.go_missing_reason()
pytestmark = [pytest.mark.go, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

PROBE = REPO / "tests" / "plugins" / "probe.py"
BULK = 512 * 1024  # far more than the plugin's pipe and grpcio's window hold at a time
LINES = [f"line-{i}\n".encode() for i in range(20)]


def _go_plugin_client(out: Sink, err: Sink) -> Client:
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                               runner=ProcessRunner([str(build_go("stdio_peer")), "plugin"]),
                               stdout_sink=out, stderr_sink=err))


def test_a_go_plugins_output_survives_a_kill_right_after_the_calls_that_wrote_it() -> None:
    """kill() reads the stream until it is quiet before Shutdown, which cuts it with what it held."""
    out, err = Sink(), Sink()
    c = _go_plugin_client(out, err)
    try:
        kv = c.dispense(PLUGIN_NAME)
        kv.put("bulk-out", str(BULK).encode())
        for line in LINES:
            kv.put("err", line)
    finally:
        c.kill()
    assert len(out.data) == BULK
    assert err.data == b"".join(LINES)
    assert c.runner.wait(0) == 0  # it stopped by itself on Shutdown


def test_a_kill_before_the_held_stream_began_still_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A go-plugin plugin's stream waits for the first call's end (or a moment after the spawn): a
    kill() that comes first begins it, and what the plugin wrote meanwhile is read before Shutdown."""
    from plugbay.core.host.streams import StreamKick

    monkeypatch.setattr(StreamKick, "_fire", lambda self: None)  # the kick has not come yet
    out, err = Sink(), Sink()
    c = _go_plugin_client(out, err)
    try:
        kv = c.dispense(PLUGIN_NAME)
        kv.put("out", b"written while nobody read\n")
        assert out.data == b""  # held: nothing was read yet
    finally:
        c.kill()
    assert out.data == b"written while nobody read\n"


@pytest.fixture
def sockets() -> Iterator[Path]:
    # Short, so the socket path stays within the OS's 107 bytes (pytest's tmp_path may not).
    with tempfile.TemporaryDirectory(prefix="gs") as path:
        yield Path(path)


def test_a_plugbay_plugin_answers_shutdown_once_its_output_went_out(tmp_path: Path, sockets: Path) -> None:
    """go-plugin's host closes the connection as soon as Shutdown has answered: what the plugin
    captured before must be sent by then (tests/plugins/probe.py, plugbay's serve())."""
    rc_file = tmp_path / "plugin.rc"
    cmd = f"{shlex.quote(sys.executable)} {shlex.quote(str(PROBE))}; echo $? > {shlex.quote(str(rc_file))}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
    env.update({"STDIO_PLUGIN": cmd, "TMPDIR": str(sockets)})
    puts = ["err=a line\n", f"sub=head -c {2 * BULK} /dev/zero"]  # Shutdown right after the bulk
    # the host's sink stalls a moment: the stream is held up (HTTP/2 flow control) when Shutdown comes
    done = run_program(build_go("stdio_peer"), ["host", "--stall", "200ms", *puts], env=env, cwd=tmp_path,
                       timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    got = json.loads(done.stdout)
    assert got == {"stdout": 2 * BULK, "stderr": len("a line\n"), "graceful": True}, done.stderr
    assert int(rc_file.read_text()) == 0
