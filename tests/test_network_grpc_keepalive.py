"""gRPC's keepalive on plain (not multiplexed) network connections, against real grpcio servers on 127.0.0.1.

A stream without deadline to a replica that stops answering (SIGSTOP: the
connection stays open, nothing arrives) ends, typed, within the keepalive's
figures, on the sync and the asyncio client; with the keepalive off it waits.
The servers plugbay runs in network mode (serve() with NetworkServe, the
gateway) take a host's pings at their keepalive interval on an idle stream
without GOAWAY ENHANCE_YOUR_CALM "too_many_pings" (grpc-core's own default
refuses a third ping within 5 minutes). Figures are short (1 s, 1 s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import PluginUnavailableError, RemoteClient, RemoteConfig
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.protocol.handshake import parse_handshake_line
from plugbay.errors import ConfigError
from plugbay.network import AsyncRemoteClient
from tests import gobuild
from tests.net_util import HANDSHAKE, PLUGINS, Replica, running_replica

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402  (examples/kv, on the path through tests.net_util)

REPO = Path(__file__).resolve().parent.parent
KV_PLUGIN = REPO / "examples" / "kv" / "plugin.py"
FIGURES = (1.0, 1.0, 2.0)  # interval, timeout, ping timeout
# what grpc_keepalive=(1, 1, ...) sets, spelled out: a client that pings as the pool does, on any code
RAW_PINGS = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 1000),
             ("grpc.keepalive_permit_without_calls", 0), ("grpc.http2.max_pings_without_data", 0)]
QUIET = 5.0  # seconds of an idle stream: 4+ ping intervals; grpc-core's refusal comes at the third ping
WATCH = health_pb2.HealthCheckRequest(service="plugin")


@pytest.fixture()
def replica() -> Iterator[Replica]:
    with running_replica() as rep:
        try:
            yield rep
        finally:  # a test may leave it stopped (SIGSTOP): resume it so it can stop
            if rep.proc.poll() is None:
                os.kill(rep.proc.pid, signal.SIGCONT)


def remote(address: str, **kw: Any) -> RemoteConfig:
    kw.setdefault("grpc_keepalive", FIGURES)
    kw.setdefault("health_interval", 0.2)
    kw.setdefault("health_timeout", 0.5)
    return RemoteConfig(target=f"static:///{address}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                        call_timeout=None, name="kv-keepalive", **kw)


class Drain:
    """Reads a sync stream on a thread; ``ended`` is what ended it (None while it is open)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.ended: BaseException | str | None = None
        self.at = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for _ in self.stream:
                pass
            self.ended = "the stream ended without an error"
        except BaseException as exc:
            self.ended = exc
        self.at = time.monotonic()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        self.stream.cancel()
        self._thread.join(5)


