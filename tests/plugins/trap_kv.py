"""A Python KV plugin (plugbay.serve) with trap keys, for host-side error paths.

Get/Put behave like examples/kv except for these keys on Get:
  __hang__   sleep until the call is cancelled (at most 60 s); with TRAP_HANG_MARK=PATH, create
             that file first (a test then knows the call is in flight)
  __die__    the process exits (code 9) in the middle of the call
  __oom__    fill 2 GiB of memory, page by page (a container with a mem_limit is killed for it)
  __print__  print "to-stdout" on stdout and "to-stderr" on stderr, then return "printed"
  __env__    return the PLUGIN_* and BASIC_PLUGIN environment variables as JSON
  __log__    log one record per level through Python logging, then return "logged"
  __exit__   sys.exit(3) in the handler; __interrupt__: raise KeyboardInterrupt; __genexit__: raise GeneratorExit
  __nested__ call a gRPC server that is not there (a nested call failing with UNAVAILABLE), letting
             its grpc.RpcError propagate; __nested_deadline__: one that waits for it (DEADLINE_EXCEEDED)
  __nap__    sleep 0.3 s, then return "rested"
  __held__   like __hang__ (TRAP_HANG_MARK too), until a file "release" is in the working folder (60 s at most)
Env TRAP_VERSIONS="2,3" serves the plugin under those app protocol versions only;
TRAP_WORKERS sets ServeConfig.max_workers (unset: its default); TRAP_SAY_FIRST="line" writes that line to stderr and
waits half a second before serving (a plugin that logs before its handshake); TRAP_IDLE_MS=N
makes its gRPC server close a connection idle for N ms (grpc.max_connection_idle_ms); TRAP_POOL_IDLE=S
lets the server's pool threads past the few it keeps leave after S seconds idle (30 by default);
TRAP_SLOT_WAIT=S: a call waits S seconds for a handler slot at most (5 by default).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "kv"))
sys.path.insert(0, str(REPO / "src"))

import grpc  # noqa: E402
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay.core.plugin.server import ServeConfig, serve  # noqa: E402

log = logging.getLogger("trap_kv")
log.setLevel(logging.DEBUG)


class TrapKV:
    def put(self, key: str, value: bytes) -> None:
        Path(f"kv_{key}").write_bytes(value)

    def get(self, key: str) -> bytes:
        if key == "__hang__":
            mark = os.environ.get("TRAP_HANG_MARK")
            if mark:
                Path(mark).touch()
            threading.Event().wait(60)
            return b"woke"
        if key == "__die__":
            os._exit(9)
        if key == "__oom__":
            hog = bytearray(2 << 30)
            for at in range(0, len(hog), 4096):
                hog[at] = 1
            return b"not killed"
        if key == "__print__":
            print("to-stdout", flush=True)
            print("to-stderr", file=sys.stderr, flush=True)
            return b"printed"
        if key == "__env__":
            env = {k: v for k, v in os.environ.items() if k.startswith("PLUGIN_") or k == "BASIC_PLUGIN"}
            env["TMPDIR"] = os.environ.get("TMPDIR", "")
            return json.dumps(env).encode()
        if key == "__log__":
            log.debug("debug line", extra={"n": 1})
            log.info("info line")
            log.warning("warn line")
            log.error("error line")
            return b"logged"
        if key == "__exit__":
            sys.exit(3)
        if key == "__interrupt__":
            raise KeyboardInterrupt
        if key == "__genexit__":  # e.g. a generator's close() that went through the handler's own code
            raise GeneratorExit("a helper generator was closed")
        if key in ("__nested__", "__nested_deadline__"):
            waits = key == "__nested_deadline__"
            with grpc.insecure_channel(f"unix:{Path.cwd() / 'no-such-helper.sock'}") as channel:
                channel.unary_unary("/helper.Helper/Sum")(b"", timeout=0.5 if waits else 30, wait_for_ready=waits)
            return b"reached"
        if key == "__held__":
            mark = os.environ.get("TRAP_HANG_MARK")
            if mark:
                Path(mark).touch()
            for _ in range(600):
                if Path("release").exists():
                    return b"released"
                time.sleep(0.1)
            return b"not released"
        if key == "__nap__":
            time.sleep(0.3)
            return b"rested"
        return Path(f"kv_{key}").read_bytes()


def main() -> None:
    plugin = {PLUGIN_NAME: KVPlugin(TrapKV())}
    versions = os.environ.get("TRAP_VERSIONS")
    workers: Any = os.environ.get("TRAP_WORKERS")
    workers = int(workers) if workers and workers.isdigit() else workers
    sized: dict[str, Any] = {} if workers is None else {"max_workers": workers}
    first = os.environ.get("TRAP_SAY_FIRST")
    if first:
        print(first, file=sys.stderr, flush=True)
        time.sleep(0.5)  # the host reads the line while it still waits for the handshake
    pool_idle = os.environ.get("TRAP_POOL_IDLE")
    if pool_idle:
        from plugbay.core.transport import workers

        workers.POOL_IDLE = float(pool_idle)
    slot_wait = os.environ.get("TRAP_SLOT_WAIT")
    if slot_wait:
        from plugbay.core.plugin import gate

        gate.SLOT_WAIT = float(slot_wait)  # type: ignore[misc]
    idle = os.environ.get("TRAP_IDLE_MS")
    options = [("grpc.max_connection_idle_ms", int(idle))] if idle else []
    if versions:
        serve(ServeConfig(handshake=HANDSHAKE, **sized, grpc_server_options=options,
                          versioned_plugins={int(v): plugin for v in versions.split(",")}))
    else:
        serve(ServeConfig(handshake=HANDSHAKE, plugins=plugin, **sized, grpc_server_options=options))


if __name__ == "__main__":
    main()
