"""go-plugin's GRPCStdio: the plugin's stdout and stderr, streamed to the host.

Plugin side (:class:`StdioCapture`; the servicer that streams it is in
stdioservice.py): once the handshake line is out, file descriptors 1 and 2 are pointed (``dup2``) at pipes, so
output from Python, C extensions and child processes alike is captured. One
thread reads both pipes and keeps the chunks, in the order it read them, in a
buffer bounded in bytes: writers never block on a slow or absent host (when
the buffer is full the oldest chunks are dropped and the loss is logged).
Order is kept within each stream only: lines written to stdout and stderr in
turn may arrive grouped by stream, as a pipe is read when the poll finds it
ready, whatever the other holds (go-plugin's plugin side copies its two pipes
in two goroutines, which keep no order across them either). The
host's single StreamStdio call receives the buffered chunks, then new ones as
they come; a second caller takes the stream over (a re-attached host).
GRPCController.Shutdown is answered once what was captured has gone to that
caller (hand_over, bounded): go-plugin's host closes the connection at the answer.
A plugbay host with no sink asks to discard (STDIO_DISCARD_METADATA): the
buffer is dropped and new output too, and the call ends at once, until a
caller that reads comes (a re-attached host with a sink); while such a caller
reads, an ask to discard changes nothing.

The plugin's *log* records do not go through here: like go-plugin, the server
writes them to a duplicate of the original stderr taken before redirection. The
pump's poll also watches that stderr for a host that died (see watch_host).
"""

from __future__ import annotations

import collections
import logging
import os
import select
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable

Channel = int  # plugin.StdioData.Channel; tests/test_server.py checks the values
STDOUT = 1
STDERR = 2

DEFAULT_BUFFER_BYTES = 4 * 1024 * 1024
_READ = 64 * 1024
_POLL_MS = 200
_HAND_OVER_POLL = 0.01


