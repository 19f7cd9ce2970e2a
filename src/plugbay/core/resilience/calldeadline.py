"""One deadline for a brokered call through a Supervisor, shared by every step of it.

A brokered call is several steps through the Supervisor: its broker's next_id() and
accept_and_serve() (a dial() too, for an id the plugin serves), then the call itself.
A step that finds the plugin restarting waits for its successor, each within its own
call_timeout, so a call whose plugin died before each step could take two or three
times call_timeout in all. Entered around the call,

    with sup.deadline(10) as scope:        # sup.deadline(): the config's call_timeout
        counter.put("n", 1, adder)

every step takes what is left of one deadline in place of its call_timeout (a call's own
timeout= holds when it ends sooner), and the step that runs out raises its
usual timeout error (BrokerTimeoutError for a broker step, CallTimeoutError for the
call) saying which step it was, what the steps before it took and what to do
(``scope.ran_out_in`` names it too). Nothing guesses which steps belong together: only
code inside the ``with`` shares the deadline, and outside one every step keeps its own
call_timeout as before. A stream opened inside on the Supervisor's channel gets what is left of
the deadline as its own, as a unary call does (stream_timeout); it is not held for a restart.

The scope is a contextvars value, so it follows the code into asyncio tasks made inside
the ``with`` and into asyncio.to_thread() (both copy the context). A thread of your own,
or an executor's (loop.run_in_executor), starts without it: run the work there with
``scope.run(func, *args)`` (a plain function, or one returning an asyncio Task, which carries
the deadline: a coroutine's work would run after run() returned). Only the Supervisor that
made the scope reads it, and a scope serves one ``with``.

Under a RetryPolicy, a try this deadline ended is not retried (a retry would get no time): the
call raises that try's error, or, when an earlier try was sent, one saying so (``sent`` True). A backoff
between tries that would end past the deadline is not slept: the call gives up with the last try's error
(scoped_hook shows the policy the deadline, calls.take_scope_end()).
A call given no timeout= under a RetryPolicy without per_attempt_timeout has all of the deadline
for its first try, so a hung plugin spends it there: set per_attempt_timeout to leave time for retries.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar

import grpc

from plugbay.core.host.callerrors import CallTimeout
from plugbay.core.host.deadline import NO_DEADLINE
from plugbay.core.resilience.calls import SCOPE_END, wait_timeout
from plugbay.core.resilience.retry import RetryPolicy
from plugbay.errors import ClientStateError, ConfigError

_T = TypeVar("_T")
# innermost last; a tuple, so that a context copied into a task or thread never sees this one's later changes
_ACTIVE: contextvars.ContextVar[tuple[CallDeadline, ...]] = contextvars.ContextVar("plugbay_call_deadline",
                                                                                    default=())


class CallDeadline:
    """One deadline shared by the steps of a call through a Supervisor. See the module docstring."""

    def __init__(self, owner: object, name: str, kind: str, seconds: Any, call_timeout: float | None) -> None:
        what = f"{kind}.deadline()"
        if seconds is None:
            seconds = math.inf if call_timeout is None else call_timeout
        seconds = wait_timeout(seconds, what)
        if seconds <= 0:
            raise ConfigError(f"{what}: seconds must be > 0 (None: the config's call_timeout; math.inf: no"
                              f" deadline), got {seconds!r}")
        self._owner = owner
        self._name, self._kind = name, kind
        self.seconds = seconds
        self.deadline: float | None = None  # time.monotonic(); set when first entered (or run)
        self.ran_out_in: str | None = None  # the step that found no time left
        self._steps: list[tuple[str, float]] = []  # each step done: what, the seconds it took
        self._lock = threading.Lock()
        self._token: contextvars.Token[tuple[CallDeadline, ...]] | None = None
        self._exited = False  # its with ended: its clock ran on, so entering it again would start spent
        self._restart_waited = False  # a step waited for the plugin's restart (only then do restarts explain it)

    # --- the user's side ----------------------------------------------------------

    def __enter__(self) -> Self:
        if self._token is not None:
            raise ClientStateError(f"this {self._kind}.deadline() is entered already; to share it with a thread,"
                                   " run the work there with scope.run(func, *args)")
        if self._exited:
            raise ClientStateError(f"this {self._kind}.deadline() was used by a with that has ended, and its"
                                   f" deadline ran on meanwhile: make a new {self._kind}.deadline() for each with")
        self._token = _ACTIVE.set(self._joined())
        return self

    def __exit__(self, *exc: object) -> None:
        token, self._token = self._token, None
        self._exited = True
        if token is not None:
            _ACTIVE.reset(token)

    def run(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``func(*args, **kwargs)`` with this deadline in effect, on any thread (one of yours, an executor's).
        Not for a coroutine function, nor a function returning another awaitable than an asyncio Task: the
        deadline ends with run(), before that work runs (a Future returned is cancelled, but an executor's job
        may already be running: its work is not undone). A Task made inside run() (loop.create_task) copied the
        context, the deadline with it, and is returned; a Task made before run() carries no deadline."""
        if inspect.iscoroutinefunction(func):
            raise self._not_async(func)
        token = _ACTIVE.set(self._joined())
        try:
            result = func(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)
        if isinstance(result, asyncio.Task):
            return result  # made inside run(): it copied the context, the deadline with it
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited: no "was never awaited" warning for it
            elif isinstance(result, asyncio.Future):
                result.cancel()  # run_in_executor's: its work does not carry the deadline
            raise self._not_async(func)
        return result

    def _not_async(self, func: Callable[..., Any]) -> ConfigError:
        return ConfigError(f"scope.run() of {self._kind}.deadline() got {getattr(func, '__name__', func)!r}, whose"
                           " result is awaitable: its work runs after run() returned, outside the deadline (an"
                           " executor's job may already be running: check before doing it again)."
                           " Create the task (or await the coroutine) inside the `with` instead: asyncio tasks made"
                           " there carry the deadline")

    @property
    def steps(self) -> list[tuple[str, float]]:
        """The steps done so far within this deadline: (what, seconds it took), oldest first."""
        with self._lock:
            return list(self._steps)

    # --- the steps' side ----------------------------------------------------------

    def left(self) -> float | None:
        """Seconds left (0 or less: none); None: no deadline."""
        deadline = self.deadline
        return None if deadline is None else deadline - time.monotonic()

    def took(self, what: str, since: float) -> None:
        """Step ``what``, begun at ``since`` (time.monotonic()), is over."""
        with self._lock:
            self._steps.append((what, time.monotonic() - since))

    def waited_for_restart(self) -> None:
        """A step found the plugin not running and waited for its restart: the advice then names restarts."""
        self._restart_waited = True

    def ran_out(self, what: str, since: float) -> str:
        """The message of step ``what`` (begun at ``since``) finding no time left; marks it as the one."""
        said, advice = self._ran_out(what, since)
        return f"{said}. {advice}"

    def _ran_out(self, what: str, since: float) -> tuple[str, str]:
        """ran_out()'s account and its advice, apart: a call's timeout puts its own account between them."""
        self.ran_out_in = what
        done = "; ".join(f"{step} {seconds:.1f}s" for step, seconds in self.steps)
        before = f" after the steps before it took their share ({done})" if done else ""
        said = (f"the deadline of {self.seconds:g}s shared by this call's steps ({self._kind}.deadline()) of plugin"
                f" {self._name!r} ran out during the step '{what}', {time.monotonic() - since:.1f}s into it{before}")
        if self._restart_waited:
            check = (f"check the plugin's logs and the {self._kind}'s events for why it was restarting (a step"
                     " waited for its restart)")
        else:
            check = "check the plugin's logs if it is stuck"
        return said, f"Pass a larger {self._kind}.deadline(seconds), or {check}"

    def _joined(self) -> tuple[CallDeadline, ...]:
        """The active scopes with this one innermost, its clock started; inside another of the same owner,
        never later than that one's deadline."""
        active = _ACTIVE.get()
        with self._lock:
            if self.deadline is None:
                deadline = None if math.isinf(self.seconds) else time.monotonic() + self.seconds
                outer = scope_of(self._owner)
                if outer is not None and outer.deadline is not None:
                    deadline = outer.deadline if deadline is None else min(deadline, outer.deadline)
                self.deadline = deadline
        return (*active, self)


