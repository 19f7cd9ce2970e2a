"""An AsyncClient whose event loop has closed (the asyncio.run() that used it ended) and that is then closed or
killed from another loop lets go of its grpc.aio connection then, not when the client is collected: a
reattached client's close() leaves its plugin running, which otherwise held that connection as long as the
host kept the client. The real KV example plugin; the garbage collector is off, so what ends the connection
is plugbay's doing."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import AsyncClient, Client, ClientConfig  # noqa: E402
from plugbay.runners.process import ProcessRunner  # noqa: E402


def _config(**kw: object) -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, **kw)  # type: ignore[arg-type]


def _sockets(pid: int) -> set[str]:
    """The sockets process ``pid`` holds open (the plugin's: one per host connection, and its listener)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def _settled(pid: int, want: set[str]) -> set[str]:
    """The plugin's sockets once they are ``want`` (asked again until then; about 10 s: a hang guard)."""
    for _ in range(100):
        now = _sockets(pid)
        if now == want:
            return now
        time.sleep(0.1)
    return now


def test_closing_a_reattached_client_after_its_loop_closed_ends_its_connection(no_gc: None, in_tmp: Path) -> None:
    with Client(_config(cmd=[sys.executable, str(REPO / "examples" / "kv" / "plugin.py")])) as owner:
        owner.dispense(PLUGIN_NAME).put("k", b"v")
        runner = owner.runner
        assert isinstance(runner, ProcessRunner) and runner.pid is not None
        before = _sockets(runner.pid)
        attached = AsyncClient(_config(reattach=owner.reattach_config()))

        async def use() -> bytes:
            kv = await attached.dispense(PLUGIN_NAME)
            value: bytes = await kv.get("k")
            return value

        assert asyncio.run(use()) == b"v"  # its loop closes here, the client still held
        assert len(_sockets(runner.pid) - before) >= 1  # the reattached client's connection(s)
        asyncio.run(attached.close())
        assert _settled(runner.pid, before) == before, "the closed client still holds a connection to the plugin"
        assert owner.dispense(PLUGIN_NAME).get("k") == b"v"  # the plugin is the owner's, and still serves it
