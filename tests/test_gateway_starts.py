"""The gateway's fair turns for session children (network/gateway/starts.py): a churning peer address waits
behind itself, every other address's start comes next; a session that ends or runs out of time leaves."""

from __future__ import annotations

import selectors
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from plugbay.errors import ConfigError, GatewayError
from plugbay.network.gateway import Gateway, GatewayConfig
from plugbay.network.gateway.cli import parse
from plugbay.network.gateway.starts import DEFAULT_MAX_CHILD_STARTS, FairStarts
from tests import netcerts
from tests.netflood import HDR, PING, peer, ping

CHILD = Path(__file__).resolve().parent / "plugins" / "hostile_session_child.py"


def _queued(starts: FairStarts) -> int:
    with starts._cond:
        return sum(len(tickets) for tickets in starts._waiting.values())


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


class _Starter:
    """A thread that takes a turn for ``peer`` and holds it until released."""

    def __init__(self, starts: FairStarts, peer: str, ended: Callable[[], bool] = lambda: False,
                 timeout: float = 10.0) -> None:
        self.release = threading.Event()
        self.got = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            try:
                with starts.turn(peer, time.monotonic() + timeout, ended):
                    self.got.set()
                    self.release.wait(10)
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def end(self) -> None:
        self.release.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_a_peer_with_many_starts_waiting_lets_another_peer_go_next() -> None:
    starts = FairStarts(slots=1)
    first = _Starter(starts, "10.0.0.1")
    assert first.got.wait(10)
    queued = []
    for peer in ("10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2"):  # the churner queues first, then one other host
        queued.append(_Starter(starts, peer))
        _wait_for(lambda n=len(queued): _queued(starts) == n, "a start never queued")
    first.end()
    for starter in queued:  # each holds the one slot until ended: the grants come one by one
        _wait_for(lambda: any(s.got.is_set() and not s.release.is_set() for s in queued), "no start was granted")
        next(s for s in queued if s.got.is_set() and not s.release.is_set()).end()
    assert starts.granted == ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.1"]
    assert all(s.error is None for s in queued)


def test_starts_take_up_to_the_slots_at_once() -> None:
    starts = FairStarts(slots=2)
    held = [_Starter(starts, "10.0.0.1") for _ in range(3)]
    _wait_for(lambda: sum(s.got.is_set() for s in held) == 2 and _queued(starts) == 1, "two did not start")
    time.sleep(0.2)  # the third stays queued while both slots are held
    assert sum(s.got.is_set() for s in held) == 2
    next(s for s in held if s.got.is_set()).end()
    _wait_for(lambda: all(s.got.is_set() for s in held), "the third never started")
    for s in held:
        s.end()


def test_a_session_that_ends_while_waiting_leaves_the_queue() -> None:
    starts = FairStarts(slots=1)
    holder = _Starter(starts, "10.0.0.1")
    assert holder.got.wait(10)
    gone = threading.Event()
    leaver = _Starter(starts, "10.0.0.2", ended=gone.is_set)
    after = _Starter(starts, "10.0.0.3")
    _wait_for(lambda: _queued(starts) == 2, "the waiters never queued")
    gone.set()
    starts.wake()
    leaver.thread.join(10)
    assert isinstance(leaver.error, GatewayError) and "ended while its plugin waited" in str(leaver.error)
    assert _queued(starts) == 1
    holder.end()
    assert after.got.wait(10)
    after.end()
    assert starts.granted == ["10.0.0.1", "10.0.0.3"]


def test_a_start_that_cannot_get_a_turn_in_time_says_what_to_raise() -> None:
    starts = FairStarts(slots=1)
    holder = _Starter(starts, "10.0.0.1")
    assert holder.got.wait(10)
    late = _Starter(starts, "10.0.0.2", timeout=0.2)
    late.thread.join(10)
    assert isinstance(late.error, GatewayError)
    assert "--max-child-starts" in str(late.error) and "start_timeout" in str(late.error)
    assert _queued(starts) == 0
    holder.end()


@pytest.mark.parametrize("slots", [0, -1, True, 1.5, "2"])
def test_slots_must_be_a_positive_int(slots: object) -> None:
    with pytest.raises(ValueError, match="slots must be a positive int"):
        FairStarts(slots=slots)  # type: ignore[arg-type]


