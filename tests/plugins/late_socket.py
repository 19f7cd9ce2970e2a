"""A plugin whose announced socket appears a moment after its handshake line: argv[1] seconds later.

argv[2:] is a real plugin's command. It listens in a sub-folder of the host's socket folder; this
prints its handshake line naming a path in the host's folder instead, waits, then hard-links the
plugin's socket there (the same listener), and passes the rest of the plugin's stdout on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def main() -> None:
    folder = os.environ["PLUGIN_UNIX_SOCKET_DIR"]
    inner = os.path.join(folder, "inner")
    os.mkdir(inner, 0o700)
    child = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PLUGIN_UNIX_SOCKET_DIR": inner})
    assert child.stdout is not None
    parts = child.stdout.readline().rstrip("\n").split("|")
    real, parts[3] = parts[3], os.path.join(folder, "late.sock")
    sys.stdout.write("|".join(parts) + "\n")
    sys.stdout.flush()
    time.sleep(float(sys.argv[1]))
    os.link(real, parts[3])
    for rest in child.stdout:
        sys.stdout.write(rest)
        sys.stdout.flush()
    sys.exit(child.wait())


if __name__ == "__main__":
    main()
