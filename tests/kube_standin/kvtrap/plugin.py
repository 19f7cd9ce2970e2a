"""The KV example plugin with trap keys, for pod fault tests (runs in a pod image).

Get/Put store files kv_<key> in the working directory like examples/kv, except on Get:
  __hang__   wait until the call is cancelled (at most 60 s)
  __exit__   the process exits with code 7 in the middle of the call
  __alloc__  allocate memory until the kernel's OOM killer ends the container
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))  # kv_plugin_def and kvproto, copied next to this file

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay.core.plugin.server import ServeConfig, serve  # noqa: E402


class TrapKV:
    def put(self, key: str, value: bytes) -> None:
        Path(f"kv_{key}").write_bytes(value)

    def get(self, key: str) -> bytes:
        if key == "__hang__":
            threading.Event().wait(60)
            return b"woke"
        if key == "__exit__":
            os._exit(7)
        if key == "__alloc__":
            hog = []
            for _ in range(4096):  # bounded: 64 GiB, far past any limit the tests set
                hog.append(bytearray(16 * 1024 * 1024))
            return b"not killed"
        return Path(f"kv_{key}").read_bytes()


if __name__ == "__main__":
    serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(TrapKV())}))
