"""GRPCStdio end to end: a plugin's stdout/stderr reach the host's sinks, in order; logs stay apart.

The Python plugin is tests/plugins/probe.py (serve()), whose Put writes
through print(), sys.stderr, raw fds 1/2, a child process, or Python logging.
The Go plugin is go-plugin 1.0.1's KV plugin, which has no GRPCStdio at all:
the host must carry on without it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from plugbay import Client, ClientConfig

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
from kvproto import kv_pb2  # noqa: E402

PROBE = [sys.executable, str(REPO / "tests" / "plugins" / "probe.py")]


class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> None:
        with self.lock:
            self.chunks.append(data)

    @property
    def data(self) -> bytes:
        with self.lock:
            return b"".join(self.chunks)


def wait_for(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def client(cmd: list[str], out: Sink, err: Sink, **kw: object) -> Client:
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=cmd,
                               stdout_sink=out, stderr_sink=err, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("auto_mtls", [False, True], ids=["plain", "automtls"])
def test_every_kind_of_write_arrives_in_order(auto_mtls: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plugbay.plugin")
    out, err = Sink(), Sink()
    with client(PROBE, out, err, auto_mtls=auto_mtls) as c:
        kv = c.dispense(PLUGIN_NAME)
        kv.put("out", b"1 print\n")
        kv.put("fd1", b"2 fd1\n")
        kv.put("sub", b"echo '3 child stdout'; echo '3 child stderr' >&2")
        kv.put("log", b"a log record")
        kv.put("out", b"4 print\n")
        kv.put("err", b"A stderr\n")
        kv.put("fd2", b"B fd2\n")
        wait_for(lambda: out.data.endswith(b"4 print\n") and err.data.endswith(b"B fd2\n"), "all output")
    assert out.data == b"1 print\n2 fd1\n3 child stdout\n4 print\n"
    assert err.data == b"3 child stderr\nA stderr\nB fd2\n"
    # the plugin's logger is not stdio: it arrives as a log record, not in a sink
    assert b"a log record" not in out.data + err.data
    assert any("a log record" in r.getMessage() and r.name.startswith("plugbay.plugin")
               for r in caplog.records)


def test_volume_and_order_from_a_child_process() -> None:
    out, err = Sink(), Sink()
    with client(PROBE, out, err) as c:
        kv = c.dispense(PLUGIN_NAME)
        kv.put("sub", b"i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done")
        kv.put("out", b"done\n")
        wait_for(lambda: out.data.endswith(b"done\n"), "the last line")
    lines = out.data.decode().splitlines()
    assert lines == [f"line-{i}" for i in range(3000)] + ["done"]
    assert err.data == b""


def test_without_sinks_output_is_discarded_and_nothing_breaks() -> None:
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=PROBE)) as c:
        kv = c.dispense(PLUGIN_NAME)
        kv.put("out", b"x" * 100_000)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"


def test_a_failing_sink_does_not_stop_the_plugin(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[bytes] = []

    def broken(data: bytes) -> None:
        calls.append(data)
        raise RuntimeError("sink is broken")

    err = Sink()
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=PROBE,
                             stdout_sink=broken, stderr_sink=err)) as c:
        kv = c.dispense(PLUGIN_NAME)
        kv.put("out", b"into the broken sink\n")
        kv.put("k", b"still works")
        assert kv.get("k") == b"still works"
        # the stream outlives the failure: later output still reaches the other sink
        kv.put("err", b"after the failure\n")
        wait_for(lambda: err.data == b"after the failure\n", "stderr after the broken stdout sink")
    assert b"".join(calls) == b"into the broken sink\n"
    failures = [r for r in caplog.records if "GRPCStdio sink raised" in r.getMessage()]
    assert failures and failures[0].levelno == logging.WARNING
    assert "sink is broken" in str(failures[0].exc_info[1])


@pytest.mark.go
def test_go_101_plugin_without_grpc_stdio_is_tolerated(tmp_path: Path) -> None:
    from plugbay import ProcessRunner
    from tests.gobuild import build_go, go_missing_reason

    if go_missing_reason():
        pytest.skip(str(go_missing_reason()))
    out, err = Sink(), Sink()
    # the Go KV plugin writes kv_<key> files into its working folder
    runner = ProcessRunner([str(build_go("kv_plugin"))], cwd=str(tmp_path))
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                             stdout_sink=out, stderr_sink=err)) as c:
        kv = c.dispense(PLUGIN_NAME)
        kv.put("go", b"value")
        assert kv.get("go") == b"value"
        kv.put("go", b"again")
        assert kv.get("go") == b"again"
    assert out.data == b"" and err.data == b""
    assert c.exited


_RACE = r"""
import logging, os, sys
from plugbay.core.plugin.stdio import STDOUT, StdioCapture
capture = StdioCapture(logging.getLogger("t"))
capture.start()
out = capture.original_stdout
results = []
for round in range(200):
    capture.discard()                      # a host without a sink
    os.write(1, b"dropped%d\n" % round)    # written while discarding...
    generation = capture.attach()          # ...then a host with a sink comes at once
    got = capture.next_chunk(generation, 0.0, lambda: True)
    results.append(got)
    capture.detach(generation)
