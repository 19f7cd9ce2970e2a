"""A host process for the host-kill fault: start the KV plugin, save its reattach JSON, write one key, wait.

    python -m tests.faults.hostproc CWD REATTACH_FILE KEY VALUE

It prints "ready" once the write was acknowledged and the reattach JSON is on
disk (mode 0600: it may hold the AutoMTLS key), then sleeps until it is killed
(at most 120 s, so nothing outlives a run).
"""

from __future__ import annotations

import os
import sys
import time

from plugbay import Client, ProcessRunner
from tests.faults.targets import KV_EXAMPLE, PLUGIN_NAME, PY, kv_config


def main() -> None:
    cwd, out, key, value = sys.argv[1:5]
    client = Client(kv_config(ProcessRunner([PY, KV_EXAMPLE], cwd=cwd)))
    client.start()
    client.dispense(PLUGIN_NAME).put(key, value.encode())
    tmp = out + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(client.reattach_config().to_json())
    os.replace(tmp, out)
    print("ready", flush=True)
    time.sleep(120)
    client.kill()


if __name__ == "__main__":
    main()
