"""A command line that runs with resource limits of its own, set without a ``preexec_fn``.

A ``preexec_fn`` runs Python in a plain fork() of the test process, where grpcio's fork handlers restart
its poller in the child; the child's close of inherited descriptors before exec then closes that poller's
epoll descriptor and grpcio aborts the child ("epoll_wait error: Bad file descriptor", exit -6: one CI
run lost a test to it). Here a small Python sets the limits in the new process and execs the command.
"""

from __future__ import annotations

import json
import sys

_SET_AND_EXEC = """\
import json, os, resource, sys
for name, (soft, hard) in json.loads(sys.argv[1]).items():
    resource.setrlimit(getattr(resource, name), (soft, hard))
os.execvp(sys.argv[2], sys.argv[2:])
"""


def rlimited(argv: list[str], **limits: tuple[int, int]) -> list[str]:
    """``argv`` run under ``limits`` (resource names such as RLIMIT_AS=(soft, hard))."""
    return [sys.executable, "-c", _SET_AND_EXEC, json.dumps(limits), *argv]