def test_a_stream_without_deadline_to_a_stopped_replica_ends_typed(replica: Replica) -> None:
    with RemoteClient(remote(replica.address)) as client:
        client.start()
        watch = health_pb2_grpc.HealthStub(client.channel).Watch(WATCH)  # type: ignore[no-untyped-call]
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        drain = Drain(watch)
        os.kill(replica.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            # interval + timeout, and room for a loaded machine; without the keepalive it waits for good
            assert drain.join(sum(FIGURES) + 6.0), "the stream to the stopped replica is still open"
        finally:
            drain.close()
        assert isinstance(drain.ended, PluginUnavailableError), drain.ended
        assert drain.at - stopped <= sum(FIGURES) + 6.0


def test_the_keepalive_turned_off_leaves_that_stream_waiting(replica: Replica) -> None:
    with RemoteClient(remote(replica.address, grpc_keepalive=None)) as client:
        client.start()
        watch = health_pb2_grpc.HealthStub(client.channel).Watch(WATCH)  # type: ignore[no-untyped-call]
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        drain = Drain(watch)
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            assert not drain.join(sum(FIGURES) + 3.0), drain.ended
        finally:
            drain.close()


def test_an_asyncio_stream_without_deadline_to_a_stopped_replica_ends_typed(replica: Replica) -> None:
    async def main() -> None:
        async with AsyncRemoteClient(remote(replica.address)) as client:
            watch = health_pb2_grpc.HealthStub(client.channel).Watch(WATCH)  # type: ignore[no-untyped-call]
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            os.kill(replica.proc.pid, signal.SIGSTOP)
            stopped = time.monotonic()
            with pytest.raises(PluginUnavailableError):
                await asyncio.wait_for(watch.read(), sum(FIGURES) + 6.0)
            assert time.monotonic() - stopped <= sum(FIGURES) + 6.0

    asyncio.run(main())


def test_bad_figures_are_refused_when_the_client_is_made() -> None:
    for bad in ((30.0,), (30.0, 0.0), (-1.0, 10.0), (float("inf"), 10.0), ("30", "10"), (True, 10.0), 30.0,
                (30.0, 10.0, 5.0), (30.0, 10.0, 60.0, 1.0)):
        with pytest.raises(ConfigError, match="grpc_keepalive"):
            RemoteClient(remote("127.0.0.1:1", grpc_keepalive=bad))
    RemoteClient(remote("127.0.0.1:1", grpc_keepalive=())).kill()


def test_a_slow_download_longer_than_the_keepalive_timeout_is_not_cut(tmp_path: Path) -> None:
    """gRPC's flow-control probe, sent as a large reply starts, is answered behind the reply's bytes queued
    on a slow link: the ping timeout (the third figure) bounds it, not the keepalive timeout, which cut
    such a download that was working ("ping timeout")."""
    data = os.urandom(300_000)  # 3 s at 100 kB/s, three times the keepalive timeout
    (tmp_path / "kv_big").write_bytes(data)  # the KV plugin's Get answers its file
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
    env.update({"PYTHONPATH": str(REPO / "src"), "PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0",
                "PLUGBAY_NETWORK_INSECURE": "1"})
    plugin = subprocess.Popen([sys.executable, str(KV_PLUGIN)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env=env, cwd=tmp_path)
    procs = [plugin]
    try:
        assert plugin.stdout is not None
        address = parse_handshake_line(plugin.stdout.readline().decode()).address
        link = subprocess.Popen([sys.executable, str(REPO / "tests" / "plugins" / "slow_link.py"), address,
                                 "100000"], stdout=subprocess.PIPE)
        procs.append(link)
        assert link.stdout is not None
        port = int(link.stdout.readline())
        config = remote(f"127.0.0.1:{port}", grpc_keepalive=(1.0, 1.0, 20.0), health_interval=60.0,
                        health_timeout=20.0)
        with RemoteClient(config) as client:
            client.start()
            reply = kv_pb2_grpc.KVStub(client.channel).Get(kv_pb2.GetRequest(key="big"), timeout=30)
            assert reply.value == data
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


# --- the servers' side: no "too many pings" --------------------------------------------------------


@pytest.fixture()
def net_plugin(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], str]]:
    """examples/kv/plugin.py served in network mode (serve() with NetworkServe.from_env); its address."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(extra: dict[str, str]) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
        env.update({"PYTHONPATH": str(REPO / "src"), "PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0",
                    "PLUGBAY_NETWORK_KEEPALIVE": "1,1", **extra})
        proc = subprocess.Popen([sys.executable, str(KV_PLUGIN)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line, "the network plugin did not start"
        return parse_handshake_line(line).address

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            assert proc.stdout is not None
            proc.stdout.close()


def _idle_watch_stays_open(channel: Any) -> None:
    watch = health_pb2_grpc.HealthStub(channel).Watch(WATCH)  # type: ignore[no-untyped-call]
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    drain = Drain(watch)
    try:
        assert not drain.join(QUIET), f"the idle stream ended: {drain.ended}"
    finally:
        drain.close()


def test_a_network_plugin_takes_pings_at_its_keepalive_interval_on_an_idle_stream(
        net_plugin: Callable[[dict[str, str]], str]) -> None:
    address = net_plugin({"PLUGBAY_NETWORK_INSECURE": "1"})
    with grpc.insecure_channel(address, options=RAW_PINGS) as channel:
        _idle_watch_stays_open(channel)
    # and the pool's own connections (no health checks meanwhile: the stream alone carries the pings)
    with RemoteClient(remote(address, health_interval=60.0, health_timeout=5.0)) as client:
        client.start()
        _idle_watch_stays_open(client.channel)


def test_the_gateway_takes_pings_at_its_keepalive_interval_on_an_idle_stream(in_tmp: Path) -> None:
    reason = gobuild.go_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    from plugbay.network.gateway import Gateway, GatewayConfig

    cfg = GatewayConfig(cmd=[str(gobuild.build_go("kv_plugin"))], cookie=("BASIC_PLUGIN", "hello"),
                        listen="127.0.0.1:0", insecure=True, plugins=("kv_grpc",), keepalive=FIGURES[:2])
    with Gateway(cfg) as gw, grpc.insecure_channel(gw.address, options=RAW_PINGS) as channel:
        _idle_watch_stays_open(channel)
