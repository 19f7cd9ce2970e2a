"""The broker rows: one brokered callback per call, and streaming throughput, next to plain unary.

Each timed call is a counter ``Put``: the host serves AddHelper on a fresh
broker id (accept_and_serve), the plugin dials that id and calls Sum back,
the host stops the brokered server. So p50/p99 are "broker setup + dial +
one callback" latency. The note column gives, from the same plugin process,
the plain unary latency (counter ``Get`` on the main channel) and the
streaming throughput of the streaming example (server stream, 256 KiB
chunks) over the same kind of connection.

Rows: per-connection and multiplexed, +/- AutoMTLS, Python <-> Python, and
the go-plugin 1.0.1 counter programs in per-connection plain mode, the bare
grpcio host (bench/floor_broker.py, the floor), and that host with every
server started ahead of the timed calls: the lower bound of any grpcio host,
which a host cannot reach while it starts a server per brokered call.

The yamux rows time one stream carrying YAMUX_BYTES over a unix socket (what a
multiplexed broker's connections ride on): plugbay's Python yamux
(plugbay.core.transport.yamux) writing to or reading from hashicorp/yamux
(tests/go/yamux_bench), next to hashicorp/yamux on both ends, the floor.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace

from common import REPO, Case, Context, Result, combine, go_program, interleaved, percentile, timed
from floor import first_line

COUNTER = REPO / "examples" / "counter"
STREAMING = REPO / "examples" / "streaming"
for _p in (COUNTER, STREAMING):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

PY_COUNTER = [sys.executable, str(COUNTER / "plugin.py")]
PY_STREAMER = [sys.executable, str(STREAMING / "plugin.py")]
STREAM_CHUNK = 256 * 1024
STREAM_BYTES = 128 * 1024 * 1024
YAMUX_BYTES = 64 * 1024 * 1024


class _Adder:
    def sum(self, a: int, b: int) -> int:
        return a + b


def _stream_mb_s(cmd: list[str], automtls: bool, multiplex: bool, runner_cwd: str) -> float:
    from streaming_plugin_def import HANDSHAKE, PLUGIN_NAME, StreamerPlugin

    from plugbay import Client, ClientConfig, ProcessRunner

    config = ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: StreamerPlugin()}, auto_mtls=automtls,
                          multiplex_broker=multiplex, runner=ProcessRunner(cmd, cwd=runner_cwd),
                          call_timeout=None)
    with Client(config) as client:
        streamer = client.dispense(PLUGIN_NAME)
        count = STREAM_BYTES // STREAM_CHUNK
        for _ in streamer.generate(8, STREAM_CHUNK, timeout=60):  # warm up
            pass
        t0 = time.perf_counter()
        got = sum(len(c.data) for c in streamer.generate(count, STREAM_CHUNK, timeout=120))
        took = time.perf_counter() - t0
    return got / took / 1e6


def _python_host(ctx: Context, plugin_cmd: list[str], automtls: bool, multiplex: bool,
                 floor: bool = False) -> Result:
    """plugbay's host; with ``floor``, a round of bench/floor_broker.py's bare host before each of its rounds."""
    from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin

    from plugbay import Client, ClientConfig, ProcessRunner

    gets: list[float] = []
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        def one(calls: int) -> Result:
            config = ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, auto_mtls=automtls,
                                  multiplex_broker=multiplex, runner=ProcessRunner(plugin_cmd, cwd=cwd),
                                  call_timeout=ctx.call_timeout)
            started = time.perf_counter()
            with Client(config) as client:
                counter = client.dispense(PLUGIN_NAME)
                counter.put("bench", 1, _Adder())
                first = (time.perf_counter() - started) * 1000
                puts, total = timed(calls, lambda: counter.put("bench", 1, _Adder()))
                g, _ = timed(calls, lambda: counter.get("bench"))
                gets.extend(g)
            return Result(first, percentile(puts, 0.5), percentile(puts, 0.99), calls,
                          calls / total if total else 0.0)

        result = interleaved(replace(ctx, starts=ctx.rounds), one,
                             (lambda calls: _bare_round(ctx, plugin_cmd, calls, cwd)) if floor else None)
        gets.sort()
        note = f"p50/p99 = Put + callback; plain Get p50 {percentile(gets, 0.5):.0f} us"
        if plugin_cmd == PY_COUNTER:
            note += f"; stream {_stream_mb_s(PY_STREAMER, automtls, multiplex, cwd):.0f} MB/s"
    result.note = note
    return result


def _bare_round(ctx: Context, plugin_cmd: list[str], calls: int, cwd: str) -> Result:
    """One round of the floor: bench/floor_broker.py's bare grpcio host, timed like _python_host."""
    from floor_broker import BareCounter

    started = time.perf_counter()
    with BareCounter(plugin_cmd, cwd, ctx.call_timeout) as counter:
        counter.put("bench", 1)
        first = (time.perf_counter() - started) * 1000
        puts, total = timed(calls, lambda: counter.put("bench", 1))
    return Result(first, percentile(puts, 0.5), percentile(puts, 0.99), calls, calls / total if total else 0.0,
                  note="p50/p99 = Put + callback; bench/floor_broker.py (a grpc.server per call)")