leaked = [r for r in results if r]
os.write(1, b"kept\n")
generation = capture.attach()
kept = capture.next_chunk(generation, 5.0, lambda: True)
os.write(out, repr((len(leaked), kept == (STDOUT, b"kept\n"))).encode() + b"\n")
capture.stop()
"""


def test_output_written_while_discarding_never_reaches_the_reader_that_comes_next() -> None:
    # The pump thread may not have read the write yet when the reader arrives; what is
    # still in the pipe was written before it came and is dropped, every time.
    import subprocess

    done = subprocess.run([sys.executable, "-c", _RACE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(0, True)", done.stdout + done.stderr


_PUMP_ERROR = r"""
import logging, os, sys, time
from plugbay.core.plugin.stdio import STDOUT, StdioCapture
capture = StdioCapture(logging.getLogger("t"))
real_add = capture._add
failed = []
def add_failing_once(channel, data):
    if not failed:
        failed.append(len(data))
        raise RuntimeError("injected")
    real_add(channel, data)
capture._add = add_failing_once
capture.start()
out = capture.original_stdout
os.write(1, b"lost\n")
deadline = time.monotonic() + 10
while not failed and time.monotonic() < deadline:
    time.sleep(0.01)
generation = capture.attach()
# far more than a pipe holds: the writes go on only while the pump drains fd 1
os.set_blocking(1, False)
written, deadline = 0, time.monotonic() + 20
while written < 4 << 20 and time.monotonic() < deadline:
    try:
        written += os.write(1, b"x" * 65536)
    except BlockingIOError:
        time.sleep(0.005)
os.set_blocking(1, True)
os.write(1, b"after\n")
seen, deadline = b"", time.monotonic() + 10
while not seen.endswith(b"after\n") and time.monotonic() < deadline:
    got = capture.next_chunk(generation, 0.5, lambda: True)
    if isinstance(got, tuple):
        seen = (seen + got[1])[-64:]
os.write(out, repr((len(failed), written >= 4 << 20, seen.endswith(b"after\n"))).encode() + b"\n")
capture.stop()
"""


def test_the_capture_pump_goes_on_after_an_unexpected_error() -> None:
    # A pump thread that ended left the program's fds 1 and 2 on pipes nobody read: its writes
    # blocked once a pipe was full, or failed with EPIPE once the pump closed its ends.
    import subprocess

    done = subprocess.run([sys.executable, "-c", _PUMP_ERROR], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, True, True)", done.stdout + done.stderr


def test_a_stdio_reader_whose_channel_closed_first_ends_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exit watcher may close the channel before the reader's thread makes its call: no thread crash."""
    import grpc

    from plugbay.core.host.stdio import StdioReader
    from plugbay.core.transport.channels import DelegatingChannel

    class ClosedOnceStubbed(DelegatingChannel):
        """A real channel that closes right after the stub's factories are built (as the plugin's exit would)."""

        def __init__(self) -> None:
            self._channel = grpc.insecure_channel("unix:/nonexistent/plugbay-stdio.sock")

        def unary_stream(self, method: str, *args: object, **kwargs: object) -> object:
            factory = self._channel.unary_stream(method, *args, **kwargs)
            self._channel.close()
            return factory

    crashed: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args.exc_value))
    reader = StdioReader(ClosedOnceStubbed(), None, None, "closed-first")
    reader.close()
    assert crashed == []
    assert reader.supported is None  # nothing was learned about the plugin


