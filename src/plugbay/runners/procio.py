"""A local plugin's pipes and exit, watched on the shared I/O loop (no thread per plugin).

:class:`PipeFollower` reads one of the plugin's output pipes when the loop
says it is readable, splits it into bounded lines (LineSplitter: 64 KiB cap)
and hands each to a callback; at end of file, or when the runner stops it (a
grandchild may hold the pipe open after a kill), it reads what is left,
flushes the last unfinished line, closes the pipe and reports the end.

A plugin may write a line per call (the Go KV example logs each Get before it
answers). Woken per line, the loop thread would take the GIL just as the
answer reaches the calling thread. So a pipe that gave whole lines twice
within _GATHER seconds is not watched for _GATHER seconds; then it is read
once more (the lines written meanwhile, in one chunk) and watched again only
when it was empty. A line after a quiet spell is read at once, and so is an
unfinished line. A flood is read at once for _CALM: a read of _FLOOD bytes or
more tells one (a writer blocked on a full pipe: small writes do not fill its
pages, so a full 64 KiB pipe may hold little more than half that), and a rest
then would hold the plugin's writes back.

:func:`watch_pid` tells a callback the moment a process ends, through a pidfd
(Linux 5.3+), instead of polling its exit; it returns None where pidfds are
not available so the caller can fall back to a polling thread.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable, MutableSequence, Mapping
from typing import IO

from plugbay.core.transport.ioloop import READ, IOLoop, Registration, Timer, shared
from plugbay.core.transport.lines import LineSplitter

_log = logging.getLogger("plugbay.runner")
_READ = 65536
_SLICE = 0.2  # read_first_line looks at gone() this often while nothing comes
_HELD_MAX = 1 << 20  # characters read_first_line holds for the loop at most; more, and the loop reads
_HELD_FOR = 1.0  # seconds a line read_first_line holds may wait; then the loop reads (a slow start's logs)
_FINAL_READS = 16  # at most 1 MiB read after a stop: a flooding grandchild must not hold the loop
_GATHER = 0.005  # seconds a chatty pipe rests before the next read (see above)
_FLOOD = _READ // 2  # bytes in one read that tell a flood (see above)
_CALM = 0.1  # seconds a flooded pipe is read at once before it may rest again


class PipeFollower:
    """One pipe on the loop: lines to ``on_line``, then ``on_end()`` once (on the loop thread)."""

    def __init__(self, fd: int, splitter: LineSplitter, on_line: Callable[[str], None],
                 on_end: Callable[[], None], close: Callable[[], None],
                 loop: IOLoop | None = None, held: list[str] | None = None) -> None:
        self._fd = fd
        self._splitter = splitter
        self._on_line = on_line
        self._on_end = on_end
        self._close = close
        self._ended = False
        self._loop = loop or shared()
        self._rest: Timer | None = None  # pending while the pipe rests (loop thread only)
        self._last_read = -math.inf  # time.monotonic() of the last read that gave lines
        self._flood_until = -math.inf  # no rest before this time.monotonic() (a flood was read)
        self._held = held or []  # lines read before (read_first_line): handed on first, on the loop
        os.set_blocking(fd, False)
        # _read_once returns False at EOF: the loop then drops it and runs _finish
        self._reg: Registration = self._loop.add(fd, self._read_once, self._finish,
                                                 first=self._hand_held if self._held else None)

    def _hand_held(self) -> None:
        held, self._held = self._held, []
        for line in held:
            self._deliver(line)

    def stop(self) -> None:
        """Read what is there now, then end (the loop thread does it; returns at once)."""
        self._reg.cancel()

    def catch_up(self) -> None:
        """On the loop thread: read what the pipe holds now, resting or not.

        For the plugin's exit notice: its last lines are in the pipe by then, and a
        resting pipe would hand them on up to _GATHER after the exit was told.
        """
        if not self._reg.added:  # the loop has not taken the pipe yet (its held lines come first)
            return
        if self._rest is not None:
            self._rest.cancel()
        self._rested()

    def _read_once(self, rested: bool = False) -> bool:
        """Feed one chunk; False at end of file (or a broken pipe). ``rested``: the rest's timer reads."""
        try:
            chunk = os.read(self._fd, _READ)
        except BlockingIOError:
            return True
        except OSError as exc:
            _log.debug("reading a plugin pipe failed: %s", exc)
            return False
        if not chunk:
            return False
        lines = self._splitter.feed(chunk)
        for line in lines:
            self._deliver(line)
        if lines:
            now, last = time.monotonic(), self._last_read
            self._last_read = now
            if len(chunk) >= _FLOOD:
                self._flood_until = now + _CALM
            elif (rested or now - last < _GATHER) and now >= self._flood_until and not self._splitter.buffered:
                self._rest_a_while()
        return True

    def _rest_a_while(self) -> None:
        if self._rest is None:  # watched: stop watching until the timer's read
            self._reg.want(0)
        self._rest = self._loop.call_later(_GATHER, self._rested)

    def _rested(self) -> None:
        """The timer: read what came meanwhile; watch the pipe again only once it is empty."""
        self._rest = None
        if self._ended or self._reg.cancelled:
            return
        try:
            if self._read_once(rested=True):
                if self._rest is None:  # empty, a flood or an unfinished line: wait for the loop
                    self._reg.want(READ)
                return
        except Exception:  # never leave the pipe unwatched: end it as the loop would
            _log.exception("reading a plugin pipe failed")
        self._reg.cancel()  # end of file: the loop drops it and runs _finish

    def _deliver(self, line: str) -> None:
        _deliver(self._on_line, line)

    def _finish(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._rest is not None:
            self._rest.cancel()
            self._rest = None
        for _ in range(_FINAL_READS):
            try:
                chunk = os.read(self._fd, _READ)
            except OSError:
                break
            if not chunk:
                break
            for line in self._splitter.feed(chunk):
                self._deliver(line)
        for line in self._splitter.flush():
            self._deliver(line)
        self._close()
        self._on_end()


def _deliver(on_line: Callable[[str], None], line: str) -> None:
    try:
        on_line(line)
    except Exception:  # a failing consumer must not stop the pipe being drained
        _log.exception("handling a plugin output line failed")


class OutputEnds:
    """Counts a runner's followed streams down to zero; join() waits for that."""

    def __init__(self, streams: int) -> None:
        self._cond = threading.Condition()
        self._open = streams

    def ended(self) -> None:
        with self._cond:
            self._open -= 1
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._open <= 0, timeout)


