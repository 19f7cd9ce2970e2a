"""tests/forking.py, the fork tests' helper: it forks again only for a child grpcio crashed.

A child killed by SIGSEGV or SIGABRT is forked anew (at most ATTEMPTS times), after the caller's
cleanup saw what it wrote; every other end (an exit status, another signal, an error, sys.exit())
is handed back as it is, so a fork test still fails on it. Real forks, of a host of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_HOST = r"""
import json, os, signal, sys
sys.path.insert(0, {repo!r})
from tests.forking import ATTEMPTS, fork_child

facts, seen = {{}}, []


def ends(*how):  # the child of attempt n ends as how[n] says (the last one for every later attempt)
    def child(write, attempt):
        os.write(write, f"attempt {{attempt}}".encode())
        way = how[min(attempt, len(how) - 1)]
        if way == "raise":
            raise RuntimeError("a failing child")
        if way == "return":
            return
        if isinstance(way, str):
            os.kill(os.getpid(), getattr(signal, way))
        os._exit(way)
    return child


def outcome(forked):
    return dict(exit=os.WEXITSTATUS(forked.status) if forked.status is not None and os.WIFEXITED(forked.status)
                else None, signal=os.WTERMSIG(forked.status) if forked.status is not None
                and os.WIFSIGNALED(forked.status) else None, output=forked.output, crashed=forked.crashed)


facts["crashed twice, then well"] = outcome(fork_child(ends("SIGSEGV", "SIGABRT", 0), seen.append))
facts["seen"] = seen
facts["failure status"] = outcome(fork_child(ends(1)))
facts["crashed, then a failure status"] = outcome(fork_child(ends("SIGABRT", 3)))
facts["another signal"] = outcome(fork_child(ends("SIGKILL")))
facts["an error"] = outcome(fork_child(ends("raise")))
facts["returned"] = outcome(fork_child(ends("return")))
facts["always crashed"] = outcome(fork_child(ends("SIGSEGV")))
facts["attempts"] = ATTEMPTS
print(json.dumps(facts), flush=True)
after_exit = fork_child(lambda write, attempt: sys.exit(5))  # the child's SystemExit ends it here, with 5
print(json.dumps(outcome(after_exit)), flush=True)  # the parent's
"""


def test_only_children_grpcio_crashed_are_forked_again(tmp_path: Path) -> None:
    host = subprocess.run([sys.executable, "-c", _HOST.format(repo=str(REPO))], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)  # a core file of a crashed child, if any, goes there
    assert host.returncode == 0, host.stderr[-3000:]
    lines = host.stdout.splitlines()
    assert len(lines) == 2, host.stdout  # the child that called sys.exit() did not go on in the host's code
    facts = json.loads(lines[0])
    assert facts["crashed twice, then well"] == dict(exit=0, signal=None, output="attempt 2", crashed=[11, 6])
    assert facts["seen"] == ["attempt 0", "attempt 1"]  # the cleanup saw what each crashed child wrote
    assert facts["failure status"] == dict(exit=1, signal=None, output="attempt 0", crashed=[])
    assert facts["crashed, then a failure status"] == dict(exit=3, signal=None, output="attempt 1", crashed=[6])
    assert facts["another signal"] == dict(exit=None, signal=9, output="attempt 0", crashed=[])
    assert facts["an error"] == dict(exit=70, signal=None, output="attempt 0", crashed=[])
    assert facts["returned"] == dict(exit=70, signal=None, output="attempt 0", crashed=[])
    attempts = facts["attempts"]
    assert facts["always crashed"] == dict(exit=None, signal=None, output=f"attempt {attempts - 1}",
                                           crashed=[11] * attempts)
    assert json.loads(lines[1]) == dict(exit=5, signal=None, output="", crashed=[])
    assert "RuntimeError: a failing child" in host.stderr  # printed by the child it ended
