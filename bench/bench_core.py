"""The core rows: Python/Go hosts x Python/Go plugins on the process runner, +/- AutoMTLS.

Go programs are go-plugin 1.0.1 (tests/go/kv_host in bench mode, tests/go/kv_plugin).
Under AutoMTLS a Go peer's P-521 certificate forces plugbay onto its OpenSSL
relay ("relay-tls"); Python <-> Python uses grpcio's own TLS ("grpc-tls").
The three "bare grpcio" rows are the floor: bench/floor.py (a bare grpcio host) on
the Go plugin, plain and with AutoMTLS through bench/floor_relay.py (the least
relay a Python host can use: a thread per connection, stdlib ssl), and
bench/floor_kv_plugin.py (a bare grpcio plugin) under the Go host, plain and
with AutoMTLS (its certificate made ahead of the timed starts, a lower bound,
served behind floor_relay.py's BareTerminator); the plugbay rows with the same Go peer show
their ratio to them.
The two "canned handshake" rows time the Go host alone (no plugin process: a
shell prints a handshake line): with AutoMTLS that is the host's own P-521
work, part of every AutoMTLS row's start that no plugin can remove.
The two "vs Go host" rows are plugbay's host start against go-plugin's own host
(issue 13's "Python host start / Go host start"), their starts alternating.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from common import REPO, Case, Context, Result, go_program, interleaved, paired_starts, python_host_round

PY_PLUGIN = [sys.executable, str(REPO / "examples" / "kv" / "plugin.py")]
FLOOR_PLUGIN = [sys.executable, str(REPO / "bench" / "floor_kv_plugin.py")]
# the "vs Go host" rows' start-only pairs per --starts (or --pairs): cheap (no timed calls), and under
# load bursts the median of 9 pairs' ratios still ranged 1.0-1.9x between runs
VS_GO_PAIRS = 3


def _python_host(plugin_cmd: list[str] | None, automtls: bool, ctx: Context,
                 floor: Callable[[str, int], Result] | None = None) -> Result:
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        def start(calls: int) -> Result:
            return _python_round(plugin_cmd, automtls, cwd, ctx, calls)

        return interleaved(ctx, start, (lambda calls: floor(cwd, calls)) if floor is not None else None)


def _python_round(plugin_cmd: list[str] | None, automtls: bool, cwd: str, ctx: Context, calls: int) -> Result:
    """One plugbay Client start of the KV plugin in ``cwd``, then ``calls`` timed Gets."""
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import ClientConfig

    config = ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, auto_mtls=automtls,
                          runner=_runner(plugin_cmd, cwd), call_timeout=ctx.call_timeout)
    return python_host_round(config, calls)


def _runner(cmd: list[str] | None, cwd: str) -> object:
    from plugbay import ProcessRunner

    assert cmd is not None
    return ProcessRunner(cmd, cwd=cwd)


def _go_host_round(host: str, plugin_cmd: list[str], automtls: bool, calls: int, cwd: str, note: str) -> Result:
    """One kv_host bench run: a start, the first Put, then ``calls`` Gets (at least one)."""
    env = {**os.environ, "KV_PLUGIN": shlex.join(plugin_cmd)}
    if plugin_cmd == FLOOR_PLUGIN and automtls:
        env.update(_floor_cert_env(cwd))
    args = [host, "--timeout", "120s"] + (["--automtls"] if automtls else []) + ["bench", str(max(calls, 1))]
    out = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"kv_host bench failed ({out.returncode}): {out.stdout}{out.stderr}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return Result(data["start_to_first_call_ms"], data["p50_us"], data["p99_us"],
                  data["n"], data["calls_per_s"], note=note)


def _floor_cert_env(cwd: str) -> dict[str, str]:
    """The environment that hands the bare plugin its AutoMTLS certificate, made now, before the timed
    starts (the plugin only reads it); go-plugin's host passes its environment on to its plugins."""
    from floor_relay import CERT_DIR_ENV, made_ahead

    folder = os.path.join(cwd, "floor-cert")
    os.makedirs(folder, exist_ok=True)
    made_ahead(folder)
    return {CERT_DIR_ENV: folder}


