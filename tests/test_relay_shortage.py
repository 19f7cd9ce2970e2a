"""A TLS relay out of file descriptors says so once per run of refused accepts, not at every pause.

The relay pauses its accepts 0.1 s at EMFILE; it logged a warning at each pause (hundreds a minute
while a peer held the process's descriptors). A real relay in a child process whose soft open-file
limit is lowered to what it holds, with connections waiting in its backlog.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_RELAY = """import logging, os, resource, ssl, sys
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
from plugbay.core.transport.relay import TLSRelay
from plugbay.core.transport.sockets import open_listener
relay = TLSRelay(open_listener("tcp", "127.0.0.1:0"), ("unix", "/nonexistent"),
                 ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), "terminate")
print(relay.address[1], flush=True)
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
lowest_free = os.dup(0)
os.close(lowest_free)
resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor from here
print("limited", flush=True)
sys.stdin.readline()
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sys.stdin.readline()
relay.close()
"""


def test_a_run_of_refused_accepts_is_logged_once() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", _RELAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    clients: list[socket.socket] = []
    try:
        host, _, port = proc.stdout.readline().strip().rpartition(":")
        assert proc.stdout.readline().strip() == "limited"
        clients = [socket.create_connection((host, int(port)), timeout=10) for _ in range(3)]
        time.sleep(1.5)  # the relay pauses and tries again every 0.1 s meanwhile
        proc.stdin.write("restore\n")
        proc.stdin.flush()
        for client in clients:  # accepted once descriptors are back: its failed handshake ends it
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")  # no TLS record
            client.settimeout(10)
            try:
                assert client.recv(1) == b""
            except ConnectionResetError:  # closed with the request unread
                pass
        proc.stdin.write("close\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=30)
    finally:
        for client in clients:
            client.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    refused = [line for line in err.splitlines() if "cannot accept" in line]
    assert len(refused) == 1, refused
    assert "a TLS relay accepts connections again, after" in err
