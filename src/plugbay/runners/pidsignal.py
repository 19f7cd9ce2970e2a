"""Signalling a process proven through /proc without the pid-reuse window between proof and signal.

A proof reads /proc/PID (start ticks, environment) and kill() names PID: in
between (tens of ms while a kill walks a busy /proc for the plugin's kin), the
process may exit, be reaped by its parent, and its pid go to another process,
which would get the signal. A pidfd names the process itself. Taken *before*
the proof, it is the proven process's (a pid still held by the process that
started at the recorded time, after the pidfd was taken, was held by it then),
and a signal through it reaches that process, or nothing once it is gone.
With Linux 6.9's PIDFD_SIGNAL_PROCESS_GROUP the group it leads is signalled the
same way: the kernel's own group, not whichever group bears that number now.
Where Python or the kernel has no pidfd, the pid is signalled by number as before.
"""

from __future__ import annotations

import errno
import os
import signal
from types import TracebackType

from plugbay.runners.procio import pidfd

PIDFD_SIGNAL_PROCESS_GROUP = 1 << 2  # linux/pidfd.h, Linux 6.9

_group_flag = [True]  # False once the kernel refused the flag (EINVAL): older kernels never take it


class HeldPid:
    """A pidfd on ``pid`` taken now (None where there is none); prove the process only after this."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = pidfd(pid)

    def signal(self, sig: int) -> None:
        """Signal the held process (by number where no pidfd); one gone or not ours is left."""
        try:
            if self.fd is None:
                os.kill(self.pid, sig)
            else:
                signal.pidfd_send_signal(self.fd, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def signal_group(self, sig: int) -> bool:
        """Signal the process group the held process leads (led, if it is gone) through the pidfd.

        False when that cannot be done (no pidfd, a kernel before 6.9): the caller decides whether
        the group may be signalled by number. True also when the group has no process left.
        """
        if self.fd is None or not _group_flag[0]:
            return False
        try:
            signal.pidfd_send_signal(self.fd, sig, None, PIDFD_SIGNAL_PROCESS_GROUP)
        except (ProcessLookupError, PermissionError):
            pass
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _group_flag[0] = False
            return False
        return True

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> HeldPid:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
