"""A pod's log stream split in two: the handshake line to stdout, every other line to stderr.

Pod logs merge the container's stdout and stderr, so the one line that is a
go-plugin handshake line (handshake.is_handshake_line: also one of a core version or
protocol plugbay refuses, so the host says so at once) is the plugin's stdout; the rest (hclog JSON, plain
lines) is fed to the host's log pump.

A broken stream is reopened while the pod still runs, from a little before the
last line read: the log is asked for with timestamps, and the
reopen's replay of lines already passed on is dropped by their timestamps
(plugbay.runners.logstamps). Reopening at the log's end instead lost every line
printed while the stream was down, the handshake line too. The Python client has
no sinceTime (the API's OpenAPI leaves it out), so the reopen asks for
sinceSeconds: the time since that line came, measured here (no clock skew with
the kubelet), plus SINCE_MARGIN for the line's way from the kubelet to the host.
Only failures in a row count against REOPENS (a reopen refused, or a stream that
broke within STREAM_WORKED seconds with no new line), each after a backoff; a
stream that passed lines on starts the count over, so a plugin that runs for
days outlives any number of API server restarts. Giving up is a warning.
close() (detach, kill) ends a reopen under way too: a stream opened after it would be read
until the pod ends, with no one left to shut it. A pod the runner deletes (stop_reopening(),
before the delete) has its stream read to its end and never reopened; a reopen the API server
answers with the pod's NotFound (podapi.PodGone) is the log's end too, and tells the runner the
pod is gone: retried, it only counted the seconds of a deletion down to a warning.
"""

from __future__ import annotations

import logging
import math
import socket
import time
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from plugbay.core.transport.backoff import doubling_pause
from plugbay.core.transport.lines import LineBuffer, LineSplitter, split_lines
from plugbay.errors import RunnerError
from plugbay.core.protocol.handshake import is_handshake_line
from plugbay.runners.kubernetes.deadline import Cancel, cancellable
from plugbay.runners.kubernetes.podapi import PodGone
from plugbay.runners.logstamps import EntryStamps

_log = logging.getLogger("plugbay.runners.kubernetes")
REOPENS = 5  # failed reopens in a row before the log is given up
STREAM_WORKED = 10.0  # seconds a stream with no new line must have lasted to count as working
REOPEN_STEP = 0.2  # the pause before a reopen: doubling from REOPEN_STEP, up to REOPEN_MAX
REOPEN_MAX = 2.0
SINCE_MARGIN = 5  # seconds added to a reopen's sinceSeconds: replayed lines are dropped, missed ones are lost


def _chunks(resp: Any) -> Iterator[bytes]:
    for segment in resp.stream(amt=None, decode_content=False):
        yield segment.encode("utf-8") if isinstance(segment, str) else bytes(segment)


