"""SecureConfig refuses, with a ConfigError that says what to give, a file the OS would not run or
that has no end: a directory, a FIFO, a device, a missing file, a file without an execute bit or on a
noexec mount. It copies exactly the size it saw (a file that grows or shrinks meanwhile is refused), and
its in-memory copy stays executable where the kernel makes memfds non-executable (vm.memfd_noexec)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from plugbay import ChecksumMismatchError, Client, ClientConfig, ConfigError, PlugbayError, SecureConfig
from plugbay.core.host import secure
from plugbay.core.protocol.handshake import HandshakeConfig
from plugbay.errors import RunnerError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.process import ProcessRunner
from tests.race_util import PauseAt, Starting

PY = sys.executable
SRC = str(Path(secure.__file__).resolve().parents[3])  # the plugbay under test, for the child processes
HANDSHAKE = HandshakeConfig(1, "BASIC_PLUGIN", "hello")
EMPTY = hashlib.sha256(b"").digest()
SCRIPT = b"#!/bin/sh\necho ran\n"


def _script(path: Path, mode: int = 0o755) -> Path:
    path.write_bytes(SCRIPT)
    path.chmod(mode)
    return path


def _root_with(tool: str) -> None:
    if os.geteuid() != 0 or shutil.which(tool) is None:
        pytest.skip(f"needs root and {tool} (a namespace of its own)")


def _run(runner: ProcessRunner) -> list[str]:
    runner.start(LaunchSpec(env={}))
    try:
        lines = list(runner.stdout_lines())
        assert runner.wait(30) == 0
        return lines
    finally:
        runner.kill()


def test_a_directory_is_a_config_error_not_an_os_error(tmp_path: Path) -> None:
    client = Client(ClientConfig(handshake=HANDSHAKE, cmd=[str(tmp_path)], secure_config=SecureConfig(EMPTY)))
    try:
        with pytest.raises(ConfigError, match=r"is not a regular file \(a directory\); give the plugin's executable"):
            client.start()
    finally:
        client.kill()


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "plugin"
    os.mkfifo(fifo)
    # open() of a FIFO waits for a writer: one comes after a long while, so a regression fails, not hangs
    unblock = threading.Timer(20, lambda: os.close(os.open(fifo, os.O_RDWR)))
    unblock.start()
    try:
        with pytest.raises(ConfigError, match=r"is not a regular file \(a FIFO\)"):
            ProcessRunner([str(fifo)]).check_secure_config(SecureConfig(hashlib.sha256(b"x").digest()))
    finally:
        unblock.cancel()


def test_a_device_is_refused_not_read_for_ever() -> None:
    # /dev/zero never ends: the copy would fill memory. The child caps its file size so that a
    # regression ends (EFBIG) instead of eating the machine's memory.
    code = ("import resource, signal, hashlib\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))\n"
            "from plugbay import SecureConfig\n"
            "from plugbay.runners.process import ProcessRunner\n"
            "try:\n"
            "    ProcessRunner(['/dev/zero']).check_secure_config(SecureConfig(hashlib.sha256(b'x').digest()))\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": SRC}).stdout
    assert out.startswith("ConfigError ") and "is not a regular file (a character device)" in out, out


def test_a_missing_file_says_what_to_give(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=r"cannot read plugin file .*nowhere.* \(No such file or directory\);"
                                          r" give the path of the plugin's file"):
        ProcessRunner([str(missing)]).check_secure_config(SecureConfig(EMPTY))


def test_an_executable_without_an_execute_bit_is_refused_a_script_is_not(tmp_path: Path) -> None:
    plain = _script(tmp_path / "plugin.sh", 0o644)
    with pytest.raises(ConfigError, match=r"has no execute permission for this host \(mode -rw-r--r--\).*chmod \+x"):
        ProcessRunner([str(plain)]).check_secure_config(SecureConfig.of_file(plain))
    runner = ProcessRunner(["/bin/sh", str(plain)])  # read by its interpreter: no execute bit needed
    runner.check_secure_config(SecureConfig.of_file(plain, check_path=str(plain)))
    assert _run(runner) == ["ran"]


# the end of a script run in a namespace of its own: check a SecureConfig of {path}, start {cmd}, print
# the first line it printed ("RAN ...") or the error
_CHECK_AND_RUN = """from plugbay import SecureConfig
from plugbay.runners.base import LaunchSpec
from plugbay.runners.process import ProcessRunner
r = ProcessRunner({cmd})
try:
    r.check_secure_config(SecureConfig.of_file({path}))
    r.start(LaunchSpec(env={{}}))
    print('RAN', r.stdout_lines().__next__())
