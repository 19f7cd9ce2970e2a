"""A moment without file descriptors does not stop a network plugin's front admitting brokering hosts.

The unmodified KV example in network mode (the brokering front). Its soft open-file limit is
lowered (prlimit on the running process) to about what it holds, for one yamux session attempt
at a time, then given back: the accept() of the front's session listener failed with EMFILE once,
and its thread ended for good (so did its reaping of ended sessions), silently. Now the front
pauses and accepts again; new hosts are admitted and ended sessions' instances are stopped.
"""

from __future__ import annotations

import os
import resource
import socket
import ssl
import tempfile
from pathlib import Path

from tests import netcerts, netflood
from tests.resilience_util import wait_until
from tests.test_network_serve import NetPlugin, tls_env


def _session(address: str, certs: netcerts.CertSet, opaque: int, wait: float) -> tuple[ssl.SSLSocket, bool]:
    """A yamux session over mutual TLS, and whether the plugin answered its ping within ``wait``."""
    sock = netflood.peer(address, certs)
    sock.sendall(netflood.ping(opaque))
    try:
        answered = netflood.until_pong(sock, opaque, timeout=wait) is not None
    except AssertionError:  # no answer in time
        answered = False
    return sock, answered


def _bye(sock: ssl.SSLSocket) -> None:
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _instance_sockets(tmp: Path) -> list[str]:
    return sorted(p.name for d in tmp.glob("plugbay-net-*") for p in d.glob("s*.sock"))


def test_the_front_admits_hosts_again_after_running_out_of_descriptors(tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    tmp = Path(tempfile.mkdtemp(prefix="nd-"))  # short: socket paths must stay under 108 bytes
    plugin = NetPlugin(tmp_path, {**tls_env(certs), "TMPDIR": str(tmp)})
    pid = plugin.proc.pid
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    try:
        held, answered = _session(plugin.address, certs, 1, wait=20)
        assert answered and len(_instance_sockets(tmp)) == 1
        # a limit right at what the process holds makes one of the front's steps fail for want of a
        # descriptor; which one depends on the count, so each of a few limits gets one session attempt
        for extra in range(1, 5):
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + extra, hard))
            try:
                attempt, _ = _session(plugin.address, certs, 10 + extra, wait=2)
            finally:
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))
            _bye(attempt)
        for opaque in (20, 21):
            later, answered = _session(plugin.address, certs, opaque, wait=20)
            _bye(later)
            assert answered, "a new brokering host was not admitted once descriptors were back"
        _bye(held)  # its instance is stopped: the front still reaps ended sessions
        assert wait_until(lambda: _instance_sockets(tmp) == [], 15.0, 0.1), _instance_sockets(tmp)
    finally:
        code, err = plugin.stop()
        for folder in tmp.glob("*"):
            folder.rmdir() if folder.is_dir() else folder.unlink()
        tmp.rmdir()
    assert code == 0, err[-2000:]
    refusals = [line for line in err.splitlines() if "cannot accept" in line]
    assert len(refusals) <= 8, refusals  # told once per run of refusals, not every pause
    # the session listener itself was out of descriptors for a while (what this test is about)
    assert "session listener accepts connections again" in err, refusals
