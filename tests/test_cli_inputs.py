"""The plugbay command refuses what it cannot use, at once and with exit 2: an @FILE that is larger
than any reattach config (/dev/zero filled the memory) or not text, and a float option given nan
(it passed every bound check: a check said UNREACHABLE, a watch died, a call to a dead target hung)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_util import KV_PROTO, cli_env
from tests.rlimited import rlimited

DEAD = "static:///127.0.0.1:1"  # nothing listens on port 1: an answer would be UNREACHABLE


def _plugbay_capped(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The command with its address space capped at 700 MiB: an unbounded read ends in MemoryError there
    instead of taking the machine's memory."""
    return subprocess.run(rlimited([sys.executable, "-m", "plugbay", *args], RLIMIT_AS=(700 << 20, 700 << 20)),
                          capture_output=True, text=True, timeout=timeout, env=cli_env(), stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("command", [["info"], ["health"], ["diagnose"], ["call", "/proto.KV/Get", "{}"]])
def test_an_endless_reattach_file_is_refused_after_a_bounded_read(command: list[str]) -> None:
    done = _plugbay_capped(command[0], "@/dev/zero", *command[1:])
    assert done.returncode == 2, done.stderr
    assert "error: reattach file /dev/zero is larger than 1 MiB" in done.stderr
    assert "unexpected" not in done.stderr


def test_a_reattach_file_of_binary_bytes_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "plugin.json"
    bad.write_bytes(b'{"name": "\xff\xfe"}')
    done = _plugbay_capped("info", f"@{bad}")
    assert done.returncode == 2, done.stderr
    assert "is not UTF-8 text" in done.stderr and "unexpected" not in done.stderr


@pytest.mark.parametrize("args", [
    ["health", DEAD, "--insecure", "--timeout", "nan"],
    ["health", DEAD, "--insecure", "--watch", "--count", "2", "--interval", "nan"],
    ["health", DEAD, "--insecure", "--watch", "--count", "2", "--interval", "NaN"],
    ["info", DEAD, "--insecure", "--timeout", "-nan"],
    ["call", DEAD, "/proto.KV/Get", "{}", "--insecure", "--proto", str(KV_PROTO), "--timeout", "nan"],
    ["run", "--cmd", "false", "--cookie", "K=V", "--start-timeout", "nan"],
    ["run", "--cmd", "false", "--cookie", "K=V", "--kill-grace", "nan"],
])
def test_nan_is_an_invalid_value_for_every_float_option(args: list[str]) -> None:
    done = _plugbay_capped(*args, timeout=30)
    option = args[-2]
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"Invalid value for '{option}'" in done.stderr and "is not a finite number" in done.stderr


def test_a_temp_dir_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    """A misspelt --temp-dir was looked in as an empty folder: the sweep said "would remove 0" and exited 0."""
    missing = tmp_path / "no-such-folder"
    done = _plugbay_capped("sweep", "--temp", "--dry-run", "--temp-dir", str(missing))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"'{missing}' does not exist" in done.stderr and "would remove" not in done.stdout
    assert not missing.exists()
    done = _plugbay_capped("sweep", "--temp", "--dry-run", "--temp-dir", str(tmp_path))
    assert done.returncode == 0 and "would remove 0" in done.stdout, (done.stdout, done.stderr)
