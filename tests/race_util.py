"""Making kill() meet start() at a chosen point, every time (the kill-race tests share these).

:class:`Starting` runs a start() on a thread of its own and keeps what it raised.
:class:`PauseAt` holds that thread when it reaches a given function (a call into it or
its return), through the thread's trace function: no hook in the library, the test
chooses the point and releases it. A plugin program that writes a marker file and then
waits reaches the points that lie in the plugin instead (see :func:`wait_for_file`).
"""

from __future__ import annotations

import sys
import threading
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

BOUND = 30.0  # every wait here ends by itself


class PauseAt:
    """Hold the traced thread at ``event`` ('call' or 'return') of ``code`` until release()."""

    def __init__(self, code: CodeType, event: str, when: Callable[[FrameType], bool] = lambda frame: True) -> None:
        self.code, self.event, self._when = code, event, when
        self.reached = threading.Event()
        self.frame_locals: dict[str, Any] = {}
        self._go = threading.Event()

    def install(self) -> None:
        """On the thread to hold: trace it (only frames of ``code`` get a local tracer)."""
        sys.settrace(self._global)

    def release(self) -> None:
        self._go.set()

    def wait_reached(self, timeout: float = BOUND) -> None:
        if not self.reached.wait(timeout):
            raise AssertionError(f"start() never reached {self.code.co_name} ({self.event}) within {timeout}s")

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code is not self.code or self.reached.is_set() or not self._when(frame):
            return None
        if self.event == "call":
            self._hold(frame)
            return None
        return self._local

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "return" and not self.reached.is_set():
            self._hold(frame)
        return self._local

    def _hold(self, frame: FrameType) -> None:
        self.frame_locals = dict(frame.f_locals)
        sys.settrace(None)  # nothing else in this thread is traced from here on
        self.reached.set()
        self._go.wait(BOUND)


class Starting:
    """``start()`` on a thread named plugbay-test-start (traced by ``pause`` if given)."""

    def __init__(self, start: Callable[[], object], pause: PauseAt | None = None) -> None:
        self.error: BaseException | None = None
        self.returned = False
        self._start, self._pause = start, pause
        self._thread = threading.Thread(target=self._run, name="plugbay-test-start")
        self._thread.start()

    def _run(self) -> None:
        if self._pause is not None:
            self._pause.install()
        try:
            self._start()
            self.returned = True
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread to check
            self.error = exc
        finally:
            sys.settrace(None)

    def ended(self, timeout: float = BOUND) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def outcome(self, timeout: float = BOUND) -> BaseException | None:
        """What start() raised (None: it returned); fails the test if it has not ended within ``timeout``."""
        if not self.ended(timeout):
            raise AssertionError(f"start() did not end within {timeout}s of the kill()")
        return self.error


def wait_for_file(path: Path, timeout: float = BOUND) -> None:
    """Until the plugin wrote its marker ``path`` (it was launched and now waits), bounded."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"the plugin never wrote its marker {path} within {timeout}s")
        time.sleep(0.02)


def pid_gone(pid: int) -> bool:
    """Whether no process has ``pid`` any more (exited and reaped; a zombie is still there)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie or a gone process does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


async def start_from_another_loop(start: Callable[[], Any]) -> object:
    """What ``start()`` (a coroutine function) gave when awaited on a second event loop, run on a thread
    of its own: "started", or what it raised."""
    import asyncio

    seen: list[object] = []

    def other_loop() -> None:
        async def attempt() -> None:
            try:
                await start()
                seen.append("started")
            except BaseException as exc:  # noqa: BLE001 - whatever it is, the caller's assertion names it
                seen.append(exc)
        asyncio.run(attempt())

    thread = threading.Thread(target=other_loop, name="plugbay-test-other-loop")
    thread.start()
    await asyncio.to_thread(thread.join, BOUND)
    return seen[0] if seen else "no answer"


def assert_wrong_loop(error: object) -> None:
    """``error`` is plugbay's typed refusal of a use from another event loop (WrongLoop)."""
    import grpc

    from plugbay.errors import ClientStateError

    assert isinstance(error, ClientStateError) and isinstance(error, grpc.RpcError), error
    assert "another event loop" in str(error) and error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def assert_async_with_refused_on_another_loop(owner: Any) -> None:
    """``async with owner:`` on a second event loop is refused with WrongLoop (nothing else asserted)."""
    async def enter() -> None:
        async with owner:
            pass

    assert_wrong_loop(await start_from_another_loop(enter))
