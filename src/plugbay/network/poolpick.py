"""The endpoint pool's wait for an endpoint (EndpointPool.pick), kept apart from plugbay.network.pool, and a
wait its caller may end at once: a sync stream's cancel() ends the pick of its resend (plugbay.network.poolstream),
and a sync future's cancel() its pick (plugbay.network.poolfuture), as a grpc.aio stream's cancel() ends its
(plugbay.network.aiopoolstream)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plugbay.network.channelbase import Member
    from plugbay.network.unsent import Tried


def _never() -> bool:
    return False


class PoolPick:
    """The picks of an EndpointPool (which sets ``_cond`` and answers try_pick()). A pick waits on the pool's
    condition, notified by every change that may give it an endpoint (discovery, health, a call's end), so an
    endpoint back is taken at once; the 0.1 s bound on each wait catches what time alone changes (an ejection's
    end, the deadline)."""

    _cond: threading.Condition

    if TYPE_CHECKING:  # EndpointPool's
        def try_pick(self, deadline: float, exclude: Tried, pin: str | None = None) -> Member | None: ...

    def pick(self, deadline: float, exclude: Tried, pin: str | None = None) -> Member:
        """An endpoint for one call; waits until ``deadline`` for one, else NoEndpointsError."""
        member = self.pick_unless(_never, deadline, exclude, pin)
        assert member is not None  # nothing stops the wait but an endpoint, or the errors of try_pick()
        return member

    def pick_unless(self, stopped: Callable[[], bool], deadline: float, exclude: Tried,
                    pin: str | None = None) -> Member | None:
        """pick(), given up (None, nothing picked) once ``stopped()`` says so: asked under the pool's condition
        before each try, so whoever makes it true and then calls wake() ends the wait at once. ``stopped`` takes
        no lock (it runs under the pool's)."""
        with self._cond:
            while not stopped():
                member = self.try_pick(deadline, exclude, pin)
                if member is not None:
                    return member
                self._cond.wait(min(deadline - time.monotonic(), 0.1))
        return None

    def wake(self) -> None:
        """The picks waiting now ask their ``stopped()`` again (see pick_unless)."""
        with self._cond:
            self._cond.notify_all()