def stream_timeout(owner: object, method: str, timeout: float | None) -> float | None:
    """The timeout a new stream of ``method`` opens with through ``owner``'s channel (``timeout``: the caller's,
    None: none given) inside a scope ``owner`` made: what is left of the scope, or the caller's own timeout=
    when that ends sooner, as a unary call's (a scope of no deadline: none). Outside one, ``timeout``. With no
    time left the stream is not opened: the scope's CallTimeout, as for a unary call. A stream is one step:
    it is not held for a restart (its reads are the caller's), so its time is not listed among the steps."""
    start = time.monotonic()
    shared = SharedDeadline.of(owner, method, start, timeout)
    if shared is None:
        return timeout
    deadline = shared.cut(None if timeout is None else start + timeout)
    if deadline is None:
        return NO_DEADLINE
    left = deadline - time.monotonic()
    if left <= 0:  # only the scope's can be spent: a timeout= of the caller's is > 0 (checked before)
        raise shared.no_time_left()
    return ScopedTimeout(left, shared)


class ScopedTimeout(float):
    """A stream's timeout that a deadline() scope set: the stream's translated CallTimeout is said as the scope's
    running out (plugbay.core.host.translating.timed asks ``scope_timed_out``), as a unary call's is: its own
    advice, a larger timeout= or call_timeout, is not what would help inside the scope."""

    scope_timed_out: Callable[[CallTimeout], None]

    def __new__(cls, seconds: float, shared: SharedDeadline) -> ScopedTimeout:
        made = super().__new__(cls, seconds)
        made.scope_timed_out = shared.timed_out
        return made


