"""The plugin's stderr: hclog JSON lines become Python logging records.

go-plugin plugins log with hclog; under a go-plugin host they write one JSON
object per line to stderr (``@level``, ``@message``, ``@module``,
``@timestamp`` and key/value pairs). The pump turns each into a record at the
matching level on the logger ``plugbay.plugin.<name>``, with the hclog facts
in ``extra`` (``plugin_module``, ``plugin_fields``, ``plugin_timestamp``).
Other lines (a print, a panic) go to ``raw_sink`` if given (as read), else to the
logger: as in go-plugin, a ``[LEVEL]`` prefix picks the level, and a Go panic
(from its ``panic: `` or ``fatal error: `` line on) is an error (go-plugin 1.8;
1.0.1 logs it at DEBUG), and so is a Python traceback (its first line through its exception's). Everything
else is INFO, where go-plugin logs it at
DEBUG: a plugin's plain prints are what a Python host's user wants to see at
INFO, and Python's logging shows neither level unless configured to. The last lines are kept for
error messages (a plugin that dies before its handshake), which show a Go crash's ``panic: `` or
``fatal error: `` line first when its goroutine dump pushed it out of them. Plugin text is untrusted: control
characters in what reaches a record's message or the tail are escaped
(plugbay.errors.printable), so a line cannot forge a record or drive a terminal;
the line as read is in ``extra`` as ``plugin_raw``. A line longer than
plugbay.core.transport.lines.MAX_LINE (64 KiB) is cut with a ``…[truncated N bytes]`` marker.

A plugin may log a line per call (the Go KV example does): a line below the
logger's level is dropped after a look at the level it opens with, without
decoding it, and the tail formats its lines only when asked.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from collections.abc import Callable

from plugbay.core.transport.lines import cap_line

from plugbay.core.protocol.hclog import PREFIXES, hclog_entry, hclog_level_hint, hclog_record, shown_line
from plugbay.errors import printable

# A Go crash's first line: what went wrong. The goroutine dump after it says only where, and the
# last lines an error message shows were its end. One further back than this is no crash's (a crash
# ends the plugin), only a line that began so.
CRASH_STARTS = ("panic: ", "fatal error: ")
CRASH_REACH = 1000
# A Python traceback (an exception that ended the plugin before serve() took its stderr, or printed by it): its
# frames are indented, and its first unindented line after them is the exception itself, where it ends. The
# lines that join chained exceptions keep it going.
TRACEBACK_START = "Traceback (most recent call last):"
# an ExceptionGroup's (asyncio's TaskGroup) first line is indented ("  + Exception Group Traceback ..."), and a
# SyntaxError in the plugin's own script prints no "Traceback" line: its first is '  File "x.py", line 3' (a
# frame's line ends ", in <function>")
_GROUP_START = "Exception Group Traceback (most recent call last):"
_SYNTAX_ERROR_START = re.compile(r'  File ".*", line \d+$')
_TRACEBACK_LINKS = ("During handling of the above exception, another exception occurred:",
                    "The above exception was the direct cause of the following exception:")


def plugin_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"plugbay.plugin.{name}")


class LogPump:
    """Logs each line of a plugin's streams, pushed by the runner's output follower (opened/handle/closed)."""

    def __init__(self, name: str, logger: logging.Logger | None = None,
                 raw_sink: Callable[[str], None] | None = None, tail: int = 50) -> None:
        self.name = name
        self.logger = logger or plugin_logger(name)
        self.raw_sink = raw_sink
        self._tail: collections.deque[str] = collections.deque(maxlen=tail)
        self._in_panic = False
        self._in_traceback = False  # within a Python traceback's lines, up to its exception's
        self._stderr_lines = 0
        self._crash: tuple[int, str] | None = None  # the last crash line, after how many stderr lines
        self._cond = threading.Condition()
        self._open = 0  # pushed streams not ended yet (opened() minus closed())

    def opened(self) -> None:
        """A stream whose lines will be pushed to handle(); join() waits for its closed()."""
        with self._cond:
            self._open += 1

    def closed(self) -> None:
        with self._cond:
            self._open -= 1
            self._cond.notify_all()

    def tail(self) -> list[str]:
        """The last stderr lines, hclog entries shown as "[LEVEL] message k=v"."""
        return [shown_line(line) for line in list(self._tail)]

    def last(self, n: int) -> list[str]:
        """The last ``n`` lines of tail(), after a Go crash's ``panic: ``/``fatal error: `` line and a
        ``…`` when that line is further back: an error message shows what crashed, not only where."""
        lines = self.tail()[-n:]
        crash, count = self._crash, self._stderr_lines
        if crash is not None and n <= count - crash[0] < CRASH_REACH:
            lines = [shown_line(crash[1]), "…", *lines]
        return lines

    def join(self, timeout: float = 5.0) -> bool:
        """Wait for every pumped stream to end; False if one is still open."""
        with self._cond:
            return self._cond.wait_for(lambda: self._open <= 0, timeout)

    def handle(self, line: str, stream: str = "stderr") -> None:
        line = cap_line(line)  # a Runner of another library may not bound its lines
        if stream == "stderr":
            self._stderr_lines += 1
            if line.startswith(CRASH_STARTS):
                self._crash = (self._stderr_lines, line)
        hint = hclog_level_hint(line)
        if hint is not None and not self.logger.isEnabledFor(hint):  # e.g. a Go plugin's debug line per call
            if stream == "stderr":
                self._tail.append(line)
            return
        found = hclog_entry(line)
        if found is not None:
            level, entry = found
            if stream == "stderr":
                self._tail.append(line)  # formatted by tail(): most lines are never shown
            if self.logger.isEnabledFor(level):  # a plugin may log a line per call: skip what is dropped
                message, extra = hclog_record(entry)
                self.logger.log(level, "%s", message, extra={"plugin_name": self.name, "plugin_stream": stream,
                                                             "plugin_raw": line, **extra})
            return
        if stream == "stderr":
            self._tail.append(line)
        if self.raw_sink is not None:
            self.raw_sink(line)
            return
        level = logging.INFO
        for prefix, prefix_level in PREFIXES:
            if line.startswith(prefix):
                level = prefix_level
                break
        else:
            if line.startswith(("panic: ", "fatal error: ")):
                self._in_panic = True
            if self._in_panic or self._traceback_line(line):
                level = logging.ERROR
        base = {"plugin_name": self.name, "plugin_stream": stream}
        self.logger.log(level, "%s", printable(line), extra={**base, "plugin_module": "", "plugin_fields": {},
                                                             "plugin_timestamp": "", "plugin_raw": line})

    def _traceback_line(self, line: str) -> bool:
        """Whether ``line`` belongs to a Python traceback (an ERROR, as a Go panic is): from its first line
        through the exception's, with the blank and linking lines of chained exceptions."""
        if (line.startswith(TRACEBACK_START) or line.strip() in _TRACEBACK_LINKS
                or line.lstrip(" +").startswith(_GROUP_START)
                or (not self._in_traceback and _SYNTAX_ERROR_START.match(line) is not None)):
            self._in_traceback = True
            return True
        if not self._in_traceback:
            return False
        if line[:1] in ("", " ", "\t"):  # a frame, its source line, a caret line, a blank line between links
            return True
        self._in_traceback = False  # the exception: "ValueError: ...", the traceback's last line
        return True