def _go_host(plugin_cmd: list[str], automtls: bool, ctx: Context) -> Result:
    """The Go host on the Go plugin or, alone, on the bare grpcio plugin (the Python plugin: _go_host_with_floor)."""
    host = go_program(ctx, "kv_host")
    if host is None:
        return Result(skipped=f"Go: {ctx.cache.get('go:reason')}")
    note = "go-plugin host" + (", Go TLS" if automtls else "")
    if plugin_cmd == FLOOR_PLUGIN:
        note = ("go-plugin host; bench/floor_kv_plugin.py" + (" + BareTerminator (floor_relay.py)" if automtls else "")
                + "; alone in its host (the Go host -> Python plugin rows' ratios: against it in their own hosts)")
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        def start(calls: int) -> Result:
            return _go_host_round(host, plugin_cmd, automtls, calls, cwd, note)

        return interleaved(ctx, start)


PAIR_BLOCK = 50  # bench-pair's Gets per turn: each plugin's calls spread over the whole run


def _go_host_with_floor(plugin_cmd: list[str], automtls: bool, ctx: Context) -> Result:
    """The Go host -> Python plugin rows: each round one Go host running the bare grpcio plugin and this one.

    kv_host's bench-pair starts both, then times their Gets in blocks of PAIR_BLOCK whose turns follow
    the start order and then swap (a b | b a | ...), so both see the same moments of the machine's load.
    Their rounds run one after the other (as until the fifty-seventh session) saw different moments:
    over 16 pairs, the bare plugin against itself ranged 0.40-1.36x that way, 0.90-1.11x in one host.
    The start order swaps every round and the rounds (timed and start-only) are made even in number,
    so each plugin starts second, in a host that has just started the other (it can be
    the warmer start), as often as first: with 9 rounds plugbay's plugin started second in 5. The first
    started also kept a lower p99 (the bare plugin against itself, 30 runs per order: b/a 1.22x in ab,
    0.84x in ba), which the even count of timed rounds cancels too.
    """
    host = go_program(ctx, "kv_host")
    if host is None:
        return Result(skipped=f"Go: {ctx.cache.get('go:reason')}")
    note = ("go-plugin host" + (" + plugbay relay-tls (plugin side)" if automtls else "")
            + f"; its floor in the same host (starts: one Go host starts both, each first in half the rounds;"
              f" Gets in blocks of {PAIR_BLOCK}, turns a b | b a)")
    even = dataclasses.replace(ctx, rounds=_even(ctx.rounds), pairs=_even(ctx.pairs), starts=_even(ctx.starts))
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        rounds = itertools.count()
        pending: dict[str, Result] = {}  # the run's plugbay figures, from its floor's call to its own

        def floor(calls: int) -> Result:
            assert not pending, "interleaved() asks for a row round after each floor round"
            pending["row"], bare = _go_host_pair(host, plugin_cmd, automtls, calls, cwd, next(rounds) % 2 == 1,
                                                 note)
            return bare

        result = interleaved(even, lambda calls: pending.pop("row"), floor)
    # the printed "Go host -> bare grpcio plugin" row runs that plugin alone, one per host: the ratio
    # column is taken against these runs' bare plugin, so the note gives its figures
    result.note += (f"; the bare plugin in these runs: start {result.floor_start_ms:.1f} ms, p50"
                    f" {result.floor_p50_us:.0f} us, p99 {result.floor_p99_us:.0f} us")
    return result


def _even(count: int) -> int:
    return count + count % 2


def _go_host_pair(host: str, plugin_cmd: list[str], automtls: bool, calls: int, cwd: str, row_first: bool,
                  note: str) -> tuple[Result, Result]:
    """One kv_host bench-pair run: (this plugin's figures, the bare grpcio plugin's)."""
    env = {**os.environ, "KV_PLUGIN": shlex.join(FLOOR_PLUGIN), "KV_PLUGIN_B": shlex.join(plugin_cmd)}
    if automtls:  # both plugins see it: only the bare one reads it
        env.update(_floor_cert_env(cwd))
    args = [host, "--timeout", "120s"] + (["--automtls"] if automtls else []) + [
        "bench-pair", str(max(calls, 1)), str(PAIR_BLOCK), "ba" if row_first else "ab"]
    out = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"kv_host bench-pair failed ({out.returncode}): {out.stdout}{out.stderr}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    mine, bare = (Result(d["start_to_first_call_ms"], d["p50_us"], d["p99_us"], d["n"], d["calls_per_s"], note=n)
                  for d, n in ((data["b"], note), (data["a"], "")))
    return mine, bare


