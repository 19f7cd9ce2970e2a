from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ports import HeldPort, refusing_port

pytest_plugins = ["tests.leakcheck", "tests.hangwatch", "tests.closeduse"]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in tmp_path: example plugins write kv_<key> files into their working folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def no_gc() -> Iterator[None]:
    """The collector off: what ends a call must be plugbay's own doing, not a collection that ran by chance."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@pytest.fixture(scope="module")
def other_engine() -> Iterator[object]:
    """A second, real Docker engine (tests/second_engine.py), one per module that asks for it (a start costs
    seconds). Not one for the whole run: its dockerd is a child of the test process, and the gateway tests that
    count the test process's children (a gateway's session children) took it for a child left running."""
    from tests.second_engine import second_engine_running

    yield from second_engine_running()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port nothing listens on, held for the test so that nothing else takes it (tests/ports.py)."""
    with refusing_port() as port:
        yield port


@pytest.fixture
def hold_port() -> Iterator[Callable[[int], HeldPort]]:
    """hold_port(port): hold the 127.0.0.1 port a replica of the test stopped listening on (it refuses dials, and
    nothing else takes it) until the test release()s it to start one there again, or ends (tests/ports.py)."""
    held: list[HeldPort] = []

    def hold(port: int) -> HeldPort:
        held.append(HeldPort(port=port))
        return held[-1]

    yield hold
    for port in held:
        port.release()