except Exception as e:
    print(type(e).__name__, e)
finally:
    r.kill(0)
"""


def test_an_executable_on_a_noexec_mount_is_refused(tmp_path: Path) -> None:
    _root_with("unshare")
    mount = tmp_path / "mnt"
    mount.mkdir()
    code = ("import os, sys, subprocess\n"
            "mnt = sys.argv[1]\n"
            "subprocess.run(['mount', '-t', 'tmpfs', '-o', 'noexec,size=1m', 'tmpfs', mnt], check=True)\n"
            "p = os.path.join(mnt, 'plugin')\n"
            f"open(p, 'wb').write({SCRIPT!r}); os.chmod(p, 0o755)\n"
            + _CHECK_AND_RUN.format(cmd="[p]", path="p"))
    # a mount namespace of its own: the tmpfs goes with it
    out = subprocess.run(["unshare", "-m", "--propagation", "private", PY, "-c", code, str(mount)],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": SRC})
    assert out.stdout.startswith("ConfigError ") and "is on a filesystem mounted noexec" in out.stdout, out


@pytest.mark.parametrize("change", ["grows", "shrinks"])
def test_a_file_that_changes_size_while_it_is_copied_is_refused(tmp_path: Path, change: str) -> None:
    plugin = _script(tmp_path / "plugin")
    config = SecureConfig.of_file(plugin)
    pause = PauseAt(secure._copy.__code__, "call")  # its size is taken, not a byte copied yet
    checking = Starting(lambda: ProcessRunner([str(plugin)]).check_secure_config(config), pause)
    try:
        pause.wait_reached()
        if change == "grows":
            with open(plugin, "ab") as f:
                f.write(b"echo more\n")
        else:
            os.truncate(plugin, 4)
    finally:
        pause.release()
    error = checking.outcome()
    assert isinstance(error, ChecksumMismatchError) and "changed size while its checksum was taken" in str(error)


def test_a_file_that_reads_more_than_its_size_is_refused() -> None:
    # /proc files stat as 0 bytes and read as more: the digest would not be of the file's bytes
    with pytest.raises(ChecksumMismatchError, match="changed size while its checksum was taken"):
        SecureConfig(EMPTY).check("/proc/self/status")


@pytest.mark.skipif(not os.path.exists("/proc/sys/vm/memfd_noexec"), reason="a kernel without vm.memfd_noexec (< 6.3)")
@pytest.mark.parametrize("level", ["1", "2"])
def test_the_checked_copy_runs_where_memfds_are_noexec_by_default(level: str) -> None:
    """vm.memfd_noexec=1 makes memfds non-executable unless asked (MFD_EXEC); =2 refuses executable
    ones outright, which is then said by name. Set in a pid namespace of its own (the sysctl is per
    pid namespace), so the machine's own setting is untouched."""
    _root_with("unshare")
    code = ("import sys\n"
            "open('/proc/sys/vm/memfd_noexec', 'w').write(sys.argv[1])\n"
            + _CHECK_AND_RUN.format(cmd="['/bin/echo', 'hi']", path="'/bin/echo'"))
    out = subprocess.run(["unshare", "-fp", "--mount-proc", PY, "-c", code, level], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": SRC})
    if level == "1":
        assert out.stdout == "RAN hi\n", out
    else:
        assert out.stdout.startswith(RunnerError.__name__) and "vm.memfd_noexec=2" in out.stdout, out
    assert issubclass(RunnerError, PlugbayError)
