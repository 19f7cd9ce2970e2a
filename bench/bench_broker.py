"""The broker rows: one brokered callback per call, and streaming throughput, next to plain unary.

Each timed call is a counter ``Put``: the host serves AddHelper on a fresh
broker id (accept_and_serve), the plugin dials that id and calls Sum back,
the host stops the brokered server. So p50/p99 are "broker setup + dial +
one callback" latency. The note column gives, from the same plugin process,
the plain unary latency (counter ``Get`` on the main channel) and the
streaming throughput of the streaming example (server stream, 256 KiB
chunks) over the same kind of connection.

Rows: per-connection and multiplexed, +/- AutoMTLS, Python <-> Python, and
the go-plugin 1.0.1 counter programs in per-connection plain mode.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from common import REPO, Case, Context, Result, combine, go_program, percentile, timed

COUNTER = REPO / "examples" / "counter"
STREAMING = REPO / "examples" / "streaming"
for _p in (COUNTER, STREAMING):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

PY_COUNTER = [sys.executable, str(COUNTER / "plugin.py")]
PY_STREAMER = [sys.executable, str(STREAMING / "plugin.py")]
STREAM_CHUNK = 256 * 1024
STREAM_BYTES = 128 * 1024 * 1024


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


def _python_host(ctx: Context, plugin_cmd: list[str], automtls: bool, multiplex: bool) -> Result:
    from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin

    from plugbay import Client, ClientConfig, ProcessRunner

    rounds = []
    gets: list[float] = []
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        for _ in range(ctx.rounds):
            config = ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, auto_mtls=automtls,
                                  multiplex_broker=multiplex, runner=ProcessRunner(plugin_cmd, cwd=cwd),
                                  call_timeout=ctx.call_timeout)
            started = time.perf_counter()
            with Client(config) as client:
                counter = client.dispense(PLUGIN_NAME)
                counter.put("bench", 1, _Adder())
                first = (time.perf_counter() - started) * 1000
                puts, total = timed(ctx.calls, lambda: counter.put("bench", 1, _Adder()))
                g, _ = timed(ctx.calls, lambda: counter.get("bench"))
                gets += g
            rounds.append(Result(first, percentile(puts, 0.5), percentile(puts, 0.99), ctx.calls,
                                 ctx.calls / total if total else 0.0))
        gets.sort()
        note = f"p50/p99 = Put + callback; plain Get p50 {percentile(gets, 0.5):.0f} us"
        if plugin_cmd == PY_COUNTER:
            note += f"; stream {_stream_mb_s(PY_STREAMER, automtls, multiplex, cwd):.0f} MB/s"
    result = combine(rounds)
    result.note = note
    return result


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


def cases(ctx: Context) -> list[Case]:
    out: list[Case] = []
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
        return _python_host(c, [plugin], False, False)

    def go_py(c: Context) -> Result:
        return _go_host(c, PY_COUNTER)

    def go_go(c: Context) -> Result:
        plugin = go_program(c, "counter_plugin")
        if plugin is None:
            return Result(skipped=f"Go: {c.cache.get('go:reason')}")
        return _go_host(c, [plugin])

    out += [Case("Python", "Go", False, py_go, area="broker", transport="process, per-connection"),
            Case("Go", "Python", False, go_py, area="broker", transport="process, per-connection"),
            Case("Go", "Go", False, go_go, area="broker", transport="process, per-connection")]
    return out


if __name__ == "__main__":
    sys.exit(__import__("run").main(["--only", "broker", *sys.argv[1:]]))
