"""A brokering session (the gateway's --multiplex) whose own child misbehaves ends, and its child is stopped,
without holding up the front that admits every other host."""

from __future__ import annotations

import logging
import os
import signal
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from plugbay import Gateway, GatewayConfig
from plugbay._proto.plugbay import discovery_pb2, discovery_pb2_grpc
from tests import netcerts
from tests.netflood import peer, ping, until_pong
from tests.procs import children

CHILD = Path(__file__).resolve().parent / "plugins" / "hostile_session_child.py"


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


def _gateway(certs: netcerts.CertSet, how: str, cwd: Path) -> Gateway:
    return Gateway(GatewayConfig(
        cmd=[sys.executable, str(CHILD), how], cookie=("GWCHILD", "x"), listen="127.0.0.1:0",
        cert_file=str(certs.cert_file), key_file=str(certs.key_file), client_ca_file=str(certs.client_ca_file),
        child_mtls=False, multiplex=True, start_timeout=10, cwd=str(cwd)))


def _session_children(gw: Gateway) -> list[int]:
    return [p for p in children(os.getpid(), zombies=False) if p != gw.child_pid]


def _host_is_dropped(gw: Gateway, certs: netcerts.CertSet) -> None:
    """A brokering host connects and pings; the gateway closes its connection within 8 s."""
    host = peer(gw.address, certs)
    try:
        host.sendall(ping(1))
        host.settimeout(8)
        try:
            while host.recv(100):
                pass
        except TimeoutError:
            raise AssertionError("the host's connection stayed open") from None
        except OSError:
            pass
    finally:
        host.close()


@pytest.fixture
def thread_deaths() -> Iterator[list[str]]:
    died: list[str] = []
    before = threading.excepthook
    threading.excepthook = lambda a: died.append(f"{a.thread and a.thread.name}: {a.exc_type.__name__}: {a.exc_value}")
    yield died
    threading.excepthook = before


def test_a_child_announcing_an_undialable_host_ends_its_session(certs: netcerts.CertSet, tmp_path: Path,
                                                               thread_deaths: list[str]) -> None:
    # the host label is 64 bytes: the resolver's IDNA step raised UnicodeError, which the session's starting
    # thread did not catch; it died, and the child and the host's connection stayed until the gateway stopped
    with _gateway(certs, "long-label", tmp_path) as gw:
        front = gw._front[-1].__self__  # type: ignore[attr-defined]
        for _ in range(3):
            _host_is_dropped(gw, certs)
        deadline = time.monotonic() + 10
        while (_session_children(gw) or front.sessions) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _session_children(gw) == [] and front.sessions == 0
    assert thread_deaths == []


def test_any_failure_starting_a_session_ends_it_and_stops_its_child(certs: netcerts.CertSet, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    thread_deaths: list[str]) -> None:
    from plugbay.network.gateway import sessions

    def unexpected(*args: object, **kw: object) -> None:
        raise RuntimeError("not a plugbay error")

    # dialling the child is the session's alone (the gateway's start check reads a handshake too)
    monkeypatch.setattr(sessions, "dial", unexpected)
    with _gateway(certs, "slow-mux", tmp_path) as gw:
        _host_is_dropped(gw, certs)
        deadline = time.monotonic() + 8  # the child ignores SIGTERM: killed after the 2 s grace
        while _session_children(gw) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _session_children(gw) == []
    assert thread_deaths == []


def _hosts_up(gw: Gateway, certs: netcerts.CertSet, count: int) -> list[ssl.SSLSocket]:
    hosts = []
    try:
        for _ in range(count):
            hosts.append(peer(gw.address, certs))
            hosts[-1].sendall(ping(1))
        for host in hosts:
            assert until_pong(host, 1, timeout=30) == set()  # the host's session and its child's are up
    except BaseException:
        for host in hosts:
            host.close()
        raise
    return hosts


