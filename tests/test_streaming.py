"""examples/streaming through a real Client and plugin process: order, backpressure, cancellation.

Backpressure is measured by progress, not time: a producer with an endless
stream and a consumer that stopped reading must come to a standstill (its
count stops moving) well before it has produced more than a bound, and the
plugin's memory must stay bounded. Cancellation: the plugin must see the
cancel, end its generator and count it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "streaming"
sys.path.insert(0, str(EXAMPLE))
from streaming_plugin_def import HANDSHAKE, PLUGIN_NAME, StreamerPlugin  # noqa: E402
from streamingproto import streaming_pb2  # noqa: E402

from plugbay import Client, ClientConfig  # noqa: E402

CHUNK = 256 * 1024
# Without backpressure the endless producer makes ~GB/s; with it, HTTP/2 windows and
# socket buffers hold a few MB. 64 MiB is far above the latter and far below the former.
BOUND = 64 * 1024 * 1024


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "automtls"])
def streamer(request: pytest.FixtureRequest) -> Iterator[object]:
    cfg = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: StreamerPlugin()},
                       cmd=[sys.executable, str(EXAMPLE / "plugin.py")], auto_mtls=request.param,
                       call_timeout=None)
    with Client(cfg) as client:
        yield client.dispense(PLUGIN_NAME)


def settle(read: Callable[[], int], samples: int = 5, every: float = 0.2, limit: int = 150) -> int:
    """Poll ``read`` until it returns the same value ``samples`` times in a row (bounded)."""
    last, same = -1, 0
    for _ in range(limit):
        value = read()
        same = same + 1 if value == last else 0
        if same >= samples:
            return value
        last = value
        time.sleep(every)
    raise AssertionError(f"the value never settled (last {last}): the producer does not stop")


def wait_until(cond: Callable[[], bool], what: str, limit: int = 100) -> None:
    for _ in range(limit):
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_server_stream_in_order(streamer) -> None:  # type: ignore[no-untyped-def]
    got = [(c.seq, len(c.data)) for c in streamer.generate(50, 1000, timeout=30)]
    assert got == [(i, 1000) for i in range(50)]


def test_bidi_echo_in_order(streamer) -> None:  # type: ignore[no-untyped-def]
    sent = [streaming_pb2.Chunk(seq=i, data=bytes([i % 256]) * (i + 1)) for i in range(200)]
    back = list(streamer.echo(iter(sent), timeout=30))
    assert [(c.seq, c.data) for c in back] == [(c.seq, c.data) for c in sent]


def test_server_stream_backpressure_and_cancel(streamer) -> None:  # type: ignore[no-untyped-def]
    before = streamer.stats()
    call = streamer.generate(0, CHUNK)  # endless
    first = next(call)
    assert first.seq == 0
    # the consumer stops reading here: the producer must stop too
    produced = settle(lambda: streamer.stats().produced) - before.produced
    stalled = streamer.stats()
    assert 1 <= produced * CHUNK < BOUND, f"producer ran ahead by {produced} chunks"
    assert stalled.active == before.active + 1
    assert stalled.rss_bytes < before.rss_bytes + BOUND
    # reading resumes: the producer moves again
    for _ in range(produced + 10):
        next(call)
    assert streamer.stats().produced > stalled.produced
    call.cancel()
    wait_until(lambda: streamer.stats().active == before.active, "the generator to end after cancel")
    after = streamer.stats()
    assert after.cancelled == before.cancelled + 1
    assert settle(lambda: streamer.stats().produced) == after.produced  # it stays stopped
    with pytest.raises(grpc.RpcError) as err:
        next(call)
    assert err.value.code() == grpc.StatusCode.CANCELLED


def test_bidi_backpressure_and_cancel(streamer) -> None:  # type: ignore[no-untyped-def]
    before = streamer.stats()
    sent = [0]
    payload = b"b" * CHUNK
    stop = threading.Event()

    def chunks() -> Iterator[streaming_pb2.Chunk]:
        i = 0
        while not stop.is_set():
            yield streaming_pb2.Chunk(seq=i, data=payload)
            sent[0] += 1
            i += 1

    call = streamer.echo(chunks())
    assert next(call).seq == 0
    # nobody reads the echoes: the plugin blocks on them, stops reading, and our sender stalls
    stalled_sent = settle(lambda: sent[0])
    assert stalled_sent * CHUNK < 2 * BOUND, f"the sender ran ahead by {stalled_sent} chunks"
    received = streamer.stats().received - before.received
    assert received * CHUNK < BOUND
    assert streamer.stats().rss_bytes < before.rss_bytes + BOUND
    call.cancel()
    stop.set()
    wait_until(lambda: streamer.stats().active == before.active, "Echo to end after cancel")
    assert streamer.stats().cancelled == before.cancelled + 1


def test_cancel_while_reading(streamer) -> None:  # type: ignore[no-untyped-def]
    before = streamer.stats()
    call = streamer.generate(0, 1024)
    for i, chunk in enumerate(call):
        if i == 100:
            break
    call.cancel()
    wait_until(lambda: streamer.stats().active == before.active, "the generator to end")
    assert streamer.stats().cancelled == before.cancelled + 1


def test_deadline_stops_the_producer(streamer) -> None:  # type: ignore[no-untyped-def]
    before = streamer.stats()
    call = streamer.generate(0, 1024, timeout=0.5)
    with pytest.raises(grpc.RpcError) as err:
        for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: streamer.stats().active == before.active, "the generator to end at the deadline")
    assert streamer.stats().cancelled == before.cancelled + 1


@pytest.mark.parametrize("network", ["unix", "tcp"])
def test_backpressure_through_multiplexed_broker(network: str) -> None:
    """A brokered stream inside the yamux session: the session's windows must hold the producer."""
    from streaming_plugin_def import StreamerClient, StreamerServicer
    from streamingproto import streaming_pb2_grpc

    from tests.test_broker_mux import close_mux_pair, make_mux_pair

    p = make_mux_pair(network)
    impl = StreamerServicer()
    try:
        sid = p.plugin.next_id()
        p.plugin.accept_and_serve(sid, lambda s: streaming_pb2_grpc.add_StreamerServicer_to_server(impl, s))
        client = StreamerClient(p.host.dial(sid))
        assert [c.seq for c in client.generate(20, 10, timeout=30)] == list(range(20))
        call = client.generate(0, CHUNK)
        next(call)
        produced = settle(lambda: impl.produced)
        assert produced * CHUNK < BOUND, f"the brokered producer ran ahead by {produced} chunks"
        for _ in range(produced + 10):  # resume: everything queued arrives, the producer moves on
            next(call)
        assert impl.produced > produced
        call.cancel()
        wait_until(lambda: impl.active == 0, "the brokered generator to end")
        assert impl.cancelled == 1
    finally:
        close_mux_pair(p)