LASTING = [sys.executable, str(REPO / "tests" / "plugins" / "lasting_stdio.py")]


def _stdio_state(kv: KVPlugin) -> tuple[int, int]:
    sent, open_ = kv.get("__stdio__").split()  # type: ignore[attr-defined]
    return int(sent), int(open_)


@pytest.mark.parametrize("sink", [False, True], ids=["no-sink", "sink"])
def test_a_stream_kept_for_the_plugins_life_is_read_and_without_a_sink_costs_no_thread(
        sink: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """go-plugin >= 1.4 keeps GRPCStdio open whatever the host asks: it must be read for the plugin's
    life (its writes block otherwise); with no sink that happens on the shared loop, with no thread."""
    monkeypatch.chdir(tmp_path)
    out = Sink()
    before = set(threading.enumerate())
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=LASTING,
                             stdout_sink=out if sink else None)) as c:
        kv = c.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"
        # 200 chunks of 4 KiB: far past HTTP/2's 64 KiB window, so the host kept reading
        wait_for(lambda: _stdio_state(kv)[0] > 200, "the host to read the lasting stream")
        assert _stdio_state(kv)[1] == 1  # still open
        gained = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
        readers = [n for n in gained if n.startswith("plugbay-stdio") or "channel_spin" in n]
        if sink:  # the user's sink runs on the reader's own thread, never on the shared loop
            assert readers, gained
            wait_for(lambda: len(out.data) > 200 * 4096, "the sink to get 200 chunks")
        else:
            assert readers == [], gained
    # kill() ended the stream: no thread, process or socket is left (the leak check says so too)
    assert not [t for t in threading.enumerate() if t not in before and t.is_alive()
                and (t.name.startswith("plugbay-stdio") or "channel_spin" in t.name)]
    # with a sink the stream stayed open through Shutdown, which this plugin's graceful stop waits out
    assert c.runner.wait(0) == 0


def test_reading_a_stream_that_never_ends_to_its_end_stops_at_the_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As behind a published port that hides the plugin's exit: finish() cuts the stream, the reader ends."""
    from plugbay.core.host.stdio import StdioReader

    monkeypatch.chdir(tmp_path)
    out = Sink()
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=LASTING,
                             stdout_sink=out)) as c:
        kv = c.dispense(PLUGIN_NAME)
        wait_for(lambda: len(out.data) > 10 * 4096, "the stream to be read")
        reader = c._stdio  # white box: the plugin lives on and streams on
        assert isinstance(reader, StdioReader) and reader.keeps_output
        reader.finish(0.3, 0.1)  # chunks keep coming: the 0.3 s bound ends it
        wait_for(lambda: _stdio_state(kv)[1] == 0, "the plugin to see the stream end")
        assert not [t for t in threading.enumerate() if t.name.startswith("plugbay-stdio") and t.is_alive()]


