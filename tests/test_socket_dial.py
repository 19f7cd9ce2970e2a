"""sockets.dial and dial_now against a unix listener whose backlog is full (a busy server, not a gone one)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay.core.transport import sockets
from tests.busy_socket import busy_listener


@pytest.fixture()
def busy(tmp_path: Path) -> Iterator[tuple[str, socket.socket, list[socket.socket]]]:
    """A unix listener that does not accept, its backlog filled by connections of ours."""
    path = str(tmp_path / "busy.sock")
    with busy_listener(path) as (listener, fillers):
        yield path, listener, fillers


def test_a_dial_to_a_full_backlog_waits_for_room(busy: tuple[str, socket.socket, list[socket.socket]]) -> None:
    path, listener, _ = busy
    assert sockets.dial_now("unix", path) is None  # it would wait: the caller waits elsewhere
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def dial() -> None:
        try:
            made.append(sockets.dial("unix", path, timeout=10))
        except OSError as exc:
            failed.append(exc)

    dialer = threading.Thread(target=dial, name="plugbay-test-dial")
    accepted: list[socket.socket] = []
    dialer.start()
    try:
        threading.Event().wait(0.3)
        assert dialer.is_alive() and not made and not failed, "the dial gave up on a busy listener"
        accepted += [listener.accept()[0] for _ in range(2)]  # room in the backlog
        dialer.join(10)
        assert not dialer.is_alive() and failed == [] and len(made) == 1
    finally:
        dialer.join(10)
        for sock in (*made, *accepted):
            sock.close()


def test_a_dial_to_a_full_backlog_gives_up_at_its_timeout(
        busy: tuple[str, socket.socket, list[socket.socket]]) -> None:
    path, _, _ = busy
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        sockets.dial("unix", path, timeout=0.3)
    assert time.monotonic() - started < 5, "the dial outlived its timeout by far"


def _sockets_open() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                found.add(fd)
        except OSError:
            pass
    return found


def test_a_listener_that_cannot_bind_leaves_no_descriptor(tmp_path: Path) -> None:
    before = _sockets_open()
    kept = []  # the exceptions (and so their tracebacks' frames) outlive the checks: no GC rescue
    for _ in range(10):
        with pytest.raises(OSError) as too_long:
            sockets.open_listener("unix", str(tmp_path / ("x" * 200)))  # longer than a unix socket path
        with pytest.raises(OSError) as absent:
            sockets.open_listener("unix", str(tmp_path / "absent" / "s.sock"))
        kept += [too_long, absent]
    assert _sockets_open() - before == set()


@pytest.fixture()
def busy_tcp() -> Iterator[tuple[str, list[socket.socket]]]:
    """A tcp listener that does not accept, its accept queue full: a further connect gets no answer."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    address = "%s:%d" % listener.getsockname()
    fillers: list[socket.socket] = [listener]
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.settimeout(0.5)
            fillers.append(filler)
            try:
                filler.connect(listener.getsockname())
            except (TimeoutError, socket.timeout):
                break
        else:
            pytest.skip("this kernel answers every connect to a full accept queue")
        yield address, fillers
    finally:
        for sock in fillers:
            sock.close()


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_dial_until_gives_up_when_asked_and_at_its_deadline(
        kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "unix":
        path, _, _ = request.getfixturevalue("busy")
        target = ("unix", path)
    else:
        target = ("tcp", request.getfixturevalue("busy_tcp")[0])
    asked = threading.Event()
    threading.Timer(0.3, asked.set).start()
    started = time.monotonic()
    assert sockets.dial_until(*target, time.monotonic() + 30, asked.is_set) is None
    assert time.monotonic() - started < 5, "the dial did not stop when asked"  # not its 30 s
    with pytest.raises(TimeoutError):
        sockets.dial_until(*target, time.monotonic() + 0.3, lambda: False)


def test_dial_now_connects_at_once_or_says_why_not(tmp_path: Path) -> None:
    path = str(tmp_path / "open.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(4)
        conn = sockets.dial_now("unix", path)
        assert conn is not None
        with conn:
            assert conn.gettimeout() is None  # blocking from then on
    os.unlink(path)
    with pytest.raises(FileNotFoundError):
        sockets.dial_now("unix", path)
    assert sockets.dial_now("tcp", "127.0.0.1:1") is None  # tcp takes a round trip: never here


@pytest.mark.parametrize("host", ["a" * 64, "a..b"])
def test_a_host_the_resolver_cannot_encode_is_a_plugbay_error(host: str) -> None:
    # IDNA refuses these before any lookup, with UnicodeError: no OSError, which callers catch
    from plugbay.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot dial tcp address"):
        sockets.dial("tcp", f"{host}:1234", 1.0)
