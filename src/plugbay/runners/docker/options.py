"""DockerRunner's constructor checks: each option's type and range, so a wrong one is a ConfigError naming it
before anything is created, not a TypeError or OverflowError from the docker SDK or os.chown() at start()."""

from __future__ import annotations

import math
import numbers
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from plugbay.core.protocol.checks import check_seconds, finite_float
from plugbay.core.protocol.handshake import is_tcp_port
from plugbay.errors import ConfigError
from plugbay.runners.command import check_env, check_text_env
from plugbay.runners.docker.engine import CONTAINER_SOCKET_DIR
from plugbay.runners.docker.hardening import ISOLATED_NETWORK
from plugbay.runners.options import flag, optional_int, optional_mapping, optional_str, optional_str_list, str_list

TRANSPORTS = ("unix", "tcp")
INT64_MAX = 2**63 - 1  # the engine's NanoCpus, Memory and PidsLimit are int64
# the engine's StopTimeout is whole seconds in a Go int: past 2**31 it wraps or is refused
MAX_STOP_TIMEOUT = 2**31
MAX_CPUS = INT64_MAX // 1_000_000_000
MAX_GID = 2**32 - 2  # gid_t; 2**32-1 is chown's "leave the group as it is"
# the engine's container name rule (daemon/names: ^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$): a name it refuses
# surfaced at start() as the engine's refusal
_NAME = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+")
# tmpfs size= as the kernel takes it (k, m, g, t, p, e or % of memory); a comma would add mount options
_SIZE = re.compile(r"[0-9]+[kKmMgGtTpPeE%]?")


def check_settings(opts: Mapping[str, Any]) -> dict[str, Any]:
    """Check DockerRunner's constructor arguments (``opts``: its locals); returns the image name and digest
    (a pinned ``name@sha256:...`` image is split into both) and the numbers and lists as kept: int and
    float (a numpy scalar or Fraction as given fails the engine's JSON), lists (a generator is read once)."""
    where = "DockerRunner "
    if opts["transport"] not in TRANSPORTS:
        raise ConfigError(f"DockerRunner transport must be one of {TRANSPORTS}, got {opts['transport']!r}")
    image, digest = opts["image"], opts["digest"]
    if not isinstance(image, str) or not image or "\0" in image:
        raise ConfigError(f"DockerRunner needs an image name, a non-empty str (e.g. 'plugbay-kv:latest'),"
                          f" got {image!r:.80}")
    digest = optional_str(digest, where + "digest", "sha256:<hex>")
    if "@" in image:  # name@sha256:...: a pinned reference is a digest check
        image, pinned = image.split("@", 1)
        if digest and digest != pinned:
            raise ConfigError(f"image is pinned to {pinned} but digest= says {digest}; give one of them")
        digest = pinned
    if digest is not None and not digest.startswith("sha256:"):
        raise ConfigError(f"image digest must look like 'sha256:<hex>', got {digest!r}")
    if not is_tcp_port(opts["container_port"]):
        raise ConfigError(f"DockerRunner container_port must be a port number (1-65535), got"
                          f" {opts['container_port']!r}")
    name = optional_str(opts["name"], where + "name", "kv-plugin", empty=True)  # "": a generated one
    if name and _NAME.fullmatch(name) is None:
        raise ConfigError(f"DockerRunner name {name!r} is not a container name the engine takes: two or more"
                          " letters, digits and _ . - , starting with a letter or digit after an optional '/'"
                          " (or None for a generated one)")
    if name and "_owner_" in name:  # sweeps read "_owner_<session>" in a name as the host that owns it
        raise ConfigError(f"DockerRunner name {name!r} contains '_owner_', which plugbay keeps for the owner"
                          " a reattach records in the name; choose a name without it")
    if opts["user"] is not None and not isinstance(opts["user"], str):
        raise ConfigError(f"DockerRunner user must be a str such as '1000' or '1000:1000', got {opts['user']!r}")
    return {"image": image, "digest": digest, **_check_limits(opts), **_check_lists(opts)}


def _memory_bytes(size: str) -> int:
    """The bytes a mem_limit string such as '256m' means to the engine client (whose parser reads it when
    the container is made: a size it cannot read failed only then); 0 when it is not one."""
    from plugbay.runners.docker.connect import require_sdk

    require_sdk()  # its parser is the SDK's: without it, say how to install it (not a bare ImportError)
    from docker.errors import DockerException
    from docker.utils import parse_bytes

    try:
        value = parse_bytes(size)
    except (DockerException, ValueError, IndexError, OverflowError):
        return 0
    return int(value) if isinstance(value, int) and value <= INT64_MAX else 0


