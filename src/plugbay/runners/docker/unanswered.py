"""A container create whose answer never came (Ctrl-C, a timeout, a dropped connection).

The engine may have made the container all the same, and without its id the caller's
clean-up removes nothing. The container is looked up by the name the create gave it and
removed only when it carries every label that create sent: this process's session and
start (plugbay.session, plugbay.session-start) and the create's own random token, so a
container someone else made under that name (the engine's "name in use") is never touched.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from plugbay.runners.docker.engine import engine_failures
from plugbay.runners.session import SESSION, SESSION_START, host_session_id, host_session_start

_log = logging.getLogger("plugbay.runners.docker")

CREATE_TOKEN = "plugbay.create-token"  # random per create: tells two same-named creates of one process apart
T = TypeVar("T")


def create_token() -> dict[str, str]:
    """The label that makes one create's container its own (with the session labels)."""
    return {CREATE_TOKEN: uuid.uuid4().hex}


def create_or_clean(create: Callable[[], T], api: Any, name: str | None, labels: Mapping[str, str]) -> T:
    """``create()`` (a container create sending ``labels`` and ``name``); if it fails without the engine's
    answer, the container the engine may have made is removed (remove_unanswered) before the error goes on."""
    from docker.errors import APIError

    from plugbay.errors import ConfigError

    try:
        return create()
    except (APIError, ConfigError):
        raise  # the engine's answer, or no request made: nothing was created
    except BaseException:
        remove_unanswered(api, name, labels)
        raise


def remove_unanswered(api: Any, name: str | None, labels: Mapping[str, str]) -> None:
    """Remove the container named ``name`` if the create that sent ``labels`` made it; else leave all alone.

    ``api`` is a docker APIClient. A failing engine gets a warning saying how to remove it by hand.
    """
    from docker.errors import NotFound

    own = labels.get(SESSION) == host_session_id() and labels.get(SESSION_START) == host_session_start()
    if not name or not own or not labels.get(CREATE_TOKEN):
        return  # nothing proves a container under that name is this create's
    failed = engine_failures()
    try:
        found = api.inspect_container(name)
        have = (found.get("Config") or {}).get("Labels") or {}
        if any(have.get(key) != value for key, value in labels.items()):
            return  # another's container under that name: the engine refused ours
        api.remove_container(found["Id"], force=True, v=True)
    except NotFound:
        return  # the create never made it (or it is gone already)
    except failed as exc:
        _log.warning("the engine may have made container %s before its create failed, and it could not be"
                     " checked or removed: %s; if `docker ps -a --filter label=%s=%s` lists it, remove it with"
                     " `docker rm -f %s`", name, exc, CREATE_TOKEN, labels[CREATE_TOKEN], name)
