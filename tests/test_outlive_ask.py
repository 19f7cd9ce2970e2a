"""PLUGBAY_OUTLIVE_HOST's forms, read on real descriptors: only a name of the plugin's own stderr pipe asks
it to outlive its host (core/protocol/outlive.py); what a plugbay host's ProcessRunner sets for its plugin
(a real child process reports its own environment and the pipe its fd 2 is)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay.core.plugin.setupfail import outlives_host
from plugbay.core.protocol.outlive import asks_outlive, names_stderr, pipe_name
from plugbay.runners.base import LaunchSpec
from plugbay.runners.process import ProcessRunner
from tests.procs import outlive_pipe

OUTLIVE, SESSION = "PLUGBAY_OUTLIVE_HOST", "PLUGBAY_HOST_SESSION"


@pytest.fixture
def pipe() -> Iterator[tuple[int, int, str]]:
    read, write, named = outlive_pipe()
    yield read, write, named
    os.close(read)
    os.close(write)


def test_the_name_of_the_plugins_own_stderr_pipe_asks(pipe: tuple[int, int, str]) -> None:
    read, write, named = pipe
    assert pipe_name(write) == pipe_name(read) == named
    assert outlives_host({OUTLIVE: named}, write) and outlives_host({OUTLIVE: named, SESSION: "1-2.3"}, read)
    dup = os.dup(write)  # a wrapper that runs the plugin without exec hands it the same pipe
    try:
        assert outlives_host({OUTLIVE: named}, dup)
    finally:
        os.close(dup)


def test_another_pipes_name_asks_nothing(pipe: tuple[int, int, str]) -> None:
    # what a Go host passes on: its own host named the Go host's stderr pipe, and the plugin has another
    other_read, other_write, other = outlive_pipe()
    try:
        assert other != pipe[2]
        assert not outlives_host({OUTLIVE: other, SESSION: "1-2.3"}, pipe[1])
    finally:
        os.close(other_read)
        os.close(other_write)


@pytest.mark.parametrize("env", [{}, {OUTLIVE: "0"}, {OUTLIVE: "1"}, {OUTLIVE: "true"},
                                 {OUTLIVE: "1", SESSION: "1-2.3"}, {SESSION: "1-2.3"}, {OUTLIVE: ""}],
                         ids=["unset", "0", "1", "true", "1-with-session", "session-only", "empty"])
def test_the_unnamed_forms_ask_nothing(pipe: tuple[int, int, str], env: dict[str, str]) -> None:
    """"1" (a plugbay host of the forty-second session) and PLUGBAY_HOST_SESSION alone (one from before the
    variable) cannot be told from the same inherited through a Go host: the plugin stops with its host."""
    assert not outlives_host(env, pipe[1])


def test_malformed_names_ask_nothing(pipe: tuple[int, int, str], tmp_path: Path) -> None:
    named = pipe[2]
    dev, ino = named.removeprefix("pipe:").split(":")
    for value in (named + "0", named + ":", f"pipe:{dev}", f"pipe:{ino}:{dev}", f"pipe: {dev}:{ino}",
                  f"PIPE:{dev}:{ino}", f"pipe:{dev}:{ino}\n", f"pipe:{dev}:{'0' * 70}{ino}",
                  f"pipe:{dev}:{'9' * 5000}", "pipe:\u0661:\u0662", f"fifo:{dev}:{ino}"):
        assert not names_stderr(value, pipe[1]), value
    with open(tmp_path / "file", "wb") as file:  # a file of that number is no pipe
        facts = os.fstat(file.fileno())
        assert not names_stderr(f"pipe:{facts.st_dev}:{facts.st_ino}", file.fileno())
    closed = os.dup(pipe[1])
    os.close(closed)
    assert not names_stderr(named, closed)  # no stderr at all


def test_what_a_host_set_in_env_asks() -> None:
    assert asks_outlive(None, True) and not asks_outlive(None, False)
    assert asks_outlive("1", False) and asks_outlive("true", False) and asks_outlive("pipe:1:2", False)
    assert not asks_outlive("0", True) and not asks_outlive("false", True) and not asks_outlive("", True)


_REPORT = ("import json, os, sys; s = os.fstat(2); print(json.dumps([os.environ.get(sys.argv[1]),"
           " f'pipe:{s.st_dev}:{s.st_ino}'])); sys.stdout.flush(); sys.stdin.read()")


@pytest.mark.parametrize("given, wanted", [(None, "named"), ("1", "named"), ("0", "0")])
def test_a_process_runner_names_the_pipe_its_plugin_gets_as_stderr(given: str | None, wanted: str) -> None:
    """Through ``sh`` (no exec for a command list: a wrapper between) as through go-plugin's example hosts."""
    cmd = ["sh", "-c", f'"{sys.executable}" -c "$1" {OUTLIVE}; true', "sh", _REPORT]
    runner = ProcessRunner(cmd, env={} if given is None else {OUTLIVE: given})
    runner.start(LaunchSpec(env={}))
    try:
        line = next(runner.stdout_lines())
        said, own = json.loads(line)
        assert said == (own if wanted == "named" else wanted)
    finally:
        runner.kill(0)


def test_with_die_with_host_nothing_is_asked() -> None:
    from plugbay.runners.hostbound import available

    if not available():
        pytest.skip("no setpriv here (die_with_host)")
    runner = ProcessRunner([sys.executable, "-c", _REPORT, OUTLIVE], die_with_host=True)
    runner.start(LaunchSpec(env={}))
    try:
        said, _ = json.loads(next(runner.stdout_lines()))
        assert said is None
    finally:
        runner.kill(0)

