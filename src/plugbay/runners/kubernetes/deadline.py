"""A total deadline on one Kubernetes API call, not only on each socket read.

urllib3's timeouts bound the connect and each read of the answer (its
``Timeout(total=...)`` too: it sets the socket's timeout once, from what is
left when the answer starts). An API server (or a proxy) that sends a byte
every half second would hold a call, and so start() or kill(), for as long as
it trickles. :func:`bounded` arms a timer on the host's shared loop (no thread
per call); when it fires it shuts down the sockets the call is using, which
wakes the blocked read at once, and :attr:`Deadline.expired` tells the caller
to report a timeout. A stream (``_preload_content=False``) is bounded until
its answer's head: the timer is cancelled when the call returns it.

A :class:`Cancel` lets another thread end such a call early, as its timer
would: the runner's close() must not sit out a log reopen still waiting for
its answer (the reopened stream would then be read on, with nothing to end it).

The sockets are found through the connection classes of the ApiClient's pool
manager: :func:`install` gives it pool classes whose connections tell the
calling thread's Deadline when they connect or send a request. Outside
:func:`bounded` they behave exactly as urllib3's own.

Within it their pools also take urllib3's retries off its WARNING: urllib3 logs "Retrying (...)
after connection broken by ..." for each attempt it repeats, and the calls plugbay makes either
end (a call cut by its Deadline or a Cancel is not repeated at all: it is over) or are retried by
plugbay's own policy, which says what a user needs to know itself. A connection urllib3 would try
again (by the pool's Retry, unchanged) is tried again here, logged at DEBUG.

An answer urllib3 asks again for (a 429, 503 or 413 with Retry-After, a status the Retry names) is
still asked again inside urllib3, but its wait (the Retry-After: Kubernetes' API Priority and Fairness
answers 429 with one; or the Retry's backoff) ends with the call's Deadline or its Cancel, which ends
the call: urllib3 would sleep out whatever the server said, past both. So do the waits of the kubernetes
client's own client-go retry mode (``client_go_retries``, clientgo.py), which sleeps outside urllib3; a wait
never outlasts the call's limit (a Retry-After of 10**20 s would overflow any sleep). A Retry that
answers used up says so on its MaxRetryError (:func:`exhausted_in`): the API answered, it was reached.
"""

from __future__ import annotations

import copy
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from plugbay.core.transport.aioloop import Deferred
from plugbay.runners.kubernetes.advice import digits_seconds, seconds_text
from plugbay.runners.kubernetes.clientgo import install_client_go

_local = threading.local()
_install_lock = threading.Lock()
_MARK = "_plugbay_deadline"
_ANSWERS = "_plugbay_answers"  # set on the MaxRetryError of a Retry that answers used up (exhausted_in)
_log = logging.getLogger("plugbay.runners.kubernetes")


class DeadlineExceeded(TimeoutError):
    """Raised into urllib3 when a call (or its retry) tries to use the network after its deadline passed."""

    # the answer whose wait before asking again the deadline cut: its status, the seconds, whether the server
    # asked for them (Retry-After) or a backoff chose them, and whose backoff ("Retry": urllib3's, "client_go":
    # the client's client-go mode). The call was answered, so the message names that answer, not a silent server
    answered: tuple[int, float, bool, str] | None = None


