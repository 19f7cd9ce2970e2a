"""A process that forks while its yamux stream timeouts are at work (plugbay.core.transport.yclose).

One thread serves every stream's timeouts. A child forked while it ran was told it still ran (no
thread exists there): a stream it opened that its peer never acknowledged stayed open for good
instead of its session being dropped. A child forked while another thread held the timers' lock
waited for good in its first open(). Each host runs in a process of its own (a fork of the pytest
process would copy its threads' state); a child past its bound is killed and said to hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_HOST = r"""
import json, os, signal, socket, sys, threading, time
sys.path[:0] = [{src!r}]
from plugbay.core.transport import yclose
from plugbay.core.transport.yamux import Session


def unacknowledged_open_drops_session():
    # a raw peer that reads nothing and acknowledges nothing: the open timeout must drop the session
    a, b = socket.socketpair()
    session = Session(a, client=True, on_stream=lambda s: None, name="child")
    session.stream_open_timeout = 0.2
    try:
        session.open()
        return "dropped" if session._closed.wait(15) else "still open"
    finally:
        session.close()
        b.close()


def fork_and_run(hold_lock):
    read, write = os.pipe()
    held, release = threading.Event(), threading.Event()

    def holder():
        with yclose.TIMERS._cond:
            held.set()
            release.wait(30)

    if hold_lock:
        threading.Thread(target=holder, daemon=True).start()
        held.wait(10)
    child = os.fork()
    if child == 0:
        os.close(read)
        os.write(write, json.dumps(unacknowledged_open_drops_session()).encode())
        os._exit(0)
    release.set()
    os.close(write)
    deadline = time.monotonic() + 30
    while True:
        pid, _ = os.waitpid(child, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:  # waiting for good: end it, and say so
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            break
        time.sleep(0.05)
    with os.fdopen(read) as pipe:
        return json.loads(pipe.read() or '"hung"')


# the parent's timer thread runs across the fork: a stream of its own waits for an ACK that never comes
a, b = socket.socketpair()
parent = Session(a, client=True, on_stream=lambda s: None, name="parent")
parent.open()
running = fork_and_run(hold_lock=False)
held = fork_and_run(hold_lock=True)
parent_open = not parent.closed
parent.close()
b.close()
print(json.dumps(dict(running=running, held=held, parent_open=parent_open)), flush=True)
"""


def test_a_forked_child_times_its_own_streams_out() -> None:
    script = _HOST.format(src=str(REPO / "src"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    # forked while the timer thread ran: the child's unacknowledged stream still drops its session
    assert outcome["running"] == "dropped", outcome
    # forked while another thread held the timers' lock: the child's open() did not wait for good
    assert outcome["held"] == "dropped", outcome
    assert outcome["parent_open"], outcome  # the parent's own stream keeps its 75 s
