"""ProcessRunner(die_with_host=True) and the gateway: a host killed outright (SIGKILL) takes its plugin with it.

Real host processes (a small script, the gateway command) start the real Go KV plugin (go-plugin 1.0.1),
then get SIGKILL; their plugin must end without any code of theirs running. The plugin is started from
a thread that ends at once, as the gateway's start thread does: the parent-death signal follows the
thread that forked, so a plugin forked there would die with that thread.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from plugbay.errors import ConfigError
from plugbay.runners.process import ProcessRunner
from tests import gobuild
from tests.procs import children, gone, live_with_env
from tests.resilience_util import wait_until

_reason = gobuild.go_missing_reason()
pytestmark = [pytest.mark.go, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

REPO = Path(__file__).resolve().parent.parent
BOUND = 20.0
TAG = "PLUGBAY_TEST_DIE_WITH_HOST"

_HOST = """
import os, sys, threading, time
sys.path[:0] = [{repo!r}, {src!r}, {examples!r}]
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import Client, ClientConfig, ProcessRunner

def start():
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}}, start_timeout=30,
                                 runner=ProcessRunner([{kv!r}], die_with_host={die!r})))
    client.start()
    clients.append(client)

def started_by_a_thread_that_ends():
    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    while os.path.exists(f"/proc/self/task/{{thread.native_id}}"):  # the OS thread itself has ended
        time.sleep(0.01)
    kv = clients[-1].dispense(PLUGIN_NAME)
    kv.put("k", b"v")  # the plugin still serves after its starting thread ended
    assert kv.get("k") == b"v"
    return clients[-1].runner.pid

clients = []
if {fork!r}:
    # the spawn thread runs in this process; a forked child has none. No gRPC before the fork (a process
    # with gRPC threads forks unsafely, docs/host-side.md): the start is a runner's alone
    from plugbay.runners.base import LaunchSpec
    first = ProcessRunner(["/bin/true"], die_with_host=True)
    threading.Thread(target=lambda: first.start(LaunchSpec(env={{}}))).start()
    while first.wait(0.05) is None:
        pass
    pid = os.fork()
    if pid:
        print("forked", pid, flush=True)
        time.sleep(600)
        os._exit(0)
print("plugin", started_by_a_thread_that_ends(), flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def kv_bin() -> str:
    return str(gobuild.build_go("kv_plugin"))


def _line(proc: subprocess.Popen[str], word: str) -> str:
    """The next line of ``proc``'s stdout, which must start with ``word`` (within BOUND)."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(BOUND)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith(word):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"expected {word!r} from the host, got {line!r}; stderr: {err[-2000:]}")
    return line.split()[-1]


@contextmanager
def _tagged_run(argv: list[str], cwd: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``argv`` run with a tag in its environment (its plugins inherit it); everything tagged ends after."""
    tag = uuid.uuid4().hex
    # a SIGKILLed host removes none of its socket folders: they go here (a short path, as a socket's is bounded)
    private = tempfile.mkdtemp(prefix="dwh-")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), TAG: tag, "TMPDIR": private}
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc, tag
    finally:
        for pid in live_with_env(TAG, tag):  # the host, its forked copy and plugins: all started here
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
        shutil.rmtree(private)


def _host(kv_bin: str, die: bool, fork: bool = False) -> list[str]:
    script = _HOST.format(repo=str(REPO), src=str(REPO / "src"), examples=str(REPO / "examples" / "kv"),
                          kv=kv_bin, die=die, fork=fork)
    return [sys.executable, "-c", script]


def test_a_sigkilled_host_takes_its_plugin_with_it(kv_bin: str, tmp_path: Path) -> None:
    with _tagged_run(_host(kv_bin, die=True), tmp_path) as (host, _):
        plugin = int(_line(host, "plugin"))
        assert not gone(plugin)
        host.kill()
        host.wait(BOUND)
        assert wait_until(lambda: gone(plugin), BOUND), f"plugin {plugin} outlived its SIGKILLed host"


def test_without_the_option_a_sigkilled_host_leaves_its_plugin_running(kv_bin: str, tmp_path: Path) -> None:
    with _tagged_run(_host(kv_bin, die=False), tmp_path) as (host, tag):
        plugin = int(_line(host, "plugin"))
        host.kill()
        host.wait(BOUND)
        assert not gone(plugin) and plugin in live_with_env(TAG, tag)  # the default is unchanged (opt-in)


def test_a_forked_host_starts_a_spawn_thread_of_its_own(kv_bin: str, tmp_path: Path) -> None:
    # the fork copies no spawn thread: a start handed to the parent's would wait forever
    with _tagged_run(_host(kv_bin, die=True, fork=True), tmp_path) as (host, _):
        forked = int(_line(host, "forked"))
        plugin = int(_line(host, "plugin"))
        assert plugin in children(forked)
        os.kill(forked, signal.SIGKILL)
        assert wait_until(lambda: gone(plugin), BOUND), f"plugin {plugin} outlived its SIGKILLed host"


