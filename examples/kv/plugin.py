"""A Python KV plugin, drop-in for go-plugin's examples/grpc plugin.

It stores each key in a file ``kv_<key>`` in its working directory. Run it
from a host (examples/kv/host.py, or go-plugin's own Go host) with
KV_PLUGIN="python examples/kv/plugin.py"; run directly, it explains that it is
a plugin and exits 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))  # kv_plugin_def and kvproto
if (_HERE.parent.parent / "src" / "plugbay").is_dir():  # a source checkout: no install needed
    sys.path.insert(0, str(_HERE.parent.parent / "src"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import ServeConfig, serve  # noqa: E402

log = logging.getLogger("kv")


class FileKV:
    """Each key is a file kv_<key> in the current directory, as in the Go example."""

    def put(self, key: str, value: bytes) -> None:
        Path(f"kv_{key}").write_bytes(value)
        log.info("put", extra={"key": key, "bytes": len(value)})

    def get(self, key: str) -> bytes:
        return Path(f"kv_{key}").read_bytes()


def main() -> None:
    serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(FileKV())}))


if __name__ == "__main__":
    main()
