"""serve() in network mode on a thread of a program that goes on doing its own work: the program stops
it with the NetworkServe's ServeStop, from its main thread, then exits by itself.

It serves the KV example (files in the working folder) on NET_SERVE_LISTEN in plaintext, prints the
handshake line as serve() does, then reads stdin: "stop" calls ServeStop.stop() and waits for serve()
to return; it prints "RETURNED" once it did (or "STILL SERVING" when it did not within 15 s), and exits
at the end of its stdin (the test looks at its sockets meanwhile). With NET_SERVE_EARLY=1 it asks to stop
before serve() has even started. A serve() that fails (its setup errors exit, having said why on stderr)
prints "SERVE FAILED" and exits 1.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
from plugin import FileKV  # noqa: E402

from plugbay import ServeConfig, serve  # noqa: E402
from plugbay import NetworkServe, ServeStop  # noqa: E402


def main() -> None:
    stop = ServeStop()
    network = NetworkServe(listen=os.environ["NET_SERVE_LISTEN"], insecure=True, stop=stop)
    if os.environ.get("NET_SERVE_EARLY") == "1":
        stop.stop()
    def serving() -> None:
        try:
            serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(FileKV())}, network=network))
        except BaseException as exc:  # (the port taken, say): said, not left to a main thread reading stdin
            print(f"SERVE FAILED: {exc!r}", flush=True)
            os._exit(1)

    thread = threading.Thread(target=serving, name="kv-serve")
    thread.start()
    for line in sys.stdin:
        if line.strip() == "stop":
            stop.stop()
            break
    thread.join(15)
    print("STILL SERVING" if thread.is_alive() else "RETURNED", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
