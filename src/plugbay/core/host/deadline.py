"""A call's ``timeout=``, checked before it reaches grpcio or a resilience layer.

grpcio takes any float: nan, math.inf or 1e300 all overflow its deadline into one already past (the
call fails at once as a timeout, whose advice to pass a larger timeout= then misleads), a huge int
raises OverflowError, a str TypeError. The resilience layers wait on threading primitives, which
refuse waits over threading.TIMEOUT_MAX (about 292 years). A timeout that leaves no time (0, or a deadline
spent before a try could be sent) is never sent: grpcio races a deadline already due against the call,
which then sometimes ran on the plugin (a Put stored) and sometimes failed DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import numbers
from typing import Any

import grpc

from plugbay.core.host.callerrors import CallTimeout
from plugbay.errors import ConfigError

# The longest deadline passed on: about 31.7 years. grpcio's deadline overflows a little past 4e9 s,
# and a wait that long is no deadline in practice, so longer timeouts (math.inf) mean this one.
NO_DEADLINE = 1e9


def call_timeout(value: Any) -> float | None:
    """A call's ``timeout=`` as the channel passes it on: None (the Client's call_timeout), or seconds
    > 0, with math.inf and anything above NO_DEADLINE as NO_DEADLINE (no deadline). 0 raises
    :func:`no_time_left`'s CallTimeout (the call is not sent)."""
    if value is None:
        return None
    if type(value) is float:  # the usual timeout=, without numbers.Real's slower ABC check below
        return min(value, NO_DEADLINE) if value > 0 else _refuse(value)  # nan > 0 is false
    # numbers.Real: grpcio took Fraction and numpy scalars (np.float32 is no float subclass) before
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # a number too big for a float: no deadline, as math.inf
            return NO_DEADLINE if value > 0 else _refuse(value)  # type: ignore[operator]
        except (TypeError, ValueError):
            return _refuse(value)
        if seconds > 0:  # false for nan
            return min(seconds, NO_DEADLINE)
        if seconds == 0:
            raise no_time_left("a call's timeout=0 leaves it no time")
    return _refuse(value)


def no_time_left(why: str, deadline: float = 0.0) -> CallTimeout:
    """The error of a call whose deadline leaves no time to send it (``why``), raised instead of sending it:
    the error of a call that timed out (DEADLINE_EXCEEDED), with ``sent`` False."""
    what = f"{why}: plugbay failed the call at once and did not send it"
    check = "pass a positive timeout= (seconds), or None for the Client's call_timeout"
    return CallTimeout(f"{what}; {check}", None, grpc.StatusCode.DEADLINE_EXCEEDED, sent=False, what=what,
                       check=check, deadline=deadline)


def _refuse(value: Any) -> float:
    if type(value) is float and value == 0:  # 0.0 or -0.0 (other reals were judged in call_timeout)
        raise no_time_left("a call's timeout=0 leaves it no time")
    shown = f"{type(value).__name__} {value!r}"[:80]
    raise ConfigError(f"a call's timeout= must be None (the Client's call_timeout), a number of seconds"
                      f" >= 0, or math.inf for no deadline; got {shown}")
