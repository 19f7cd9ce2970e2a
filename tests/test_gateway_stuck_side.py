"""A brokering session through the gateway (--multiplex) whose child stops reading its socket: the
gateway still reads the remote host (answers its pings) while a new stream of the host's waits for
the child. The session's reader used to open that stream's twin on the child's session itself, and
so waited, without bound, for a send lock held by a write stuck on the full socket."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from plugbay import Gateway
from tests import netcerts
from tests.netflood import DATA, HDR, SYN, WINDOW_UPDATE, peer, ping, until_pong
from tests.procs import children
from tests.test_network_broker import _gateway_config, certs  # noqa: F401 (a fixture)

_WINDOW = 256 * 1024  # a new stream's whole receive window: more than a unix socket's send buffer


def _open_with_data(sid: int) -> bytes:
    return HDR.pack(0, WINDOW_UPDATE, SYN, sid, 0) + HDR.pack(0, DATA, 0, sid, _WINDOW) + bytes(_WINDOW)


def _session_child(gw: Gateway, timeout: float) -> int:
    """The pid of the host session's own child (the gateway's shared child is another)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in children(os.getpid(), zombies=False) if p != gw.child_pid]
        if len(found) == 1:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no single session child within {timeout}s")


class _StoppedChild:
    """A brokering host session through the gateway, its own child stopped (SIGSTOP) once both are up."""

    def __init__(self, gw: Gateway, certs: netcerts.CertSet) -> None:
        self.host = peer(gw.address, certs)
        self.pid: int | None = None  # the stopped child, while it is stopped
        try:
            self.host.sendall(ping(1))
            assert until_pong(self.host, 1, timeout=60) == set()  # both sessions are up
            self.pid = _session_child(gw, 10)
            os.kill(self.pid, signal.SIGSTOP)
        except BaseException:
            self.close()
            raise

    def resume(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)
            self.pid = None

    def close(self) -> None:
        try:
            self.resume()
        finally:
            self.host.close()


def _gateway(certs: netcerts.CertSet, tmp_path: Path, keepalive: tuple[float, float]) -> Gateway:
    folder = tmp_path / "gw"
    folder.mkdir()
    return Gateway(_gateway_config(certs, folder, multiplex=True, keepalive=keepalive))


def test_a_child_that_stops_reading_does_not_stop_the_gateway_reading_the_host(
        tmp_path: Path, certs: netcerts.CertSet) -> None:  # noqa: F811
    with _gateway(certs, tmp_path, (3600.0, 10.0)) as gw:
        stopped = _StoppedChild(gw, certs)
        host = stopped.host
        try:
            # two windows' worth of bytes for the child: the writes carrying them fill its socket
            # and wait there, holding its session's send lock
            host.sendall(_open_with_data(1) + _open_with_data(3))  # bounded: the socket's 10 s timeout
            time.sleep(1.0)
            host.sendall(HDR.pack(0, WINDOW_UPDATE, SYN, 5, 0) + ping(2))
            resets = until_pong(host, 2, timeout=5)
            assert resets is not None and 5 not in resets, resets
            stopped.resume()
            host.sendall(ping(3))
            assert until_pong(host, 3, timeout=10) is not None  # the waiting stream did not break the session
        finally:
            stopped.close()


def test_a_child_that_stops_answering_ends_its_host_session_and_is_stopped(
        tmp_path: Path, certs: netcerts.CertSet) -> None:  # noqa: F811
    # the gateway answers the host's pings itself, so only its own keepalive on the child's session can
    # tell the host that the plugin behind it stopped: it ends the session, and the host reconnects
    with _gateway(certs, tmp_path, (0.5, 1.0)) as gw:
        stopped = _StoppedChild(gw, certs)
        host, pid = stopped.host, stopped.pid
        try:
            ended = False
            for n in range(2, 152):  # the host keeps talking (its own session is never quiet): <= 30 s
                try:
                    host.sendall(ping(n))
                except OSError:
                    ended = True
                    break
                if until_pong(host, n, timeout=0.2) is None:
                    ended = True
                    break
                time.sleep(0.2)
            assert ended, "the session of a child that stopped answering was not ended"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and pid in children(os.getpid(), zombies=False):
                time.sleep(0.05)
            assert pid not in children(os.getpid(), zombies=False), "the stopped child was left running"
            stopped.pid = None  # gone: nothing to resume
        finally:
            stopped.close()
