"""The Docker runner's engine client and the typed errors of its requests.

Every request has a bound (``ENGINE_TIMEOUT``, DockerRunner's ``engine_timeout``): the docker SDK's
own is 60 s, so an engine that accepts connections and never answers (a stuck dockerd, a proxy holding
the answer back) cost a minute per request, and a kill() makes several. The SDK's stop request adds its
grace to the bound, and its streamed requests (logs, the exit watch's wait) read without one.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from plugbay.errors import EngineUnavailableError

ENGINE_TIMEOUT = 10.0  # seconds an engine request may go unanswered (the SDK's default is 60)
T = TypeVar("T")


def engine_host() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def engine_unreachable(exc: BaseException) -> EngineUnavailableError:
    return EngineUnavailableError(
        f"cannot reach the Docker engine at {engine_host()}: {exc}. Start it (`dockerd &` or"
        " `systemctl start docker`; scripts/setup does), or set DOCKER_HOST to a running engine."
    )


def engine_silent(what: str, timeout: float | None, exc: BaseException) -> EngineUnavailableError:
    if timeout is None:  # the caller did not say: urllib3's timeout message names the bound
        found = re.search(r"timeout=([0-9.]+)\)", str(exc))
        timeout = float(found.group(1)) if found else None
    within = f"within {timeout:g} s" if timeout is not None else "in time"
    return EngineUnavailableError(
        f"the Docker engine at {engine_host()} did not answer {within} when asked to {what} ({type(exc).__name__}:"
        f" {exc}). It is overloaded or stuck: check that `docker info` answers and the daemon's log"
        " (`journalctl -u docker`), restart it if it hangs, and try again once it answers (a slow engine:"
        " raise DockerRunner's engine_timeout)")


# The API version each engine (by DOCKER_HOST) negotiated: one GET /version per
# engine and process, not one per container start.
_versions: dict[str, str] = {}


def require_sdk() -> None:
    """EngineUnavailableError saying how to install it when the docker SDK is missing (plugbay[cli] alone).

    Called first by every entry point that imports the SDK's modules itself (``from docker.errors
    import ...``): else their ImportError, not this, was what a user of plugbay[cli] alone got."""
    try:
        import docker  # noqa: F401
        import requests  # noqa: F401
    except ImportError as exc:
        raise EngineUnavailableError(f"the docker SDK is missing ({exc}): pip install 'plugbay[docker]'") from exc


def engine(timeout: float = ENGINE_TIMEOUT) -> Any:
    """A docker SDK client with the API version negotiated (the engine here is 20.10 / 1.41), whose
    requests wait at most ``timeout`` seconds for an answer."""
    require_sdk()
    import docker
    import requests
    from docker.errors import DockerException

    host = os.environ.get("DOCKER_HOST", "")
    try:
        client = docker.from_env(version=_versions.get(host, "auto"), timeout=timeout)
    except DockerException as exc:
        if isinstance(exc.__context__, requests.exceptions.Timeout):  # the version request went unanswered
            raise engine_silent("tell its API version", timeout, exc) from exc
        raise engine_unreachable(exc) from exc
    except ValueError as exc:  # the SDK's URL parsing: a port out of range or not a number, an unclosed '['
        raise EngineUnavailableError(f"DOCKER_HOST={host!r} is malformed ({exc}): set it to the engine's address"
                                     " (unix:///var/run/docker.sock, tcp://127.0.0.1:2375: a port 1-65535, an IPv6"
                                     " address in []), or unset it for the local engine") from exc
    _versions[host] = client.api.api_version
    return client


def release_frames(exc: BaseException, outer: BaseException | None = None) -> None:
    """Let go of the locals of the finished frames ``exc`` (and what caused it) went through.

    A request that failed holds its socket only there: a connect() that failed (docker-py's unix
    connection never closes its socket) or an answer that never came (http.client's half-read
    response) — and an exception's traceback sits in a reference cycle, so the descriptor stayed open
    until the garbage collector ran. ``outer``: the exception being handled when the request was made
    (the chain reaches it as a context), left as it is. The traceback itself (file, line) stays.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or current is outer or id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            # a suspended generator's frame is not finished: clearing it would close the generator
            if not tb.tb_frame.f_code.co_flags & (inspect.CO_GENERATOR | inspect.CO_COROUTINE
                                                  | inspect.CO_ASYNC_GENERATOR):
                try:
                    tb.tb_frame.clear()
                except RuntimeError:  # a frame still running (the caller's): not ours to clear
                    pass
            tb = tb.tb_next
        todo += [current.__cause__, current.__context__]


def engine_call(func: Callable[[], T], what: str, timeout: float | None = None) -> T:
    """Run one engine request (``what`` it asks, for the message; ``timeout``: the client's bound, for
    the message too), turning connection failures and an answer that never came (the client's
    timeout, a broken reply) into EngineUnavailableError."""
    import requests
    from docker.errors import DockerException

    outer = sys.exc_info()[1]
    try:
        return func()
    except requests.exceptions.ConnectionError as exc:
        release_frames(exc, outer)
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            raise engine_silent(what, timeout, exc) from exc
        raise engine_unreachable(exc) from exc
    except DockerException as exc:  # before RequestException: the engine's answers (APIError) are HTTPErrors too
        if "connection" in str(exc).lower() and not hasattr(exc, "response"):
            release_frames(exc, outer)
            raise engine_unreachable(exc) from exc
        raise
    except requests.exceptions.RequestException as exc:
        release_frames(exc, outer)
        raise engine_silent(what, timeout if isinstance(exc, requests.exceptions.Timeout) else None, exc) from exc


def engine_failures() -> tuple[type[BaseException], ...]:
    """What a failing engine raises: its answers, what requests raises for a connection it dropped
    (a restart, a proxy's reset), and engine_call()'s word for that."""
    require_sdk()
    import requests
    from docker.errors import DockerException

    return DockerException, requests.exceptions.RequestException, EngineUnavailableError
