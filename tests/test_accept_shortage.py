"""Accept loops outlast a moment without file descriptors: they pause, accept again, and say so once.

sockets.accept_each (the multiplexed host's and brokered dials' listeners) and admit.admit_each
(a multiplexed plugin's address) ended at the first accept() that failed with EMFILE, so the
listener never accepted again. A real loop in a child process whose soft open-file limit is
lowered to what it holds while a connection waits in its backlog, then given back.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import netflood

REPO = Path(__file__).resolve().parent.parent

_LOOP = """import logging, os, resource, sys, threading
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
from plugbay.core.transport import admit, sockets
listener = sockets.open_listener("tcp", "127.0.0.1:0")
listener.settimeout(sockets.ACCEPT_POLL)
closed = threading.Event()
held = []

def loop():
    if sys.argv[1] == "accept_each":
        each = sockets.accept_each(listener, closed.is_set)
    else:
        each = (conn for conn, _ in admit.admit_each(listener, closed.is_set))
    for conn in each:
        held.append(conn)
        print("accepted", flush=True)
    print("loop ended", flush=True)

thread = threading.Thread(target=loop)
thread.start()
print(sockets.listener_address(listener)[1], flush=True)
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
lowest_free = os.dup(0)
os.close(lowest_free)
resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor from here
print("limited", flush=True)
sys.stdin.readline()
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sys.stdin.readline()
closed.set()
thread.join(10)
"""


@pytest.mark.parametrize("loop", ["accept_each", "admit_each"])
def test_an_accept_loop_accepts_again_once_descriptors_are_back(loop: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", _LOOP, loop], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    clients: list[socket.socket] = []
    try:
        host, _, port = proc.stdout.readline().strip().rpartition(":")
        assert proc.stdout.readline().strip() == "limited"
        for opaque in (1, 2):
            client = socket.create_connection((host, int(port)), timeout=10)
            clients.append(client)
            client.sendall(netflood.ping(opaque))  # how a yamux client opens: admit_each lets it through
            if opaque == 1:
                time.sleep(1.0)  # the loop meets EMFILE, pauses and tries again meanwhile
                proc.stdin.write("restore\n")
                proc.stdin.flush()
            assert proc.stdout.readline().strip() == "accepted"
        proc.stdin.write("close\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
    finally:
        for client in clients:
            client.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.strip() == "loop ended"  # only once it was closed
    refused = [line for line in err.splitlines() if "cannot accept" in line]
    assert len(refused) == 1, refused
