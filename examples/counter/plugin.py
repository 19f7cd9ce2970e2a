"""A Python counter plugin, drop-in for go-plugin's examples/bidirectional plugin.

Put reads the key's current value (0 when absent), asks the HOST's AddHelper
(reached through the GRPCBroker) for current + value, and stores the result
in the file ``kv_<key>`` (JSON ``{"Value":N}``, as the Go example) in its
working directory. Run it from a host
(examples/counter/host.py, or go-plugin's Go host) with
COUNTER_PLUGIN="python examples/counter/plugin.py".
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))  # counter_plugin_def and counterproto
if (_HERE.parent.parent / "src" / "plugbay").is_dir():  # a source checkout: no install needed
    sys.path.insert(0, str(_HERE.parent.parent / "src"))

from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, AddHelper, CounterPlugin  # noqa: E402

from plugbay import ServeConfig, serve  # noqa: E402

log = logging.getLogger("counter")


class FileCounter:
    """Each key is a file kv_<key> holding {"Value": N}, the Go example's format (files are shared)."""

    def get(self, key: str) -> int:
        try:
            return int(json.loads(Path(f"kv_{key}").read_text())["Value"])
        except FileNotFoundError:
            raise KeyError(key) from None

    def put(self, key: str, value: int, helper: AddHelper) -> None:
        try:
            current = self.get(key)
        except KeyError:
            current = 0
        result = helper.sum(current, value)
        Path(f"kv_{key}").write_text(json.dumps({"Value": result}, separators=(",", ":")))
        log.info("put", extra={"key": key, "value": result})


def main() -> None:
    serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin(FileCounter())}))


if __name__ == "__main__":
    main()