def _go_host_alone(automtls: bool, ctx: Context) -> Result:
    """kv_host's time to the handshake line when `sh -c echo` prints it (then its dial fails)."""
    host = go_program(ctx, "kv_host")
    if host is None:
        return Result(skipped=f"Go: {ctx.cache.get('go:reason')}")
    cert = ""
    if automtls:  # the host checks the plugin's certificate at the handshake
        from plugbay.core.protocol.tls import generate_cert

        cert = base64.b64encode(generate_cert().cert_der).decode().rstrip("=")
    times = []
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        line = f"1|1|unix|{os.path.join(cwd, 'none.sock')}|grpc|{cert}"
        # the shell outlives the line a little: a plugin gone before its line is read is another error
        env = {**os.environ, "KV_PLUGIN": f"echo {shlex.quote(line)}; exec sleep 0.3"}
        args = [host, "--timeout", "30s"] + (["--automtls"] if automtls else []) + ["bench", "1"]
        for _ in range(max(ctx.rounds, ctx.starts)):  # start-only: every start counts
            out = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
            found = re.search(r"start_ms=([\d.]+)", out.stderr)
            if found is None:
                raise RuntimeError(f"kv_host did not reach the handshake: {out.stdout}{out.stderr}")
            times.append(float(found.group(1)))
    return Result(metrics={"handshake ms": statistics.median(times)},
                  note="go-plugin host reading a canned handshake line; no plugin process")


def _bare_round(plugin_cmd: list[str], calls: int, cwd: str, ctx: Context, automtls: bool = False) -> Result:
    from floor import BareKV

    from common import measure_kv

    started = time.perf_counter()
    with BareKV(plugin_cmd, cwd, ctx.call_timeout, automtls) as kv:
        return measure_kv(kv, calls, started,
                          note="bench/floor.py + floor_relay.py (a relay thread per connection)" if automtls
                          else "bench/floor.py")


def _bare_host(plugin_cmd: list[str], ctx: Context, automtls: bool = False) -> Result:
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        return interleaved(ctx, lambda calls: _bare_round(plugin_cmd, calls, cwd, ctx, automtls))


def _floor_round(c: Context, kind: str) -> Callable[[str, int], Result] | None:
    """One round of a bare grpcio host's floor row ("floor-host" or "floor-host-tls": in a working directory,
    timing ``calls`` calls), taken between a row's. The Go host rows' floor runs in their host (bench-pair)."""
    plugin = go_program(c, "kv_plugin")
    if plugin is None:
        return None
    return lambda cwd, calls: _bare_round([plugin], calls, cwd, c, kind == "floor-host-tls")


def _vs_go_host(automtls: bool, c: Context) -> Result:
    """plugbay's host start against go-plugin's own Go host, on the same Go plugin: their starts alternate.

    The two hosts' rows run apart (the Go host's minutes after), so the ratio of their medians mostly
    measured the machine's drift between them: here each plugbay start follows a Go host start
    (start-only rounds: the first Put; the Go host also times one Get, after its start), VS_GO_PAIRS times
    max(--starts, --pairs) pairs.
    """
    plugin, host = go_program(c, "kv_plugin"), go_program(c, "kv_host")
    if plugin is None or host is None:
        return Result(skipped=f"Go: {c.cache.get('go:reason')}")
    mine: list[float] = []
    theirs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        for _ in range(max(c.starts, c.pairs) * VS_GO_PAIRS):
            theirs.append(_go_host_round(host, [plugin], automtls, 1, cwd, "").start_to_first_call_ms)
            mine.append(_python_round([plugin], automtls, cwd, c, 0).start_to_first_call_ms)
    result = Result(start_to_first_call_ms=statistics.median(mine), floor_start_ms=statistics.median(theirs),
                    pairs=len(mine), note="start only; ratio column: against go-plugin's Go host (Go host -> Go"
                                          " plugin), its starts alternating with these")
    paired_starts(result, mine, theirs)
    return result


def floor_cases() -> list[Case]:
    """The reference rows: bare grpcio on the Python side, the same Go peer and the same work."""

    def go_floor(c: Context, m: bool = False) -> Result:
        return _go_host(FLOOR_PLUGIN, m, c)

    def floor_go(c: Context, m: bool = False) -> Result:
        plugin = go_program(c, "kv_plugin")
        if plugin is None:
            return Result(skipped=f"Go: {c.cache.get('go:reason')}")
        return _bare_host([plugin], c, m)

    return [Case("bare grpcio", "Go", False, floor_go, key="floor-host"),
            Case("bare grpcio", "Go", True, lambda c: floor_go(c, True), key="floor-host-tls"),
            Case("Go", "bare grpcio", False, go_floor, key="floor-plugin"),
            Case("Go", "bare grpcio", True, lambda c: go_floor(c, True), key="floor-plugin-tls")]


