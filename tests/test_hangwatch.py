"""The suite's hang watch (tests/hangwatch.py), on a pytest run of its own with shortened steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A main thread that waits on a lock nobody releases. Its own SIGALRM handler stands in for
# pytest-timeout's (switched off here): only a signal sent to the main thread itself runs it.
NUDGED = '''
import signal, threading
import pytest

class Woken(Exception):
    pass

def _raise(*_):
    raise Woken("the main thread's wait was interrupted")

@pytest.mark.timeout(1)
def test_stuck():
    signal.signal(signal.SIGALRM, _raise)
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()

def test_after():
    pass
'''

# A main thread that blocks SIGALRM, then deadlocks: no signal reaches it, only the end step helps.
ENDED = '''
import signal, threading
import pytest

@pytest.mark.timeout(1)
def test_deadlocked_for_good():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()
'''


def _run(tmp_path: Path, source: str, *options: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_hung.py"
    test.write_text(source)
    env = dict(os.environ, PLUGBAY_TEST_HANG_NUDGE="1", PLUGBAY_TEST_HANG_END="4",
               PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.hangwatch",
                           "--rootdir", str(tmp_path), *options, str(test)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_a_main_thread_no_signal_reached_is_interrupted_and_the_run_goes_on(tmp_path: Path) -> None:
    run = _run(tmp_path, NUDGED, "-p", "no:timeout")
    assert "test_hung.py::test_stuck outlived its timeout by 1 s" in run.stderr, run.stderr
    assert "in test_stuck" in run.stderr, "no stack of the main thread was printed"
    assert "Woken: the main thread's wait was interrupted" in run.stdout, run.stdout
    assert "1 failed, 1 passed" in run.stdout, run.stdout


def test_a_main_thread_that_nothing_can_interrupt_ends_the_run_with_every_stack(tmp_path: Path) -> None:
    run = _run(tmp_path, ENDED)
    assert run.returncode == 1, (run.returncode, run.stdout, run.stderr)
    assert "Timeout (0:00:05)!" in run.stderr, run.stderr  # faulthandler's dump: the test's 1 s and 4 s more
    assert "in test_deadlocked_for_good" in run.stderr, run.stderr
    assert "passed" not in run.stdout
