"""A container create whose answer never came (Ctrl-C, a timeout, a dropped connection).

The engine may have made the container all the same, and without its id the caller's
clean-up removes nothing. The container is looked up by the name the create gave it and
removed only when it carries every label that create sent: this process's session and
start (plugbay.session, plugbay.session-start) and the create's own random token, so a
container someone else made under that name (the engine's "name in use") is never touched.

A slow engine may make it only after that look-up (the create was cut by start_timeout while
the engine still worked on it): the name is then watched on a thread of its own until the
engine's answer to the create was due (its timeout after the create was sent), and the container
removed once it shows up. The runner's kill() waits for
that watch (wait_late_creates), and the thread is not a daemon, so the interpreter waits for it
too at exit: after a Client's start failed and its kill (or its ``with`` block) ended, and
certainly once the process ended, no container of that start is left, as long as the engine
made it within engine_timeout of the create's sending.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from plugbay.runners.docker.engine import ENGINE_TIMEOUT, engine, engine_failures
from plugbay.runners.session import SESSION, SESSION_START, host_session_id, host_session_start

_log = logging.getLogger("plugbay.runners.docker")

CREATE_TOKEN = "plugbay.create-token"  # random per create: tells two same-named creates of one process apart
_POLL = 0.25  # seconds between two look-ups of a late create's name
T = TypeVar("T")

_watches_lock = threading.Lock()
# container name -> the watches of its unanswered creates, each with the time it takes at most
_watches: dict[str, list[tuple[threading.Thread, float]]] = {}


def create_token() -> dict[str, str]:
    """The label that makes one create's container its own (with the session labels)."""
    return {CREATE_TOKEN: uuid.uuid4().hex}


def create_or_clean(create: Callable[[], T], api: Any, name: str | None, labels: Mapping[str, str]) -> T:
    """``create()`` (a container create sending ``labels`` and ``name``); if it fails without the engine's
    answer, the container the engine may have made is removed (remove_unanswered) before the error goes on."""
    from docker.errors import APIError

    from plugbay.errors import ConfigError

    sent = time.monotonic()
    try:
        return create()
    except (APIError, ConfigError):
        raise  # the engine's answer, or no request made: nothing was created
    except BaseException:
        remove_unanswered(api, name, labels, sent)
        raise


def _remove_if_ours(api: Any, name: str, labels: Mapping[str, str], look: float | None = None) -> bool:
    """True once the container named ``name`` is removed as ours; False while the engine has none of ours
    under that name (another's holds it: it may go, and ours come after). Raises the engine's failures.
    ``look``: the look-up's own bound (``api`` is then the caller's alone); a removal has the client's."""
    from docker.errors import NotFound

    try:
        full = api.timeout
        if look is not None:
            api.timeout = look
        try:
            found = api.inspect_container(name)
        finally:
            api.timeout = full
        have = (found.get("Config") or {}).get("Labels") or {}
        if any(have.get(key) != value for key, value in labels.items()):
            return False  # another's container under that name: the engine refused ours, or ours is to come
        api.remove_container(found["Id"], force=True, v=True)
        return True
    except NotFound:
        return False  # not made (yet), or gone already


def _warn(name: str, labels: Mapping[str, str], exc: BaseException) -> None:
    _log.warning("the engine may have made container %s before its create failed, and it could not be"
                 " checked or removed: %s; if `docker ps -a --filter label=%s=%s` lists it, remove it with"
                 " `docker rm -f %s`", name, exc, CREATE_TOKEN, labels[CREATE_TOKEN], name)


def remove_unanswered(api: Any, name: str | None, labels: Mapping[str, str], sent: float | None = None) -> None:
    """Remove the container named ``name`` if the create that sent ``labels`` made it; else leave all alone.

    ``api`` is a docker APIClient. Not there yet (or the engine failing): the name is watched on a thread
    until ``api``'s timeout after ``sent`` (the create's time.monotonic(); None: now), when the engine's own
    answer would have come, see wait_late_creates. A failing engine gets a warning saying how to remove it
    by hand.
    """
    own = labels.get(SESSION) == host_session_id() and labels.get(SESSION_START) == host_session_start()
    if not name or not own or not labels.get(CREATE_TOKEN):
        return  # nothing proves a container under that name is this create's
    failed = engine_failures()
    failure: BaseException | None = None
    try:
        if _remove_if_ours(api, name, labels):
            return
    except failed as exc:
        failure = exc  # the watch asks again, and warns if the engine never answers
    timeout = float(api.timeout if isinstance(api.timeout, (int, float)) and api.timeout > 0 else ENGINE_TIMEOUT)
    until = (time.monotonic() if sent is None else sent) + timeout
    if time.monotonic() >= until:  # the create's answer was due already (a hung engine took the look-up's time)
        if failure is not None:
            _warn(name, labels, failure)
        return
    watch = threading.Thread(target=_watch, args=(name, dict(labels), until, timeout),
                             name=f"plugbay-late-create-{name}")  # not a daemon: the interpreter's exit waits
    _log.info("the engine did not answer the create of container %s: watching for it for up to %.1f s, to"
              " remove it if the engine makes it late", name, max(until - time.monotonic(), 0.0))
    # its look-ups until ``until``, then one more, a removal, and the client's version request: each ``timeout``
    with _watches_lock:  # registered once started: a kill() joins no thread that never ran
        try:
            watch.start()
        except RuntimeError as exc:  # no thread can start (the interpreter is exiting)
            _warn(name, labels, exc)
            return
        _watches.setdefault(name, []).append((watch, 4 * timeout + 1.0))


def _watch(name: str, labels: Mapping[str, str], until: float, timeout: float) -> None:
    """Look ``name`` up every _POLL seconds until ``until`` (time.monotonic()); remove the container if it is
    ours. ``timeout``: each engine request's bound."""
    failed = engine_failures()
    last: BaseException | None = None
    client = None
    try:
        # its own (the runner's client is closed by the kill that waits for this); its version asked for
        # within the time left, its removals with the whole timeout
        client = engine(min(timeout, max(until - time.monotonic(), 0.05)))
        client.api.timeout = timeout
        for _ in range(int(max(until - time.monotonic(), 0.0) / _POLL) + 2):  # and no later than until
            time.sleep(min(_POLL, max(until - time.monotonic(), 0.0)))
            try:
                left = until - time.monotonic()
                if _remove_if_ours(client.api, name, labels, look=min(timeout, max(left, 0.05))):
                    return
                last = None
            except failed as exc:
                last = exc
            if time.monotonic() >= until:
                break
        if last is not None:
            _warn(name, labels, last)
        else:
            _log.debug("container %s: its create went unanswered and the engine made none by the time its"
                       " answer was due", name)
    except Exception as exc:  # the engine unreachable for a client: nothing left to ask
        _warn(name, labels, exc)
    finally:
        if client is not None:
            client.close()
        with _watches_lock:
            mine = [entry for entry in _watches.get(name, []) if entry[0] is not threading.current_thread()]
            if mine:
                _watches[name] = mine
            else:
                _watches.pop(name, None)


def wait_late_creates(name: str | None) -> None:
    """Wait for the watches of ``name``'s unanswered creates (each bounded by its timeout, a request
    and a removal): the container such a create made late is gone when this returns."""
    if not name:
        return
    with _watches_lock:
        watches = list(_watches.get(name, ()))
    for watch, bound in watches:
        watch.join(bound)
