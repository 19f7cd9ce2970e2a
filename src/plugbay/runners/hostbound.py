"""ProcessRunner(die_with_host=True): the plugin gets SIGKILL when its host process dies, SIGKILL included.

The kernel does it (Linux's PR_SET_PDEATHSIG, set in the child between fork and exec and kept
across the exec), so it holds where no code of the host runs any more: kill -9, the OOM killer.
It signals the child the host forked and nothing else. The signal is sent when the *thread*
that forked the child ends, not the process: a plugin started from a short-lived thread (the
gateway's start and keeper threads, a session's starter) would be killed when that thread
returned. So these children are forked from one thread that lives as long as the process,
``plugbay-spawn``: callers hand it the Popen call and wait for it. It waits on a queue, so at
interpreter exit it stays blocked there until the process itself ends. A forked host has no
copy of that thread: the child process starts its own on first use.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable

from plugbay.errors import ConfigError

_FORK_SUPPORT = "GRPC_ENABLE_FORK_SUPPORT"
_PR_SET_PDEATHSIG = 1
_SIGKILL = int(signal.SIGKILL)

Arm = Callable[[], None]


def import_grpc_without_fork_handlers() -> None:
    """For a command whose process starts die_with_host children and runs gRPC in no forked child (the
    gateway's): import grpcio with its fork handlers off.

    A die_with_host start forks (a preexec_fn rules out vfork), and grpcio's fork handlers then log
    "Other threads are currently calling into gRPC, skipping fork() handlers" at every start; they
    are for forked children that use gRPC, which exec'd plugins never are. grpcio reads the variable
    at its import, so this must come first; it is set for that import only (the children do not
    inherit it), and a value the user set is kept. A no-op once grpc is imported."""
    if "grpc" in sys.modules or _FORK_SUPPORT in os.environ:
        return
    os.environ[_FORK_SUPPORT] = "false"
    try:
        import grpc  # noqa: F401
    finally:
        os.environ.pop(_FORK_SUPPORT, None)


def check_supported() -> None:
    """ConfigError where there is no parent-death signal to ask for."""
    if not sys.platform.startswith("linux"):
        raise ConfigError(f"ProcessRunner(die_with_host=True) needs Linux (prctl PR_SET_PDEATHSIG); this is"
                          f" {sys.platform}: drop die_with_host and stop the plugin through the Client")


_prctl: Callable[..., int] | None = None


def _resolved() -> Callable[..., int]:
    """libc's prctl, looked up here in the host: the child calls it and does nothing else that could block."""
    global _prctl
    if _prctl is None:
        found = ctypes.CDLL(None, use_errno=True).prctl
        found.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        found.restype = ctypes.c_int
        _prctl = found
    return _prctl


def _arming(host: int) -> Arm:
    """The preexec_fn: runs in the forked child, before its exec."""
    prctl = _resolved()

    def arm() -> None:
        if prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0) != 0:  # raised as Popen's SubprocessError
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) was refused")
        if os.getppid() != host:  # the host died between the fork and the prctl: no signal will come
            os._exit(1)
    return arm


class _Spawn:
    """One Popen handed to the spawn thread."""

    def __init__(self, popen: Callable[[Arm], None], arm: Arm) -> None:
        self._popen = popen
        self._arm = arm
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._finished = False
        self._cut_short: Callable[[], None] | None = None

    def run(self) -> None:  # on the spawn thread
        try:
            self._popen(self._arm)
        except BaseException as exc:  # raised on the caller's thread
            self.error = exc
        with self._lock:
            self._finished = True
            later = self._cut_short
        self.done.set()
        if later is not None:
            later()

    def hand_over(self, cut_short: Callable[[], None]) -> None:
        """``cut_short()`` here if the Popen has returned, else on the spawn thread once it has."""
        with self._lock:
            if not self._finished:
                self._cut_short = cut_short
                return
        cut_short()


class _SpawnThread:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.jobs: queue.SimpleQueue[_Spawn] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="plugbay-spawn", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                job.run()
            except Exception:  # pragma: no cover - a cut_short that failed: the next spawns still run
                pass


_SPAWNER: _SpawnThread | None = None
_SPAWNER_LOCK = threading.Lock()


def _forget_in_child() -> None:
    """A forked host has no spawn thread (and the lock may have been held by a thread not copied)."""
    global _SPAWNER, _SPAWNER_LOCK
    _SPAWNER, _SPAWNER_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def _spawner() -> _SpawnThread:
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None or _SPAWNER.pid != os.getpid():
            _SPAWNER = _SpawnThread()
        return _SPAWNER


def spawn_bound(popen: Callable[[Arm], None], cut_short: Callable[[], None]) -> None:
    """``popen(preexec_fn)`` on the spawn thread, its exception raised here.

    Interrupted while it runs (Ctrl-C: Popen waits for the child's exec), this waits for it to
    return, then runs ``cut_short()`` (which ends the child) and raises; interrupted again
    meanwhile, the spawn thread runs ``cut_short()`` once the Popen returns.
    """
    job = _Spawn(popen, _arming(os.getpid()))
    spawner = _spawner()
    try:
        spawner.jobs.put(job)  # first: a Ctrl-C raised here was raised after the put (ending its CALL)
        job.done.wait()
    except BaseException:
        try:
            job.done.wait()  # moments: Popen returns once its child has exec'd
        finally:
            job.hand_over(cut_short)
        raise
    if job.error is not None:
        raise job.error
