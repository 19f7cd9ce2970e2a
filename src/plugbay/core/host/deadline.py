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


def no_time_left(why: str, deadline: float = 0.0, *, sent_before: BaseException | None = None,
                 check: str | None = None) -> CallTimeout:
    """The error of a call whose deadline leaves no time to send it (``why``), raised instead of sending it:
    the error of a call that timed out (DEADLINE_EXCEEDED), with ``sent`` False. ``sent_before``: the last
    error of earlier tries, one of them sent (a retry's): then ``sent`` is True (the plugin may have run
    the call) and the message names that error, which the caller raises this from. ``check``: the advice, when
    the caller knows better than the call's own timeout= (a deadline shared beyond the call)."""
    if sent_before is None:
        what = f"{why}: plugbay failed the call at once and did not send it"
        check = check or "pass a positive timeout= (seconds), or None for the Client's call_timeout"
    else:
        what = (f"{why}: plugbay did not send that try, but an earlier one was sent and may have run on the"
                f" plugin; the last try failed {failure_of(sent_before)}")
        check = check or "that failure is this error's __cause__; to give the call more time, pass a larger timeout="
    return CallTimeout(f"{what}; {check}", None, grpc.StatusCode.DEADLINE_EXCEEDED, sent=sent_before is not None,
                       what=what, check=check, deadline=deadline)


def failure_of(error: BaseException) -> str:
    """How a deadline error names the try's failure before it: its gRPC code and details."""
    code = error.code() if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)) else None
    if not isinstance(code, grpc.StatusCode):
        return f"{type(error).__name__}: {error}"[:300]
    details = getattr(error, "details", None)
    details = details() if callable(details) else str(error)
    return f"{code.name} ({details})"[:300]


def _refuse(value: Any) -> float:
    if type(value) is float and value == 0:  # 0.0 or -0.0 (other reals were judged in call_timeout)
        raise no_time_left("a call's timeout=0 leaves it no time")
    shown = f"{type(value).__name__} {value!r}"[:80]
    raise ConfigError(f"a call's timeout= must be None (the Client's call_timeout), a number of seconds"
                      f" > 0 (0 fails the call at once, unsent), or math.inf for no deadline; got {shown}")