def test_max_child_starts_is_a_setting_checked_with_what_to_pass() -> None:
    base = ["--cookie", "A=b", "--insecure"]
    assert parse([*base, "--", "x"], env={}).max_child_starts == DEFAULT_MAX_CHILD_STARTS
    assert parse([*base, "--max-child-starts", "1", "--", "x"], env={}).max_child_starts == 1
    assert parse([*base, "--", "x"], env={"PLUGBAY_GATEWAY_MAX_CHILD_STARTS": "8"}).max_child_starts == 8
    for bad in ("0", "-1", "two", "257"):
        with pytest.raises(SystemExit):
            parse([*base, "--max-child-starts", bad, "--", "x"], env={})
    for value in (0, True, 2.5, 257):
        with pytest.raises(ConfigError, match="max_child_starts .* --max-child-starts"):
            Gateway(GatewayConfig(cmd=["x"], cookie=("A", "b"), insecure=True, max_child_starts=value))  # type: ignore[arg-type]


def _pong_order(hosts: dict[str, ssl.SSLSocket], until: str, timeout: float) -> list[str]:
    """The hosts' names in the order the gateway answered their pings (each once its session's child is up),
    up to host ``until``'s."""
    order: list[str] = []
    with selectors.DefaultSelector() as selector:
        for name, sock in hosts.items():
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, name)
        deadline = time.monotonic() + timeout
        while until not in order and time.monotonic() < deadline:
            for key, _ in selector.select(0.2):
                try:
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue
                except OSError:
                    data = b""
                if len(data) >= HDR.size and HDR.unpack(data[:HDR.size])[1] == PING:
                    order.append(key.data)
                selector.unregister(key.fileobj)
    return order


def _one_start_at_a_time(tmp_path: Path) -> tuple[Gateway, netcerts.CertSet]:
    """A --multiplex gateway whose sessions' children take 1.5 s each to start, one at a time."""
    certs = netcerts.write_set(tmp_path / "tls")
    return Gateway(GatewayConfig(
        cmd=[sys.executable, str(CHILD), "slow-start", "1.5"], cookie=("GWCHILD", "x"), listen="127.0.0.1:0",
        cert_file=str(certs.cert_file), key_file=str(certs.key_file), client_ca_file=str(certs.client_ca_file),
        child_mtls=False, multiplex=True, start_timeout=30, cwd=str(tmp_path), max_child_starts=1)), certs


def test_one_address_opening_sessions_in_a_loop_does_not_hold_up_another_hosts(tmp_path: Path) -> None:
    # every session starts a child of its own, one at a time here, each taking 1.5 s; 6 from one address queue
    # up first, then a host from another address comes: it is served third (after the start running and the
    # churner's next), not seventh
    gw, certs = _one_start_at_a_time(tmp_path)
    hosts: dict[str, ssl.SSLSocket] = {}
    with gw:
        try:
            for n in range(6):
                hosts[f"churner-{n}"] = peer(gw.address, certs, source="127.0.0.1")
                hosts[f"churner-{n}"].sendall(ping(1))
            time.sleep(0.3)  # the first child takes 1.5 s to start: the other five wait their turn by now
            hosts["other"] = peer(gw.address, certs, source="127.0.0.2")
            hosts["other"].sendall(ping(1))
            order = _pong_order(hosts, "other", timeout=30)
        finally:
            for sock in hosts.values():
                sock.close()
    assert "other" in order, f"the other address's session never came up: {order}"
    assert order.index("other") <= 2, f"the other address's host waited behind the churner: {order}"


def test_hosts_that_leave_while_waiting_give_their_turns_up(tmp_path: Path) -> None:
    # 8 hosts from one address connect and leave at once: each session waited for its turn and then started a
    # child for nobody, one after another, ahead of the next host from that address (and held its place in the
    # gateway: 256 such sessions refused every host)
    gw, certs = _one_start_at_a_time(tmp_path)
    with gw:
        for _ in range(8):
            gone = peer(gw.address, certs, source="127.0.0.1")
            gone.sendall(ping(1))
            gone.close()
        time.sleep(0.5)
        staying = peer(gw.address, certs, source="127.0.0.1")
        try:
            staying.sendall(ping(1))
            order = _pong_order({"staying": staying}, "staying", timeout=30)
        finally:
            staying.close()
        launched = (tmp_path / "launches").read_text().count("launched")
    assert order == ["staying"]
    # the gateway's start check, the one start that began before its host was seen gone (two at most, as the
    # hang-ups race the first grant), and the staying host's
    assert launched <= 4, f"{launched} children started before the staying host's, most for hosts that had left"