def follow_pipes(pipes: Mapping[str, IO[bytes] | None], on_line: Callable[[str, str], None],
                 on_end: Callable[[str], None], lock: threading.Lock, tail: MutableSequence[str],
                 splitters: list[LineSplitter], first_line_by: float | None = None,
                 gone: Callable[[], bool] = lambda: False) -> tuple[list[PipeFollower], OutputEnds]:
    """Follow each named pipe on the loop (a runner's follow_output); stderr lines also go to ``tail``.

    Each pipe is closed (under ``lock``) once read to its end. ``first_line_by``: first read
    here, on the calling thread, until stdout's first line (see read_first_line). When this
    raises (Ctrl-C while that line is awaited), the pipes are closed all the same: those given
    to a follower by then once it ended, the others here.
    """
    ends = OutputEnds(len(pipes))
    handlers = {which: _line_handler(which, on_line, tail) for which in pipes}
    split = {which: LineSplitter(handshake_first=which == "stdout") for which in pipes}
    splitters.extend(split.values())
    held: dict[str, list[str]] = {which: [] for which in pipes}
    followers: dict[str, PipeFollower] = {}
    try:
        if first_line_by is not None and "stdout" in pipes:
            fds = {which: pipe.fileno() for which, pipe in pipes.items() if pipe is not None}
            read_first_line(fds, split, handlers["stdout"], held, first_line_by, gone)
        for which, pipe in pipes.items():
            assert pipe is not None
            followers[which] = PipeFollower(pipe.fileno(), split[which], handlers[which],
                                            _end_handler(which, on_end, ends), _closer(pipe, lock),
                                            held=held[which])
    except BaseException:
        # the caller counts every pipe as read: nothing else would close them (a runner's stop
        # leaves the pipes its readers own) until the process object is collected
        for follower in followers.values():
            follower.stop()  # it closes its pipe as it ends, on the loop
        with lock:
            for which, pipe in pipes.items():
                if pipe is not None and which not in followers:
                    pipe.close()
        raise
    return list(followers.values()), ends


