"""Docker engine access for the Docker runner: connecting, typed errors, labels, sweeping.

A container's owner is the host session in its ``plugbay.session`` label, or,
once another host process reattached to it, the session recorded in its name
(``<name>_owner_<session>.<start>``: labels cannot change after creation, names can).
A session is alive while its process (the pid in the session id, with the same
start time) runs on this machine.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from plugbay.errors import ConfigError, EngineUnavailableError, RunnerError
from plugbay.runners.base import HOST_SESSION_ID

_log = logging.getLogger("plugbay.runners.docker")

CONTAINER_SOCKET_DIR = "/plugbay/sock"
# Group given to the socket folder when the host runs as root (gid 0 would put
# the container user in the root group); Dockerfile.plugin's user has this gid.
DEFAULT_ROOT_SOCKET_GID = 10001
MANAGED = "plugbay.managed"
SESSION = "plugbay.session"
SESSION_START = "plugbay.session-start"
HOST = "plugbay.host"
SOCKET_DIR = "plugbay.socket-dir"
SOCKET_TOKEN = "plugbay.socket-token"  # the content of the marker file plugbay wrote there
SOCKET_OWNED = "plugbay.socket-owned"  # "true": the runner made the folder (its kill removes it)
SOCKET_MARKER = ".plugbay-socket-dir"
_OWNER_MARK = "_owner_"

T = TypeVar("T")


def _unreachable(exc: BaseException) -> EngineUnavailableError:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return EngineUnavailableError(
        f"cannot reach the Docker engine at {host}: {exc}. Start it (`dockerd &` or"
        " `systemctl start docker`; scripts/setup does), or set DOCKER_HOST to a running engine."
    )


def engine() -> Any:
    """A docker SDK client with the API version negotiated (the engine here is 20.10 / 1.41)."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:  # pragma: no cover - the docker extra is not installed
        raise EngineUnavailableError("the docker SDK is missing: pip install 'plugbay[docker]'") from exc
    try:
        return docker.from_env(version="auto")
    except DockerException as exc:
        raise _unreachable(exc) from exc


def engine_call(func: Callable[[], T], what: str) -> T:
    """Run one engine request, turning connection failures into EngineUnavailableError."""
    import requests
    from docker.errors import DockerException

    try:
        return func()
    except requests.exceptions.ConnectionError as exc:
        raise _unreachable(exc) from exc
    except DockerException as exc:
        if "connection" in str(exc).lower() and not hasattr(exc, "response"):
            raise _unreachable(exc) from exc
        raise


def check_runtime(client: Any, runtime: str) -> None:
    known = sorted(engine_call(client.info, "read engine info").get("Runtimes", {}))
    if runtime not in known:
        raise RunnerError(
            f"the Docker engine has no runtime {runtime!r} (it has {known}). Install it and"
            " register it under \"runtimes\" in /etc/docker/daemon.json, then restart dockerd;"
            " or drop the runtime option."
        )


def published_port(container: Any, port: int) -> int:
    """The 127.0.0.1 host port a container port is published on."""
    container.reload()
    bindings = (container.attrs["NetworkSettings"]["Ports"] or {}).get(f"{port}/tcp") or []
    for binding in bindings:
        if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
            return int(binding["HostPort"])
    raise RunnerError(f"container port {port} was not published on 127.0.0.1"
                      f" (bindings: {bindings}); is the container's network mode host or none?")


def bind_mount(source: str, target: str, read_only: bool = False) -> Any:
    from docker.types import Mount

    return Mount(target=target, source=source, type="bind", read_only=read_only)


def parse_mount(spec: Any) -> Any:
    """A docker Mount, or "SRC:DST[:ro]" as a bind mount."""
    if not isinstance(spec, str):
        return spec
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise ConfigError(f"mount {spec!r} must be 'SOURCE:TARGET' or 'SOURCE:TARGET:ro' (or a docker Mount)")
    return bind_mount(os.path.abspath(parts[0]), parts[1], len(parts) == 3 and parts[2] == "ro")


