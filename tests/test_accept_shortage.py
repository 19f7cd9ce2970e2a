"""Accept loops outlast a moment without file descriptors: they pause, accept again, and say so once.

sockets.accept_each (the multiplexed host's and brokered dials' listeners) and admit.admit_each
(a multiplexed plugin's address) ended at the first accept() that failed with EMFILE, so the
listener never accepted again; a TLS relay paused, but logged a warning at every pause. A real
loop (or relay) in a child process whose soft open-file limit is lowered to what it holds while
connections wait in its backlog, then given back.
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

# the scripts' middle: the port is printed; the soft limit is lowered to what the child holds until
# "restore", and the next line ends it
_LIMIT = """_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
lowest_free = os.dup(0)
os.close(lowest_free)
resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor from here
print("limited", flush=True)
sys.stdin.readline()
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sys.stdin.readline()
"""

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
{limit}closed.set()
thread.join(10)
""".format(limit=_LIMIT)

_RELAY = """import logging, os, resource, ssl, sys
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
from plugbay.core.transport.relay import TLSRelay
from plugbay.core.transport.sockets import open_listener
relay = TLSRelay(open_listener("tcp", "127.0.0.1:0"), ("unix", "/nonexistent"),
                 ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), "terminate")
print(relay.address[1], flush=True)
{limit}relay.close()
""".format(limit=_LIMIT)


class Limited:
    """A child running ``script`` (PYTHONPATH: this checkout's src) that prints its port, lowers its soft
    open-file limit to what it holds ("limited"), restores it at restore() and ends at close()."""

    def __init__(self, script: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        self.proc = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.clients: list[socket.socket] = []
        self.out = self.err = ""

    def __enter__(self) -> Limited:
        assert self.proc.stdout is not None
        host, _, port = self.proc.stdout.readline().strip().rpartition(":")
        self.address = (host, int(port))
        assert self.proc.stdout.readline().strip() == "limited"
        return self

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        self.say("close")
        self.out, self.err = self.proc.communicate(timeout=30)

    def __exit__(self, *exc: object) -> None:
        for client in self.clients:
            client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)

    def refusals_told(self) -> list[str]:
        assert self.proc.returncode == 0, self.err
        return [line for line in self.err.splitlines() if "cannot accept" in line]


@pytest.mark.parametrize("loop", ["accept_each", "admit_each"])
def test_an_accept_loop_accepts_again_once_descriptors_are_back(loop: str) -> None:
    with Limited(_LOOP, loop) as child:
        for opaque in (1, 2):
            client = socket.create_connection(child.address, timeout=10)
            child.clients.append(client)
            client.sendall(netflood.ping(opaque))  # how a yamux client opens: admit_each lets it through
            if opaque == 1:
                time.sleep(1.0)  # the loop meets EMFILE, pauses and tries again meanwhile
                child.say("restore")
            assert child.line() == "accepted"
        child.close()
    refused = child.refusals_told()
    assert child.out.strip() == "loop ended"  # only once it was closed
    assert len(refused) == 1, refused


def test_a_tls_relay_logs_a_run_of_refused_accepts_once() -> None:
    """The relay pauses its accepts 0.1 s at EMFILE; it logged a warning at each pause (hundreds a minute
    while a peer held the process's descriptors)."""
    with Limited(_RELAY) as child:
        child.clients = [socket.create_connection(child.address, timeout=10) for _ in range(3)]
        time.sleep(1.5)  # the relay pauses and tries again every 0.1 s meanwhile
        child.say("restore")
        for client in child.clients:  # accepted once descriptors are back: its failed handshake ends it
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")  # no TLS record
            client.settimeout(10)
            try:
                assert client.recv(1) == b""
            except ConnectionResetError:  # closed with the request unread
                pass
        child.close()
    refused = child.refusals_told()
    assert len(refused) == 1, refused
    assert "a TLS relay accepts connections again, after" in child.err