def _ahead_round(ctx: Context, plugin_cmd: list[str], calls: int, cwd: str) -> Result:
    """One round of the lower bound: floor_broker's host with its servers started ahead, untimed."""
    from floor_broker import BareCounter

    started = time.perf_counter()
    with BareCounter(plugin_cmd, cwd, ctx.call_timeout) as counter:
        counter.put("bench", 1)
        first = (time.perf_counter() - started) * 1000
        puts = sorted(counter.timed_ahead(calls))
    return Result(first, percentile(puts, 0.5), percentile(puts, 0.99), calls, calls / (sum(puts) / 1e6),
                  note="p50/p99 = Put + callback, every id's grpc.server started before the timed calls and"
                       " stopped after them: the lower bound of a grpcio host (calls/s: timed calls only)")


def _ahead_host(ctx: Context, plugin_cmd: list[str]) -> Result:
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        return interleaved(replace(ctx, starts=ctx.rounds), lambda calls: _ahead_round(ctx, plugin_cmd, calls, cwd))


def _bare_host(ctx: Context, plugin_cmd: list[str]) -> Result:
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        return interleaved(replace(ctx, starts=ctx.rounds), lambda calls: _bare_round(ctx, plugin_cmd, calls, cwd))


def _go_host(ctx: Context, plugin_cmd: list[str]) -> Result:
    host = go_program(ctx, "counter_host")
    if host is None:
        return Result(skipped=f"Go: {ctx.cache.get('go:reason')}")
    env = {**os.environ, "COUNTER_PLUGIN": shlex.join(plugin_cmd)}
    rounds = []
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        for _ in range(ctx.rounds):
            out = subprocess.run([host, "--timeout", "120s", "bench", str(ctx.calls)], env=env, cwd=cwd,
                                 capture_output=True, text=True, timeout=180)
            if out.returncode != 0:
                raise RuntimeError(f"counter_host bench failed ({out.returncode}): {out.stdout}{out.stderr}")
            data = json.loads(out.stdout.strip().splitlines()[-1])
            rounds.append(Result(data["start_to_first_call_ms"], data["p50_us"], data["p99_us"], data["n"],
                                 data["calls_per_s"], note="p50/p99 = Put + callback; go-plugin 1.0.1 host"))
    return combine(rounds)


