"""Ctrl-C at precise points of a plugin's start: a real SIGINT, sent when the start reaches that point.

A profile hook (sys.setprofile, this thread only) sends the SIGINT to this process as the start
enters the wait in question, so the KeyboardInterrupt is raised inside it: where the shared loop's
thread is being started, inside subprocess.Popen (it waits for the plugin's exec), and while the
handshake line is awaited. Each time nothing may stay behind: no loop thread, no plugin process,
no pipe of the plugin's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig, ProcessRunner  # noqa: E402
from plugbay.core.transport.aioloop import AioLoop  # noqa: E402
from plugbay.runners.hostbound import spawn_bound  # noqa: E402
from tests.procs import children, gone  # noqa: E402
from tests.resilience_util import wait_until  # noqa: E402

PY = sys.executable
SILENT = [PY, "-c", "import time; time.sleep(60)"]  # never prints a handshake line


@contextmanager
def ctrl_c_when(hit: Callable[[FrameType, str, Any], bool],
                before: Callable[[], None] = lambda: None) -> Iterator[None]:
    """SIGINT to this process the first time ``hit(frame, event, arg)`` holds on this thread
    (``before()`` runs just ahead of it); the KeyboardInterrupt must come out of the block."""
    armed = [True]

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if armed[0] and hit(frame, event, arg):
            armed[0] = False
            before()
            os.kill(os.getpid(), signal.SIGINT)

    sys.setprofile(profile)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        sys.setprofile(None)
    assert not armed[0], "the start never reached the point the Ctrl-C was meant for"


def _carrying(plugin_id: str) -> list[int]:
    """Processes whose environment names this plugin id (plugbay's mark on what it started)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"PLUGBAY_PLUGIN_ID={plugin_id}".encode() in environ and not gone(int(entry)):
                found.append(int(entry))
    return found


def test_ctrl_c_while_the_loop_thread_starts_leaves_no_loop_running() -> None:
    # Thread.start() waits for the new thread: interrupted there, the loop thread ran on for the life
    # of the process, held by nobody, and the next acquire() started another
    loop = AioLoop(name="plugbay-test-io-ctrl-c")

    def starting(frame: FrameType, event: str, arg: Any) -> bool:
        back = frame.f_back
        return (event == "call" and frame.f_code.co_name == "wait" and back is not None
                and back.f_code.co_name == "start" and back.f_code.co_filename == threading.__file__)

    with ctrl_c_when(starting):
        loop.acquire()
    assert not loop.running and loop.users == 0
    assert [t.name for t in threading.enumerate() if t.name == loop.name] == []
    lease = loop.acquire()  # the loop starts afresh, and works
    assert lease.run(_answer()).result(10) == 42
    lease.release()
    assert [t.name for t in threading.enumerate() if t.name == loop.name] == []


async def _answer() -> int:
    return 42


def test_ctrl_c_inside_popen_leaves_no_plugin_process(tmp_path: Path) -> None:
    # Popen waits for the exec of the forked child; interrupted there it drops its pipes and the
    # child runs on, unknown to the runner (then a zombie): kill() could not reach it
    def in_popen(frame: FrameType, event: str, arg: Any) -> bool:
        return (event == "c_call" and frame.f_code.co_name == "_execute_child"
                and getattr(arg, "__name__", "") == "read")

    _interrupted_start_leaves_no_plugin(ProcessRunner(SILENT, cwd=tmp_path), in_popen)


def _pipes_open_here() -> set[str]:
    found = set()
    for entry in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{entry}"))
        except OSError:
            continue  # the listing's own fd
    return {link for link in found if link.startswith("pipe:")}


@pytest.mark.parametrize("point", ["open-returns", "popen-returns"])
def test_ctrl_c_as_the_stderr_pipe_is_handed_over_leaves_no_plugin_and_no_pipe(tmp_path: Path, point: str) -> None:
    # runners/stderrpipe.py makes the plugin's stderr pipe and wraps its read end in a file object. A Ctrl-C
    # raised as open() returned dropped that object, which closed the read end, and the cleanup closed the
    # number again: EBADF took the KeyboardInterrupt's place, start() took it for a failed spawn, and the
    # plugin, already running, was left where kill() could not reach it. "popen-returns": the plugin
    # started, its stderr not yet handed to the Popen object.
    def at(frame: FrameType, event: str, arg: Any) -> bool:
        back = frame.f_back
        if point == "open-returns":
            return (event == "c_return" and frame.f_code.co_name == "popen_naming_stderr"
                    and getattr(arg, "__name__", "") == "open")
        return (event == "return" and frame.f_code.co_name == "__init__" and back is not None
                and back.f_code.co_name == "popen_naming_stderr")

    before = _pipes_open_here()
    _interrupted_start_leaves_no_plugin(ProcessRunner(SILENT, cwd=tmp_path), at)
    assert _pipes_open_here() - before == set()


def _interrupted_start_leaves_no_plugin(runner: ProcessRunner, when: Callable[[FrameType, str, Any], bool]) -> None:
    """A Client's start() interrupted (Ctrl-C) where ``when`` says: no plugin process is left, running or
    a zombie, before or after kill()."""
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                                 start_timeout=30))
    mine = set(children(os.getpid()))
    with ctrl_c_when(when):
        client.start()
    assert set(children(os.getpid())) - mine == set()  # not running, not a zombie either
    assert _carrying(runner.plugin_id) == []
    client.kill()
    assert client.exited
    assert set(children(os.getpid())) - mine == set()


