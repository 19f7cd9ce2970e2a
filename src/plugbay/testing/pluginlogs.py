"""A PluginContainer's plugin logs: the container's stderr as Python logging records, as a Client's.

PluginContainer's Client reaches the container by reattaching, and a reattached Client reads no output
(nor does go-plugin's: a reattach has no pipes), so the plugin's log lines reached no logger: a test's
caplog, and the report of a test that failed, showed nothing of what the plugin said. The container's
stderr log is followed from the container's start until stop(), on one plugbay-* thread, into the
LogPump a started Client's output goes to: hclog JSON lines become records on
``plugbay.plugin.<name>`` (or ClientConfig's ``logger``), other lines go to ``raw_log_sink`` when
given, else to the logger, each as go-plugin levels them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from plugbay.core.host.logs import LogPump
from plugbay.runners.docker.logs import ContainerLogStream

_log = logging.getLogger("plugbay.testing")


class PluginLogs:
    """Follows one container's stderr into a LogPump until close()."""

    def __init__(self, api: Any, container_id: str, name: str, logger: logging.Logger | None,
                 raw_sink: Callable[[str], None] | None) -> None:
        self._pump = LogPump(name, logger, raw_sink)
        self._failed = False
        self._stream = ContainerLogStream(api, container_id, "stderr", on_line=self._handle)

    def _handle(self, line: str) -> None:
        try:
            self._pump.handle(line, "stderr")
        except Exception:  # noqa: BLE001 - a raw_log_sink or log handler that raises must not end the follow
            if not self._failed:
                self._failed = True
                _log.warning("a plugin log line could not be handed on (its raw_log_sink or a log handler"
                             " raised); later failures are not reported", exc_info=True)

    def close(self) -> None:
        """End the follow (the container may still run) and join its thread."""
        self._stream.close()