def _start_ticks(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return text[text.rindex(")") + 2:].split()[19]


_SESSION_START = _start_ticks(os.getpid())


def managed_labels() -> dict[str, str]:
    return {MANAGED: "true", SESSION: HOST_SESSION_ID, SESSION_START: _SESSION_START, HOST: socket.gethostname()}


def owner_name(name: str, session: str) -> str:
    base = name.split(_OWNER_MARK, 1)[0]
    return f"{base}{_OWNER_MARK}{session}.{_SESSION_START if session == HOST_SESSION_ID else ''}"


def owner_of(name: str, labels: dict[str, str]) -> tuple[str, str]:
    """(session, start ticks) of the host that owns a container."""
    if _OWNER_MARK in name:
        session, _, start = name.split(_OWNER_MARK, 1)[1].partition(".")
        return session, start
    return labels.get(SESSION, ""), labels.get(SESSION_START, "")


def session_alive(session: str, start: str) -> bool:
    """Whether the host process behind ``session`` still runs on this machine."""
    try:
        pid = int(session.split("-", 1)[0])
    except ValueError:
        return False
    ticks = _start_ticks(pid)
    return bool(ticks) and (not start or ticks == start)


def host_gid(group: str | None) -> int | None:
    """A host group (name or gid, as ClientConfig.unix_socket_group gives it) as a gid."""
    if not group:
        return None
    if group.isdigit():
        return int(group)
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(
            f"unix socket group {group!r} is not a group on this host; give a group name or gid") from None


def prepare_socket_dir(path: str, gid: int | None = None) -> int:
    """Let a container user in a supplementary group ``gid`` create sockets in ``path``.

    The container user is often non-root with every capability dropped, so
    ownership alone decides: group rwx plus setgid (sockets inherit the group).
    """
    from plugbay.errors import PermissionDeniedError

    gid = gid if gid is not None else (os.getgid() or DEFAULT_ROOT_SOCKET_GID)
    try:
        if os.stat(path).st_gid != gid:
            os.chown(path, -1, gid)
        os.chmod(path, 0o2770)
    except PermissionError as exc:
        raise PermissionDeniedError(
            f"cannot give socket folder {path} to group {gid}: {exc}. Pass socket_gid= one of your"
            f" groups ({sorted(os.getgroups())})."
        ) from exc
    return gid


def mark_socket_dir(path: str) -> str:
    """Write plugbay's marker file into a socket folder it uses; returns the random token in it."""
    token = uuid.uuid4().hex
    fd = os.open(os.path.join(path, SOCKET_MARKER), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


def socket_dir_unproven(path: Any, labels: dict[str, str]) -> str | None:
    """Why ``path`` cannot be proven to be the socket folder plugbay made for the labelled container."""
    if not isinstance(path, str) or not os.path.isabs(path):
        return f"{path!r} is not an absolute path"
    if labels.get(SOCKET_DIR) != path or not labels.get(SOCKET_TOKEN):
        return f"the container's label {SOCKET_DIR} does not name {path}"
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return f"{path} is not a folder"
        fd = os.open(os.path.join(path, SOCKET_MARKER), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            token = f.read(100)
    except OSError as exc:
        return f"{path} holds no marker file plugbay wrote ({exc.strerror})"
    if token != labels[SOCKET_TOKEN]:
        return f"the marker file in {path} is not the one plugbay wrote for this container"
    return None


def clear_socket_dir(path: str) -> None:
    # Only sockets, plugbay's marker and an empty folder are removed: the folder
    # may be a caller's, and anything else in it is not ours to delete.
    folder = Path(path)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        try:
            mode = entry.lstat().st_mode
            if stat.S_ISSOCK(mode) or (entry.name == SOCKET_MARKER and stat.S_ISREG(mode)):
                entry.unlink()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass


def sweep(live_sessions: Iterable[str] | None = None, *, client: Any = None) -> list[str]:
    """Remove plugbay containers whose host session is gone; return their ids.

    Without ``live_sessions``, a session is gone when its host process no longer
    runs on this machine (containers started from other machines are left
    alone). With it, every session not listed counts as gone. This process's
    own containers are never removed.
    """
    from docker.errors import DockerException, NotFound

    own = client is None
    client = client or engine()
    live = set(live_sessions) if live_sessions is not None else None
    here = socket.gethostname()
    removed: list[str] = []
    try:
        found = engine_call(lambda: client.containers.list(all=True, filters={"label": f"{MANAGED}=true"}),
                            "list plugbay containers")
        for container in found:
            labels = container.labels or {}
            session, start = owner_of(container.name, labels)
            if session == HOST_SESSION_ID:
                continue
            if live is not None:
                gone = session not in live
            else:
                gone = labels.get(HOST) == here and not session_alive(session, start)
            if not gone:
                continue
            try:
                container.remove(force=True, v=True)
            except NotFound:
                continue
            except DockerException as exc:
                _log.warning("sweep could not remove container %s of gone session %s: %s; remove it with"
                             " `docker rm -f %s`", container.short_id, session, exc, container.short_id)
                continue
            removed.append(container.id)
            if labels.get(SOCKET_DIR) and labels.get(HOST) == here:
                clear_socket_dir(labels[SOCKET_DIR])
    finally:
        if own:
            client.close()
    return removed