class PodLogs:
    """``api_timeout`` bounds each (re)open of the stream (podapi.PodApi.open_log), not its quiet spells."""

    def __init__(self, name: str, api_timeout: float = 30.0) -> None:
        self.api_timeout = api_timeout
        self.stdout = LineBuffer("", _log, limit=1)  # only the handshake line goes there
        self.stderr = LineBuffer("", _log)
        self.name = name
        self.tail: deque[str] = deque(maxlen=50)
        self._resp: Any = None
        self._thread: threading.Thread | None = None
        # the current stream's (a reopen makes another; they are not kept: reopens have no bound)
        self.splitters: deque[LineSplitter] = deque(maxlen=1)
        self._lock = threading.Lock()
        self._closed = False
        self._ended = False  # the queues have their end marker
        self._cancel = Cancel()  # ends a reopen still waiting for its answer when close() comes
        self._stop = threading.Event()  # set by close() and stop_reopening(): ends a reopen's backoff
        self._reopens = True  # False once the pod is being deleted: its stream is read to its end, no further

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        # the runner names the pod after it made this: the buffers' drop warnings name it too
        self._name = name
        self.stdout.source = f"pod {name}'s log (stdout)"
        self.stderr.source = f"pod {name}'s log"

    def follow(self, first: Any, reopen: Callable[[int | None], Any], still_running: Callable[[], bool],
               gone: Callable[[], object] = lambda: None) -> None:
        """Read ``first`` (an open follow=true, timestamps=true response) in a thread; ``reopen(since_seconds)``
        reconnects (None: from the log's start). ``gone()`` is called when a reopen finds the pod gone."""
        if not self._take(first):
            return
        self._thread = threading.Thread(target=self._loop, args=(first, reopen, still_running, gone),
                                        name=f"plugbay-klog-{self.name}", daemon=True)
        self._thread.start()

    def _take(self, resp: Any) -> bool:
        """Make ``resp`` the stream close() shuts; after close() it is shut at once and False returned,
        or it would be read on until the pod ends (a reopen answered after close())."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._resp = resp
        if closed:
            shut_stream(resp)
            try:
                resp.release_conn()
            except Exception:  # noqa: BLE001 - a broken connection is released enough
                pass
            self._end()
        return not closed

    def _end(self) -> None:
        with self._lock:
            ended, self._ended = self._ended, True
        if not ended:
            self.stdout.end()
            self.stderr.end()

    def _loop(self, resp: Any, reopen: Callable[[int | None], Any], still_running: Callable[[], bool],
              gone: Callable[[], object]) -> None:
        handshake_seen = False
        stamps = EntryStamps()
        last_read = 0.0  # monotonic time of the last stamped line passed on
        failed, why = 0, ""  # failures in a row (see the module's doc), and the last one's
        try:
            while True:
                splitter = LineSplitter()  # bounded lines; a broken stream's partial line ends there
                self.splitters.append(splitter)
                opened, passed = time.monotonic(), False
                try:
                    for stamped in split_lines(_chunks(resp), splitter=splitter):
                        data = stamps.take(stamped.encode("utf-8"))
                        if data is None:
                            continue  # a reopened log's replay of a line passed on before
                        passed = True
                        if stamps.last is not None:
                            last_read = time.monotonic()
                        line = data.decode("utf-8")
                        if not handshake_seen and is_handshake_line(line):
                            handshake_seen = True
                            self.stdout.put(line)
                        else:
                            self.tail.append(line)
                            self.stderr.put(line)
                    why = "the stream ended"
                except Exception as exc:
                    why = f"{type(exc).__name__}: {exc}"
                    _log.debug("log stream of pod %s broke: %s", self.name, exc)
                finally:
                    resp.release_conn()
                # The stream ends when the container does, or when the connection broke.
                worked = passed or time.monotonic() - opened >= STREAM_WORKED
                failed = 0 if worked else failed + 1
                while True:
                    # the pod ended, close(), or stop_reopening() (also after a reopen it cancelled)
                    if not self._reopening(still_running):
                        return
                    if failed >= REOPENS:
                        _log.warning("the log of pod %s broke or could not be reopened %d times in a row (last:"
                                     " %s); plugbay stops following it while the pod runs on: the plugin's later"
                                     " lines reach the host no more (kubectl logs still shows them)",
                                     self.name, failed, why)
                        return
                    if failed and self._stop.wait(doubling_pause(failed, REOPEN_STEP, REOPEN_MAX)):
                        return  # closed during the backoff
                    if not self._reopening(still_running):
                        return
                    since = None if stamps.last is None else (
                        math.ceil(time.monotonic() - last_read) + SINCE_MARGIN)
                    try:
                        with cancellable(self._cancel):
                            resp = reopen(since)
                        break
                    except PodGone as exc:
                        _log.debug("the log of pod %s ended: %s", self.name, exc)
                        gone()
                        return
                    except RunnerError as exc:
                        failed, why = failed + 1, str(exc)
                        _log.debug("reopening the log of pod %s: %s", self.name, exc)
                if not self._take(resp):
                    return
                stamps.reopened()
        finally:
            self._end()

    def _reopening(self, still_running: Callable[[], bool]) -> bool:
        with self._lock:
            reopens = self._reopens and not self._closed
        return reopens and still_running()

    def stop_reopening(self) -> None:
        """The pod is being deleted: its stream is read on to its end (the plugin's last lines), not reopened;
        a reopen or its backoff under way ends now."""
        with self._lock:
            self._reopens = False
        self._stop.set()
        self._cancel.cancel()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            resp = self._resp
        self._stop.set()
        self._cancel.cancel()
        if resp is not None:
            shut_stream(resp)
        if self._thread is not None:
            # a cancelled reopen and a shut stream end at once; the bound is for a reader stuck elsewhere
            self._thread.join(timeout=max(15.0, 2 * self.api_timeout + 5))
        self._end()  # also when the thread is still stuck: a drain() must not wait on it


def shut_stream(resp: Any) -> None:
    """Wake a thread blocked reading ``resp`` by shutting its connection's raw socket down, or, where that
    socket cannot be found, with HTTPResponse.shutdown() (urllib3 2.3 on). Not shutdown() first: it is
    the SSLSocket's own, which drops the TLS object under the reader (its next read then takes ciphertext
    for plaintext)."""
    sock = getattr(getattr(resp, "connection", None), "sock", None)
    raw = sock if isinstance(sock, socket.socket) else getattr(sock, "socket", None)
    if isinstance(raw, socket.socket):
        try:
            socket.socket.shutdown(raw, socket.SHUT_RDWR)
        except OSError:
            pass
        return
    try:
        resp.shutdown()
    except Exception:  # noqa: BLE001 - missing (urllib3 < 2.3), or released already: nothing to wake
        pass
