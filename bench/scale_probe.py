"""One scale measurement in a fresh process: N live Go KV plugins, what each costs the host.

    python bench/scale_probe.py plugbay|floor N GO_PLUGIN CWD

Starts N plugins one after another (plugbay Clients on the process runner, or
bench/floor.py's bare grpcio host), makes one Put through each, then prints one
JSON line: the median start-to-first-call, and per live plugin the Python
threads, OS threads and RSS the host gained since before the first start (so a
thread shared by all plugins counts once, spread over N). Then it closes all.
A fresh process keeps earlier rows' allocations out of the RSS figure.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402,F401  (puts src/ and examples/kv on sys.path)


def _status() -> tuple[int, int]:
    """OS threads and RSS (KiB) of this process, from /proc/self/status."""
    threads = rss = 0
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return threads, rss


def main() -> None:
    kind, n, plugin, cwd = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if kind not in ("plugbay", "floor") or not 1 <= n <= 200:
        raise SystemExit("usage: scale_probe.py plugbay|floor N(1..200) GO_PLUGIN CWD")
    from floor import BareKV
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import Client, ClientConfig, ProcessRunner

    py0, (os0, rss0) = threading.active_count(), _status()
    live: list[Any] = []
    starts: list[float] = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            if kind == "floor":
                kv: Any = BareKV([plugin], cwd)
                live.append(kv)
            else:
                client = Client(ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                             runner=ProcessRunner([plugin], cwd=cwd)))
                live.append(client)
                kv = client.dispense(PLUGIN_NAME)
            kv.put("scale", b"value")
            starts.append((time.perf_counter() - started) * 1000)
        time.sleep(0.2)  # threads a start leaves behind settle
        py1, (os1, rss1) = threading.active_count(), _status()
    finally:
        for item in reversed(live):
            item.close() if kind == "floor" else item.kill()
    print(json.dumps({"start_ms": statistics.median(starts), "py_threads": (py1 - py0) / n,
                      "os_threads": (os1 - os0) / n, "rss_kib": (rss1 - rss0) / n}), flush=True)


if __name__ == "__main__":
    main()