def test_finishing_a_stream_whose_sink_is_stuck_keeps_to_its_one_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill() took the bound, then close()'s own 5 s more, when a sink did not return: finish() waits for the
    reader thread (stuck in the sink) no longer than its bound in all, close()'s wait included, and leaves
    it cancelled, still in the sink, to end once the sink returns."""
    from plugbay.core.host.stdio import StdioReader

    monkeypatch.chdir(tmp_path)
    entered, release = threading.Event(), threading.Event()

    def stuck(data: bytes) -> None:
        entered.set()
        release.wait(30)

    c = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=LASTING, stdout_sink=stuck))
    joins: list[float | None] = []  # the timeout of each wait of finish() for the reader thread
    thread: threading.Thread | None = None
    try:
        c.start()
        assert entered.wait(20), "the sink was never called"
        reader = c._stdio  # white box: finish() is what kill() runs once the plugin stopped
        assert isinstance(reader, StdioReader)
        thread = reader._thread
        real_join = thread.join

        def join(timeout: float | None = None) -> None:
            joins.append(timeout)
            real_join(timeout)

        thread.join = join  # type: ignore[method-assign]  # the thread's own join, each wait noted
        try:
            reader.finish(0.3, 0.1)
        finally:
            del thread.join
        still_in_sink = thread.is_alive() and not release.is_set()
        cancelled = reader._closed
    finally:
        release.set()
        c.kill()
    waits = [j for j in joins if j is not None]
    assert waits and len(waits) == len(joins), joins  # every wait bounded
    # in all the bound, and close()'s floor of 0.1 s once that is spent (the old close() waited its own 5 s);
    # 0.01: the clock's grain
    assert sum(waits) <= 0.3 + 0.1 + 0.01, joins
    assert still_in_sink and cancelled, (still_in_sink, cancelled)  # the bound ended the wait, not the sink
    thread.join(30)  # a hang guard only: the sink returned, the reader thread ends
    assert not thread.is_alive()


def test_the_plugins_exit_ends_a_sinkless_stream_whose_connection_outlives_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A published port can keep a dead plugin's connection open: the exit notice ends the stream."""
    monkeypatch.chdir(tmp_path)
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=LASTING)) as c:
        kv = c.dispense(PLUGIN_NAME)
        wait_for(lambda: _stdio_state(kv)[1] == 1, "the stream to open")
        probe = grpc.insecure_channel(f"unix:{c.handshake.address}")  # the process lives on: ask it directly
        try:
            get = probe.unary_unary("/proto.KV/Get", request_serializer=kv_pb2.GetRequest.SerializeToString,
                                    response_deserializer=kv_pb2.GetResponse.FromString)
            c._on_exit(0)  # what the exit watcher tells (white box: the process stays, as behind a port)
            wait_for(lambda: get(kv_pb2.GetRequest(key="__stdio__"), timeout=5).value.split()[1] == b"0",
                     "the stream to end")
        finally:
            probe.close()


_LINES = b"i=0; while [ $i -lt 2000 ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); done"


def _all_lines_arrived(out: Sink, err: Sink) -> None:
    assert out.data.decode().splitlines() == [f"out-{i}" for i in range(2000)] + [f"print-{i}" for i in range(2000)]
    assert err.data.decode().splitlines() == [f"err-{i}" for i in range(2000)]


@pytest.mark.parametrize("auto_mtls", [False, True], ids=["plain", "automtls"])
def test_output_written_before_the_last_call_returned_survives_a_kill_right_after_it(auto_mtls: bool) -> None:
    """kill() asks Shutdown with the stdio stream still open: the plugin sends what it holds, then ends it."""
    out, err = Sink(), Sink()
    c = client(PROBE, out, err, auto_mtls=auto_mtls)
    try:
        c.start()
        kv = c.dispense(PLUGIN_NAME)
        kv.put("sub", _LINES)
        kv.put("out", "".join(f"print-{i}\n" for i in range(2000)).encode())
    finally:
        c.kill()
    _all_lines_arrived(out, err)
    assert c.runner.wait(0) == 0  # it stopped by itself on Shutdown, not killed


def test_an_async_clients_kill_right_after_a_call_keeps_the_output_too() -> None:
    from plugbay import AsyncClient

    async def run() -> None:
        c = AsyncClient(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=PROBE,
                                     stdout_sink=out, stderr_sink=err))
        try:
            kv = await c.dispense(PLUGIN_NAME)
            await kv.put("sub", _LINES)
            await kv.put("out", "".join(f"print-{i}\n" for i in range(2000)).encode())
        finally:
            await c.kill()

    out, err = Sink(), Sink()
    asyncio.run(run())
    _all_lines_arrived(out, err)