def _check_limits(opts: Mapping[str, Any]) -> dict[str, Any]:
    where = "DockerRunner "
    optional_str(opts["runtime"], where + "runtime", "runsc")
    network = optional_str(opts["network"], where + "network", "plugbay-isolated", empty=True)
    if network and network != ISOLATED_NETWORK and opts["transport"] == "unix":  # it was dropped without a word
        # PluginContainer(transport='unix') refuses a network in the same words: one advice for both
        raise ConfigError(f"DockerRunner(transport='unix') runs the plugin with no network, but network={network!r}"
                          " asks for one; use transport='tcp' for a plugin that needs a network")
    mem = opts["mem_limit"]
    if mem is not None and not (isinstance(mem, str) and _memory_bytes(mem) > 0) and (
            isinstance(mem, bool) or not isinstance(mem, numbers.Integral) or not 0 < int(mem) <= INT64_MAX):
        raise ConfigError(f"DockerRunner mem_limit must be a size such as '256m' or a number of bytes > 0 (or None"
                          f" for no limit), got {mem!r:.80}")
    kept: dict[str, Any] = {"mem_limit": mem if mem is None or isinstance(mem, str) else int(mem)}
    kept["nano_cpus"] = optional_int(opts["nano_cpus"], where + "nano_cpus", 1, INT64_MAX,
                                     "billionths of a CPU (500_000_000 is half)")
    cpus = opts["cpus"]
    cpu_count = None if cpus is None else finite_float(cpus)
    if cpus is not None and (cpu_count is None or not 1e-9 <= cpu_count <= MAX_CPUS):
        raise ConfigError(f"DockerRunner cpus must be a positive number of CPUs from 1e-9 to {MAX_CPUS} (e.g. 0.5; the"
                          f" engine takes at most the host's CPUs), or None for no limit; got {cpus!r:.80}")
    kept["cpus"] = cpu_count
    kept["pids_limit"] = optional_int(opts["pids_limit"], where + "pids_limit", -1, INT64_MAX,
                                      "the most processes (-1: no limit)")
    kept["socket_gid"] = optional_int(opts["socket_gid"], where + "socket_gid", 0, MAX_GID,
                                      "the host group id of the socket folder")
    size = opts["tmpfs_size"]
    if not isinstance(size, str) or _SIZE.fullmatch(size) is None:
        raise ConfigError(f"DockerRunner tmpfs_size must be a size such as '64m' (a number with k, m, g, t, p or"
                          f" e, or a percentage of memory such as '10%'), got {size!r:.80}")
    stop = opts["stop_timeout"]
    stop_seconds = None if stop is None else finite_float(stop)
    if stop is not None and (stop_seconds is None or not 0 <= stop_seconds < MAX_STOP_TIMEOUT):
        raise ConfigError(f"DockerRunner stop_timeout must be seconds (a number >= 0) or None, got {stop!r}")
    kept["stop_timeout"] = stop_seconds
    # a socket timeout: a day at most (the SDK hands it to every request's connect and read)
    kept["engine_timeout"] = check_seconds(opts["engine_timeout"], where + "engine_timeout", 10.0, 86400.0)
    for option in ("read_only", "no_new_privileges"):
        flag(opts[option], where + option)
    return kept


def _check_lists(opts: Mapping[str, Any]) -> dict[str, Any]:
    where = "DockerRunner "
    dirs = opts["writable_dirs"]
    kept: dict[str, Any] = {
        "writable_dirs": str_list([dirs] if isinstance(dirs, str) else dirs, where + "writable_dirs", ("/tmp",)),
        "cap_drop": str_list(opts["cap_drop"], where + "cap_drop", ("ALL",)),
        "entrypoint": optional_str_list(opts["entrypoint"], where + "entrypoint", ("/plugin", "--serve")),
        "command": optional_str_list(opts["command"], where + "command", ("--verbose",))}
    if opts["env"] is not None:
        check_env(opts["env"], where + "env")
        check_text_env(opts["env"], where + "env")
    tmpfs = opts["tmpfs"]
    if tmpfs is not None and (not isinstance(tmpfs, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tmpfs.items())):
        raise ConfigError(f"DockerRunner tmpfs must be a dict of container path -> mount options such as"
                          f" {{'/cache': 'size=16m'}} (or None), got {tmpfs!r:.80}")
    mounts = opts["mounts"]
    if isinstance(mounts, (str, bytes)) or not isinstance(mounts, (list, tuple)) or not all(
            isinstance(m, (str, Mapping)) for m in mounts):
        raise ConfigError(f"DockerRunner mounts must be a list of 'SOURCE:TARGET[:ro]' strings or docker Mounts,"
                          f" got {mounts!r:.80}")
    if opts["transport"] == "unix":
        _check_socket_dir_kept([*kept["writable_dirs"], *(tmpfs or {})])
    optional_mapping(opts["extra_create_args"], where + "extra_create_args", "{'shm_size': '64m'}")
    labels = opts["labels"]
    if labels is not None and not isinstance(labels, (Mapping, list, tuple)):
        raise ConfigError(f"DockerRunner labels= must be a mapping of label keys to values, got {labels!r:.80}")
    return kept


def _check_socket_dir_kept(targets: list[str]) -> None:
    """The unix transport's socket folder is bind-mounted at CONTAINER_SOCKET_DIR: a tmpfs there hides it (the
    handshake then names a socket the host cannot see), one inside it makes a folder in the host's. A tmpfs
    above it (/plugbay) is fine: the engine mounts the deeper bind mount over it."""
    for target in targets:
        if not target.startswith("/"):
            continue  # refused as not absolute (hardening.tmpfs_mounts)
        path = "/" + posixpath.normpath(target).lstrip("/")  # "//plugbay/./sock/" too
        if path == CONTAINER_SOCKET_DIR or path.startswith(CONTAINER_SOCKET_DIR + "/"):
            raise ConfigError(f"DockerRunner writable_dirs/tmpfs entry {target!r} would cover the unix transport's"
                              f" socket folder, bind-mounted at {CONTAINER_SOCKET_DIR} (the host could not reach"
                              " the plugin); choose a path outside it, or use transport='tcp'")


def cpus_to_nano(cpus: float | None, nano_cpus: int | None) -> int | None:
    """``cpus`` (checked by check_settings) as the engine's NanoCpus."""
    if cpus is None:
        return nano_cpus
    if nano_cpus is not None:
        raise ConfigError("give cpus= or nano_cpus=, not both (cpus=0.5 is nano_cpus=500_000_000)")
    return max(1, math.floor(cpus * 1_000_000_000))
