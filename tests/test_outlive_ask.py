"""The ask to outlive the host, read on real descriptors: only PLUGBAY_OUTLIVE_PIPE naming the plugin's own
stderr pipe asks a plugin of today to outlive its host, and PLUGBAY_OUTLIVE_HOST=0 beside it still says stop
(core/protocol/outlive.py); what a plugbay host's ProcessRunner sets for its plugin (a real child process
reports its own environment and the pipe its fd 2 is): PLUGBAY_OUTLIVE_HOST=1 too, which plugins from before
the pipe's name read as the ask."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay.core.plugin.setupfail import outlives_host
from plugbay.core.protocol.handshake import HOST_SET_VARIABLES
from plugbay.core.protocol.outlive import asks_outlive, names_stderr, pipe_name
from plugbay.runners.base import LaunchSpec
from plugbay.runners.process import ProcessRunner
from tests.procs import outlive_pipe

OUTLIVE, PIPE, SESSION = "PLUGBAY_OUTLIVE_HOST", "PLUGBAY_OUTLIVE_PIPE", "PLUGBAY_HOST_SESSION"


@pytest.fixture
def pipe() -> Iterator[tuple[int, int, str]]:
    read, write, named = outlive_pipe()
    yield read, write, named
    os.close(read)
    os.close(write)


def test_the_name_of_the_plugins_own_stderr_pipe_asks(pipe: tuple[int, int, str]) -> None:
    read, write, named = pipe
    assert pipe_name(write) == pipe_name(read) == named
    assert outlives_host({OUTLIVE: "1", PIPE: named, SESSION: "1-2.3"}, write)  # what a ProcessRunner sets
    assert outlives_host({OUTLIVE: "true", PIPE: named}, read) and outlives_host({PIPE: named}, write)
    dup = os.dup(write)  # a wrapper that runs the plugin without exec hands it the same pipe
    try:
        assert outlives_host({OUTLIVE: "1", PIPE: named}, dup)
    finally:
        os.close(dup)


@pytest.mark.parametrize("said", ["0", "false", "F", "", "no"])
def test_an_outlive_host_that_says_no_stops_it_even_on_its_own_pipe(pipe: tuple[int, int, str], said: str) -> None:
    # ProcessRunner(env={"PLUGBAY_OUTLIVE_HOST": "0"}) names no pipe, but a name given beside it is no ask either
    assert not outlives_host({OUTLIVE: said, PIPE: pipe[2]}, pipe[1])


def test_another_pipes_name_asks_nothing(pipe: tuple[int, int, str]) -> None:
    # what a Go host passes on: its own host named the Go host's stderr pipe, and the plugin has another
    other_read, other_write, other = outlive_pipe()
    try:
        assert other != pipe[2]
        assert not outlives_host({OUTLIVE: "1", PIPE: other, SESSION: "1-2.3"}, pipe[1])
    finally:
        os.close(other_read)
        os.close(other_write)


@pytest.mark.parametrize("env", [{}, {OUTLIVE: "0"}, {OUTLIVE: "1"}, {OUTLIVE: "true"},
                                 {OUTLIVE: "1", SESSION: "1-2.3"}, {SESSION: "1-2.3"}, {OUTLIVE: ""}],
                         ids=["unset", "0", "1", "true", "1-with-session", "session-only", "empty"])
def test_without_the_pipes_name_nothing_asks(pipe: tuple[int, int, str], env: dict[str, str]) -> None:
    """"1" (a plugbay host from before the name) and PLUGBAY_HOST_SESSION alone (one from before the ask)
    cannot be told from the same inherited through a Go host: the plugin stops with its host."""
    assert not outlives_host(env, pipe[1])


def test_malformed_names_ask_nothing(pipe: tuple[int, int, str], tmp_path: Path) -> None:
    named = pipe[2]
    dev, ino = named.removeprefix("pipe:").split(":")
    for value in (named + "0", named + ":", f"pipe:{dev}", f"pipe:{ino}:{dev}", f"pipe: {dev}:{ino}",
                  f"PIPE:{dev}:{ino}", f"pipe:{dev}:{ino}\n", f"pipe:{dev}:{'0' * 70}{ino}",
                  f"pipe:{dev}:{'9' * 5000}", "pipe:\u0661:\u0662", f"fifo:{dev}:{ino}", f"{dev}:{ino}"):
        assert not names_stderr(value, pipe[1]), value
        assert not outlives_host({OUTLIVE: "1", PIPE: value}, pipe[1]), value
    with open(tmp_path / "file", "wb") as file:  # a file of that number is no pipe
        facts = os.fstat(file.fileno())
        assert not names_stderr(f"pipe:{facts.st_dev}:{facts.st_ino}", file.fileno())
    assert not outlives_host({OUTLIVE: named}, pipe[1])  # the name in the other variable asks nothing
    closed = os.dup(pipe[1])
    os.close(closed)
    assert not names_stderr(named, closed)  # no stderr at all


def test_what_a_host_set_in_env_asks() -> None:
    assert asks_outlive(None, True) and not asks_outlive(None, False)
    assert asks_outlive("1", False) and asks_outlive("true", False)
    assert not asks_outlive("0", True) and not asks_outlive("false", True) and not asks_outlive("", True)
    assert not asks_outlive("pipe:1:2", True)  # the name belongs in PLUGBAY_OUTLIVE_PIPE


def test_both_are_set_by_the_host_for_its_plugin_alone() -> None:
    # a host that is itself a plugin must not hand its plugins its own host's ask (runners/process.py)
    assert OUTLIVE in HOST_SET_VARIABLES and PIPE in HOST_SET_VARIABLES


_REPORT = ("import json, os, sys; s = os.fstat(2); print(json.dumps([os.environ.get(n) for n in sys.argv[1:]]"
           " + [f'pipe:{s.st_dev}:{s.st_ino}'])); sys.stdout.flush(); sys.stdin.read()")


def _reported(runner: ProcessRunner) -> tuple[str | None, str | None, str]:
    runner.start(LaunchSpec(env={}))
    try:
        said, named, own = json.loads(next(runner.stdout_lines()))
        return said, named, own
    finally:
        runner.kill(0)


@pytest.mark.parametrize("given, wanted", [({}, "1"), ({OUTLIVE: "1"}, "1"), ({OUTLIVE: "true"}, "true"),
                                           ({PIPE: "pipe:1:2"}, "1"), ({OUTLIVE: "0"}, "0"),
                                           ({OUTLIVE: "0", PIPE: "pipe:1:2"}, "0")],
                         ids=["default", "1", "true", "a-name-given", "0", "0-and-a-name-given"])
def test_a_process_runner_names_the_pipe_its_plugin_gets_as_stderr(given: dict[str, str], wanted: str) -> None:
    """Through ``sh`` (no exec for a command list: a wrapper between) as through go-plugin's example hosts:
    asked, the plugin gets PLUGBAY_OUTLIVE_HOST as given (1 unless given: what plugins from before the name
    read) and its own pipe's name; told "0", no name (one given in env= is not its pipe's)."""
    cmd = ["sh", "-c", f'"{sys.executable}" -c "$1" {OUTLIVE} {PIPE}; true', "sh", _REPORT]
    said, named, own = _reported(ProcessRunner(cmd, env=given))
    assert said == wanted
    assert named == (None if wanted == "0" else own)


def test_a_nested_host_hands_on_no_ask_of_its_own_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # this process as a plugin whose host said "0" and named a pipe: its own plugin gets its own ask
    monkeypatch.setenv(OUTLIVE, "0")
    monkeypatch.setenv(PIPE, "pipe:1:2")
    said, named, own = _reported(ProcessRunner([sys.executable, "-c", _REPORT, OUTLIVE, PIPE]))
    assert (said, named) == ("1", own)


def test_with_die_with_host_nothing_is_asked() -> None:
    from plugbay.runners.hostbound import available

    if not available():
        pytest.skip("no setpriv here (die_with_host)")
    said, named, _ = _reported(ProcessRunner([sys.executable, "-c", _REPORT, OUTLIVE, PIPE], die_with_host=True))
    assert said is None and named is None