def test_closing_ended_sessions_does_not_hold_up_new_hosts(certs: netcerts.CertSet, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # each of these sessions takes the kill's grace to close (their children ignore SIGTERM): closed on the
    # accept loop one after another, they held up every new host (and every keepalive check) for a grace
    # each. The grace is made 5 s (2 s in the gateway) so that what is ruled out, four or five graces one
    # after another, is far from what is checked for: a child's start, or one grace, on a loaded machine
    from plugbay.network.gateway import sessions

    grace = 5.0
    monkeypatch.setattr(sessions, "_KILL_GRACE", grace)
    with _gateway(certs, "slow-mux", tmp_path) as gw:
        front = gw._front[-1].__self__  # type: ignore[attr-defined]
        for host in _hosts_up(gw, certs, 4):
            host.close()
        deadline = time.monotonic() + 10
        while front.sessions and time.monotonic() < deadline:  # the front took them off its list, to close
            time.sleep(0.05)
        assert front.sessions == 0
        started = time.monotonic()
        (new,) = _hosts_up(gw, certs, 1)
        waited = time.monotonic() - started
        new.close()
        # closed on the accept loop, the four held it 4 graces (20 s) and more; a new child's start, even on
        # a loaded machine, takes far less than half of that
        assert waited < 2 * grace, f"a new host's session was up only after {waited:.1f}s"
        # stopping closes the sessions left in parallel, and waits for them all
        left = _hosts_up(gw, certs, 4)
        started = time.monotonic()
        gw.stop()
        stopped = time.monotonic() - started
        for host in left:
            host.close()
        assert _session_children(gw) == []
        # in parallel one grace and a little, one after another five graces (25 s): half of that apart
        assert stopped < 2.5 * grace, f"the gateway took {stopped:.1f}s to stop 5 sessions"


def _multiplex_offered(gw: Gateway, certs: netcerts.CertSet) -> bool:
    with grpc.secure_channel(gw.address, netcerts.channel_credentials(certs),
                             options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        stub = discovery_pb2_grpc.DiscoveryStub(channel)  # type: ignore[no-untyped-call]
        return bool(stub.Describe(discovery_pb2.DescribeRequest(), timeout=10).multiplex)


def test_a_session_child_that_no_longer_multiplexes_ends_the_offer(certs: netcerts.CertSet, tmp_path: Path) -> None:
    # start()'s check saw the plugin multiplex; a session's child that then announces it does not (the
    # plugin's file replaced by a go-plugin 1.0.x one) must not leave Discovery offering sessions that can
    # only fail, each costing a child started and stopped at once
    with _gateway(certs, "no-mux-later", tmp_path) as gw:
        launches = tmp_path / "launches"
        assert _multiplex_offered(gw, certs) and launches.read_text().count("launched") == 1  # the start check
        _host_is_dropped(gw, certs)
        assert launches.read_text().count("launched") == 2
        assert not _multiplex_offered(gw, certs)  # hosts that follow Discovery now call over plain gRPC
        _host_is_dropped(gw, certs)  # refused at once: no child is started for it
        assert launches.read_text().count("launched") == 2


def test_a_session_child_that_crashes_is_reported_and_one_stopped_is_not(certs: netcerts.CertSet, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    # the shared child's crash was logged ("exited with code -9; restarting it"), a session's child's was not:
    # its host's session just ended, and nothing in the gateway's log said why
    caplog.set_level(logging.WARNING, logger="plugbay.gateway")
    with _gateway(certs, "slow-mux", tmp_path) as gw:
        (left,) = _hosts_up(gw, certs, 1)
        left.close()  # the host leaves: its child is stopped, which is no crash
        deadline = time.monotonic() + 10
        while _session_children(gw) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _session_children(gw) == []
        (host,) = _hosts_up(gw, certs, 1)
        try:
            (child,) = _session_children(gw)
            os.kill(child, signal.SIGKILL)
            host.settimeout(10)
            try:
                while host.recv(100):
                    pass
            except TimeoutError:
                raise AssertionError("the host's session outlived its child") from None
            except OSError:
                pass
        finally:
            host.close()
    said = [r.getMessage() for r in caplog.records if "brokering session" in r.getMessage()]
    assert said == ["gateway: the plugin of the brokering session from 127.0.0.1 exited with code -9 (killed by"
                    " SIGKILL); ending that session (the host reconnects to a new one)"], said
    assert all(r.levelno == logging.WARNING for r in caplog.records if "brokering session" in r.getMessage())
