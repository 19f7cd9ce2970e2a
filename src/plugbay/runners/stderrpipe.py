"""The pipe a process plugin gets as its stderr, made here rather than by Popen.

Its name goes into the plugin's environment before the spawn (PLUGBAY_OUTLIVE_PIPE=pipe:<dev>:<ino>,
core/protocol/outlive.py): a plugin honours the ask to outlive its host only on the pipe named, not on
one a Go host in between passed on from its own environment. Beside it goes how long the plugin waits for
a reattach once its host died (PLUGBAY_OUTLIVE_GRACE: ProcessRunner's outlive_grace).
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from plugbay.core.protocol.outlive import (ENV_OUTLIVE_GRACE, ENV_OUTLIVE_HOST, ENV_OUTLIVE_PIPE, OUTLIVE_GRACE,
                                           grace_value, pipe_name)


def popen_naming_stderr(proc: subprocess.Popen[bytes], env: dict[str, str], outlive: bool,
                        grace: float | None = OUTLIVE_GRACE, **popen: Any) -> None:
    """``Popen.__init__(proc, env=env, stderr=<a pipe>, **popen)``, with ``proc.stderr`` its read end as
    Popen's own would be (bufsize=0); ``outlive``: ``env`` asks the plugin to outlive its host, in
    PLUGBAY_OUTLIVE_HOST (``1`` unless set: what plugins from before the name read) and naming the pipe in
    PLUGBAY_OUTLIVE_PIPE (what plugins read now), for ``grace`` seconds at most once the host died
    (PLUGBAY_OUTLIVE_GRACE; None: until told); else ``env`` names no pipe."""
    read, write = os.pipe()  # both close-on-exec: Popen dups the write end onto the child's fd 2 only
    reader = None
    try:
        # The read end is closed through its file object only, made first: a Ctrl-C is raised as a builtin
        # returns, so one as open() returns drops the object, which closes the end, and a close of the
        # number here would then fail (EBADF) in the KeyboardInterrupt's place, taken for a failed spawn.
        reader = open(read, "rb", buffering=0)
        if outlive:
            env.setdefault(ENV_OUTLIVE_HOST, "1")
            env[ENV_OUTLIVE_PIPE] = pipe_name(write)
            env[ENV_OUTLIVE_GRACE] = grace_value(grace)  # the runner's, not one inherited from a host's host
        else:
            env.pop(ENV_OUTLIVE_PIPE, None)  # a name given in env= would not be this pipe's
            env.pop(ENV_OUTLIVE_GRACE, None)
        subprocess.Popen.__init__(proc, env=env, stderr=write, **popen)
        proc.stderr = reader  # no builtin call between the Popen's return and this: no Ctrl-C either
    except BaseException:
        if reader is not None:
            reader.close()
        raise
    finally:  # the plugin's stderr reports its end only once the host's copy of the write end is gone too
        os.close(write)
