"""A runner that learns of an exit late (an engine, an API server) still reports the death.

When a call fails UNAVAILABLE, the Client asks the runner whether the plugin ended,
waiting up to the runner's ``exit_notice_time``: a Docker engine's wait answer comes
well after the plugin's socket broke on a loaded machine, and the call must then be a
PluginDiedError, not a PluginUnavailableError (which says "retry, it may be alive").

The runner here is the real process runner running the real trap plugin, with its
exit news held back by one second the way an engine's are.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig, PluginDiedError, PluginUnavailableError, ProcessRunner  # noqa: E402
from plugbay.runners.base import AttachedRunner, Cancellable  # noqa: E402

TRAP = [sys.executable, str(REPO / "tests" / "plugins" / "trap_kv.py")]
_LATE = 3.0  # far past the 0.2 s runner's promise below, however late the call is judged on a slow machine


class LateNewsRunner(ProcessRunner):
    """Hears of the exit _LATE seconds after it first sees it, polling like an engine's client."""

    def __init__(self, cmd: list[str], notice: float) -> None:
        super().__init__(cmd)
        self._notice = notice
        self._seen: float | None = None

    @property
    def exit_notice_time(self) -> float:
        return self._notice

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        code = super().wait(timeout)
        if code is None:
            return None
        if self._seen is None:
            self._seen = time.monotonic()
        known = self._seen + _LATE
        if deadline is not None and known > deadline:
            time.sleep(max(0.0, deadline - time.monotonic()))
            return None
        time.sleep(max(0.0, known - time.monotonic()))
        return code

    def watch_exit(self, on_exit: Callable[[int], None]) -> Cancellable:
        return AttachedRunner.watch_exit(self, on_exit)  # polls wait(), as for an engine


def _hung_call_killed(notice: float) -> BaseException:
    runner = LateNewsRunner(TRAP, notice)
    config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner, call_timeout=60)
    with Client(config) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        timer = threading.Timer(0.5, os.kill, (int(runner.id), signal.SIGKILL))
        timer.start()
        try:
            with pytest.raises((PluginDiedError, PluginUnavailableError)) as caught:
                kv.get("__hang__")
        finally:
            timer.join()
        return caught.value


def test_a_runner_that_hears_late_still_reports_the_death(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    error = _hung_call_killed(6.0)  # a promise longer than _LATE: the death is heard in time
    assert isinstance(error, PluginDiedError), error
    assert "SIGKILL" in str(error) or "-9" in str(error), error


def test_the_wait_is_the_runners_own_and_no_longer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the same late news with a runner that promises to know within 0.2 s: a live plugin's
    # failure cannot be told from a death that late, so the call says "unavailable"
    monkeypatch.chdir(tmp_path)
    error = _hung_call_killed(0.2)
    assert isinstance(error, PluginUnavailableError) and not isinstance(error, PluginDiedError), error


class UntoldRunner(ProcessRunner):
    """Never tells of the exit by itself: only the Client's probe of a failed call learns of it."""

    def watch_exit(self, on_exit: Callable[[int], None]) -> Cancellable:
        return _NeverTells()


class _NeverTells:
    def cancel(self) -> None:
        pass


def test_once_a_failed_call_learned_of_the_exit_later_calls_are_refused_unsent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # client.exited said True while the channel stayed open until the exit watch closed it: a call
    # made in between was sent to the dead plugin and reported as dying "during the call"
    monkeypatch.chdir(tmp_path)
    runner = UntoldRunner(TRAP)
    config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner, call_timeout=10)
    with Client(config) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        os.kill(int(runner.id), signal.SIGKILL)
        with pytest.raises(PluginDiedError) as first:
            kv.get("k")
        assert client.exited and first.value.sent is not False
        with pytest.raises(PluginDiedError) as again:
            kv.get("k")
        assert again.value.sent is False and "is gone" in str(again.value), again.value
