"""ProcessRunner(die_with_host=True): the plugin gets SIGKILL when its host process dies, SIGKILL included.

The kernel does it (Linux's PR_SET_PDEATHSIG, kept across exec), so it holds where no code of the
host runs any more: kill -9, the OOM killer. It signals the child the host started and nothing else.
util-linux's ``setpriv --pdeathsig KILL`` asks for it and execs the plugin, so the child runs no code
of this process between its fork and exec: a ``preexec_fn`` would, and it rules out vfork, so
grpcio's fork handlers ran in the child, and in a host with gRPC threads busy the child aborted
(SIGABRT, "epoll_wait error: Bad file descriptor") about one start in two. The signal is sent when
the *thread* that started the child ends, not the process: a plugin started from a short-lived
thread (the gateway's start and keeper threads, a session's starter) would be killed when that
thread returned. So these children are started from one thread that lives as long as the process,
``plugbay-spawn``: callers hand it the Popen call and wait for it. It waits on a queue, so at
interpreter exit it stays blocked there until the process itself ends. A forked host has no copy of
that thread: the child process starts its own on first use. A host that dies in the moment between
the start and setpriv's request (about a millisecond) leaves that plugin running, for ``plugbay sweep``.
"""

from __future__ import annotations

import errno
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

from plugbay.errors import ConfigError

# the system's own, never one a PATH names: it runs before the plugin, SecureConfig's checked file included
_SETPRIV = ("/usr/bin/setpriv", "/bin/setpriv")
_found: dict[str, bool] = {}  # path -> whether it takes --pdeathsig


_BASH = ("/bin/bash", "/usr/bin/bash")
# bash -p reads no BASH_ENV, imports no functions; $0 and $1 are arguments, never parsed as code
_KEEP_ARGV0 = 'exec -a "$0" "$1" "${@:2}"'


def setpriv() -> str | None:
    """util-linux's setpriv with --pdeathsig (2.33 or later), or None."""
    for path in _SETPRIV:
        if os.access(path, os.X_OK):
            if path not in _found:
                _found[path] = _takes_pdeathsig(path)
            if _found[path]:
                return path
    return None


def _takes_pdeathsig(path: str) -> bool:
    try:
        said = subprocess.run([path, "--help"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return b"--pdeathsig" in said.stdout + said.stderr


def available() -> bool:
    """Whether die_with_host can be asked for here (Linux, with setpriv)."""
    return sys.platform.startswith("linux") and setpriv() is not None


def check_supported() -> None:
    """ConfigError where there is no parent-death signal to ask for."""
    if not sys.platform.startswith("linux"):
        raise ConfigError(f"ProcessRunner(die_with_host=True) needs Linux (PR_SET_PDEATHSIG); this is"
                          f" {sys.platform}: drop die_with_host and stop the plugin through the Client")
    if setpriv() is None:
        raise ConfigError("ProcessRunner(die_with_host=True) starts the plugin through util-linux's setpriv"
                          f" (--pdeathsig, util-linux 2.33 or later, as {' or '.join(_SETPRIV)}), which is not"
                          " installed here: install util-linux, or drop die_with_host")


def bound_command(target: str, args: Sequence[str], keep_argv0: bool) -> list[str]:
    """The command that runs ``target`` (the plugin's file) with ``args[1:]`` under the parent-death signal.

    setpriv execs ``target`` by name, which becomes the plugin's argv[0]; with ``keep_argv0`` (SecureConfig's
    checked copy, /proc/self/fd/N: a Python interpreter finds its venv, and re-execs itself, by argv[0])
    bash's ``exec -a`` passes ``args[0]`` on instead."""
    found = setpriv()
    if found is None:  # removed since the runner was made
        raise OSError(f"util-linux's setpriv is gone; die_with_host needs it ({', '.join(_SETPRIV)})")
    if not keep_argv0:
        return [found, "--pdeathsig", "KILL", "--", target, *args[1:]]
    bash = next((path for path in _BASH if os.access(path, os.X_OK)), None)
    if bash is None:
        raise OSError(f"die_with_host with SecureConfig on the executable keeps its argv[0] through bash's"
                      f" exec -a, and bash is not installed ({', '.join(_BASH)})")
    return [found, "--pdeathsig", "KILL", "--", bash, "-p", "-c", _KEEP_ARGV0, args[0], target, *args[1:]]


def check_runnable(path: str) -> None:
    """OSError as the kernel's exec would give for ``path`` (a ``#!`` script's interpreter missing; not a
    script, nor an ELF file of this machine: ENOEXEC). setpriv execs with execvp, which runs a file the
    kernel refused with ENOEXEC as a shell script: a plain start refuses it, so this start does too."""
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(b"#!"):
        # the kernel ends the interpreter's name at a space, tab, NUL or newline only: a CRLF script's is "/bin/sh\r"
        line = head[2:].split(b"\n", 1)[0].lstrip(b" \t")
        interpreter = os.fsdecode(line.replace(b"\t", b" ").replace(b"\0", b" ").split(b" ", 1)[0])
        if not interpreter:  # the kernel finds no interpreter's name: ENOEXEC (and execvp would run it by sh)
            raise OSError(errno.ENOEXEC, f"{os.strerror(errno.ENOEXEC)} (its #! line names no interpreter)", path)
        if not os.path.isfile(interpreter):
            raise FileNotFoundError(errno.ENOENT, f"{os.strerror(errno.ENOENT)} (its #! interpreter"
                                                  f" {interpreter!r})", path)
        if not os.access(interpreter, os.X_OK):
            raise PermissionError(errno.EACCES, f"{os.strerror(errno.EACCES)} (its #! interpreter {interpreter!r})",
                                  path)
        return
    if head[:4] != b"\x7fELF" or head[4:6] + _machine(head) != _own_elf():
        raise OSError(errno.ENOEXEC, os.strerror(errno.ENOEXEC), path)


def _machine(head: bytes) -> bytes:
    """An ELF header's e_machine, as stored (its byte order is the header's EI_DATA, compared with it)."""
    return head[18:20]


_OWN: list[bytes] = []


def _own_elf() -> bytes:
    """This interpreter's ELF class, byte order and machine: what the kernel here runs."""
    if not _OWN:
        with open("/proc/self/exe", "rb") as f:
            head = f.read(64)
        _OWN.append(head[4:6] + _machine(head))
    return _OWN[0]


class _Spawn:
    """One Popen handed to the spawn thread."""

    def __init__(self, popen: Callable[[], None]) -> None:
        self._popen = popen
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._finished = False
        self._cut_short: Callable[[], None] | None = None

    def run(self) -> None:  # on the spawn thread
        try:
            self._popen()
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


def spawn_bound(popen: Callable[[], None], cut_short: Callable[[], None]) -> None:
    """``popen()`` on the spawn thread, its exception raised here.

    Interrupted while it runs (Ctrl-C: Popen waits for the child's exec), this waits for it to
    return, then runs ``cut_short()`` (which ends the child) and raises; interrupted again
    meanwhile, the spawn thread runs ``cut_short()`` once the Popen returns.
    """
    job = _Spawn(popen)
    try:
        spawner = _spawner()
    except RuntimeError as exc:  # "can't start new thread": the Popen never runs
        raise OSError(f"cannot start the thread that starts die_with_host plugins: {exc}") from exc
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
