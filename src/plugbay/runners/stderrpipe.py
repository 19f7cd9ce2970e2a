"""The pipe a process plugin gets as its stderr, made here rather than by Popen.

Its name goes into the plugin's environment before the spawn (PLUGBAY_OUTLIVE_HOST=pipe:<dev>:<ino>,
core/protocol/outlive.py): a plugin honours that ask only on the pipe named, not on one a Go host
in between passed on from its own environment.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from plugbay.core.protocol.handshake import ENV_OUTLIVE_HOST
from plugbay.core.protocol.outlive import pipe_name


def popen_naming_stderr(proc: subprocess.Popen[bytes], env: dict[str, str], outlive: bool, **popen: Any) -> None:
    """``Popen.__init__(proc, env=env, stderr=<a pipe>, **popen)``, with ``proc.stderr`` its read end as
    Popen's own would be (bufsize=0); ``outlive``: ``env`` names that pipe in PLUGBAY_OUTLIVE_HOST."""
    read, write = os.pipe()  # both close-on-exec: Popen dups the write end onto the child's fd 2 only
    try:
        if outlive:
            env[ENV_OUTLIVE_HOST] = pipe_name(write)
        subprocess.Popen.__init__(proc, env=env, stderr=write, **popen)
        proc.stderr = open(read, "rb", buffering=0)
        read = -1
    finally:  # the write end always (the plugin's stderr reports its end only once the host's copy is
        for fd in (read, write):  # gone too), the read end unless proc holds it
            if fd >= 0:
                os.close(fd)
