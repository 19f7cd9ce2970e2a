"""The KV example's plugin, too loaded to answer health checks while a file ``slow`` is in its working folder
(its health Check and Watch stall, the process runs on), and with cleanup of its own: once serve() returns (a
SIGTERM or Shutdown stops it gracefully) it writes ``cleaned`` there. A SIGKILL leaves no ``cleaned``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
from plugin import FileKV  # noqa: E402  (examples/kv/plugin.py: kv_<key> files)

from plugbay import ServeConfig, serve  # noqa: E402
from plugbay.core.plugin.health import HealthServicer  # noqa: E402

_check, _watch = HealthServicer.Check, HealthServicer.Watch


def _stall(context: Any) -> None:
    until = time.monotonic() + 120  # nothing outlives a run
    while Path("slow").exists() and context.is_active() and time.monotonic() < until:
        time.sleep(0.02)


def _slow_check(self: HealthServicer, request: Any, context: Any) -> Any:
    _stall(context)
    return _check(self, request, context)


def _slow_watch(self: HealthServicer, request: Any, context: Any) -> Iterator[Any]:
    _stall(context)
    yield from _watch(self, request, context)


HealthServicer.Check = _slow_check  # type: ignore[method-assign]
HealthServicer.Watch = _slow_watch  # type: ignore[method-assign]

serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(FileKV())}))
Path("cleaned").write_text("serve() returned")
