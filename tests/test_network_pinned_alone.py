"""An AsyncRemoteClient's brokered call ended by close() or kill() leaves nothing behind once the collector
has run once: the failed call's wrapper (aiocall.AioCall), in a cycle with the frames its error's traceback
holds, had a finalizer of its own, and outlived the session-end collection with its client's grpc.aio channel,
poller and socket pair (the file alone ended with the leak check naming two sockets). The test runs that
file's test in a pytest of its own, whose leak check is the one that saw it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parent.parent
_TEST = "tests/test_network_pinned.py::test_close_or_kill_during_an_async_brokered_call_ends_it_client_closed_too"


@pytest.mark.parametrize("how", ["close", "kill"])
def test_an_async_call_ended_by_the_client_leaves_no_socket_open(how: str) -> None:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{_TEST}[{how}]"],
                         cwd=_REPO, env=env, capture_output=True, text=True, timeout=600)
    said = run.stdout[-3000:] + run.stderr[-2000:]
    assert run.returncode == 0, said
    assert "plugbay leak check: no process, thread, temp entry, container, claim or descriptor left behind" \
        in run.stdout, said
