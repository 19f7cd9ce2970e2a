"""kill()'s waits on the engine follow the runner's engine_timeout, not a fixed 10 s.

Against a stand-in engine (tests/docker_standin.py) that is slow but within engine_timeout (20 s
here): the exit watch's answer, which the engine gives later than 10 s, is still the exit code
kill() records; and a removal another caller is making, done later than 10 s, is waited for, so
kill() returns once the container is gone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from plugbay.runners.docker import DockerRunner
from plugbay.runners.docker.engine import engine
from tests.docker_standin import Answer, Later, Reply, StandinEngine, standin  # noqa: F401

Standin = Callable[[Answer], StandinEngine]
CID = "d" * 64
ENGINE_TIMEOUT = 20.0  # how long the runner lets the engine take to answer
LATE = 12.0  # when the slow engine answers: past the old fixed 10 s, well within ENGINE_TIMEOUT


def _state(running: bool, code: int = 0) -> dict[str, object]:
    return {"Id": CID, "State": {"Status": "running" if running else "exited", "Running": running, "ExitCode": code}}


def _runner(watch: bool) -> DockerRunner:
    """A runner as start() leaves it for container CID on the stand-in engine (its exit watch started)."""
    runner = DockerRunner("plugbay-kv:latest", engine_timeout=ENGINE_TIMEOUT)
    runner._client, runner._container_id, runner._began = engine(ENGINE_TIMEOUT), CID, True
    if watch:
        runner._watch_exit()
    return runner


def test_kill_takes_the_exit_code_of_a_watch_the_engine_answers_late(standin: Standin) -> None:
    stopped = threading.Event()

    def answer(method: str, path: str) -> Reply:
        if path == f"/containers/{CID}/wait":  # the head at once, the exit LATE s after the watch began
            return Later(LATE, {"StatusCode": 7})
        if path == f"/containers/{CID}/stop":
            stopped.set()
            return 204, None
        if method == "DELETE":
            return 204, None
        # the state as an inspect reads it: a code the wait's own answer corrects (the plugin's is 7)
        return 200, _state(not stopped.is_set(), code=3)

    engine_ = standin(answer)
    runner = _runner(watch=True)
    runner.kill(0)
    assert ("DELETE", f"/containers/{CID}") in engine_.requests
    assert runner.wait(0) == 7  # the watch's answer, not the inspect's: kill() waited for it


def test_kill_waits_for_a_removal_another_caller_finishes_late(standin: Standin) -> None:
    gone_at: list[float] = []  # when the other caller's removal ends: LATE s after ours was refused
    replies: list[int] = []  # the status of each inspect

    def answer(method: str, path: str) -> Reply:
        if method == "DELETE":
            gone_at.append(time.monotonic() + LATE)
            return 409, {"message": f"removal of container {CID} is already in progress"}
        status = 404 if gone_at and time.monotonic() >= gone_at[0] else 200
        replies.append(status)
        return (status, _state(False)) if status == 200 else (404, {"message": f"No such container: {CID}"})

    standin(answer)
    _runner(watch=False).kill(0)
    assert replies[-1] == 404, replies[-5:]  # kill() returned once the engine said the container is gone
