"""Run the stand-in on its own: ``python -m tests.kube_standin [--kubeconfig PATH] [--runtime docker|process]``.

Prints the kubeconfig path, then serves until SIGINT/SIGTERM (e.g. to run
tests/test_kubernetes_cluster.py against it with KUBECONFIG=<that path>).
With ``--until-stdin-closes`` it also stops when its stdin ends (its parent
closed the pipe or died: see separate.py) and, stopping, prints one JSON line
with the engine's container start durations.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .server import StandIn


def _watch_stdin(stop: threading.Event) -> None:
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        stop.set()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.kube_standin")
    parser.add_argument("--kubeconfig", default=None, help="where to write the kubeconfig")
    parser.add_argument("--runtime", default="auto", choices=["auto", "docker", "process"])
    parser.add_argument("--until-stdin-closes", action="store_true",
                        help="also stop at the end of stdin; print start durations as JSON when stopping")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = StandIn(runtime=args.runtime).start()
    try:
        print(server.write_kubeconfig(args.kubeconfig), flush=True)
        if args.until_stdin_closes:
            # a daemon thread: a blocking read cannot be interrupted, and the process exits right after
            threading.Thread(target=_watch_stdin, args=(stop,), name="plugbay-standin-stdin", daemon=True).start()
        stop.wait()
    finally:
        server.stop()
        if args.until_stdin_closes:
            print(json.dumps({"container_start_seconds": server.container_start_seconds()}), flush=True)


if __name__ == "__main__":
    main()