class StdioCapture:
    """Redirects fds 1 and 2 into a bounded in-memory buffer until stopped."""

    def __init__(self, logger: logging.Logger, max_bytes: int = DEFAULT_BUFFER_BYTES) -> None:
        self._log = logger
        self._max = max_bytes
        self._cond = threading.Condition()
        self._chunks: collections.deque[tuple[Channel, bytes]] = collections.deque()
        self._size = 0
        self._dropped = 0
        self._overflowing = False
        self._discard = False  # the host has no sink: drop output instead of keeping it
        self._reader: int | None = None  # the generation of the caller reading now
        self._eof = False  # the pump has finished: nothing more will be added
        self._generation = 0  # bumped by each StreamStdio caller; older callers stop
        self._sending = False  # the reader took a chunk and its send has not finished (see hand_over)
        self._coming_until = 0.0  # a reader's call arrived, its handler has not begun: hand_over waits to then
        self._saved: tuple[int, int] | None = None
        self._readers: dict[int, Channel] = {}
        self._stop_pump = threading.Event()
        self._stopping = threading.Event()  # stop() began: the pump ends at the pipes' EOF
        self._pump: threading.Thread | None = None
        # Held from a pipe read until its chunk is kept or dropped, so a reader that
        # ends discarding first drops what was written before it came (see attach).
        self._read_lock = threading.Lock()
        self._host_gone: Callable[[], None] | None = None
        self._then: Callable[[], None] | None = None

    def watch_host(self, gone: Callable[[], None], then: Callable[[], None] | None = None) -> None:
        """Before :meth:`start`: call ``gone`` (once, on the pump's thread) when the original fd 2 is a
        pipe whose reader closed it: the host died. A pipe's write end reports POLLERR then, with no
        write (a Go plugin dies of SIGPIPE at its next one; Python ignores SIGPIPE and served on).
        ``then``: called on that thread at each of its polls from then on (at most _POLL_MS apart)."""
        self._host_gone, self._then = gone, then

    def start(self) -> None:
        """Point fds 1 and 2 at pipes; everything written from now on is captured."""
        flush_std()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self._saved = (os.dup(1), os.dup(2))
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(out_w)
        os.close(err_w)
        self._readers = {out_r: STDOUT, err_r: STDERR}
        for fd in self._readers:  # attach() drains them too: a read must never wait
            os.set_blocking(fd, False)
        # the pump's own duplicate: stop() closes the saved one while the pump may still poll
        err = self._saved[1]
        host_err = os.dup(err) if self._host_gone is not None and stat.S_ISFIFO(os.fstat(err).st_mode) else None
        # A pipe makes sys.stdout block-buffered; line buffering keeps print()s timely.
        if hasattr(sys.stdout, "reconfigure") and not getattr(sys.stdout, "closed", False):
            sys.stdout.reconfigure(line_buffering=True)
        self._pump = threading.Thread(target=self._pump_loop, args=(host_err,), name="plugbay-stdio-pump",
                                      daemon=True)
        self._pump.start()

    @property
    def original_stdout(self) -> int:
        """The process's stdout as it was before :meth:`start` (where the handshake line goes)."""
        return self._saved[0] if self._saved is not None else 1

    def stop(self, drain_timeout: float = 1.0) -> None:
        """Give fds 1 and 2 back, read what is left in the pipes, end the streams."""
        if self._saved is None:
            return
        flush_std()
        out_fd, err_fd = self._saved
        self._saved = None
        self._stopping.set()
        # Restoring closes our write ends; the pump then sees EOF unless a child
        # process still holds them, which the timeout covers.
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        if self._pump is not None:
            self._pump.join(drain_timeout)
            self._stop_pump.set()
            self._pump.join(5)
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _pump_loop(self, host_err: int | None) -> None:
        poller = select.poll()
        for fd in self._readers:
            poller.register(fd, select.POLLIN)
        watching = host_err is not None  # the host's pipe, until it reports the host died
        if host_err is not None:
            poller.register(host_err, 0)  # POLLERR and POLLHUP need no asking
        open_fds = set(self._readers)
        then = None  # the host died: watch_host's ``then``
        try:
            # Past both pipes' EOF too (a plugin that pointed fds 1 and 2 elsewhere) while the host is watched
            # or its grace runs: the host's death would go unseen. Not once stop() began: it waits for EOF.
            while (open_fds or ((watching or then is not None) and not self._stopping.is_set())) \
                    and not self._stop_pump.is_set():
                if then is not None:
                    then()
                for fd, _ in poller.poll(_POLL_MS):
                    if fd == host_err and watching and self._host_gone is not None:
                        poller.unregister(fd)  # reported until closed: once is enough
                        watching = False
                        self._host_gone()  # only notes and wakes serve(): it does not raise
                        then = self._then
                        continue
                    with self._read_lock:
                        try:
                            data = os.read(fd, _READ)
                        except BlockingIOError:
                            continue  # attach() took it first
                        except OSError:
                            data = b""
                        if data:
                            self._keep(self._readers[fd], data)
                    if not data:
                        poller.unregister(fd)
                        open_fds.discard(fd)
                        if not open_fds:
                            self._captured_all()
        finally:
            if host_err is not None:
                os.close(host_err)
            self._captured_all()

    def _captured_all(self) -> None:
        """Both pipes are closed (or the pump ends): the streams end with what was kept."""
        with self._read_lock:
            for fd in self._readers:
                os.close(fd)
            self._readers = {}
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _keep(self, channel: Channel, data: bytes) -> None:
        try:
            self._add(channel, data)
        except Exception:  # noqa: BLE001 - the pump must go on: a pump that ended would leave the
            # program's writes to fds 1 and 2 blocked on a full pipe, or failing once it closed them
            self._log.exception("captured output lost (%d bytes); capture goes on", len(data))

    def _add(self, channel: Channel, data: bytes) -> None:
        dropped = 0
        with self._cond:
            if self._discard:
                return
            self._chunks.append((channel, data))
            self._size += len(data)
            while self._size > self._max:  # keep exactly the newest max bytes
                excess = self._size - self._max
                old_channel, old = self._chunks[0]
                if len(old) <= excess:
                    self._chunks.popleft()
                    cut = len(old)
                else:
                    self._chunks[0] = (old_channel, old[excess:])
                    cut = excess
                self._size -= cut
                dropped += cut
            self._dropped += dropped
            self._cond.notify_all()
            # One warning per overflow episode; the episode ends when a reader catches up.
            warn = dropped > 0 and not self._overflowing
            self._overflowing = self._overflowing or dropped > 0
        if warn:
            # a go-plugin host before 1.3 has no GRPCStdio: it never reads, and the episode never ends
            self._log.warning("stdio buffer full: dropping the oldest output the host has not read",
                              extra={"buffer_bytes": self._max})

    def attach(self) -> int:
        """Register a new StreamStdio caller; earlier callers stop receiving.

        When output was being discarded, what is still in the pipes was written
        before this caller came and is dropped too: without that, whether a
        write made while discarding reaches the new reader would depend on how
        soon the pump thread got to it.
        """
        with self._read_lock:
            with self._cond:
                discarding = self._discard
            if discarding:
                for fd in self._readers:
                    _drain(fd)
            return self._attach()

    def _attach(self) -> int:
        with self._cond:
            self._discard = False
            self._generation += 1
            self._reader = self._generation
            self._sending = False
            self._coming_until = 0.0
            self._cond.notify_all()
            return self._generation

    def detach(self, generation: int) -> None:
        """The caller of ``generation`` is gone."""
        with self._cond:
            if self._reader == generation:
                self._reader = None
                self._sending = False
                self._cond.notify_all()

    def expect(self, within: float) -> None:
        """A reader's call arrived (grpcio hands it to a worker thread next): hand_over() waits for it
        to attach, ``within`` s from now at most (a call that ends before its handler begins never does)."""
        with self._cond:
            self._coming_until = time.monotonic() + within

    def hand_over(self, timeout: float) -> None:
        """Wait, ``timeout`` s at most, until what fds 1 and 2 got so far has gone to the attached
        reader: read from the pipes, taken from the buffer, its send finished. No wait without one
        (nor one whose call has arrived: see expect).

        Before Shutdown is answered: go-plugin's host closes the connection as soon as the answer
        comes, and what was still here or in grpcio's hands then never reached it."""
        deadline = time.monotonic() + timeout
        flush_std()  # what Python still buffers (a print() without a newline)
        while True:
            with self._read_lock:  # the pump reads only under it: a pipe seen empty here was read through
                piped = _readable(self._readers)
            with self._cond:
                if self._reader is None and time.monotonic() >= self._coming_until:
                    return
                if self._reader is not None and not piped and not self._chunks and not self._sending:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                # woken by the pump's keep and the reader's next take; what is still piped is polled
                self._cond.wait(min(left, _HAND_OVER_POLL))

    def discard(self) -> None:
        """A caller that reads nothing: drop what is kept and what comes, unless a reader is attached."""
        with self._cond:
            if self._reader is not None:
                return  # a host that reads (a re-attached one) keeps its stream
            self._discard = True
            self._chunks.clear()
            self._size = 0
            self._overflowing = False

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def next_chunk(self, generation: int, timeout: float,
                   alive: Callable[[], bool]) -> tuple[Channel, bytes] | None | bool:
        """A chunk; None when nothing came within ``timeout``; False when the stream must end.

        ``alive`` is checked before a chunk is taken, so a caller that went away
        does not swallow output meant for the next one.
        """
        with self._cond:
            if generation == self._generation and self._sending:  # called again: the last chunk was sent
                self._sending = False
                self._cond.notify_all()
            while True:
                if generation != self._generation or not alive():
                    return False
                if self._chunks:
                    channel, data = self._chunks.popleft()
                    self._size -= len(data)
                    if not self._chunks:
                        self._overflowing = False
                    self._sending = True
                    return channel, data
                if self._eof:
                    return False
                if not self._cond.wait(timeout):
                    return None


def _readable(fds: Iterable[int]) -> bool:
    """True when one of the pipes ``fds`` holds something to read right now (a closed, empty one does not)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return any(events & select.POLLIN for _, events in poller.poll(0))


def _drain(fd: int, max_reads: int = 64) -> None:
    try:  # bounded: a writer that never pauses must not hold up the caller
        for _ in range(max_reads):
            if not os.read(fd, _READ):
                return
    except OSError:  # BlockingIOError: empty now
        pass


def closed_std_fd() -> str | None:
    """Why the handshake cannot reach the host when the program closed fd 1 or 2 before serve(), else None.

    The next descriptor serve() opens (a socket, a pipe) would take the number, and the handshake line
    would go there: the host waits for it until its start timeout, the plugin serving unseen."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError as exc:
            return (f"plugin setup failed: the plugin's {name} (file descriptor {fd}) was closed before serve()"
                    f" ({exc.strerror}); a go-plugin host reads the handshake line from stdout and logs from"
                    " stderr: leave both open (write to a log or a file of your own instead)\n")
    return None


def flush_std() -> None:
    """Flushes sys.stdout and sys.stderr, each unless it is None, closed (a ValueError) or its fd is (OSError)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