def host_alone_cases() -> list[Case]:
    """The Go host's own share of a start, plaintext and AutoMTLS (see the module docstring)."""
    return [Case("Go", "none (canned handshake line)", m, lambda c, m=m: _go_host_alone(m, c), transport="sh -c echo")
            for m in (False, True)]


def _relay_tail(c: Context) -> Result:
    """The relay's cost on its own: AutoMTLS (relay-tls) rounds alternating with plaintext ones.

    One row's p99 is the highest of its rounds' and the rows run minutes apart, so the two core
    rows' p99 ratio mostly measures the machine. Here the relay and plaintext rounds alternate,
    max(5, ctx.rounds) of each; the figures are their medians, the ratios the medians of the
    rounds' own ratios.
    """
    plugin = go_program(c, "kv_plugin")
    if plugin is None:
        return Result(skipped=f"Go: {c.cache.get('go:reason')}")
    plain: list[Result] = []
    relay: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        for _ in range(max(5, c.rounds)):
            for tls, into in ((False, plain), (True, relay)):
                into.append(_python_round([plugin], tls, cwd, c, c.calls))
    med = statistics.median
    return Result(
        start_to_first_call_ms=med(r.start_to_first_call_ms for r in relay),
        p50_us=med(r.p50_us for r in relay), p99_us=med(r.p99_us for r in relay),
        calls=sum(r.calls for r in relay), calls_per_s=med(r.calls_per_s for r in relay),
        floor_start_ms=med(r.start_to_first_call_ms for r in plain),
        floor_p50_us=med(r.p50_us for r in plain), floor_p99_us=med(r.p99_us for r in plain),
        floor_calls_per_s=med(r.calls_per_s for r in plain),
        metrics={"relay/plain p50 x": med(r.p50_us / p.p50_us for r, p in zip(relay, plain)),
                 "relay/plain p99 x": med(r.p99_us / p.p99_us for r, p in zip(relay, plain))},
        note=f"medians of {len(relay)} relay-tls rounds; ratio column: against the plaintext"
             " rounds alternating with them (not a bare grpcio floor)")


def cases(ctx: Context) -> list[Case]:
    out: list[Case] = []
    for automtls in (False, True):
        def py_go(c: Context, m: bool = automtls) -> Result:
            plugin = go_program(c, "kv_plugin")
            if plugin is None:
                return Result(skipped=f"Go: {c.cache.get('go:reason')}")
            return _python_host([plugin], m, c, _floor_round(c, "floor-host-tls" if m else "floor-host"))

        def go_py(c: Context, m: bool = automtls) -> Result:
            return _go_host_with_floor(PY_PLUGIN, m, c)

        def py_py(c: Context, m: bool = automtls) -> Result:
            return _python_host(PY_PLUGIN, m, c)

        def go_go(c: Context, m: bool = automtls) -> Result:
            plugin = go_program(c, "kv_plugin")
            if plugin is None:
                return Result(skipped=f"Go: {c.cache.get('go:reason')}")
            return _go_host([plugin], m, c)

        out += [Case("Python", "Go", automtls, py_go, floor="floor-host-tls" if automtls else "floor-host"),
                Case("Go", "Python", automtls, go_py, floor="floor-plugin-tls" if automtls else "floor-plugin"),
                Case("Python", "Python", automtls, py_py),
                Case("Go", "Go", automtls, go_go, key="go-host-tls" if automtls else "go-host")]
    ordered = sorted(out, key=lambda c: (c.automtls, ["Python/Go", "Go/Python", "Python/Python",
                                                       "Go/Go"].index(f"{c.host}/{c.plugin}")))
    tail = Case("Python", "Go", True, _relay_tail, transport="process, unix, vs plaintext", floor="floor-host")
    vs_go = [Case("Python", "Go", m, lambda c, m=m: _vs_go_host(m, c), transport="process, unix, vs Go host",
                  floor="go-host-tls" if m else "go-host") for m in (False, True)]
    return floor_cases() + ordered + [tail] + vs_go + host_alone_cases()