def test_a_sigkilled_gateway_takes_its_children_with_it(kv_bin: str, tmp_path: Path) -> None:
    # the first child is started on the gateway's start thread, a restarted one on its keeper thread
    argv = [sys.executable, "-m", "plugbay.network.gateway", "--insecure", "--listen", "127.0.0.1:0",
            "--cookie", "BASIC_PLUGIN=hello", "--", kv_bin]
    with _tagged_run(argv, tmp_path) as (gateway, _):
        assert _line(gateway, "listening").startswith("127.0.0.1:")
        first = children(gateway.pid, zombies=False)
        assert len(first) == 1, first
        os.kill(first[0], signal.SIGKILL)  # the keeper restarts it
        assert wait_until(lambda: set(children(gateway.pid, zombies=False)) - set(first), BOUND)
        child = children(gateway.pid, zombies=False)
        assert len(child) == 1, child
        gateway.kill()
        gateway.wait(BOUND)
        assert wait_until(lambda: gone(child[0]), BOUND), f"child {child[0]} outlived its SIGKILLed gateway"
        assert gateway.stderr is not None
        said = gateway.stderr.read()
        # the command imports grpcio with its fork handlers off: they logged a line at every child start
        assert "fork_posix" not in said and "skipping fork() handlers" not in said, said[-2000:]


def test_die_with_host_takes_a_bool() -> None:
    with pytest.raises(ConfigError, match="die_with_host must be True or False"):
        ProcessRunner(["true"], die_with_host="yes")  # type: ignore[arg-type]


def test_without_setpriv_die_with_host_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from plugbay.runners import hostbound

    monkeypatch.setattr(hostbound, "_SETPRIV", ("/nonexistent/setpriv",))  # one on PATH is never taken
    assert not hostbound.available()
    with pytest.raises(ConfigError, match="setpriv .* install util-linux, or drop die_with_host"):
        ProcessRunner(["true"], die_with_host=True)
    ProcessRunner(["true"])  # the default needs nothing


def test_a_missing_plugin_file_is_the_runner_error_a_plain_start_gives(tmp_path: Path) -> None:
    from plugbay.errors import RunnerError
    from plugbay.runners.base import LaunchSpec

    for cmd in ([str(tmp_path / "missing")], ["plugbay-no-such-plugin"]):
        for die in (False, True):
            with pytest.raises(RunnerError, match="cannot start plugin .* No such file .* Check the path"):
                ProcessRunner(cmd, die_with_host=die).start(LaunchSpec(env={}))
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(RunnerError, match="Permission denied.* the executable bit"):
        ProcessRunner([str(script)], die_with_host=True).start(LaunchSpec(env={}))


def _checked_runner(tmp_path: Path) -> tuple[ProcessRunner, Path]:
    import hashlib

    from plugbay import SecureConfig

    plugin = tmp_path / "plugin.sh"
    plugin.write_text("#!/bin/sh\nexit 7\n")
    plugin.chmod(0o755)
    runner = ProcessRunner([str(plugin)], die_with_host=True)
    runner.check_secure_config(SecureConfig(hashlib.sha256(plugin.read_bytes()).digest()))
    return runner, plugin


def _open_memfds() -> int:
    return sum("memfd:" in os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}"))


def test_a_failed_bound_start_closes_the_checked_copy_and_refuses_another_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # setpriv gone after the runner was made: the checked copy was closed, and a second start() then ran the
    # file unchecked (the plain start's failure path refused it; this one did not)
    from plugbay.errors import RunnerError
    from plugbay.runners import hostbound
    from plugbay.runners.base import LaunchSpec

    before = _open_memfds()
    runner, plugin = _checked_runner(tmp_path)
    monkeypatch.setattr(hostbound, "_SETPRIV", ("/nonexistent/setpriv",))
    with pytest.raises(RunnerError, match="setpriv is gone"):
        runner.start(LaunchSpec(env={}))
    assert _open_memfds() == before
    plugin.write_text("#!/bin/sh\nexit 0\n")  # swapped: must never run
    monkeypatch.undo()
    with pytest.raises(RunnerError, match="checked copy is closed"):
        runner.start(LaunchSpec(env={}))
    assert runner.pid is None


def test_a_spawn_thread_that_cannot_start_is_a_runner_error_and_leaks_no_checked_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plugbay.errors import RunnerError
    from plugbay.runners import hostbound
    from plugbay.runners.base import LaunchSpec

    def no_thread() -> None:
        raise RuntimeError("can't start new thread")

    before = _open_memfds()
    runner, _ = _checked_runner(tmp_path)
    assert _open_memfds() == before + 1
    monkeypatch.setattr(hostbound, "_spawner", no_thread)
    with pytest.raises(RunnerError, match="cannot start the thread that starts die_with_host plugins"):
        runner.start(LaunchSpec(env={}))
    assert _open_memfds() == before


