"""A PluginContainer's handshake line, read from the container's followed stdout log.

The plugin's output is untrusted: a plugin that writes megabytes without a
newline must not grow the host. The log is followed as one stream (not asked
for whole again and again), split by the runners' LineSplitter, and read no
further than its first line; a first line longer than MAX_LINE is refused as
soon as it gets that long, since a handshake line is far shorter.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from plugbay.core.protocol.handshake import HandshakeInfo, parse_handshake_line
from plugbay.core.transport.lines import MAX_LINE, LineSplitter, cap_line, was_cut
from plugbay.errors import (HandshakeTimeoutError, MalformedHandshakeError, PlugbayError, PluginExitedError,
                            RunnerError)
from plugbay.runners.attached import UNKNOWN_EXIT_CODE
from plugbay.runners.docker.engine import engine_call

_STDERR_TAIL = 20  # log entries of stderr quoted when the plugin exits (an entry is at most 16 KiB)
_REOPEN_PAUSE = 0.2  # before following the log again, when the engine ended it while the container runs


class _FirstLine:
    """Follows a container's stdout on a plugbay-* thread until its first line (at most MAX_LINE held)."""

    def __init__(self, api: Any, container_id: str) -> None:
        self.line: str | None = None
        self.too_long: str | None = None  # a first line longer than MAX_LINE, cut there (with its marker)
        self.error: BaseException | None = None  # the log request failed
        self.done = threading.Event()
        self._api, self._id = api, container_id
        self._splitter = LineSplitter(MAX_LINE, handshake_first=True)  # a too long first line: handed on cut
        self._lock = threading.Lock()
        self._stream: Any = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"plugbay-tc-handshake-{container_id[:12]}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            try:
                stream = engine_call(lambda: self._api.logs(self._id, stdout=True, stderr=False, stream=True,
                                                            follow=True), "read the container's log")
            except Exception as exc:  # noqa: BLE001 - reported to the waiting start()
                self.error = exc
                return
            with self._lock:
                if self._closing:  # close() came first: end the request made after it
                    stream.close()
                    return
                self._stream = stream
            for chunk in stream:
                lines = self._splitter.feed(chunk)
                if lines:
                    if was_cut(lines[0]):
                        self.too_long = lines[0]
                    else:
                        self.line = lines[0]
                    return
        except Exception:  # noqa: BLE001 - closed under us, or the engine connection dropped: the stream ended
            pass
        finally:
            self.done.set()

    def close(self) -> None:
        with self._lock:
            self._closing, stream, self._stream = True, self._stream, None
        if stream is None:
            self._thread.join(5.0)
            return
        try:
            stream.close()  # ends the read the thread may be blocked in
        except Exception:  # noqa: BLE001 - a connection already gone
            pass
        self._thread.join(5.0)
        # docker-py's close() shuts the socket but leaves its descriptor to the response's reader, which
        # sits in a reference cycle until the garbage collector runs: close the response now
        response = getattr(stream, "_response", None)
        if response is not None:
            response.close()


def read_handshake(container: Any, image: str, timeout: float) -> HandshakeInfo:
    """The plugin's handshake, from the first line of started ``container``'s stdout (docker-py model)."""
    from docker.errors import NotFound

    deadline = time.monotonic() + timeout
    while True:
        follower = _FirstLine(container.client.api, container.id)
        try:
            if not follower.done.wait(max(0.0, deadline - time.monotonic())):
                raise _no_handshake(image, timeout)
        finally:
            follower.close()
        if follower.line is not None:
            return parse_handshake_line(follower.line)
        if follower.too_long is not None:
            raise MalformedHandshakeError(
                follower.too_long, f"the plugin's first stdout line is longer than {MAX_LINE} bytes, far longer"
                " than a handshake line; check that its entrypoint prints nothing to stdout before the handshake")
        if isinstance(follower.error, NotFound):  # the log request's 404
            raise _removed(image, container.id) from None
        if isinstance(follower.error, PlugbayError):
            raise follower.error
        if follower.error is not None:
            raise RunnerError(
                f"cannot read the output of container {container.id[:12]} ({image}): {follower.error}. plugbay"
                " reads the plugin's handshake line from the container's logs: keep a logging driver the"
                " engine can read back (plugbay sets json-file; check log_config in the container's kwargs)")
        # the log ended with no line: the container stopped, or the engine ended the stream (or went away)
        try:
            engine_call(container.reload, "inspect the container")
            if container.status in ("exited", "dead"):
                code = container.attrs["State"].get("ExitCode")
                err = engine_call(lambda: container.logs(stdout=False, stderr=True, tail=_STDERR_TAIL),
                                  "read the container's log").decode("utf-8", "replace")
                raise PluginExitedError(image, code, [cap_line(line) for line in err.splitlines()[-_STDERR_TAIL:]])
        except NotFound:
            raise _removed(image, container.id) from None
        if time.monotonic() >= deadline:  # an engine that ends every follow at once: done is set each time
            raise _no_handshake(image, timeout)
        time.sleep(_REOPEN_PAUSE)


def _removed(image: str, container_id: str) -> PluginExitedError:
    """A container gone before its handshake line: its plugin exited and the engine removed it (auto_remove)."""
    return PluginExitedError(
        image, UNKNOWN_EXIT_CODE, detail=f"Its container {container_id[:12]} was removed before plugbay could read"
        " its exit code and stderr (auto_remove=True removes it as soon as the plugin exits; or `docker rm` by"
        " someone else). Start it without auto_remove (stop() removes the container anyway) to see why it stopped.")


def _no_handshake(image: str, timeout: float) -> HandshakeTimeoutError:
    return HandshakeTimeoutError(f"plugin image {image!r} printed no handshake line within {timeout:.0f}s;"
                                 " check that its entrypoint serves the plugin (and prints nothing first to stdout),"
                                 " or raise PluginContainer(start_timeout=...) if it is slow to start")
