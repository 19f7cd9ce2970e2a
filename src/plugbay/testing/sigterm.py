"""SIGTERM as Ctrl-C while a plugbay fixture has plugins running.

Python's default SIGTERM ends the interpreter at once: no finally block, no fixture teardown, so a CI
job cancelled mid-test (GitLab, GitHub Actions, ``timeout``: all send SIGTERM first) left every plugin
process and container the fixtures started running, with their socket folders, until a ``plugbay sweep``.
pytest tears the fixtures down on KeyboardInterrupt, so the fixtures turn SIGTERM into one. Only where
SIGTERM still has Python's default (nobody chose a handler of their own) and in the main thread (the only
one a handler can be set from); pytest_unconfigure puts the default back. A second SIGTERM ends the run at
once, as before.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_installed = False


class TerminatedError(KeyboardInterrupt):
    """The run got SIGTERM: it stops as on Ctrl-C, once the fixtures have killed their plugins."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM is not held up by the teardown
    raise TerminatedError("SIGTERM: the run stops as on Ctrl-C; plugbay's fixtures kill their plugins first"
                          " (a second SIGTERM ends it at once, leaving them for `plugbay sweep`)")


def stop_on_sigterm() -> None:
    """Turn SIGTERM into TerminatedError for the rest of the run, when SIGTERM has its default."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:  # someone's own handler (or SIG_IGN): theirs
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    _installed = True


def restore_sigterm() -> None:
    """SIGTERM's default back, unless someone set a handler of their own since."""
    global _installed
    if not _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = False
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
