"""Retrying unary calls: attempts, backoff with jitter, per-attempt and overall deadlines.

A :class:`RetryPolicy` is a call hook (see ``ManagedChannel.call_hook``): it
runs each unary-unary call on the Client's channel as one or more attempts.
Only calls that are safe to repeat are retried: methods on the policy's
allowlist (``methods``, fnmatch patterns over "/package.Service/Method" or the
bare method name), calls made inside ``with idempotent():``, or every call when
``all_idempotent=True``. Other calls run once, still bounded by the deadline.

    policy = RetryPolicy(max_attempts=4, per_attempt_timeout=2.0, methods=["/proto.KV/Get"])
    install(client, retry=policy, breaker=CircuitBreaker())
    kv = client.dispense("kv_grpc")   # every stub on the Client's channel now retries Get

The last error is raised unchanged (CallTimeoutError, PluginDiedError, the
grpc.RpcError ...) with a note saying how many attempts were made. The same
policy serves an AsyncClient (``run_async``: its sleeps are the event loop's).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fnmatch
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from plugbay.core.host.callerrors import CallTimeout
from plugbay.core.host.deadline import NO_DEADLINE, no_time_left
from plugbay.core.resilience.calls import (AsyncAttempt, Attempt, backoff_delay, checked_backoff, number_problem,
                                          seconds_problem, take_scope_end, status_codes_problem, status_of)
from plugbay.errors import (BrokerTLSError, CircuitOpenError, ClientStateError, ConfigError, NoEndpointsError,
                            PinnedEndpointGoneError, PluginDiedError, RemoteProtocolError, RemoteTLSError)

# A context variable, not a thread-local: each thread and each asyncio task has its own.
_marked: contextvars.ContextVar[int] = contextvars.ContextVar("plugbay_idempotent", default=0)
_log = logging.getLogger("plugbay.retry")


@contextlib.contextmanager
def idempotent() -> Iterator[None]:
    """Mark the unary calls made inside the block, by this thread or asyncio task, as safe to retry."""
    token = _marked.set(_marked.get() + 1)
    try:
        yield
    finally:
        _marked.reset(token)


def _is_marked() -> bool:
    return _marked.get() > 0


DEFAULT_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often to repeat a failed unary call.

    max_attempts          total tries, the first one included (1 = no retry)
    initial_backoff       sleep before the 2nd try; x ``multiplier`` each time, capped at max_backoff
    jitter                each sleep is drawn from [(1-jitter)*b, b], so callers do not retry in step
    per_attempt_timeout   deadline of one try (None or math.inf: the whole remaining deadline)
    overall_timeout       deadline of the call with all its retries when the call passes no
                          timeout= (a call's own timeout= is its overall deadline). None or math.inf:
                          no overall deadline; each try still has one (per_attempt_timeout, else
                          ClientConfig.call_timeout)
    retry_on              gRPC status codes worth another try
    methods               allowlist of methods that are safe to repeat (fnmatch patterns)
    all_idempotent        treat every unary call as safe to repeat
    on_retry              on_retry(method, attempt, error, sleep), called before each sleep (if it
                          raises, that is logged and the retry goes on)
    rng                   the random.Random the jitter is drawn from, for reproducible jitter in tests
                          (None: one of the policy's own)

    Frozen, as RestartPolicy is: the settings are checked once, here, so a change afterwards
    (FrozenInstanceError) cannot slip a bad one past the check; ``dataclasses.replace()`` makes
    a checked copy with other settings.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5
    per_attempt_timeout: float | None = None
    overall_timeout: float | None = None
    retry_on: frozenset[grpc.StatusCode] = DEFAULT_RETRY_CODES
    methods: Sequence[str] = ()
    all_idempotent: bool = False
    on_retry: Callable[[str, int, BaseException, float], None] | None = None
    rng: random.Random | None = field(default=None, repr=False, compare=False)
    _own_rng: random.Random = field(default_factory=random.Random, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.retry_on, Iterable) and not isinstance(self.retry_on, (str, bytes)):
            try:
                self._set("retry_on", frozenset(self.retry_on))  # once: a generator is read here, not checked empty
            except TypeError:  # unhashable members: status_codes_problem below names them
                self._set("retry_on", list(self.retry_on))
        for name in ("per_attempt_timeout", "overall_timeout"):
            value = getattr(self, name)
            # math.inf (or past NO_DEADLINE) is None, as the docs say: no deadline of its own, so each
            # try keeps the Client's call_timeout (not one of 1e9 s)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= NO_DEADLINE:
                self._set(name, None)
        problems = [p for p in (
            number_problem(self.max_attempts, "max_attempts", 1, whole=True),
            seconds_problem(self.initial_backoff, "initial_backoff", above=False),
            seconds_problem(self.max_backoff, "max_backoff", above=False),
            number_problem(self.multiplier, "multiplier", 1, finite=True),
            number_problem(self.jitter, "jitter", 0, maximum=1),
            *(number_problem(getattr(self, name), f"{name} (or None)", 0, above=True)
              for name in ("per_attempt_timeout", "overall_timeout") if getattr(self, name) is not None),
            status_codes_problem(self.retry_on, "retry_on"),
        ) if p is not None]
        if isinstance(self.methods, Iterator):
            self._set("methods", tuple(self.methods))  # once: a generator would be used up by the check below
        if isinstance(self.methods, (str, bytes)) or not isinstance(self.methods, Iterable) \
                or not all(isinstance(m, str) for m in self.methods):
            problems.append(f"methods must be a list of method names or patterns, such as ['Get', '/proto.KV/*']"
                            f" (got {self.methods!r})")
        if not isinstance(self.all_idempotent, bool):
            problems.append(f"all_idempotent must be True or False (got {self.all_idempotent!r})")
        if self.rng is not None and not isinstance(self.rng, random.Random):
            problems.append(f"rng must be a random.Random, such as random.Random(7) for reproducible jitter, or"
                            f" None (got {self.rng!r})")
        if self.on_retry is not None and not callable(self.on_retry):
            problems.append("on_retry must be a callable(method, attempt, error, sleep) or None")
        if problems:
            raise ConfigError("invalid RetryPolicy: " + "; ".join(problems))
        self._set("retry_on", frozenset(self.retry_on))

    def _set(self, name: str, value: Any) -> None:
        """Set a field while __post_init__ settles it (the dataclass is frozen after)."""
        object.__setattr__(self, name, value)

    def is_idempotent(self, method: str) -> bool:
        if self.all_idempotent or _is_marked():
            return True
        short = method.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(method, p) or fnmatch.fnmatchcase(short, p) for p in self.methods)

    def backoff(self, retry: int) -> float:
        """The sleep before retry number ``retry`` (1 = the second attempt)."""
        return backoff_delay(self.initial_backoff, self.multiplier, self.max_backoff, self.jitter, retry,
                             (self._own_rng if self.rng is None else self.rng).random)

    def retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, ClientStateError) and getattr(exc, "original", None) is None:
            return False  # the Client was killed: nothing will answer (an in-flight failure goes by its code)
        if isinstance(exc, PluginDiedError) and getattr(exc, "sent", True) is False:
            return False  # refused on a plugin already gone: a retry meets the same (a Supervisor resends it)
        if isinstance(exc, CircuitOpenError):
            return False  # an open breaker ends the retries at once (it is also an UNAVAILABLE RpcError)
        if isinstance(exc, PinnedEndpointGoneError):
            return False  # what plugbay knows keeps the stub from its replica (pinkey): a retry soon meets the same
        if isinstance(exc, (RemoteTLSError, BrokerTLSError, RemoteProtocolError)):
            # a certificate the peer or this host refused, an endpoint that is no plugin: each retry meets the
            # same (UNAVAILABLE too)
            return False
        if isinstance(exc, CallTimeout) and exc.shared_spent:
            return False  # a Supervisor's deadline() the call's steps share ran out: a retry would get no time
        return status_of(exc) in self.retry_on

    def run(self, method: str, attempt: Attempt, timeout: float | None) -> Any:
        call = self._plan(method, timeout)
        n = 0
        try:
            while True:
                n += 1
                each = call.next_try(self.per_attempt_timeout, n)  # outside: a try it refuses was no try
                try:
                    return attempt(each)
                except Exception as exc:
                    sleep = self._after_failure(method, exc, n, call)
                    if sleep is None:
                        call.raise_if_sent_before(exc, n)
                        raise
                    call.failed(exc)
                    time.sleep(sleep)
        finally:
            call.last = None  # it holds this frame (its traceback): no cycle left for the gc

    async def run_async(self, method: str, attempt: AsyncAttempt, timeout: float | None) -> Any:
        """:meth:`run` for an AsyncClient's calls: the same decisions, the sleeps on the event loop."""
        call = self._plan(method, timeout)
        n = 0
        try:
            while True:
                n += 1
                each = call.next_try(self.per_attempt_timeout, n)  # outside: a try it refuses was no try
                try:
                    return await attempt(each)
                except Exception as exc:
                    sleep = self._after_failure(method, exc, n, call)
                    if sleep is None:
                        call.raise_if_sent_before(exc, n)
                        raise
                    call.failed(exc)
                    await asyncio.sleep(sleep)
        finally:
            call.last = None  # it holds this frame (its traceback): no cycle left for the gc

    def _plan(self, method: str, timeout: float | None) -> _Call:
        """How many tries the call gets, and its overall deadline (None: none)."""
        overall = timeout if timeout is not None else self.overall_timeout
        # math.inf (or anything past NO_DEADLINE) is no deadline, as on a call's timeout=: grpcio
        # turns an inf deadline into one already past
        return _Call(self.max_attempts if self.is_idempotent(method) else 1,
                     None if overall is None else min(overall, NO_DEADLINE),
                     "the call's timeout=" if timeout is not None else "RetryPolicy.overall_timeout")

    def _after_failure(self, method: str, exc: Exception, n: int, call: _Call) -> float | None:
        """The sleep before try ``n + 1``, or None to give up (``exc`` then carries a note why)."""
        tries, deadline = call.tries, call.deadline
        if n >= tries or not self.retryable(exc):
            _note(exc, n, tries)
            self._timed_out(exc, n, call, "")
            return None
        # a subclass's backoff() that gives nan or a negative number: ConfigError (from the failed
        # call's error), the same for run() and run_async(), not ValueError from time.sleep only
        try:
            sleep = checked_backoff(self.backoff(n), f"{type(self).__name__}.backoff({n})")
        except ConfigError as bad:
            raise bad from exc
        if deadline is not None and time.monotonic() + sleep >= deadline - 0.001:
            _note(exc, n, tries, "the overall deadline leaves no time for another try")
            self._timed_out(exc, n, call, " and its overall deadline left no time for another try")
            return None
        # a Supervisor's deadline() bounds the backoff too: slept past it, the next try would only be refused
        if call.shared_end is not None and time.monotonic() + sleep >= call.shared_end - 0.001:
            _note(exc, n, tries, "the deadline() scope leaves no time for another try")
            self._timed_out(exc, n, call, "", scoped=True)
            return None
        if self.on_retry is not None:
            try:
                self.on_retry(method, n, exc, sleep)
            except Exception:  # a hook (metrics, logging) must not replace the call's outcome
                _log.exception("RetryPolicy on_retry callback failed")
        return sleep

    def _timed_out(self, exc: Exception, n: int, call: _Call, ended: str, scoped: bool = False) -> None:
        """A call that gave up on a timeout: the one try's message (\"waited 1.0s\", \"pass a larger timeout=
        or raise ClientConfig.call_timeout\") misleads once this policy set the try's deadline (its
        per_attempt_timeout, or what was left of the overall deadline) or tried several times; say what
        bounded the try, how long the call took in all, and what to change."""
        if not isinstance(exc, CallTimeout) or not exc.what:
            return
        took, own = time.monotonic() - call.began, self.per_attempt_timeout
        where = f", on try {n} of {call.tries}" if call.tries > 1 else ""
        each = own if own is not None else exc.deadline
        bound = (f"{each:g}s" if each is not None else "its own deadline") + (
            " (RetryPolicy.per_attempt_timeout)" if own is not None else " (the default deadline,"
            " ClientConfig.call_timeout)")
        if scoped or (call.shared_end is not None and call.overall is None and n > 1):
            # a Supervisor's deadline() scope bounded the call, not an overall deadline of this policy's
            if own is None:
                bound = "what was left of the deadline() scope"
            why = ("the deadline() scope left no time for another try" if scoped else "no tries were left"
                   if n >= call.tries else "this policy does not retry its error")
            change = (("raise RetryPolicy.per_attempt_timeout for longer tries"
                       + (", or pass a larger deadline(seconds) for more of them" if scoped else ""))
                      if own is not None else "pass a larger deadline(seconds)")
            text = (f"{exc.what}{where}: each try was bounded by {bound}, within a Supervisor's deadline() scope,"
                    f" and {why} after {took:.1f}s in all. To give the plugin longer, {change}")
        elif call.bound == "overall":
            change = ("pass a larger timeout= to the call" if call.source == "the call's timeout=" else
                      "raise RetryPolicy.overall_timeout (or pass the call a larger timeout=, which replaces it)")
            text = (f"{exc.what}{where}: the call's overall deadline of {call.overall:g}s ({call.source}) ran out"
                    f" after {took:.1f}s. To give the plugin longer, {change}")
        elif call.bound == "per_attempt" and call.overall is not None:
            cause = (ended or " and no tries were left") if n >= call.tries > 1 else ended
            text = (f"{exc.what}{where}: each try was bounded by {own:g}s (RetryPolicy.per_attempt_timeout), not by"
                    f" the call's overall deadline of {call.overall:g}s ({call.source}); the call gave up after"
                    f" {took:.1f}s{cause}. To give the plugin longer, raise RetryPolicy.per_attempt_timeout")
        elif call.bound == "per_attempt" and n == 1:
            text = (f"{exc.what}: the try was bounded by {own:g}s (RetryPolicy.per_attempt_timeout). To give the"
                    " plugin longer, raise RetryPolicy.per_attempt_timeout")
        elif n > 1:
            text = (f"{exc.what}{where}: the RetryPolicy has no overall_timeout, so each try was bounded by"
                    f" {bound}, not the call, which took {took:.1f}s in all. Set RetryPolicy(overall_timeout=...)"
                    " to bound the whole call (a call's own timeout= bounds it too)")
        else:
            return  # one try under the default deadline: its own message is right
        exc.reword(f"{text}; {exc.check}")


