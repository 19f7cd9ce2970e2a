"""In-process A/B of two versions of the OpenSSL relay's connection code (core/transport/relayconn.py).

    python bench/relay_ab.py OLD_RELAYCONN.py NEW_RELAYCONN.py --calls 6000 --block 50

Two Go KV plugins with AutoMTLS start in one host process, the first relayed
by OLD's RelayConn and the second by NEW's; calls then alternate between them
in blocks of --block. Both versions share the process, the I/O loop and the
moments they run in, so load drift (several people share this machine's two
cores) hits both alike. Still, the second client ran ~3% slower at p50 in most
runs whichever file it had, and A/A runs (one file against itself) differed by
2% to 11% at load 6 to 11: run both orders several times, next to an A/A run,
and trust only what holds in all of them. Prints one JSON line.
A file may import only what the tree's relayconn.py may (its own module name
does not matter). Only relayconn.py is loaded from each file: since the pump
moved to relaypump.py, a relayconn.py that imports it gets the running tree's
one, so two such files run the same pump and this compares only what is left in
relayconn.py; pump changes need another method (e.g. relay_rows.py run in each
checkout, interleaved). A relayconn.py from before the move has its own pump
inside. Every loop is bounded by --calls.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Context, go_program, load_file, percentile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--calls", type=int, default=6000)
    parser.add_argument("--block", type=int, default=50)
    args = parser.parse_args()
    if not (1 <= args.block <= args.calls <= 1_000_000):
        parser.error("need 1 <= --block <= --calls <= 1000000")
    logging.basicConfig(level=logging.ERROR)
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import Client, ClientConfig, ProcessRunner
    from plugbay.core.transport import relay

    ctx = Context()
    plugin = go_program(ctx, "kv_plugin")
    if plugin is None:
        raise SystemExit(f"no Go plugin: {ctx.cache.get('go:reason')}")
    versions = {"old": load_file(args.old, "relayconn_old"), "new": load_file(args.new, "relayconn_new")}
    clients: dict[str, Any] = {}
    kvs: dict[str, Any] = {}
    latencies: dict[str, list[float]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        try:
            for name, module in versions.items():
                # TLSRelay looks both up when it is made and at each accept: this client's relay uses them
                relay.RelayConn, relay.Setup = module.RelayConn, module.Setup  # type: ignore[misc]
                clients[name] = Client(ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, auto_mtls=True,
                                                    runner=ProcessRunner([plugin], cwd=cwd)))
                kvs[name] = clients[name].dispense(PLUGIN_NAME)
                kvs[name].put("bench", b"value")
                if clients[name].connection_mode != "relay-tls":
                    raise SystemExit(f"the {name} client is not relayed ({clients[name].connection_mode})")
                for _ in range(200):  # warm up
                    kvs[name].get("bench")
            for n in range(args.calls // args.block):
                name = ("old", "new")[n % 2]
                kv, out = kvs[name], latencies[name]
                kv.get("bench")  # the first call after a switch is not counted
                for _ in range(args.block):
                    started = time.perf_counter()
                    kv.get("bench")
                    out.append((time.perf_counter() - started) * 1e6)
        finally:
            for client in clients.values():
                client.kill()
    result: dict[str, Any] = {}
    for name, values in latencies.items():
        values.sort()
        result[name] = {p: round(percentile(values, q)) for p, q in
                        (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999))}
    result["new/old p50"] = round(result["new"]["p50"] / result["old"]["p50"], 3)
    result["load"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