def test_a_checked_interpreter_keeps_its_argv0_and_its_venv(tmp_path: Path) -> None:
    # setpriv execs the checked copy by its /proc/self/fd/N name, which became argv[0]: a venv's Python then
    # lost its venv (no grpc) and could not re-exec itself (sys.executable named a closed descriptor)
    import hashlib

    from plugbay import SecureConfig
    from plugbay.runners.base import LaunchSpec

    probe = "import sys, grpc; sys.exit(5 if sys.executable.startswith('/proc/') else 0)"
    interpreter = open(sys.executable, "rb").read()
    for die in (False, True):
        runner = ProcessRunner([sys.executable, "-c", probe], cwd=tmp_path, die_with_host=die)
        runner.check_secure_config(SecureConfig(hashlib.sha256(interpreter).digest()))
        runner.start(LaunchSpec(env={}))
        try:
            assert runner.wait(BOUND) == 0, f"die_with_host={die}: the checked interpreter lost argv[0]"
        finally:
            runner.kill(0)


def test_a_file_the_kernel_would_not_run_is_refused_as_a_plain_start_refuses_it(tmp_path: Path) -> None:
    # setpriv execs with execvp, which runs a file the kernel refused (ENOEXEC) as a shell script, and a
    # missing #! interpreter showed only as the plugin's exit 127
    from plugbay.errors import RunnerError
    from plugbay.runners.base import LaunchSpec

    cases = {"no-shebang": ("echo ran-under-sh\n", "Exec format error"),
             "bad-shebang": ("#!/nonexistent/interpreter\n", "No such file"),
             "foreign-elf": ("\x7fELF\x02\x01\x01" + "\x00" * 11 + "\xb7\x00", "Exec format error")}
    for name, (text, said) in cases.items():
        plugin = tmp_path / name
        plugin.write_bytes(text.encode("latin-1"))
        plugin.chmod(0o755)
        for die in (False, True):
            with pytest.raises(RunnerError, match=f"cannot start plugin .*{said}"):
                ProcessRunner([str(plugin)], die_with_host=die).start(LaunchSpec(env={}))


def test_a_start_says_what_the_execs_errno_hides_with_or_without_die_with_host(tmp_path: Path) -> None:
    # a plain start said only "No such file or directory: 'plugin.sh'" for a script that is there (its #!
    # interpreter is missing, or ends in the \r of a CRLF line end) and for a missing working folder; both
    # starts called a folder given as the command a missing file or a bare "Permission denied"
    from plugbay.errors import RunnerError
    from plugbay.runners.base import LaunchSpec

    missing = tmp_path / "bad-shebang.sh"
    missing.write_bytes(b"#!/nonexistent/interpreter\necho hi\n")
    crlf = tmp_path / "crlf.sh"
    crlf.write_bytes(b"#!/bin/sh\r\necho hi\r\n")
    for script in (missing, crlf):
        script.chmod(0o755)
    cases = [([str(missing)], {}, r"No such file or directory \(its #! interpreter '/nonexistent/interpreter'\)"),
             ([str(crlf)], {}, r"No such file or directory \(its #! interpreter '/bin/sh\\r'\)"),
             ([str(tmp_path)], {}, r"Permission denied \(a folder, not a file\)"),
             (["sh", "-c", "true"], {"cwd": str(tmp_path / "gone")}, r"No such file or directory \(the working folder")]
    for cmd, options, said in cases:
        for die in (False, True):
            with pytest.raises(RunnerError, match=f"cannot start plugin .*{said}"):
                ProcessRunner(cmd, die_with_host=die, **options).start(LaunchSpec(env={}))


def test_a_start_keeps_the_execs_errno_and_says_what_it_means(tmp_path: Path) -> None:
    # an explanation replaces the exec's error only with the same errno: a file on PATH that may not be run
    # was "No such file" (EACCES is what the exec says), a cwd that is a file "No such file" (ENOTDIR); the
    # working folder is checked first with die_with_host too (the child's chdir comes before its exec); an
    # empty #! line is the kernel's ENOEXEC, not a missing interpreter
    from plugbay.errors import RunnerError
    from plugbay.runners.base import LaunchSpec

    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "myplugin").write_text("#!/bin/sh\necho hi\n")  # mode 644: there, not executable
    afile = tmp_path / "afile"
    afile.write_text("")
    (folder / "afolder").mkdir()
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    empty = tmp_path / "empty-shebang.sh"
    empty.write_bytes(b"#!\necho hi\n")
    empty.chmod(0o755)
    cases = [(["myplugin"], {"env": {"PATH": str(folder)}},
              r"Permission denied \(on the plugin's PATH, not executable"),
             (["afolder"], {"env": {"PATH": str(folder)}}, r"Permission denied \(on the plugin's PATH, a folder\)"),
             (["sh", "-c", "true"], {"cwd": str(afile)}, r"Not a directory \(the working folder"),
             (["sh", "-c", "true"], {"cwd": str(loop)}, r"Too many levels of symbolic links \(the working folder"),
             (["./plugin"], {"cwd": str(tmp_path / "gone")}, r"No such file or directory \(the working folder"),
             ([str(empty)], {}, r"Exec format error \(its #! line names no interpreter\)")]
    for cmd, options, said in cases:
        for die in (False, True):
            with pytest.raises(RunnerError, match=f"cannot start plugin .*{said}"):
                ProcessRunner(cmd, die_with_host=die, **options).start(LaunchSpec(env={}))
