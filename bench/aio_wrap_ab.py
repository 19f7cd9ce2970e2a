"""In-process A/B of two versions of the AsyncClient's call wrappers (core/host/aiochannel.py and aiocall.py).

    python bench/aio_wrap_ab.py OLD NEW --rounds 8 --calls 3000 --block 50

OLD and NEW are source trees (folders holding src/plugbay) or git revisions of this checkout. One
AsyncClient starts the Go KV plugin; each version's aiocall.py and aiochannel.py are loaded under names
of their own (OLD's aiochannel binds OLD's aiocall) and each wraps the client's one grpc.aio channel in
its AioManagedChannel, so both stubs' calls ride the same connection, event loop and process; a bare
grpc.aio stub on that channel is the third arm. Per round, the three take turns in blocks of --block
Gets (the order rotating, the first Get after a switch not counted) until each made --calls; a round's
ratios are its p50s', and the summary gives their median and range over the rounds. Only what differs in
those two files is compared: everything else is the running tree's. Run OLD against itself for the
spread to expect. Prints one JSON line. Every loop is bounded by --rounds and --calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, Context, go_program, load_file, percentile

_HOST = "src/plugbay/core/host"


def _source(spec: str, name: str) -> str:
    """The text of ``name`` (aiocall.py, aiochannel.py) in a tree or a revision of this checkout."""
    path = Path(spec) / _HOST / name
    if path.is_file():
        return path.read_text(encoding="utf-8")
    return subprocess.run(["git", "-C", str(REPO), "show", f"{spec}:{_HOST}/{name}"], capture_output=True,
                          check=True, text=True).stdout


def _load(text: str, name: str, folder: str) -> ModuleType:
    path = os.path.join(folder, f"{name}.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return load_file(path, name)


def _version(spec: str, side: str, folder: str) -> ModuleType:
    """``spec``'s aiochannel module, bound to ``spec``'s aiocall (not the running tree's)."""
    import plugbay.core.host.aiochannel  # noqa: F401  (the running tree's, and its aiocall, first)

    aiocall = _load(_source(spec, "aiocall.py"), f"aiocall_{side}", folder)
    key = "plugbay.core.host.aiocall"
    running = sys.modules[key]
    sys.modules[key] = aiocall
    try:
        return _load(_source(spec, "aiochannel.py"), f"aiochannel_{side}", folder)
    finally:
        sys.modules[key] = running


async def _rounds(plugin: str, args: argparse.Namespace, versions: dict[str, ModuleType]) -> dict[str, Any]:
    import grpc.aio  # noqa: F401  (the client's channel is one)
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
    from kvproto import kv_pb2, kv_pb2_grpc

    from plugbay import AsyncClient, ClientConfig, ProcessRunner

    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        config = ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=ProcessRunner([plugin], cwd=cwd),
                              call_timeout=30.0)
        async with AsyncClient(config) as client:
            kv = await client.dispense(PLUGIN_NAME)
            await kv.put("bench", b"value")
            running = client.channel
            loop = asyncio.get_running_loop()
            stubs = {side: kv_pb2_grpc.KVStub(module.AioManagedChannel(running._inner, running._managed, loop,
                                                                       running._executor))
                     for side, module in versions.items()}
            bare = kv_pb2_grpc.KVStub(running._inner)
            request = kv_pb2.GetRequest(key="bench")
            calls = {"old": lambda: stubs["old"].Get(request), "new": lambda: stubs["new"].Get(request),
                     "bare": lambda: bare.Get(request, timeout=30.0)}
            for call in calls.values():  # warm up
                for _ in range(300):
                    await call()
            p50s: dict[str, list[float]] = {side: [] for side in calls}
            for _ in range(args.rounds):
                latencies: dict[str, list[float]] = {side: [] for side in calls}
                order = list(calls)
                for n in range(args.calls // args.block):
                    for side in order:
                        call, out = calls[side], latencies[side]
                        await call()  # the first call after a switch is not counted
                        for _ in range(args.block):
                            started = time.perf_counter()
                            await call()
                            out.append((time.perf_counter() - started) * 1e6)
                    order.append(order.pop(0))
                for side, values in latencies.items():
                    values.sort()
                    p50s[side].append(percentile(values, 0.5))
    result: dict[str, Any] = {side: round(statistics.median(values), 1) for side, values in p50s.items()}
    for label, top, bottom in (("new/old p50", "new", "old"), ("old/bare p50", "old", "bare"),
                               ("new/bare p50", "new", "bare")):
        ratios = sorted(t / b for t, b in zip(p50s[top], p50s[bottom]))
        result[label] = {"median": round(statistics.median(ratios), 4),
                         "range": [round(ratios[0], 4), round(ratios[-1], 4)]}
    result["new lower in"] = f"{sum(n < o for n, o in zip(p50s['new'], p50s['old']))}/{args.rounds}"
    result["load"] = round(os.getloadavg()[0], 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--block", type=int, default=50)
    args = parser.parse_args()
    if not (1 <= args.block <= args.calls <= 1_000_000 and 1 <= args.rounds <= 200):
        parser.error("need 1 <= --block <= --calls <= 1000000 and 1 <= --rounds <= 200")
    logging.basicConfig(level=logging.ERROR)
    plugin = go_program(Context(), "kv_plugin")
    if plugin is None:
        raise SystemExit("no Go plugin")
    with tempfile.TemporaryDirectory(prefix="plugbay-aio-ab-") as folder:
        versions = {side: _version(spec, side, folder) for side, spec in (("old", args.old), ("new", args.new))}
        print(json.dumps(asyncio.run(_rounds(plugin, args, versions))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
