"""Docker engine access for the Docker runner: connecting, typed errors, labels, sweeping.

A container's owner is the host session in its ``plugbay.session`` label and,
once another host process reattached to it, the session recorded in its name
(``<name>_owner_<session>.<start>``: labels cannot change after creation, names can).
A session is alive while its process (the pid in the session id, with the same
start time) runs on this machine.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from plugbay.errors import ConfigError, RunnerError
from plugbay.core.transport.sockets import give_to_group, group_id
from plugbay.core.transport.tempdirs import MARKER as OWNER_MARKER
# the client and its requests' errors live in connect; named here too, where callers import them from
from plugbay.runners.docker.connect import ENGINE_TIMEOUT as ENGINE_TIMEOUT, engine as engine
from plugbay.runners.docker.connect import engine_call as engine_call, engine_failures as engine_failures
from plugbay.runners.docker.connect import engine_silent as engine_silent, engine_unreachable as engine_unreachable
from plugbay.runners.docker.connect import require_sdk as require_sdk

_log = logging.getLogger("plugbay.runners.docker")

CONTAINER_SOCKET_DIR = "/plugbay/sock"
# Group given to the socket folder when the host runs as root (gid 0 would put
# the container user in the root group); Dockerfile.plugin's user has this gid.
DEFAULT_ROOT_SOCKET_GID = 10001
SOCKET_DIR = "plugbay.socket-dir"
SOCKET_TOKEN = "plugbay.socket-token"  # the content of the marker file plugbay wrote there
SOCKET_OWNED = "plugbay.socket-owned"  # "true": the runner made the folder (its kill removes it)
SOCKET_MARKER = ".plugbay-socket-dir"
SOCKET_DIR_PREFIX = "plugbay-docker-"  # the runner's own socket folders: make_tempdir(SOCKET_DIR_PREFIX)


def transport_settings(transport: str, container_port: int, gid: int | None) -> tuple[dict[str, str], dict[str, Any]]:
    """The environment and create() arguments that put the plugin's address where the host reaches it.

    unix: the socket folder (bind-mounted by the caller at CONTAINER_SOCKET_DIR,
    group ``gid``) and no network at all, TMPDIR there too unless the caller's env names one (go-plugin
    <= 1.4 puts its socket in $TMPDIR); tcp: PLUGBAY_LISTEN on the container's interfaces, published on
    127.0.0.1 only (nothing is ever dialed on a bridge), and no host folder: TMPDIR is left alone.
    """
    if transport == "unix":
        env = {"PLUGIN_UNIX_SOCKET_DIR": CONTAINER_SOCKET_DIR, "TMPDIR": CONTAINER_SOCKET_DIR,
               "PLUGIN_UNIX_SOCKET_GROUP": str(gid)}
        return env, {"network_mode": "none", "group_add": [str(gid)]}
    return ({"PLUGBAY_LISTEN": f"tcp:0.0.0.0:{container_port}"},
            {"ports": {f"{container_port}/tcp": ("127.0.0.1", None)}})


def check_runtime(info: dict[str, Any] | None, runtime: str) -> None:
    """Refuse ``runtime`` unless the engine whose ``docker info`` answer is ``info`` has it (None: refused)."""
    if info is None:
        raise RunnerError(
            f"the Docker engine refused to tell its runtimes (docker info), so runtime {runtime!r} cannot be"
            " checked: allow GET /info (a socket proxy's INFO=1), or drop the runtime option.")
    runtimes = info.get("Runtimes")
    known = sorted(runtimes) if isinstance(runtimes, dict) else []
    if runtime not in known:
        raise RunnerError(
            f"the Docker engine has no runtime {runtime!r} (it has {known}). Install it and"
            " register it under \"runtimes\" in /etc/docker/daemon.json, then restart dockerd;"
            " or drop the runtime option."
        )


def create_container(client: Any, args: dict[str, Any], extra: Iterable[str] = ()) -> str:
    """``client.containers.create(**args)`` minus the inspect the SDK makes after it; the new id.

    The same arguments (and ``extra_create_args``) are understood: the SDK's own
    conversion turns them into the create request. Arguments it cannot convert are
    a ConfigError naming ``extra`` (the caller's extra_create_args keys).
    """
    from docker.errors import APIError, DockerException

    try:
        try:  # private to the SDK (docker 7.x): fall back to the public call if it moves
            from docker.models.containers import _create_container_args
        except ImportError:
            return str(client.containers.create(**args).id)
        # the SDK's containers.create() has no stop_timeout (its create request has): added past the conversion
        create_args = _create_container_args({**{k: v for k, v in args.items() if k != "stop_timeout"},
                                              "version": client.api.api_version})
        if args.get("stop_timeout") is not None:
            create_args["stop_timeout"] = args["stop_timeout"]
    except APIError:
        raise  # the engine's answer: the caller words it
    except (DockerException, TypeError, ValueError, AttributeError) as exc:
        # the SDK's conversion of the arguments failed: an option or extra_create_args is not what it takes
        raise ConfigError(
            f"the docker SDK refused the container's create arguments ({type(exc).__name__}: {exc}); check"
            f" the DockerRunner options and extra_create_args {sorted(extra)} (keyword arguments of docker's"
            " containers.create, with the value types it documents)") from exc
    return str(client.api.create_container(**create_args)["Id"])


def end_container(api: Any, container_id: str, *, grace: float, remove: bool,
                  inspect: Callable[[], dict[str, Any] | None],
                  stopped: Callable[[dict[str, Any]], None]) -> bool:
    """Stop a container (thawed first: a frozen one ignores SIGTERM; unless ``grace`` is 0: SIGKILL while
    paused) and remove it; True once it is known gone (removed, here or elsewhere).

    ``stopped`` gets its last State once it has stopped, before the removal: an engine lost
    in the removal leaves the caller that state. A failing engine gets a forced removal as the
    last resort, and a warning saying how to remove the container by hand if even that fails:
    kill() counts as done once it was asked, so this is the only try it gets.
    """
    from docker.errors import APIError, NotFound

    failed = engine_failures()
    bound = getattr(api, "timeout", None)  # each request's (the client's); the stop's is that plus the grace

    def removal() -> None:
        engine_call(lambda: api.remove_container(container_id, force=True, v=True), "remove the container", bound)

    try:
        state = inspect() or {}
        if state.get("Paused") and grace <= 0:
            # No grace (a plugin that stopped answering): SIGKILL while still frozen, which it acts on as it
            # thaws, so it runs nothing more; a thaw first let it finish the calls already sent to it
            try:
                engine_call(lambda: api.kill(container_id), "kill the paused container", bound)
                state = inspect() or state
            except APIError as exc:  # an engine that kills no paused container: thawed and stopped below
                if isinstance(exc, NotFound):
                    raise
                _log.debug("killing paused container %s: %s", container_id[:12], exc)
        if state.get("Paused"):
            engine_call(lambda: api.unpause(container_id), "unpause the container", bound)
        if state.get("Running"):
            stop = max(0, math.ceil(grace))
            engine_call(lambda: api.stop(container_id, timeout=stop), "stop the container",
                        None if bound is None else bound + stop)
        final = inspect() or state
        if final:
            stopped(final)
        if remove:
            removal()
        return remove
    except NotFound:
        return True
    except failed as exc:
        if _removed_elsewhere(exc, inspect, bound):
            return True
        try:
            removal()
            return True
        except NotFound:
            return True
        except failed as exc:
            if _removed_elsewhere(exc, inspect, bound):
                return True
            _log.warning("container %s could not be removed: %s; remove it with `docker rm -f"
                         " %s` or plugbay.runners.docker.sweep() once the engine answers",
                         container_id[:12], exc, container_id[:12])
            return False


def _removed_elsewhere(exc: BaseException, inspect: Callable[[], dict[str, Any] | None], bound: float | None) -> bool:
    """Whether the engine refused because another caller (start()'s clean-up and a kill() both end the
    container) is removing it already; if so, once that removal is done, as ours would be. Waited for as
    long as one request of ``bound`` (the client's: the runner's engine_timeout) may take: the other
    removal is one such request, by the same runner, so it has ended or given up (and warned) by then."""
    if getattr(exc, "status_code", None) != 409 or "already in progress" not in str(exc):
        return False
    deadline = time.monotonic() + (ENGINE_TIMEOUT if bound is None else bound)
    try:
        while inspect() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    except Exception:  # noqa: BLE001 - the other removal's result is that caller's to report
        pass
    return True


_ALL_INTERFACES = ("", "0.0.0.0", "::")


def published_port(container: Any, port: int) -> int | None:
    """The 127.0.0.1 host port a container port is published on; None once the container stopped.

    The engine drops a stopped container's port bindings: for a plugin that exited at once its exit
    (code, stderr, via the runner's wait and diagnose) is the failure to report, not a missing port.
    """
    container.reload()
    bindings = (container.attrs["NetworkSettings"]["Ports"] or {}).get(f"{port}/tcp") or []
    for binding in bindings:
        if binding.get("HostIp") == "127.0.0.1" and binding.get("HostPort"):
            return int(binding["HostPort"])
    if not (container.attrs.get("State") or {}).get("Running", True):
        return None
    # docker 20.10 reports plugbay's own publication as 127.0.0.1; "" is how some engines report all interfaces
    if any(binding.get("HostIp") in _ALL_INTERFACES for binding in bindings):
        raise RunnerError(f"container port {port} is published on all interfaces (bindings: {bindings}), so other"
                          " machines can reach the plugin; plugbay dials only a port published on 127.0.0.1."
                          " Start the plugin with plugbay's DockerRunner (it publishes on 127.0.0.1 only), or"
                          f" publish the port as `-p 127.0.0.1::{port}`")
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


def host_gid(group: str | None) -> int | None:
    """A host group (name or gid, as ClientConfig.unix_socket_group gives it) as a gid."""
    if not group:
        return None
    return group_id(group, "give unix_socket_group a group name or numeric gid")


def root_socket_gid() -> int:
    """The socket folder's group for a root host: DEFAULT_ROOT_SOCKET_GID, if no host group has it.

    Handing the folder to a gid that is a real group on the host would let that
    group's members reach the plugin's socket, so that is refused.
    """
    import grp

    try:
        existing = grp.getgrgid(DEFAULT_ROOT_SOCKET_GID).gr_name
    except KeyError:
        return DEFAULT_ROOT_SOCKET_GID
    raise ConfigError(
        f"the default socket folder group {DEFAULT_ROOT_SOCKET_GID} is host group {existing!r}, whose"
        " members could then reach the plugin's socket. Pass DockerRunner(socket_gid=<a gid no host"
        " user has, matching the image's user>) or ClientConfig(unix_socket_group=...)")


def prepare_socket_dir(path: str, gid: int | None = None) -> int:
    """Let a container user in a supplementary group ``gid`` create sockets in ``path``.

    The container user is often non-root with every capability dropped, so
    ownership alone decides: group rwx plus setgid (sockets inherit the group).
    """
    from plugbay.errors import PermissionDeniedError

    gid = gid if gid is not None else (os.getgid() or root_socket_gid())
    try:
        give_to_group(path, gid, 0o2770)
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
    # Only sockets, plugbay's markers and an empty folder are removed: the folder
    # may be a caller's, and anything else in it is not ours to delete. It is opened
    # once, refusing a symlink, and emptied through that descriptor: a symlink put
    # in its place after it was proven leads nowhere.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        _clear_entries(fd)
        # the maker's marker goes last, only from a folder nothing else is left in: a folder the
        # plugin left a temp file in keeps it, so the temp sweep (plugbay sweep --temp) can still
        # prove it stale and remove it once its maker is gone
        if [entry.name for entry in os.scandir(fd)] == [OWNER_MARKER]:
            _clear_entries(fd, (OWNER_MARKER,))
    finally:
        os.close(fd)
    try:
        os.rmdir(path)  # a symlink there now is not removed: rmdir refuses one
    except OSError:
        pass


def give_back_socket_dir(path: str, before: os.stat_result) -> None:
    """A caller's socket folder as it was (``before``: its lstat when given): plugbay's sockets and
    markers go, and its mode and group (prepare_socket_dir's 2770 and socket group) come back.
    Only the very folder it was (device and inode), reached without following a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            return
        _clear_entries(fd)
        if now.st_gid != before.st_gid:
            os.fchown(fd, -1, before.st_gid)
        os.fchmod(fd, stat.S_IMODE(before.st_mode))
    except OSError as exc:
        _log.debug("could not give socket folder %s back as it was: %s", path, exc)
    finally:
        os.close(fd)


def _clear_entries(fd: int, markers: tuple[str, ...] = (SOCKET_MARKER,)) -> None:
    """Remove the sockets and ``markers``: the maker's (OWNER_MARKER) stays by default, see clear_socket_dir."""
    for entry in os.scandir(fd):
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISSOCK(mode) or (entry.name in markers and stat.S_ISREG(mode)):
                os.unlink(entry.name, dir_fd=fd)
        except OSError:
            pass


def end_socket_dir(path: str, labels: dict[str, str]) -> str | None:
    """Free the socket folder of a removed container; why it is not proven plugbay's, if it is not (then untouched).

    A folder the runner made (label SOCKET_OWNED, plugbay's folder name) goes whole, as the plugin's
    TMPDIR may hold its temp files; any other (a caller's) keeps all but sockets and plugbay's markers.
    """
    unproven = socket_dir_unproven(path, labels)
    if unproven is not None:
        return unproven
    if labels.get(SOCKET_OWNED) == "true" and os.path.basename(path).startswith(SOCKET_DIR_PREFIX):
        shutil.rmtree(path, ignore_errors=True)  # refuses a symlink swapped in for the folder; follows none inside
    else:
        clear_socket_dir(path)
    return None