@dataclass
class _Call:
    """One call's tries: how many it gets, its overall deadline, and what bounded its latest try."""

    tries: int
    overall: float | None  # seconds (None: no overall deadline)
    source: str  # what set ``overall``: the call's timeout= or RetryPolicy.overall_timeout
    began: float = field(default_factory=time.monotonic)
    shared_end: float | None = field(default_factory=take_scope_end)  # a Supervisor deadline() scope's end
    bound: str = "default"  # the latest try's deadline: "per_attempt", "overall" (what was left), "default"
    last: BaseException | None = None  # the latest try's error, once another try follows
    sent: bool = False  # whether a try was sent (one that failed unsent says sent False; NoEndpoints none)

    @property
    def deadline(self) -> float | None:
        return None if self.overall is None else self.began + self.overall

    def failed(self, error: BaseException) -> None:
        """Try ``error`` failed and another follows."""
        self.last = error
        self.sent = self.sent or (getattr(error, "sent", True) is not False and not isinstance(error, NoEndpointsError))

    def raise_if_sent_before(self, error: Exception, n: int) -> None:
        """Try ``n`` failed unsent because a deadline shared beyond the call (a Supervisor's deadline()) ran
        out while an earlier try was sent: say so, as next_try() does, raised from that try's error (a caller
        resending on ``sent`` False would apply the call twice)."""
        if isinstance(error, CallTimeout) and error.shared_spent and not error.sent and self.sent:
            last, self.last = self.last, None
            # the call's own timeout= only ever shortens a shared deadline: the advice is the deadline's
            spent = no_time_left(f"{error.shared_spent}, before try {n} of {self.tries}", sent_before=last,
                                 check="that failure is this error's __cause__; to give the call more time, pass"
                                       " a larger deadline(seconds) to the Supervisor")
            for note in getattr(error, "__notes__", ()):
                spent.add_note(note)  # the retry's "gave up after" note, on the error raised
            raise spent from last

    def next_try(self, per_attempt: float | None, n: int = 1) -> float | None:
        """Try ``n``'s deadline (None: the Client's default one), noting what set it. A backoff (or on_retry)
        that overslept the overall deadline: the try is not sent, and the error says whether an earlier
        one was (then it is raised from the last try's error)."""
        remaining = None if self.deadline is None else self.deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            last, self.last = self.last, None
            raise no_time_left(f"the call's overall deadline of {self.overall:g}s ({self.source}) was spent before"
                               f" try {n} of {self.tries}", sent_before=last if self.sent else None) from last
        attempt = _min_opt(remaining, per_attempt)
        self.bound = ("default" if attempt is None else
                      "per_attempt" if per_attempt is not None and attempt == per_attempt else "overall")
        return None if attempt is None else min(attempt, NO_DEADLINE)


def _min_opt(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _note(exc: BaseException, n: int, tries: int, why: str = "") -> None:
    if tries <= 1:
        return
    text = f"plugbay retry: gave up after {n} of {tries} attempt(s)" + (f": {why}" if why else "")
    exc.add_note(text)