def _yamux_round(ctx: Context, pump: str, sink: str) -> float:
    """MB/s of one stream: ``pump`` ("go"/"python") writes YAMUX_BYTES, ``sink`` reads them."""
    import socket

    from plugbay.core.transport.yamux import Session, Stream

    prog = go_program(ctx, "yamux_bench")
    assert prog is not None
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as d:
        path = os.path.join(d, "y.sock")
        size = str(YAMUX_BYTES)
        if sink == "go":
            sink_proc = subprocess.Popen([prog, "sink", "unix", path, size], stdout=subprocess.PIPE,
                                         text=True)
            assert first_line(sink_proc).strip() == "listening"
            try:
                if pump == "go":
                    out = subprocess.run([prog, "pump", "unix", path, size], capture_output=True, text=True,
                                         timeout=120, check=True).stdout
                    return float(json.loads(out.strip().splitlines()[-1])["mb_s"])
                conn = socket.socket(socket.AF_UNIX)
                conn.connect(path)
                session = Session(conn, client=True, on_stream=lambda s: s.reset(), name="bench")
                try:
                    stream = session.open()
                    chunk = bytes(64 * 1024)
                    t0 = time.perf_counter()
                    for _ in range(YAMUX_BYTES // len(chunk)):
                        stream.write(chunk)
                    assert stream.read(1) == b"k"
                    return YAMUX_BYTES / (time.perf_counter() - t0) / 1e6
                finally:
                    session.close()
            finally:
                _reap(sink_proc)
        # Go pumps into a Python sink
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(30)
        pump_proc = subprocess.Popen([prog, "pump", "unix", path, size], stdout=subprocess.PIPE, text=True)
        done: list[int] = []

        def drain(stream: Stream) -> None:
            got = 0
            while got < YAMUX_BYTES:
                data = stream.read()
                if not data:
                    break
                got += len(data)
                stream.consumed(len(data))
            done.append(got)
            stream.write(b"k")

        workers: list[threading.Thread] = []

        def on_stream(stream: Stream) -> None:
            worker = threading.Thread(target=drain, args=(stream,), name="plugbay-bench-drain")
            workers.append(worker)
            worker.start()

        try:
            conn, _ = listener.accept()
            session = Session(conn, client=False, on_stream=on_stream, name="bench")
            try:
                out, _ = pump_proc.communicate(timeout=120)
            finally:
                session.close()
                for worker in workers:
                    worker.join(10)
        finally:
            listener.close()
            _reap(pump_proc)
        if pump_proc.returncode != 0 or done != [YAMUX_BYTES]:
            raise RuntimeError(f"yamux_bench pump failed ({pump_proc.returncode}, got {done}): {out}")
        return float(json.loads(out.strip().splitlines()[-1])["mb_s"])


def _reap(proc: subprocess.Popen[str]) -> None:
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _yamux(ctx: Context, pump: str, sink: str) -> Result:
    if go_program(ctx, "yamux_bench") is None:
        return Result(skipped=f"Go: {ctx.cache.get('go:reason')}")
    note = f"{YAMUX_BYTES >> 20} MiB on one stream, {pump} writes, {sink} reads"
    if pump == sink == "go":
        rates = [_yamux_round(ctx, pump, sink) for _ in range(ctx.rounds)]
        return Result(note=note, metrics={"MB/s": statistics.median(rates)})  # even count: mean of the middle two
    # A round moves 64 MiB in tens of milliseconds: one round is a draw from the machine's moment
    # (40 alternating rounds each of plugbay writing and of Go writing, on a loaded day: plugbay / Go
    # per pair 0.53x-1.96x, median 1.13x), so each round follows one of the floor's and the ratio is
    # the median of the pairs' own, after an untimed pair (a process's first rounds ran slower)
    _yamux_round(ctx, "go", "go")
    _yamux_round(ctx, pump, sink)
    floor: list[float] = []
    rates = []
    for _ in range(max(ctx.rounds, ctx.pairs)):
        floor.append(_yamux_round(ctx, "go", "go"))
        rates.append(_yamux_round(ctx, pump, sink))
    result = Result(note=note, metrics={"MB/s": statistics.median(rates)},
                    floor_metrics={"MB/s": statistics.median(floor)})
    result.pair_ratios = {"MB/s": statistics.median(mine / ref for mine, ref in zip(rates, floor))}
    result.pairs = len(floor)
    return result


def yamux_cases() -> list[Case]:
    out = []
    for pump, sink in (("go", "go"), ("python", "go"), ("go", "python")):
        def run(c: Context, p: str = pump, s: str = sink) -> Result:
            return _yamux(c, p, s)

        names = {"go": "Go yamux", "python": "plugbay yamux"}
        floor = pump == sink == "go"
        out.append(Case(names[pump], names[sink], False, run, area="broker", transport="yamux stream, unix",
                        key="floor-yamux" if floor else "", floor="" if floor else "floor-yamux"))
    return out


def cases(ctx: Context) -> list[Case]:
    out: list[Case] = yamux_cases()
    for multiplex in (False, True):
        for automtls in (False, True):
            def py_py(c: Context, m: bool = automtls, x: bool = multiplex) -> Result:
                return _python_host(c, PY_COUNTER, m, x)

            out.append(Case("Python", "Python", automtls, py_py, area="broker",
                            transport="process, " + ("multiplexed" if multiplex else "per-connection")))

    def py_go(c: Context) -> Result:
        plugin = go_program(c, "counter_plugin")
        if plugin is None:
            return Result(skipped=f"Go: {c.cache.get('go:reason')}")
        return _python_host(c, [plugin], False, False, floor=True)

    def bare_go(c: Context) -> Result:
        plugin = go_program(c, "counter_plugin")
        if plugin is None:
            return Result(skipped=f"Go: {c.cache.get('go:reason')}")
        return _bare_host(c, [plugin])

    def ahead_go(c: Context) -> Result:
        plugin = go_program(c, "counter_plugin")
        if plugin is None:
            return Result(skipped=f"Go: {c.cache.get('go:reason')}")
        return _ahead_host(c, [plugin])

    def go_py(c: Context) -> Result:
        return _go_host(c, PY_COUNTER)

    def go_go(c: Context) -> Result:
        plugin = go_program(c, "counter_plugin")
        if plugin is None:
            return Result(skipped=f"Go: {c.cache.get('go:reason')}")
        return _go_host(c, [plugin])

    out += [Case("bare grpcio", "Go", False, bare_go, area="broker", transport="process, per-connection",
                 key="floor-broker"),
            Case("Python", "Go", False, py_go, area="broker", transport="process, per-connection",
                 floor="floor-broker"),
            Case("bare grpcio (servers started ahead)", "Go", False, ahead_go, area="broker",
                 transport="process, per-connection"),
            Case("Go", "Python", False, go_py, area="broker", transport="process, per-connection"),
            Case("Go", "Go", False, go_go, area="broker", transport="process, per-connection")]
    return out


if __name__ == "__main__":
    sys.exit(__import__("run").main(["--only", "broker", *sys.argv[1:]]))