def read_first_line(fds: Mapping[str, int], splitters: Mapping[str, LineSplitter],
                    on_first: Callable[[str], None], held: Mapping[str, list[str]], deadline: float,
                    gone: Callable[[], bool]) -> None:
    """Read the pipes here until stdout gave a line, ended, ``gone()`` or ``deadline`` (time.monotonic()).

    The host waits for the handshake line anyway: reading it on the waiting thread spares the
    hop through the shared loop's thread (on a loaded machine, one more wait to be scheduled).
    Only stdout's first line is handed on here (to ``on_first``); every other line read meanwhile
    goes to ``held`` for the loop to hand on first, so log handlers still run on the loop thread
    (one may kill the Client). stderr is read too, so a plugin that logs first never blocks on
    a full pipe; past _HELD_MAX held, or _HELD_FOR after a line was first held (a slow start's
    log lines must not wait for its handshake), the loop takes over. An ended pipe is left for the loop
    to finish; unfinished lines stay in their splitters.
    """
    names = {fd: which for which, fd in fds.items()}
    kept = 0
    poller = select.poll()
    for fd in names:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN | select.POLLHUP)
    look_at = time.monotonic() + _SLICE
    hand_at: float | None = None  # once a line is held: when the loop must take over
    while "stdout" in names.values():
        now = time.monotonic()
        left = (deadline if hand_at is None else min(deadline, hand_at)) - now
        if left <= 0:
            return
        if now >= look_at:  # every _SLICE even while stderr keeps coming (a grandchild that logs on)
            look_at = now + _SLICE
            if gone():  # e.g. a grandchild holds stdout open after the plugin died
                return
        events = poller.poll(min(_SLICE, left) * 1000)
        for fd, _ in events:
            try:
                chunk = os.read(fd, _READ)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            which = names[fd]
            if not chunk:  # the loop sees the end again and finishes the pipe
                poller.unregister(fd)
                del names[fd]
                if which == "stdout":
                    return
                continue
            lines = splitters[which].feed(chunk)
            if which == "stdout" and lines:
                _deliver(on_first, lines[0])
                held["stdout"].extend(lines[1:])
                return
            held[which].extend(lines)
            if lines and hand_at is None:  # a slow start's log lines reach the loop's handlers soon
                hand_at = time.monotonic() + _HELD_FOR
            kept += sum(len(line) for line in lines) + len(lines)
            if kept > _HELD_MAX:  # a flood before the line: the loop reads (and logs) the rest
                return


def _line_handler(which: str, on_line: Callable[[str, str], None],
                  tail: MutableSequence[str]) -> Callable[[str], None]:
    def handle(line: str) -> None:
        if which == "stderr":
            tail.append(line)
        on_line(which, line)
    return handle


def _end_handler(which: str, on_end: Callable[[str], None], ends: OutputEnds) -> Callable[[], None]:
    def end() -> None:
        try:
            on_end(which)
        finally:
            ends.ended()
    return end


def _closer(pipe: IO[bytes], lock: threading.Lock) -> Callable[[], None]:
    def close() -> None:
        with lock:
            pipe.close()
    return close


class ExitWatch:
    """Stops watching a process's exit (idempotent); the callback will not run after cancel()."""

    def __init__(self, cancel: Callable[[], None]) -> None:
        self._cancel = cancel

    def cancel(self) -> None:
        self._cancel()


def pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``; None where the kernel or Python has none (or the pid is gone)."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.ESRCH, errno.EINVAL):
            _log.debug("pidfd_open(%s) failed: %s", pid, exc)
        return None
    return fd


def watch_pid(fd: int, exit_code: Callable[[], int], on_exit: Callable[[int], None],
              loop: IOLoop | None = None) -> ExitWatch:
    """Call ``on_exit(exit_code())`` on the loop thread once pidfd ``fd`` is readable (the process ended).

    ``fd`` is owned from here on: closed when the watch ends or is cancelled.
    """
    state = {"fired": False, "cancelled": False}
    lock = threading.Lock()

    def ready() -> bool:
        with lock:
            if state["fired"] or state["cancelled"]:
                return False
            state["fired"] = True
        try:
            code = exit_code()
        except Exception:  # never lose the exit itself
            _log.debug("reading a plugin's exit code failed", exc_info=True)
            code = -1
        on_exit(code)
        return False  # a pidfd stays readable: watch it no more

    def cancel() -> None:
        with lock:
            state["cancelled"] = True
        reg.cancel()

    reg = (loop or shared()).add(fd, ready, lambda: os.close(fd))
    return ExitWatch(cancel)


def child_exit_code(proc: subprocess.Popen[bytes], fd: int) -> int:
    """The exit code of a child whose pidfd became readable, in Popen's convention (-N: signal N).

    Read with WNOWAIT so the child stays for Popen to reap (its wait() stays the one reaper);
    then reaped here when no other thread is waiting on it right now.
    """
    code: int | None = proc.returncode
    if code is None:
        try:
            info = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except (OSError, AttributeError):
            info = None
        if info is not None:
            code = -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status
        proc.poll()  # reap now if we can; returncode then wins (it is the same figure)
        if proc.returncode is not None:
            code = proc.returncode
    if code is None:
        code = proc.wait(1.0)  # already reaped or a zombie: immediate
    return code