def scoped_hook(owner: object, retry: object, hook: Callable[[str, Any, float | None], Any]
                ) -> Callable[[str, Any, float | None], Any]:
    """``owner``'s call hook (its RetryPolicy first, then its breaker and ReadyGate) with the end of the scope
    ``owner`` made that is in effect here shown to that policy (calls.take_scope_end(), which its call takes
    before any code of the user's runs): the ReadyGate cuts each try to the scope, but the policy's backoff
    between tries is its own, and was slept past it. ``hook`` itself unless ``retry``, its outermost layer, is a
    RetryPolicy: a layer of the user's own would not take the end, leaving it for every call the layer makes."""
    if not isinstance(retry, RetryPolicy):
        return hook

    def run(method: str, attempt: Any, timeout: float | None) -> Any:
        token = SCOPE_END.set(_end_of(owner))
        try:
            return hook(method, attempt, timeout)
        finally:
            SCOPE_END.reset(token)
    return run


def scoped_hook_async(owner: object, retry: object, hook: Callable[[str, Any, float | None], Awaitable[Any]]
                      ) -> Callable[[str, Any, float | None], Awaitable[Any]]:
    """scoped_hook() for an AsyncSupervisor's hook (the value is set and reset in the calling task's context)."""
    if not isinstance(retry, RetryPolicy):
        return hook

    async def run(method: str, attempt: Any, timeout: float | None) -> Any:
        token = SCOPE_END.set(_end_of(owner))
        try:
            return await hook(method, attempt, timeout)
        finally:
            SCOPE_END.reset(token)
    return run


def _end_of(owner: object) -> float | None:
    scope = scope_of(owner)
    return None if scope is None else scope.deadline


def scope_of(owner: object) -> CallDeadline | None:
    """The innermost CallDeadline ``owner`` (a Supervisor) made that is in effect here; None: none."""
    for scope in reversed(_ACTIVE.get()):
        if scope._owner is owner:
            return scope
    return None


class SharedDeadline:
    """The ReadyGate's view of a CallDeadline for one call (``method``, begun at ``start``)."""

    def __init__(self, scope: CallDeadline, step: str, start: float, own: bool) -> None:
        self._scope = scope
        self._step = step
        self._start = start
        self._own = own  # the caller gave a timeout= (a RetryPolicy's try too)
        self._binding = False  # the scope's deadline is the call's nearest

    @classmethod
    def of(cls, owner: object, method: str, start: float, timeout: float | None) -> SharedDeadline | None:
        """The scope ``owner`` made in effect here for a call given ``timeout`` (None: none); None: no scope."""
        scope = scope_of(owner)
        return None if scope is None else cls(scope, f"call {method}", start, timeout is not None)

    def cut(self, deadline: float | None) -> float | None:
        """The call's deadline (time.monotonic(); None: none): the scope's, or the call's own timeout= when that
        ends sooner. ``deadline`` comes from call_timeout when the caller gave no timeout=: the scope replaces
        it, a longer one too, as it does the broker steps' call_timeout (else the call alone would run out at
        call_timeout inside a longer deadline)."""
        shared = self._scope.deadline
        if not self._own:
            self._binding = shared is not None
            return shared
        if shared is None:
            return deadline
        self._binding = deadline is None or shared <= deadline
        return shared if self._binding else deadline

    def binds(self) -> bool:
        """Whether the call's time runs out with the scope's (else at the call's own timeout=, sooner)."""
        return self._binding

    def no_time_left(self) -> CallTimeout:
        """The error of a call the scope's deadline left no time to send (it waited for a restart)."""
        what = self._scope.ran_out(self._step, self._start)
        # no what=: a RetryPolicy rewords a timeout that has one as its own, and the scope's words are the ones
        error = CallTimeout(f"{what}; the call was not sent", None, grpc.StatusCode.DEADLINE_EXCEEDED, sent=False,
                            deadline=self._scope.seconds)
        error.shared_spent = what
        return error

    def timed_out(self, exc: CallTimeout) -> None:
        """``exc``, the call's own timeout, said as the scope's deadline running out when that is what it was:
        the call's account kept, its advice (a larger timeout=, call_timeout) replaced by the scope's, as
        inside the scope timeout= only shortens the deadline and the scope stands in for call_timeout."""
        if self._binding:
            said, advice = self._scope._ran_out(self._step, self._start)
            exc.reword(f"{said} (the call: {exc.what or exc.message}). {advice}")
            exc.what = ""  # as in no_time_left()
            exc.shared_spent = f"{said}. {advice}"

    def waited_for_restart(self) -> None:
        self._scope.waited_for_restart()

    def done(self) -> None:
        if self._scope.ran_out_in != self._step:
            self._scope.took(self._step, self._start)