def test_ctrl_c_while_the_handshake_line_is_awaited_leaves_no_plugin_pipe_open(tmp_path: Path) -> None:
    # start() reads up to the handshake line on its own thread before the loop follows the pipes; the
    # runner counted both as read by then, so its stop left them open (until garbage collection)
    runner = ProcessRunner(SILENT, cwd=tmp_path)
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                                 start_timeout=30))
    pipes: list[str] = []

    def awaiting_line(frame: FrameType, event: str, arg: Any) -> bool:
        return (event == "c_call" and frame.f_code.co_name == "read_first_line"
                and getattr(arg, "__name__", "") == "poll")

    def note_pipes() -> None:  # the plugin's ends of its stdout and stderr pipes: ours are the same pipes
        pipes.extend(os.readlink(f"/proc/{runner.pid}/fd/{fd}") for fd in (1, 2))

    with ctrl_c_when(awaiting_line, before=note_pipes):
        client.start()
    client.kill()
    assert len(pipes) == 2 and all(p.startswith("pipe:") for p in pipes), pipes
    pid = runner.pid
    assert pid is not None and gone(pid)
    open_here = []
    for entry in os.listdir("/proc/self/fd"):
        try:
            open_here.append(os.readlink(f"/proc/self/fd/{entry}"))
        except OSError:
            continue  # the listing's own fd
    assert set(pipes) & set(open_here) == set()


def _waiting_for_the_spawn_thread(frame: FrameType, event: str, arg: Any) -> bool:
    back = frame.f_back
    return (event == "call" and frame.f_code.co_name == "wait" and back is not None
            and back.f_code.co_name == "spawn_bound")


def test_ctrl_c_while_the_spawn_thread_forks_leaves_no_plugin_process(tmp_path: Path) -> None:
    # die_with_host: the Popen runs on the spawn thread while the caller waits; interrupted there, the
    # caller waits for that Popen and ends its child, as for a Popen of its own cut short
    _interrupted_start_leaves_no_plugin(ProcessRunner(SILENT, cwd=tmp_path, die_with_host=True),
                                        _waiting_for_the_spawn_thread)


def _main_blocked_in_spawn_bound(seen: set[int]) -> int | None:
    """The line of spawn_bound whose wait the main thread is blocked in (asleep in the kernel: a signal
    now interrupts that wait, where one sent as it starts to block would be left pending), if not in
    ``seen``."""
    main = threading.main_thread()
    try:
        syscall = Path(f"/proc/self/task/{main.native_id}/syscall").read_text()
    except OSError:
        return None
    frame: FrameType | None = sys._current_frames().get(main.ident or 0)
    if syscall.startswith("running") or frame is None or frame.f_code.co_name != "wait":
        return None
    while frame is not None and frame.f_code.co_name != "spawn_bound":
        frame = frame.f_back
    return frame.f_lineno if frame is not None and frame.f_lineno not in seen else None


def test_a_second_ctrl_c_hands_the_child_to_the_spawn_thread() -> None:
    # interrupted again while it waits for the Popen, the caller leaves; the spawn thread ends the child
    # once its Popen returns. The spawn itself sends the main thread each SIGINT, once it is blocked in
    # each of spawn_bound's two waits, so both land there.
    made: list[subprocess.Popen[bytes]] = []
    ended: list[int | None] = []

    def popen() -> None:  # on the spawn thread
        seen: set[int] = set()

        def blocked_in_a_new_wait() -> bool:
            line = _main_blocked_in_spawn_bound(seen)
            seen.add(line or 0)
            return line is not None

        for _ in range(2):
            assert wait_until(blocked_in_a_new_wait, 20)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        made.append(subprocess.Popen(SILENT))

    def cut_short() -> None:
        made[0].kill()
        ended.append(made[0].wait(20))

    with pytest.raises(KeyboardInterrupt):
        spawn_bound(popen, cut_short)
    assert wait_until(lambda: ended == [-signal.SIGKILL], 20), ended  # cut_short ran, on the spawn thread
    assert gone(made[0].pid)
