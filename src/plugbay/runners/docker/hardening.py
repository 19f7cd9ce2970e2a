"""The Docker runner's confinement defaults: writable tmpfs folders and the isolated network.

A plugin container gets a read-only root filesystem with small tmpfs folders
where it may write (``/tmp`` by default), a pids limit, and, with the ``tcp``
transport, a plugbay-created bridge network on which containers cannot reach
each other (``com.docker.network.bridge.enable_icc=false``): published ports
still reach the plugin from the host's 127.0.0.1, but one plugin cannot dial
another. The network is created on first use, labelled, and reused; the sweep
removes one that plugbay made (made_by_plugbay()) once no container is on it.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from plugbay.errors import ConfigError, NetworkSweptError, RunnerError
from plugbay.runners.docker.engine import engine_call
from plugbay.runners.session import MANAGED

ISOLATED_NETWORK = "plugbay-isolated"
ICC_OPTION = "com.docker.network.bridge.enable_icc"
# The mark of a network plugbay created, its value the network's name. plugbay.managed=true alone is no proof:
# plugbay joins a network a user made with it (and ICC off), and networks of earlier releases have it alone.
MADE_NETWORK = "plugbay.network"
DEFAULT_PIDS_LIMIT = 256
DEFAULT_TMPFS_SIZE = "64m"
# how many times a start makes its network when a sweep removes it meanwhile (ensure_network, the runner)
NETWORK_TRIES = 3
_create_lock = threading.Lock()
# (DOCKER_HOST, name) -> id of the network ensure_network() verified: a network's labels and options
# cannot change, so each start reuses the id instead of asking the engine again; a network removed
# (or made anew by someone else) since has another id or none, which the engine then refuses.
_verified: dict[tuple[str, str], str] = {}


def log_config() -> dict[str, Any]:
    """Bounded logs (a fresh dict each time): the engine keeps a long-running plugin's output on the
    host's disk. PluginContainer's containers get the same."""
    return {"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}}


def tmpfs_mounts(writable_dirs: Sequence[str], size: str, extra: Mapping[str, str],
                 user: str | None = None) -> dict[str, str]:
    """tmpfs folders writable by the container's ``user``, then the caller's own tmpfs entries.

    mode=1777 lets any user write where the image has no such folder; over a
    folder the image has, the engine keeps that folder's owner and mode, so a
    numeric non-root ``user`` ("uid[:gid]") is also made the tmpfs's owner.
    """
    for folder in writable_dirs:
        if not folder.startswith("/"):
            raise ConfigError(f"writable_dirs entries must be absolute container paths, got {folder!r}")
    owner = ""
    uid, _, gid = (user or "").partition(":")
    if uid.isascii() and uid.isdigit() and uid != "0" and (not gid or (gid.isascii() and gid.isdigit())):
        owner = f",uid={uid},gid={gid or uid}"
    out = {folder: f"rw,nosuid,nodev,size={size},mode=1777{owner}" for folder in writable_dirs}
    out.update(extra)
    return out


def network_id(client: Any, name: str, *, again: bool = False) -> str:
    """The id of the isolated bridge ``name`` (ensure_network()), verified once per engine and process.

    ``again``: the id known is stale (the engine no longer has that network): verify anew.
    Creating by id keeps a network swapped in under the same name from being joined unverified.
    """
    key = (os.environ.get("DOCKER_HOST", ""), name)
    known = None if again else _verified.get(key)
    if known is None:
        known = _verified[key] = ensure_network(client, name)
    return known


def stale_network(exc: Any, args: Mapping[str, Any], name: str) -> bool:
    """Whether the engine refused a container because its network ``name``, verified as the id in ``args``, is
    gone: at the create the engine names the id, at the start (the network removed since the create: a
    sweep, say) the name."""
    network = args.get("network")
    return bool(network) and getattr(exc, "status_code", None) == 404 and \
        any(f"network {which} not found" in str(exc) for which in (network, name))


def ensure_network(client: Any, name: str) -> str:
    """The id of the isolated bridge ``name``: reused when plugbay made it, created when missing (again when
    a sweep removed it between its create and the look at it, up to NETWORK_TRIES times)."""
    from docker.errors import APIError

    with _create_lock:
        try:
            for _ in range(NETWORK_TRIES):
                net = _found_or_made(client, name)
                if net is not None:
                    break
            else:
                raise network_swept(name)
        except APIError as exc:  # the engine's reason, not the NotFound of a look up after it
            raise _refused(name, exc) from exc
    attrs = net.attrs or {}
    if (attrs.get("Labels") or {}).get(MANAGED) != "true" or \
            (attrs.get("Options") or {}).get(ICC_OPTION) != "false":
        raise RunnerError(
            f"Docker network {name!r} exists but was not created by plugbay with inter-container"
            f" traffic disabled ({ICC_OPTION}=false), so plugins on it could reach each other. Remove it"
            f" (`docker network rm {name}`) to let plugbay create it, or pass network= another name.")
    return str(net.id)


def _found_or_made(client: Any, name: str) -> Any:
    """The network ``name``, made when missing; None when it went between its create and the look at it."""
    from docker.errors import APIError, NotFound

    try:
        return engine_call(lambda: client.networks.get(name), "look up the plugin network")
    except NotFound:
        pass
    try:
        # the low-level create: client.networks.create() looks the new network up itself, and a NotFound
        # there (a sweep removed it) would read as the engine refusing to make it
        made = engine_call(lambda: client.api.create_network(
            name, driver="bridge", check_duplicate=True, labels={MANAGED: "true", MADE_NETWORK: name},
            options={ICC_OPTION: "false"}), "create the plugin network")
        key = str(made.get("Id") or name)
    except APIError as exc:
        if not _made_meanwhile(exc):
            raise
        key = name
    try:
        return engine_call(lambda: client.networks.get(key), "look up the plugin network")
    except NotFound:
        return None


def network_swept(name: str) -> NetworkSweptError:
    return NetworkSweptError(
        f"the Docker network {name!r} plugbay made for the plugin was removed each of {NETWORK_TRIES} times"
        " before its container could join it: a sweep (`plugbay sweep --docker`, sweep() or sweep_networks())"
        " without a grace (0), or one shorter than this start's steps took, raced the start. Sweep with the"
        " default grace (60 s) or when no plugin is starting, or start again.")


def made_by_plugbay(attrs: Mapping[str, Any]) -> bool:
    """Whether a network (the engine's listing of it) is one ensure_network() created: its labels, name,
    driver and options all as that gave them."""
    labels = attrs.get("Labels") or {}
    return labels.get(MANAGED) == "true" and labels.get(MADE_NETWORK) == attrs.get("Name") and \
        attrs.get("Driver") == "bridge" and (attrs.get("Options") or {}).get(ICC_OPTION) == "false"


def _made_meanwhile(exc: Any) -> bool:
    """Whether the engine refused the network because another host (or process) created it since our look up."""
    return getattr(exc, "status_code", None) == 409 or "already exists" in str(exc)


def _refused(name: str, exc: Any) -> RunnerError:
    return RunnerError(
        f"the Docker engine refused to create or look up the plugin network {name!r}: {exc.explanation or exc}."
        " Free what it names (out of address pools: remove unused networks, `docker network prune`, or add"
        " default-address-pools to /etc/docker/daemon.json), or pass DockerRunner(network=) a network"
        " plugbay made, or None for the engine's default bridge (where containers reach each other).")


def hardened_args(runner: Any, image_user: str | None) -> dict[str, Any]:
    """The create arguments a DockerRunner's limits and hardening options make (None ones left out)."""
    security_opt = ["no-new-privileges:true"] if runner.no_new_privileges else []
    args: dict[str, Any] = {"read_only": runner.read_only, "cap_drop": runner.cap_drop or None,
                            "security_opt": security_opt or None}
    for key, value in (("user", runner.user), ("runtime", runner.runtime), ("mem_limit", runner.mem_limit),
                       ("nano_cpus", runner.nano_cpus), ("entrypoint", runner.entrypoint),
                       ("command", runner.command),
                       ("tmpfs", tmpfs_mounts(runner.writable_dirs, runner.tmpfs_size, runner.tmpfs,
                                              runner.user or image_user) or None),
                       ("pids_limit", runner.pids_limit),
                       # the engine's StopTimeout is whole seconds: rounded up, never shorter than asked
                       ("stop_timeout", None if runner.stop_timeout is None else math.ceil(runner.stop_timeout))):
        if value is not None:
            args[key] = value
    args["log_config"] = log_config()
    if runner.mem_limit is not None:
        args["memswap_limit"] = runner.mem_limit  # no swap: the limit is the limit
    return args
