"""serve() at run time: signals, graceful shutdown, health Watch, GRPCStdio capture and hclog logs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay._proto.plugin import grpc_stdio_pb2_grpc
from tests.serverproc import (  # noqa: F401  (plugins is a fixture)
    STDERR,
    STDOUT,
    PluginProc,
    health,
    plugins,
    shutdown,
    start,
)
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402  (on sys.path through tests.serverproc)


def test_sigterm_stops_gracefully(plugins: list[PluginProc]) -> None:
    p = start(plugins)
    info = p.handshake()
    assert health(p.channel(info)) == health_pb2.HealthCheckResponse.SERVING
    p.proc.send_signal(signal.SIGTERM)
    code, err = p.finish()
    assert code == 0, err
    assert not os.path.exists(info.address)
    assert "plugin received SIGTERM, stopping" in err


@pytest.mark.parametrize("own_logging", [False, True], ids=["plugbay-logging", "basicConfig"])
def test_a_host_that_closed_stderr_stops_the_plugin_exit_0_and_serve_returns(
        plugins: list[PluginProc], tmp_path: Path, own_logging: bool) -> None:
    # A host that crashed (or closed the plugin's stderr) is gone: the plugin stops as on SIGTERM
    # (tests/test_host_gone.py). The records it writes while stopping are dropped, not kept in the log
    # stream to fail its final flush and end serve() with BrokenPipeError (exit 1, the code after
    # serve() skipped). The same through the program's own stderr handler (basicConfig), which serve()
    # moves to the host's log.
    after = tmp_path / "after-serve"
    env = {"PROBE_AFTER_SERVE": str(after), **({"PROBE_BASICCONFIG": "1"} if own_logging else {})}
    p = start(plugins, env)
    info = p.handshake()
    assert p.proc.stderr is not None
    p.proc.stderr.close()  # the host's end of the plugin's stderr
    assert p.proc.wait(20) == 0
    assert after.read_text() == "serve returned"
    assert not os.path.exists(info.address)


@pytest.mark.parametrize("own_logging", [False, True], ids=["plugbay-logging", "basicConfig"])
def test_a_plugin_asked_to_outlive_its_host_drops_records_and_sigterm_still_exits_0(
        plugins: list[PluginProc], tmp_path: Path, own_logging: bool) -> None:
    # PLUGBAY_OUTLIVE_PIPE naming its stderr pipe (a plugbay host's ProcessRunner sets it, for a reattach):
    # the plugin serves on after its host's end of stderr closed, and the records it cannot write are
    # dropped, not kept in the log stream to fail its final flush and end serve() with BrokenPipeError
    # (exit 1, the code after serve() skipped). The same through the program's own stderr handler (basicConfig).
    after = tmp_path / "after-serve"
    env = {"PROBE_AFTER_SERVE": str(after), **({"PROBE_BASICCONFIG": "1"} if own_logging else {})}
    p = start(plugins, env, outlive=True)
    info = p.handshake()
    ch = p.channel(info)
    assert p.proc.stderr is not None
    p.proc.stderr.close()  # the host's end of the plugin's stderr
    kv = kv_pb2_grpc.KVStub(ch)
    for i in range(3):
        kv.Put(kv_pb2.PutRequest(key="log", value=b"nobody reads %d" % i), timeout=10)
    kv.Put(kv_pb2.PutRequest(key="fd2", value=b"the end\n"), timeout=10)
    # nor does a "--- Logging error ---" traceback for the failed record end up in the captured stderr
    assert _collect(ch, {STDERR: b"the end\n"})[STDERR] == b"the end\n"
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(20) == 0
    assert after.read_text() == "serve returned"
    assert not os.path.exists(info.address)


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


def test_sigint_stops_a_plugin_placed_with_plugbay_listen(plugins: list[PluginProc]) -> None:
    p = start(plugins, {"PLUGBAY_LISTEN": "tcp:127.0.0.1:0"})  # a container's or pod's plugin
    assert health(p.channel(p.handshake())) == health_pb2.HealthCheckResponse.SERVING
    p.proc.send_signal(signal.SIGINT)
    code, err = p.finish()
    assert code == 0, err
    assert "plugin received SIGINT, stopping" in err


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
    # The buffer holds at most 64 KiB when the reader attaches; what the plugin's pump has
    # not yet taken out of its stdout pipe (at most one pipe's worth, 64 KiB on Linux) may
    # still arrive behind it. Everything older must be gone.
    assert len(got) <= 2 * 64 * 1024 < 16 * len(block)
    assert got.endswith(block[-4096:] + b"THE-END\n")  # the newest output is kept
    shutdown(ch)
    _, err = p.finish()
    assert err.count("stdio buffer full: dropping the oldest output") == 1  # once per episode


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
