"""CPU per brokered Put, host and plugin apart: plugbay's host against bench/floor_broker.py's bare grpcio host.

    python bench/broker_cpu.py [--calls 500] [--rounds 3] [--plugin CMD]

Wall-clock on a shared two-core machine mostly measures the neighbours; CPU
time per call does not. Each round runs, in a fresh process, the counter's
Put with a brokered callback ``--calls`` times after 20 untimed ones, with
plugbay's host (a Client, the plugin's log lines read and relayed) and with
floor_broker's ``BareCounter`` (a grpc.server per call, stderr discarded), and
prints per Put: the host's CPU (``time.process_time``, every thread), the
plugin's (its /proc stat) and the host's voluntary context switches. The
plugin is go-plugin's Go counter (tests/go/counter_plugin, built by
tests.gobuild) unless ``--plugin`` names another go-plugin counter.
For instruction counts, run one side under ``valgrind --tool=callgrind`` with
``--side plugbay --calls N`` twice and take (Ir(N2) - Ir(N1)) / (N2 - N1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
_WARM = 20


def _children() -> list[int]:
    task = Path("/proc/self/task")
    return [int(pid) for tid in task.iterdir() for pid in (tid / "children").read_text().split()]


def _cpu_of(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _measure(put: Callable[[], None], calls: int) -> dict[str, float]:
    for _ in range(_WARM):
        put()
    plugin = _children()
    r0, p0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF), _cpu_of(plugin), time.process_time(), time.perf_counter()
    for _ in range(calls):
        put()
    c1, t1, p1, r1 = time.process_time(), time.perf_counter(), _cpu_of(plugin), resource.getrusage(resource.RUSAGE_SELF)
    return {"host cpu us": (c1 - c0) / calls * 1e6, "plugin cpu us": (p1 - p0) / calls * 1e6,
            "wall us": (t1 - t0) / calls * 1e6, "host vcsw": (r1.ru_nvcsw - r0.ru_nvcsw) / calls}


def _side(side: str, plugin: list[str], calls: int) -> dict[str, float]:
    sys.path.insert(0, str(BENCH))
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        if side == "floor":
            from floor_broker import BareCounter

            with BareCounter(plugin, cwd) as bare:
                return _measure(lambda: bare.put("bench", 1), calls)
        sys.path.insert(0, str(REPO / "examples" / "counter"))
        from bench_broker import _Adder
        from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin

        from plugbay import Client, ClientConfig, ProcessRunner

        config = ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, runner=ProcessRunner(plugin, cwd=cwd))
        with Client(config) as client:
            counter = client.dispense(PLUGIN_NAME)
            return _measure(lambda: counter.put("bench", 1, _Adder()), calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plugin", help="a go-plugin counter plugin's command line (default: the Go counter)")
    parser.add_argument("--side", choices=("plugbay", "floor"), help="one round of one side, in this process")
    args = parser.parse_args()
    if args.plugin is None:
        sys.path.insert(0, str(REPO))
        from tests import gobuild

        reason = gobuild.go_missing_reason()
        if reason:
            raise SystemExit(f"no Go counter plugin: {reason}")
        args.plugin = str(gobuild.build_go("counter_plugin"))
    if args.side:
        result = _side(args.side, shlex.split(args.plugin), args.calls)
        print(json.dumps(result))
        print(", ".join(f"{k} {v:.1f}" for k, v in result.items()), file=sys.stderr)
        return 0
    got: dict[str, list[dict[str, float]]] = {"plugbay": [], "floor": []}
    for n in range(args.rounds):
        for side in ("plugbay", "floor") if n % 2 == 0 else ("floor", "plugbay"):
            out = subprocess.run([sys.executable, __file__, "--side", side, "--calls", str(args.calls),
                                  "--plugin", args.plugin], capture_output=True, text=True, timeout=900)
            if out.returncode != 0:
                raise SystemExit(f"a {side} round failed ({out.returncode}):\n{out.stderr[-3000:]}")
            got[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {n + 1} {side:7s} " + "  ".join(f"{k} {v:.0f}" for k, v in got[side][-1].items()))
    for side, rounds in got.items():
        print(f"{side:7s} median " + "  ".join(f"{k} {statistics.median(r[k] for r in rounds):.0f}"
                                               for k in rounds[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
