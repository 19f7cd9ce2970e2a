"""Line streams from a container's log stream (one pump thread per stream).

The engine's log API with ``follow`` ends when the container stops; closing
the underlying HTTP response ends it sooner (the runner does that on kill).
stdout and stderr are read as two separate log requests so each arrives
demultiplexed and in order. Each request is made on its pump thread, so the
two round trips overlap; the runner still waits until both are open
(:meth:`wait_open`) before it goes on, so following starts as early as it
would with one request after the other (a follower that starts late can miss
lines in a log file the engine rotated under a flood).

A stream that breaks while the container runs (the engine connection dropped)
is asked for again from the engine timestamp of the last entry it had, and the
replayed entries are dropped (see logstamps). A TTY container's log is one byte
stream with no entry boundaries to find the timestamps by: it is read without
them and asked for again from the host's time of the last chunk, which can
repeat or lose lines of that moment.

Lines wait for their reader in a bounded buffer (lines.LineBuffer, as the pod
runner's do): a reader slower than the plugin loses the oldest, and is told how
many with a warning.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from plugbay.core.transport.lines import MAX_BUFFERED as MAX_BUFFERED  # re-exported: the pod runner's bound too
from plugbay.core.transport.lines import LineBuffer, LineSplitter, drain
from plugbay.errors import RunnerError
from plugbay.runners.logstamps import EntryStamps
from plugbay.runners.docker.connect import release_frames
from plugbay.runners.docker.waiter import reconnect_pause

_log = logging.getLogger("plugbay.runners.docker")
TAIL = 50
_REOPENS = 12  # tries in a row to reopen a stream that broke while the container runs (pauses 0.25-8 s)


class ContainerLogStream:
    """Reads one of a container's log streams into lines on a plugbay-* thread."""

    def __init__(self, api: Any, container_id: str, which: str,
                 running: Callable[[], bool | None] | None = None, tty: bool = False,
                 on_line: Callable[[str], None] | None = None) -> None:
        self.which = which
        self._on_line = on_line  # given: each line goes to it on the pump thread, and lines() has none
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL)
        self._lines = LineBuffer(f"container {container_id[:12]}'s {which}", _log, MAX_BUFFERED)
        self._cond = threading.Condition()
        self._reader_taken = False
        # a line longer than MAX_LINE is cut with a marker; stdout's first, the handshake line, at once
        self.splitter = LineSplitter(handshake_first=which == "stdout")
        self.error: str | None = None  # why the log request failed, for diagnosis
        self._api, self._container_id = api, container_id
        # whether the container still runs (None: the engine does not say): a stream that broke
        # while it runs (engine connection dropped) is reopened from where it ended
        self._running = running
        self._close_asked = threading.Event()
        self._stamps = None if tty else EntryStamps()
        self._last_chunk = 0.0  # host time, for a TTY log only
        self._stream: Any = None
        self._closing = False
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"plugbay-docker-{which}-{container_id[:12]}",
                                        daemon=True)
        self._thread.start()

    def _push(self, line: str) -> None:
        self.tail.append(line)
        if self._on_line is not None:
            self._on_line(line)
        else:
            self._lines.put(line)

    def _open(self, since: float | None = None) -> Any:
        # follow=True: the request stays open until the container stops.
        extra = {"since": since} if since else {}
        stream = self._api.logs(self._container_id, stdout=self.which == "stdout",
                                stderr=self.which == "stderr", stream=True, follow=True,
                                timestamps=self._stamps is not None, **extra)
        with self._cond:
            if not self._closing:
                self._stream = stream
                return stream
        stream.close()  # close() came first: end the request made after it
        return ()

    def _run(self) -> None:
        try:
            try:
                stream = self._open()
            except Exception as exc:  # noqa: BLE001 - the engine refused or went away: the stream is empty
                self.error = f"the engine's {self.which} log request failed: {exc}"
                release_frames(exc)  # its socket, held in the traceback's cycle, closed now (not by the collector)
                return
            finally:
                self._opened.set()
            self._follow(stream)
        finally:
            for line in self.splitter.flush():
                self._push(line)
            self._lines.end()

    def _follow(self, stream: Any) -> None:
        failures = 0
        while True:
            try:
                for chunk in stream:
                    failures = 0
                    if self._stamps is None:
                        self._last_chunk = time.time()
                    elif (chunk := self._stamps.take(chunk)) is None:
                        continue  # a reopened log's replay of an entry passed on before
                    for line in self.splitter.feed(chunk):
                        self._push(line)
            except Exception:  # noqa: BLE001 - closed under us (kill), or the engine connection dropped
                pass
            with self._cond:
                self._stream = None
                if self._closing:
                    return
            while True:
                if self._running is None or failures >= _REOPENS:
                    return
                running = self._still_running()
                if running is False:
                    return  # the container ended: so did its log
                failures += 1
                if self._close_asked.wait(reconnect_pause(failures)):
                    return
                if running is None:
                    continue  # the engine does not answer yet
                try:
                    if self._stamps is None:
                        stream = self._open(since=self._last_chunk or None)
                    else:
                        stream = self._open(since=self._stamps.since())
                        self._stamps.reopened()
                    break
                except Exception:  # noqa: BLE001 - the engine is still away: try again
                    continue

    def _still_running(self) -> bool | None:
        try:
            return self._running() if self._running is not None else False
        except Exception:  # noqa: BLE001 - the engine does not answer
            return None

    def wait_open(self, timeout: float) -> bool:
        """Block (at most ``timeout``) until the log request is open or has failed."""
        return self._opened.wait(timeout)

    def lines(self) -> Iterator[str]:
        with self._cond:
            if self._reader_taken:
                raise RunnerError(f"the plugin's {self.which} can be read by one reader only; keep the"
                                  f" first iterator of {self.which}_lines() and fan its lines out yourself")
            self._reader_taken = True
        return drain(self._lines)

    @property
    def done(self) -> bool:
        return self._lines.ended

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """End the stream now (the container may still be running) and join the thread."""
        self._close_asked.set()
        with self._cond:
            self._closing = True
            stream = self._stream
        if not self._lines.ended and stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - closing a socket that is already gone
                pass
        self._thread.join(timeout)
        self._lines.end()  # also when the thread is still stuck: the reader must not wait on it
