"""Forking a host that has gRPC connections open, in the fork tests' host processes.

grpcio itself restarts its threads in a forked child, and with gRPC streams open at the fork they
crash some children (SIGSEGV, or SIGABRT from a failed check) whatever the child does, even one
that only exits; plain grpcio without plugbay does it too. fork_child() forks again then (a few
times at most), after the caller ended what that child had started, and tells which forks crashed.
Any other end of a child (an exit status, another signal) is the caller's to judge.

The host scripts import it as tests.forking (the repository's root on their sys.path).
"""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

CRASHED_BY_GRPCIO = (signal.SIGSEGV, signal.SIGABRT)
ATTEMPTS = 8


@dataclass
class Forked:
    status: int | None  # the wait status of the child that was not crashed (None: grpcio crashed every fork)
    output: str  # what that child wrote to its pipe
    crashed: list[int] = field(default_factory=list)  # the signals of the forks grpcio crashed before it


def fork_child(child: Callable[[int, int], object], after_crash: Callable[[str], None] | None = None,
               attempts: int = ATTEMPTS) -> Forked:
    """Run ``child(write_fd, attempt)`` in a forked child and wait for it; fork again when grpcio crashed it.

    The child ends by itself: os._exit(), or sys.exit(), whose SystemExit goes on up the child's own
    stack as the interpreter's real exit (a with block's exit, atexit). Returning, or any other
    exception (printed), ends it with status 70. ``after_crash(output)`` runs in the parent for each
    crashed child, with what it wrote: it ends what that child started (its plugin, by the pid it wrote).
    """
    crashed: list[int] = []
    output = ""
    for attempt in range(attempts):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                child(write, attempt)
            except SystemExit:
                raise
            except BaseException:
                traceback.print_exc()
            os._exit(70)  # never back into the parent's code
        os.close(write)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read) as pipe:
            output = pipe.read()
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) in CRASHED_BY_GRPCIO:
            crashed.append(os.WTERMSIG(status))
            if after_crash is not None:
                after_crash(output)
            continue
        return Forked(status, output, crashed)
    return Forked(None, output, crashed)