class Deadline:
    """One call's total time limit and the connections it used."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.ends = time.monotonic() + limit  # when its timer (armed with it, in bounded()) fires
        self.expired = False
        self.cancelled = False  # expired by a Cancel, not by its limit
        self.ended = threading.Event()  # set with expired: a retry's backoff wait ends with it
        self._lock = threading.Lock()
        self._conns: list[Any] = []

    def register(self, conn: Any) -> None:
        with self._lock:
            if self.expired:
                raise DeadlineExceeded(f"the call's deadline of {self.limit:g}s passed")
            if not any(c is conn for c in self._conns):
                self._conns.append(conn)

    def expire(self, cancelled: bool = False) -> None:
        """Mark the call late and shut its sockets down (any thread; the shared loop's timer calls it)."""
        with self._lock:
            self.expired = True
            self.cancelled = self.cancelled or cancelled
            conns = list(self._conns)
        self.ended.set()
        for conn in conns:
            _shut(getattr(conn, "sock", None))

    def wait(self, seconds: float) -> bool:
        """Wait ``seconds`` before the call asks again; True: the call ended first (its limit or a Cancel).

        A wait that would outlast the limit waits only until it: the next ask could not be made anyway,
        and Event.wait refuses a wait past time_t (OverflowError) that a server's Retry-After may ask for."""
        left = self.ends - time.monotonic()
        if seconds < left:
            return self.ended.wait(seconds) or self.expired
        self.ended.wait(max(left, 0.0))
        self.expire()  # its timer is due: the shared loop may run it a moment late
        return True


def _shut(sock: Any) -> None:
    # socket.socket.shutdown even on an SSLSocket: its own shutdown() drops the TLS object under the reader
    raw = sock if isinstance(sock, socket.socket) else getattr(sock, "socket", None)  # TLS-in-TLS: the outer socket
    if isinstance(raw, socket.socket):
        try:
            socket.socket.shutdown(raw, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: the call has ended anyway


class Cancel:
    """Ends, from any thread, the bounded calls made under :func:`cancellable`: the one under way and
    every later one (it fails at once). A call ended so reads as a timed-out one to its caller."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cancelled = False
        self._deadlines: list[Deadline] = []

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            deadlines = list(self._deadlines)
        for deadline in deadlines:
            deadline.expire(cancelled=True)

    def _add(self, deadline: Deadline) -> None:
        with self._lock:
            self._deadlines.append(deadline)
            cancelled = self.cancelled
        if cancelled:
            deadline.expire(cancelled=True)

    def _discard(self, deadline: Deadline) -> None:
        with self._lock:
            self._deadlines = [d for d in self._deadlines if d is not deadline]


@contextmanager
def cancellable(cancel: Cancel) -> Iterator[None]:
    """The bounded calls made in this block on this thread end when ``cancel`` is cancelled."""
    outer = getattr(_local, "cancel", None)
    _local.cancel = cancel
    try:
        yield
    finally:
        _local.cancel = outer


def current() -> Deadline | None:
    deadline: Deadline | None = getattr(_local, "deadline", None)
    return deadline


class _Tracked:
    """Mixed into urllib3's connection classes: tell the thread's Deadline which connection the call uses."""

    def connect(self) -> None:
        deadline = current()
        if deadline is not None:
            deadline.register(self)
        super().connect()  # type: ignore[misc]
        if deadline is not None and deadline.expired:  # it fired while the socket was being made
            _shut(getattr(self, "sock", None))

    def request(self, *args: Any, **kwargs: Any) -> Any:
        deadline = current()
        if deadline is not None:
            deadline.register(self)
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _Again(Exception):
    """A connection urllib3 would try again (and warn of): _TrackedPool.urlopen does, quietly."""

    def __init__(self, retries: Any, error: BaseException) -> None:
        super().__init__(str(error))
        self.retries, self.error = retries, error


def _quiet(retries: Any) -> Any:
    """A copy of the urllib3 Retry ``retries`` whose connection-level retries raise _Again instead of
    being made (and warned of) inside urllib3, which retries nothing once the call's Deadline passed, and
    whose wait before a status's retry (Retry-After, backoff) ends with the Deadline or its Cancel."""
    plain = getattr(retries, "_plugbay_plain", retries)  # a quiet copy's own Retry: never wrapped twice
    quiet = copy.copy(plain)
    increment = plain.increment

    def quiet_increment(method: Any = None, url: Any = None, response: Any = None, error: Any = None,
                        _pool: Any = None, _stacktrace: Any = None) -> Any:
        deadline = current()
        if error is not None and deadline is not None and deadline.expired:
            raise error  # cut or cancelled: the caller says it timed out (within_deadline)
        try:
            again = increment(method, url, response, error, _pool, _stacktrace)  # MaxRetryError when used up
        except Exception as exc:
            # used up by answers (a status_forcelist's, a throttling 429's): the caller says the API answered
            # them (exhausted_in), not that it could not be reached; urllib3 raises it (or returns the last
            # answer: raise_on_status=False) as before
            if error is None and response is not None:
                setattr(exc, _ANSWERS, _answers(plain, response))
            raise
        if error is not None:
            raise _Again(again, error)
        return _quiet(again)  # a status's retry goes on inside urllib3 (it logs those at DEBUG)

    def quiet_sleep_for_retry(response: Any) -> bool:
        try:
            seconds = quiet.get_retry_after(response)
        except ValueError:  # digits past int()'s 4300, which urllib3's parse cannot read: read them here
            said = digits_seconds(response.headers.get("Retry-After", ""))
            if said is None:
                raise
            seconds = min(said, getattr(quiet, "retry_after_max", math.inf))  # an older urllib3 has no such cap
        if seconds:
            wait_to_ask_again(seconds, getattr(response, "status", None), asked=True)
            return True
        return False

    def quiet_sleep(response: Any = None) -> None:  # urllib3's Retry.sleep, waiting through wait_to_ask_again
        if quiet.respect_retry_after_header and response and quiet.sleep_for_retry(response):
            return
        backoff = quiet.get_backoff_time()
        if backoff > 0:
            wait_to_ask_again(backoff, getattr(response, "status", None), asked=False)

    quiet.increment = quiet_increment
    if _urllib3_sleeps(plain):  # a Retry subclass's own waits are its own (they may already be short)
        quiet.sleep, quiet.sleep_for_retry = quiet_sleep, quiet_sleep_for_retry
    quiet._plugbay_plain = plain
    return quiet


def _answers(retries: Any, response: Any) -> tuple[tuple[int, ...], int] | None:
    """The statuses of a call's answers its Retry asked again after, ``response`` the one that used it up,
    and how many of its connections were lost (no status) on the way; None when that was a redirect (a
    redirect loop: urllib3's own error says so)."""
    status = getattr(response, "status", None)
    if not isinstance(status, int) or response.get_redirect_location():
        return None
    history = getattr(retries, "history", ())
    asked = [h.status for h in history if isinstance(h.status, int) and not h.redirect_location]
    return (*asked, status), sum(1 for h in history if h.error is not None and h.status is None)


def exhausted_in(exc: BaseException | None) -> tuple[tuple[int, ...], int] | None:
    """The statuses of the answers a bounded call's Retry asked again after until they used it up (the
    MaxRetryError urllib3 raised then), and its lost connections, if ``exc`` says so."""
    answers: tuple[tuple[int, ...], int] | None = getattr(exc, _ANSWERS, None)
    return answers


def _urllib3_sleeps(retries: Any) -> bool:
    from urllib3.util.retry import Retry

    kind = type(retries)
    return kind.sleep is Retry.sleep and kind.sleep_for_retry is Retry.sleep_for_retry


def wait_to_ask_again(seconds: float, status: Any, asked: bool, waiter: str = "Retry") -> None:
    """Wait before asking again after an answer of ``status`` (``asked``: for its Retry-After, else for
    ``waiter``'s backoff); the call's Deadline or its Cancel ends the wait and the call."""
    deadline = current()
    if deadline is None:  # a quiet copy is used within a bounded call only; as urllib3 would, regardless
        time.sleep(seconds)
    elif deadline.wait(seconds):
        if deadline.cancelled or not isinstance(status, int):
            raise DeadlineExceeded(f"the call was ended waiting {seconds_text(seconds)} to ask again")
        exc = DeadlineExceeded(f"the API answered {status}, and the call's deadline of {deadline.limit:g}s"
                               f" passed while it waited {seconds_text(seconds)} to ask again")
        exc.answered = (status, seconds, asked, waiter)
        raise exc


def answered_in(exc: BaseException | None) -> tuple[int, float, bool, str] | None:
    """The answer whose wait before asking again a call's limit cut, if ``exc`` (or what caused it) says so."""
    for _ in range(8):  # a chain is short; a cycle would not end
        if exc is None:
            return None
        if isinstance(exc, DeadlineExceeded) and exc.answered is not None:
            return exc.answered
        exc = exc.__cause__ or exc.__context__
    return None


class _TrackedPool:
    """Mixed into urllib3's pool classes: a bounded call's connection retries are made here, quietly."""

    retries: Any

    def urlopen(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        # urllib3's own repeat of a call within this pool (a redirect or a status retry) passes its
        # arguments on positionally, under the loop below, which catches its _Again; a PoolManager's
        # redirect to another pool passes its retries by name and runs the loop here
        deadline = current()
        if deadline is None or args:
            return super().urlopen(method, url, *args, **kwargs)  # type: ignore[misc]
        from urllib3.util.retry import Retry

        given = kwargs.pop("retries", None)
        retries = Retry.from_int(getattr(given, "_plugbay_plain", given), redirect=kwargs.get("redirect", True),
                                 default=self.retries)
        while True:
            try:
                return super().urlopen(method, url, retries=_quiet(retries), **kwargs)  # type: ignore[misc]
            except _Again as again:
                retries = again.retries
                _log.debug("retrying %s %s (%r): %s", method, url, retries, again.error)
                # the backoff ends with the call's deadline or its Cancel; then the call is over
                if deadline.wait(retries.get_backoff_time()):
                    raise again.error from None


def install(api_client: Any) -> bool:
    """Give ``api_client``'s pool manager connections that a Deadline can find (once; False if it has none)."""
    pool_manager: Any = getattr(getattr(api_client, "rest_client", None), "pool_manager", None)
    classes = getattr(pool_manager, "pool_classes_by_scheme", None)
    if not isinstance(classes, dict):
        return False
    with _install_lock:
        install_client_go(current, wait_to_ask_again)
        if getattr(pool_manager, _MARK, False):
            return True
        tracked = {}
        for scheme, pool_cls in classes.items():
            conn_cls = type(f"Deadline{pool_cls.ConnectionCls.__name__}", (_Tracked, pool_cls.ConnectionCls), {})
            tracked[scheme] = type(f"Deadline{pool_cls.__name__}", (_TrackedPool, pool_cls),
                                   {"ConnectionCls": conn_cls})
        # a new dict: urllib3's PoolManagers share the module's one by default
        pool_manager.pool_classes_by_scheme = tracked
        setattr(pool_manager, _MARK, True)
        pool_manager.clear()  # pools made before this keep urllib3's classes; drop them (idle connections only)
    return True


@contextmanager
def bounded(api_client: Any, limit: float) -> Iterator[Deadline]:
    """The calls made in this block on this thread (with ``api_client``) end by ``limit`` seconds from now."""
    install(api_client)
    deadline = Deadline(limit)
    outer = current()
    _local.deadline = deadline
    cancel: Cancel | None = getattr(_local, "cancel", None)
    timer = Deferred(deadline.expire, limit)
    if cancel is not None:
        cancel._add(deadline)
    try:
        yield deadline
    finally:
        timer.cancel()  # it does not run after this: a connection back in the pool is left alone
        if cancel is not None:  # neither does a cancel: a stream returned is its caller's to close
            cancel._discard(deadline)
        _local.deadline = outer
