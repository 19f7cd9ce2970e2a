"""serve() keeps answering its host whatever the host's streams hold, and stops promptly when asked."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay._proto.plugin import grpc_broker_pb2, grpc_broker_pb2_grpc
from plugbay.core.plugin import gate
from tests.serverproc import (  # noqa: F401  (plugins is a fixture)
    PluginProc,
    health,
    plugins,
    refused,
    shutdown,
    start,
)

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402  (on sys.path through tests.serverproc)


def test_health_watch_streams_cannot_starve_check_and_shutdown(plugins: list[PluginProc]) -> None:
    p = start(plugins)
    ch = p.channel(p.handshake())
    stub = health_pb2_grpc.HealthStub(ch)
    watches = [stub.Watch(health_pb2.HealthCheckRequest(service="plugin"), timeout=60) for _ in range(48)]
    open_, refused_ = 0, 0
    for watch in watches:
        try:
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            open_ += 1
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            assert "health Watch streams" in str(exc.details())
            refused_ += 1
    watches_cap = getattr(gate, "MAX_WATCHES", 4)
    assert open_ == watches_cap and refused_ == 48 - watches_cap
    # the threads that answer the host are still free
    assert health(ch) == health_pb2.HealthCheckResponse.SERVING
    for watch in watches:
        watch.cancel()
    # a closed Watch frees its place (once the plugin notices the cancel: bounded retries)
    for _ in range(50):
        again = stub.Watch(health_pb2.HealthCheckRequest(service="plugin"), timeout=60)
        try:
            assert next(again).status == health_pb2.HealthCheckResponse.SERVING
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            time.sleep(0.1)
        finally:
            again.cancel()
    else:
        raise AssertionError("closed Watch streams never freed their places")
    shutdown(ch)
    code, err = p.finish()
    assert code == 0, err


def test_shutdown_with_the_broker_stream_open_does_not_wait_out_the_grace(plugins: list[PluginProc]) -> None:
    # go-plugin's host kills a plugin 2 s after Shutdown; the graceful stop (1.5 s) waited for the
    # broker stream, which only the broker's close ended, and that came after the stop. A 10 s grace
    # here: a stop that waits for the stream shows plainly, however slow the machine
    p = start(plugins, {"PROBE_STOP_GRACE": "10"})
    ch = p.channel(p.handshake())
    outbox: queue.Queue[grpc_broker_pb2.ConnInfo | None] = queue.Queue()

    def requests() -> Iterator[grpc_broker_pb2.ConnInfo]:
        while (item := outbox.get(timeout=30)) is not None:
            yield item

    stream = grpc_broker_pb2_grpc.GRPCBrokerStub(ch).StartStream(requests(), timeout=60)
    try:
        assert health(ch) == health_pb2.HealthCheckResponse.SERVING
        time.sleep(0.3)  # the stream is open on the plugin
        asked = time.monotonic()
        shutdown(ch)
        code, err = p.finish()
        took = time.monotonic() - asked
    finally:
        outbox.put(None)
        stream.cancel()
    assert code == 0, err
    assert took < 5, f"exit {took:.2f}s after Shutdown: the stop waited for the broker stream"


@pytest.mark.parametrize("size", ["-1"])
def test_a_negative_stdio_buffer_is_refused_at_setup(plugins: list[PluginProc], size: str) -> None:
    err = refused(plugins, {"BASIC_PLUGIN": "hello", "PLUGIN_PROTOCOL_VERSIONS": "1", "PROBE_STDIO_MAX": size})
    assert "stdio_buffer_bytes" in err and "0 or more" in err


def test_shutdown_exits_while_a_handler_still_runs(plugins: list[PluginProc], tmp_path: Path) -> None:
    # as a Go plugin does when Serve returns: the host would otherwise kill it after its grace
    p = start(plugins)
    ch = p.channel(p.handshake())
    pidfile = tmp_path / "sleeper.pid"
    kv = kv_pb2_grpc.KVStub(ch)
    running = threading.Thread(target=_ignore_errors, args=(lambda: kv.Put(
        kv_pb2.PutRequest(key="sub", value=f"echo $$ > {pidfile}; exec sleep 20".encode()), timeout=60),),
        name="test-long-call")
    running.start()
    try:
        for _ in range(100):  # the handler is running (bounded wait)
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.05)
        asked = time.monotonic()
        shutdown(ch)
        code, err = p.finish(timeout=30)
        took = time.monotonic() - asked
    finally:
        if pidfile.exists() and pidfile.read_text().strip():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)  # the handler's own child
            except ProcessLookupError:
                pass
        running.join(30)
    assert code == 0, err
    assert took < 6, f"exit {took:.1f}s after Shutdown: the process waited for the running handler"


def _ignore_errors(call: Callable[[], object]) -> None:
    try:
        call()
    except grpc.RpcError:  # the plugin stops under it: how the call ends is not the point
        pass


@pytest.mark.parametrize("how", ["shutdown", "sigterm"])
def test_stop_exits_while_a_brokered_handler_still_runs_and_leaves_no_files(plugins: list[PluginProc],
                                                                              tmp_path: Path, how: str) -> None:
    # the brokered server's workers were joined on close: a handler still running held the plugin
    # (here for the handler's 20 s, in general forever), and the host's kill then left the socket
    # file and the broker's temp folders behind
    folder = tempfile.mkdtemp(prefix="pb-")  # short: brokered socket paths must fit sun_path
    pidfile = tmp_path / "sleeper.pid"
    outbox: queue.Queue[grpc_broker_pb2.ConnInfo | None] = queue.Queue()

    def requests() -> Iterator[grpc_broker_pb2.ConnInfo]:
        while (item := outbox.get(timeout=60)) is not None:
            yield item

    p = start(plugins, {"PLUGIN_UNIX_SOCKET_DIR": folder, "TMPDIR": folder})
    ch = p.channel(p.handshake())
    stream = grpc_broker_pb2_grpc.GRPCBrokerStub(ch).StartStream(requests(), timeout=60)
    running: threading.Thread | None = None
    try:
        kv = kv_pb2_grpc.KVStub(ch)
        kv.Put(kv_pb2.PutRequest(key="announce-kv", value=b""), timeout=10)
        service_id = int(kv.Get(kv_pb2.GetRequest(key="announced"), timeout=10).value)
        info = next(stream)
        assert info.service_id == service_id
        p.channels.append(brokered_channel := grpc.insecure_channel(f"unix:{info.address}"))
        brokered = kv_pb2_grpc.KVStub(brokered_channel)
        running = threading.Thread(target=_ignore_errors, args=(lambda: brokered.Put(
            kv_pb2.PutRequest(key="sub", value=f"echo $$ > {pidfile}; exec sleep 20".encode()), timeout=60),),
            name="test-long-brokered-call")
        running.start()
        for _ in range(100):  # the brokered handler is running (bounded wait)
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.05)
        asked = time.monotonic()
        if how == "shutdown":
            shutdown(ch)
        else:
            p.proc.send_signal(signal.SIGTERM)
        code, err = p.finish(timeout=30)
        took = time.monotonic() - asked
        left = sorted(os.listdir(folder))
    finally:
        outbox.put(None)
        stream.cancel()
        if pidfile.exists() and pidfile.read_text().strip():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)  # the handler's own child
            except ProcessLookupError:
                pass
        if running is not None:
            running.join(30)
        shutil.rmtree(folder, ignore_errors=True)
    assert code == 0, err
    assert took < 6, f"exit {took:.1f}s after the stop: the process waited for the brokered handler"
    assert left == [], f"left behind in the socket folder: {left}"
