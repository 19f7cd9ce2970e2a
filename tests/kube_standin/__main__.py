"""Run the stand-in on its own: ``python -m tests.kube_standin [--kubeconfig PATH] [--runtime docker|process]``.

Prints the kubeconfig path, then serves until SIGINT/SIGTERM (e.g. to run
tests/test_kubernetes_cluster.py against it with KUBECONFIG=<that path>).
"""

from __future__ import annotations

import argparse
import signal
import threading

from .server import StandIn


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.kube_standin")
    parser.add_argument("--kubeconfig", default=None, help="where to write the kubeconfig")
    parser.add_argument("--runtime", default="auto", choices=["auto", "docker", "process"])
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = StandIn(runtime=args.runtime).start()
    try:
        print(server.write_kubeconfig(args.kubeconfig), flush=True)
        stop.wait()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
