"""The multiplexed connection's keepalive: hashicorp/yamux's, driven by its owner's poll.

A peer that vanished without a FIN or RST (a partition that outlasts TCP's
patience, a host that lost power, a NAT that forgot the flow) leaves a yamux
session that looks open: calls written into it wait for their deadlines, and
a writer blocked on a full socket waits for the write timeout. So a session that has been
quiet for ``interval`` is pinged, and one from which nothing at all arrives
within ``timeout`` of that ping is aborted: its streams end, writers blocked on
it are released, and the next stream dials a new connection. Any frame counts
as a sign of life, so a busy session is never pinged.

go's yamux pings every 30 s and gives up after its 10 s write timeout; these
are the defaults here too. An optional third figure is the session's write
timeout itself (go's ConnectionWriteTimeout, 10 s by default: see
plugbay.core.transport.ywrite): a frame that cannot be written for that long
ends the session, also with the keepalive off. Both ends keep the keepalive:
a host drops a plugin that went silent (plugbay.core.transport.muxhost), and a
network plugin drops a host that did, freeing that host's plugin instance
(plugbay.core.plugin.netmux).
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

from plugbay.core.protocol.checks import finite_float
from plugbay.errors import ConfigError

log = logging.getLogger("plugbay.mux")

INTERVAL = 30.0
TIMEOUT = 10.0
DEFAULT = (INTERVAL, TIMEOUT)  # what every config's keepalive figures default to (the write timeout: 10 s)
WRITE_TIMEOUT = 10.0  # a session's, unless its owner's settings say otherwise (go's ConnectionWriteTimeout)
GRACE = 0.2  # past the timeout, the reader gets this long (at least one poll) to count an answer


def _seconds(figure: object) -> bool:
    """Whether ``figure`` is an int or float > 0 that fits a float: finite, or math.inf (which turns its
    wait off; an int larger than any float does not fit: float() raises OverflowError)."""
    seconds = finite_float(figure, types=(int, float))
    return seconds > 0 if seconds is not None else isinstance(figure, float) and figure == math.inf


class Pingable(Protocol):
    """What the keepalive needs of a session (plugbay.core.transport.yamux.Session)."""

    @property
    def closed(self) -> bool: ...

    @property
    def heard(self) -> int: ...

    def ping_nowait(self) -> None: ...

    def abort(self, reason: str, join: bool = True) -> None: ...


class Keepalive:
    """Watches one session at a time; ``tick`` is called by a loop that polls anyway (never blocks
    longer than an abort)."""

    def __init__(self, interval: float = INTERVAL, timeout: float = TIMEOUT, what: str = "mux_keepalive", *,
                 write_timeout: float = WRITE_TIMEOUT) -> None:
        figures = (interval, timeout, write_timeout)
        if not all(_seconds(x) for x in figures):
            raise ConfigError(f"{what} ({interval!r:.40}, {timeout!r:.40}, {write_timeout!r:.40}): every figure"
                              " must be a number > 0 that fits a float (seconds: the quiet time before a ping, the"
                              " wait for anything to arrive after it, and, optional, the connection's write"
                              " timeout; math.inf as the first turns the keepalive off, as the third the write"
                              " timeout)")
        self.interval, self.timeout = float(interval), float(timeout)
        # a frame that cannot be written for this long ends the session (the owner gives it to its
        # sessions: plugbay.core.transport.ywrite)
        self.write_timeout = float(write_timeout)
        self._session: Pingable | None = None
        self._heard = 0
        self._since = 0.0  # when the last frame was seen to arrive (at a tick's resolution)
        self._pinged: float | None = None  # when the outstanding ping went out
        self._overdue: float | None = None  # when a tick first found the timeout passed

    @classmethod
    def of(cls, figures: object, what: str) -> Keepalive:
        """A Keepalive from a config's ``(INTERVAL, TIMEOUT[, WRITE_TIMEOUT])``; ConfigError naming
        ``what`` otherwise."""
        if not isinstance(figures, (tuple, list)) or len(figures) not in (2, 3):
            raise ConfigError(f"{what} must be (INTERVAL, TIMEOUT) or (INTERVAL, TIMEOUT, WRITE_TIMEOUT) in"
                              f" seconds, for example (30.0, 10.0) or (30.0, 10.0, 10.0); got {figures!r}")
        write_timeout = figures[2] if len(figures) == 3 else WRITE_TIMEOUT
        return cls(figures[0], figures[1], what, write_timeout=write_timeout)

    def tick(self, session: Pingable | None, now: float) -> None:
        if session is None or session.closed:
            return
        heard = session.heard
        if session is not self._session or heard != self._heard:
            self._session, self._heard, self._since, self._pinged = session, heard, now, None
            self._overdue = None
            return
        if self._pinged is None:
            if now - self._since >= self.interval:
                session.ping_nowait()
                self._pinged = now
            return
        if now - self._pinged >= self.timeout:
            if self._overdue is None or now - self._overdue < GRACE:
                # a while longer first: after a stall of this whole process (a paused VM, a long
                # GIL hold) the answer may be read already but not counted yet by the reader
                if self._overdue is None:
                    self._overdue = now
                return
            reason = (f"keepalive: nothing arrived from the peer for {now - self._since:.1f} s, not even the"
                      f" answer to a ping sent {now - self._pinged:.1f} s ago; the connection is taken as gone")
            log.warning("multiplexed connection: %s", reason)
            session.abort(reason, join=False)  # its reader closes the socket; the caller's loop goes on
