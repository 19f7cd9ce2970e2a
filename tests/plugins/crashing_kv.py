"""The fault-switch KV test plugin, exiting by itself CRASH_AFTER seconds after it starts: a crash loop
for a Supervisor (each restart serves, then dies again)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import resilience_kv  # noqa: E402


def _die() -> None:
    time.sleep(float(os.environ.get("CRASH_AFTER", "0.5")))
    os._exit(3)


if __name__ == "__main__":
    threading.Thread(target=_die, daemon=True).start()
    resilience_kv.main()