def _host(*args: str, plugin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STREAMING_PLUGIN"}
    if plugin is not None:
        env["STREAMING_PLUGIN"] = plugin
    return subprocess.run([sys.executable, str(EXAMPLE / "host.py"), *args], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("flags", [[], ["--automtls"]], ids=["plain", "automtls"])
def test_example_host_command_line(flags: list[str]) -> None:
    gen = _host(*flags, "generate", "5", "1024")
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("generate: 5120 bytes in ")
    echo = _host(*flags, "echo", "3", "10")
    assert echo.returncode == 0, echo.stderr
    assert echo.stdout.startswith("echo: 30 bytes in ")
    stats = _host(*flags, "stats")
    assert stats.returncode == 0 and "rss_bytes:" in stats.stdout, stats.stderr


def test_example_host_errors() -> None:
    endless = _host("generate", "0")
    assert endless.returncode == 2 and "COUNT must be at least 1" in endless.stderr
    not_a_plugin = _host("stats", plugin="echo not a plugin")
    assert not_a_plugin.returncode == 1
    assert "Error: malformed handshake line 'not a plugin'" in not_a_plugin.stderr
    # a plugin that serves something else (the KV probe): the call itself fails, and says so
    probe = f"BASIC_PLUGIN=hello {sys.executable} {ROOT / 'tests' / 'plugins' / 'probe.py'}"
    wrong = _host("generate", "3", "10", plugin=probe)
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == "Error: the generate call failed: Method not found!", wrong.stderr
