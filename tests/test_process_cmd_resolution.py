"""ProcessRunner: the file a SecureConfig checks is the file the same command runs without one.

The exec happens in the child, after it moved to ``cwd`` and with its own environment: a cmd[0]
holding '/' is taken from ``cwd``, a bare name from the PATH the plugin gets (the runner's env=, or
ClientConfig.env), a relative PATH entry from ``cwd``. The environment a LaunchSpec brings is
checked as the runner's own is; a TMPDIR in it is the plugin's, as one in the runner's env is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plugbay import ChecksumMismatchError, ConfigError, SecureConfig
from plugbay.runners.base import LaunchSpec
from plugbay.runners.process import ProcessRunner


@pytest.fixture
def two(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Folders A and B, each with an executable 'plug' that says which it is; the host's PATH and
    folder are A."""
    folders = []
    for word in ("A", "B"):
        folder = tmp_path / word
        (folder / "bin").mkdir(parents=True)
        for place in (folder, folder / "bin"):
            plug = place / "plug"
            plug.write_text(f"#!/bin/sh\necho I-am-{word}\n")
            plug.chmod(0o755)
        folders.append(folder)
    monkeypatch.setenv("PATH", f"{folders[0]}:{os.environ['PATH']}")
    monkeypatch.chdir(folders[0])
    return folders[0], folders[1]


def _output(runner: ProcessRunner, secure: SecureConfig | None = None, env: dict[str, str] | None = None) -> list[str]:
    try:
        if secure is not None:
            runner.check_secure_config(secure)
        runner.start(LaunchSpec(env=env or {}))
        lines = list(runner.stdout_lines())
        assert runner.wait(30) == 0
        return lines
    finally:
        runner.kill()


def test_a_path_in_the_runner_env_finds_the_file_that_is_checked(two: tuple[Path, Path]) -> None:
    a, b = two
    assert _output(ProcessRunner(["plug"], env={"PATH": str(b)})) == ["I-am-B"]  # what the command runs
    assert _output(ProcessRunner(["plug"], env={"PATH": str(b)}), SecureConfig.of_file(b / "plug")) == ["I-am-B"]
    with pytest.raises(ChecksumMismatchError, match=f"checksums did not match for plugin file '{b}/plug'"):
        ProcessRunner(["plug"], env={"PATH": str(b)}).check_secure_config(SecureConfig.of_file(a / "plug"))


def test_a_relative_command_is_taken_from_cwd(two: tuple[Path, Path]) -> None:
    a, b = two
    assert _output(ProcessRunner(["./plug"], cwd=b)) == ["I-am-B"]
    assert _output(ProcessRunner(["./plug"], cwd=b), SecureConfig.of_file(b / "plug")) == ["I-am-B"]
    assert _output(ProcessRunner(["bin/plug"], cwd=b), SecureConfig.of_file(b / "bin" / "plug")) == ["I-am-B"]


def test_a_relative_path_entry_is_taken_from_cwd(two: tuple[Path, Path]) -> None:
    _, b = two
    for entries in ("bin", ":/nonexistent"):  # '' (an empty entry) is the folder itself
        plug = b / "bin" / "plug" if entries == "bin" else b / "plug"
        assert _output(ProcessRunner(["plug"], env={"PATH": entries}, cwd=b)) == ["I-am-B"]
        assert _output(ProcessRunner(["plug"], env={"PATH": entries}, cwd=b), SecureConfig.of_file(plug)) == ["I-am-B"]


def test_without_a_path_the_default_one_is_searched_not_the_hosts(two: tuple[Path, Path]) -> None:
    a, _ = two
    runner = ProcessRunner(["plug"], skip_host_env=True)  # no PATH in its environment: the exec searches os.defpath
    try:
        with pytest.raises(ConfigError, match=rf"plugin command 'plug' is not on PATH \({os.defpath}\)"):
            runner.check_secure_config(SecureConfig.of_file(a / "plug"))
    finally:
        runner.kill()


def test_a_path_in_the_launch_env_that_finds_another_file_is_refused(two: tuple[Path, Path]) -> None:
    """ClientConfig.env comes with the LaunchSpec, after the check: its PATH would have the command
    run B while A was checked (and A's copy would run)."""
    a, b = two
    runner = ProcessRunner(["plug"])
    try:
        runner.check_secure_config(SecureConfig.of_file(a / "plug"))
        with pytest.raises(ConfigError, match=rf"SecureConfig checked '{a}/plug', but .* 'plug' is '{b}/plug';"
                                              " give cmd\\[0\\] as a full path"):
            runner.start(LaunchSpec(env={"PATH": str(b)}))
        assert runner.pid is None  # nothing ran
    finally:
        runner.kill()
    same = ProcessRunner(["plug"])  # a PATH that finds the same file is fine
    assert _output(same, SecureConfig.of_file(a / "plug"), {"PATH": f"{a}:/usr/bin"}) == ["I-am-A"]


def test_a_tmpdir_in_the_launch_env_is_kept(tmp_path: Path) -> None:
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    mine = str(tmp_path / "big")
    for runner_env, spec_env in (({"TMPDIR": mine}, {}), ({}, {"TMPDIR": mine})):
        runner = ProcessRunner(["/bin/sh", "-c", 'echo "$TMPDIR"'], env=runner_env)
        try:
            runner.start(LaunchSpec(env=spec_env, socket_dir=str(sockets)))
            assert list(runner.stdout_lines()) == [mine]
        finally:
            runner.kill()


@pytest.mark.parametrize("env, problem", [
    ({"A": 1}, "must be a dict of str -> str"),
    ({1: "x"}, "must be a dict of str -> str"),
    ({"": "x"}, "environment variable name '' is empty"),
])
def test_a_launch_env_the_exec_would_take_wrongly_is_a_config_error(tmp_path: Path, env: dict[object, object],
                                                           problem: str) -> None:
    marker = tmp_path / "ran"
    runner = ProcessRunner(["/bin/sh", "-c", f"touch {marker}"])
    try:
        with pytest.raises(ConfigError, match=rf"LaunchSpec env .* {problem}"):
            runner.start(LaunchSpec(env=env))  # type: ignore[arg-type]
        assert runner.pid is None and not marker.exists()
    finally:
        runner.kill()


def test_an_env_problem_reads_as_a_sentence() -> None:
    with pytest.raises(ConfigError) as info:
        ProcessRunner(["/bin/true"], env={"A": "x\0"})
    assert str(info.value) == ("ProcessRunner env cannot be the plugin's environment: the value of environment"
                               " variable 'A' holds a NUL byte; rename or drop that entry")

