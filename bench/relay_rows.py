"""The relay rows alone, for A/B work on the byte relays: one JSON line per round.

    python bench/relay_rows.py core --rounds 5 --calls 300
    python bench/relay_rows.py kubernetes --rounds 3 --calls 300

``core``: Python host -> Go plugin, plaintext then AutoMTLS (plugbay's OpenSSL
relay, "relay-tls"), one of each per round (plaintext first) so load drift hits both.
``kubernetes``: Python host -> Python pod, pod IP then port-forward, on one
stand-in. Each line has both rows' p50/p99 (us) and their ratios; the last line
gives the medians over the rounds. Every loop is bounded by --rounds and --calls.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Context, Result, go_program, python_host_round


def _core(ctx: Context) -> tuple[str, str, Callable[[bool], Result]]:
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import ClientConfig, ProcessRunner

    plugin = go_program(ctx, "kv_plugin")
    if plugin is None:
        raise SystemExit(f"no Go plugin: {ctx.cache.get('go:reason')}")
    cwd = tempfile.mkdtemp(prefix="plugbay-bench-")
    atexit.register(shutil.rmtree, cwd, True)  # the plugin's kv_* files

    def row(tls: bool) -> Result:
        config = ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, auto_mtls=tls,
                              runner=ProcessRunner([plugin], cwd=cwd), call_timeout=ctx.call_timeout)
        return python_host_round(config, ctx.calls)

    return "plain", "relay-tls", row


def _kubernetes(ctx: Context, standin: Any) -> Callable[[bool], Result]:
    from bench_kubernetes import WRITABLE, _image
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import ClientConfig
    from plugbay.runners.kubernetes import KubernetesRunner

    image = _image(ctx)
    if image is None:
        raise SystemExit(str(ctx.cache.get("kube:reason")))

    def row(forward: bool) -> Result:
        runner = KubernetesRunner(image, kubeconfig=standin.kubeconfig,
                                  address_mode="port-forward" if forward else "in-cluster", writable_dirs=WRITABLE,
                                  allow_loopback=True)  # the stand-in's pod IP is 127.0.0.1
        config: Any = ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                                   call_timeout=ctx.call_timeout)
        return python_host_round(config, ctx.calls)

    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("area", choices=("core", "kubernetes"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    if not (1 <= args.rounds <= 50 and 1 <= args.calls <= 100_000):
        parser.error("--rounds 1..50, --calls 1..100000")
    logging.basicConfig(level=logging.ERROR)
    ctx = Context(calls=args.calls, rounds=args.rounds)
    lines: list[dict[str, float]] = []

    def rounds(names: tuple[str, str], row: Callable[[bool], Result]) -> None:
        for _ in range(args.rounds):
            a, b = row(False), row(True)
            line = {f"{names[0]} p50": a.p50_us, f"{names[0]} p99": a.p99_us,
                    f"{names[1]} p50": b.p50_us, f"{names[1]} p99": b.p99_us,
                    "p50 x": b.p50_us / a.p50_us, "p99 x": b.p99_us / a.p99_us,
                    "load": os.getloadavg()[0]}
            lines.append(line)
            print(json.dumps({k: round(v, 2) for k, v in line.items()}), flush=True)

    if args.area == "core":
        first, second, row = _core(ctx)
        rounds((first, second), row)
    else:
        from tests.kube_standin.separate import SeparateStandIn

        with SeparateStandIn(runtime="docker") as standin:
            # pod IP is "a", port-forward "b": the ratio is port-forward / pod IP
            rounds(("podip", "portforward"), _kubernetes(ctx, standin))
    print(json.dumps({"median": {k: round(statistics.median(x[k] for x in lines), 2) for k in lines[0]}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
