"""Interleaved A/B of two source trees' Kubernetes port-forward path (runner relay and stand-in relay).

    python bench/portforward_ab.py OLD_TREE NEW_TREE --pairs 8 --calls 2000 --block 100

Each round starts, in a child process using one tree's src/ and tests/, a stand-in
of its own (SeparateStandIn, Docker pods) and two clients of the KV plugin pod: one
through the runner's port-forward, one by pod IP (127.0.0.1). Their Gets then
alternate in blocks of --block, so the ratio port-forward / pod IP of a round is
measured over the same moments. Rounds alternate OLD, NEW (and NEW, OLD on the
next pair) so the machine's drift hits both trees alike. Prints one JSON line per
round and a summary: each tree's median (and min..max) of p50, p99 and the ratios.
Every loop is bounded by --pairs and --calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHILD_TIMEOUT = 600.0


def _child(calls: int, block: int) -> None:
    tree = Path.cwd()
    for p in (tree / "src", tree / "bench", tree / "examples" / "kv", tree):
        sys.path.insert(0, str(p))
    import logging

    logging.basicConfig(level=logging.ERROR)
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import Client, ClientConfig
    from plugbay.runners.kubernetes import KubernetesRunner
    from tests.kube_standin.images import kvtrap_image
    from tests.kube_standin.separate import SeparateStandIn

    image = kvtrap_image()
    with SeparateStandIn(runtime="docker") as standin:
        clients: dict[str, Any] = {}
        kvs: dict[str, Any] = {}
        try:
            for mode in ("port-forward", "in-cluster"):
                runner = KubernetesRunner(image, kubeconfig=standin.kubeconfig, address_mode=mode,
                                          writable_dirs=("/tmp", "/data"), allow_loopback=True)
                config: Any = ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                                           call_timeout=30.0)
                clients[mode] = Client(config)
                kvs[mode] = clients[mode].dispense(PLUGIN_NAME)
                kvs[mode].put("bench", b"value")
                for _ in range(200):  # warm-up
                    kvs[mode].get("bench")
            lat: dict[str, list[float]] = {m: [] for m in kvs}
            done = 0
            while done < calls:
                n = min(block, calls - done)
                for mode, kv in kvs.items():
                    out = lat[mode]
                    for _ in range(n):
                        s = time.perf_counter()
                        kv.get("bench")
                        out.append((time.perf_counter() - s) * 1e6)
                done += n
        finally:
            for client in clients.values():
                client.kill()
    result = {}
    for mode, values in lat.items():
        values.sort()
        result[mode] = {"p50": values[len(values) // 2], "p99": values[min(len(values) - 1, int(0.99 * len(values)))]}
    print(json.dumps(result), flush=True)


def _round(tree: str, calls: int, block: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TESTCONTAINERS_RYUK_DISABLED="true",
               PYTHONPATH=os.path.join(tree, "src"))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--calls", str(calls),
                          "--block", str(block)], cwd=tree, env=env, capture_output=True, text=True,
                         timeout=CHILD_TIMEOUT)
    if out.returncode != 0:
        raise SystemExit(f"round in {tree} failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    pf, ip = r["port-forward"], r["in-cluster"]
    return {"pf_p50": pf["p50"], "pf_p99": pf["p99"], "ip_p50": ip["p50"], "ip_p99": ip["p99"],
            "r50": pf["p50"] / ip["p50"], "r99": pf["p99"] / ip["p99"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", nargs="?")
    parser.add_argument("new", nargs="?")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if not (1 <= args.block <= args.calls <= 100_000 and 1 <= args.pairs <= 100):
        parser.error("need 1 <= --block <= --calls <= 100000 and 1 <= --pairs <= 100")
    if args.child:
        _child(args.calls, args.block)
        return 0
    if not args.old or not args.new:
        parser.error("OLD_TREE and NEW_TREE are required")
    rows: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for i in range(args.pairs):
        order = [("old", args.old), ("new", args.new)]
        for name, tree in order if i % 2 == 0 else order[::-1]:
            r = _round(tree, args.calls, args.block)
            rows[name].append(r)
            print(json.dumps({"pair": i, "tree": name, **{k: round(v, 3) for k, v in r.items()}}), flush=True)
    for name, rs in rows.items():
        summary = {k: f"{statistics.median(r[k] for r in rs):.3f} ({min(r[k] for r in rs):.3f}.."
                      f"{max(r[k] for r in rs):.3f})" for k in rs[0]}
        print(json.dumps({"tree": name, **summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
