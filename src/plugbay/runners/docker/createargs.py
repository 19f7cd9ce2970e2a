"""What a DockerRunner's ``labels`` and ``extra_create_args`` may say: plugbay's own create arguments stay its own.

plugbay finds its containers by their ``plugbay.*`` labels (sweep, reattach), runs the image id it
checked, names the container (a reattach records its owner in the name), puts the go-plugin
variables in its environment, bind-mounts the socket folder, publishes the tcp port on 127.0.0.1
only, and makes the writable dirs tmpfs owned by the container's user. An ``extra_create_args`` key
that would replace one of these is refused (ConfigError naming the option to use); ``labels``,
``group_add`` and ``security_opt`` are merged under plugbay's own, and every other key is passed on
as given (it wins over the runner's option of the same name, such as ``mem_limit``), ``network_mode`` too,
or refused where docker would drop it or a tcp plugin could not be reached in it (check_network_args).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plugbay.errors import ConfigError

LABEL_PREFIX = "plugbay."
# key -> the DockerRunner option that sets it (and why plugbay keeps it)
_OWN = {
    "image": "image= or digest= (the container runs the image id plugbay checked)",
    "name": "name= (a reattach records its owner in the name)",
    "environment": "env= (the go-plugin variables must reach the plugin)",
    "mounts": "mounts= (the socket folder is bind-mounted there)",
    "volumes": "mounts= with 'SRC:DST[:ro]' strings (the socket folder is bind-mounted there)",
    "ports": "container_port= (plugbay publishes it on 127.0.0.1 only)",
    "user": "user= (the tmpfs owner and the socket group follow it)",
    "tmpfs": "tmpfs= or writable_dirs=",
}
_MERGED_LISTS = ("group_add", "security_opt")  # the socket group, no-new-privileges: kept, the caller's added


def checked_labels(labels: Any, where: str) -> dict[str, str]:
    """``labels`` as a dict, refused if not a mapping (or list of keys) or if a key is in plugbay's namespace
    (``where`` names the option in the error; PluginContainer's labels are checked here too)."""
    if isinstance(labels, (list, tuple)):  # as docker's containers.create takes them: keys with empty values
        labels = dict.fromkeys(labels, "")
    if not isinstance(labels, Mapping):
        raise ConfigError(f"{where} must be a mapping of label keys to values, got {labels!r}")
    taken = sorted(str(key) for key in labels if str(key).startswith(LABEL_PREFIX))
    if taken:
        raise ConfigError(f"{where} has label keys {taken}: keys starting with {LABEL_PREFIX!r} are"
                          " plugbay's own (sweep and reattach read them), so a container carrying them"
                          " could be taken for another; choose keys outside that prefix")
    return {str(key): str(value) for key, value in labels.items()}


def checked_extra_args(extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra_create_args`` checked against what plugbay must control (ConfigError naming the option to use)."""
    checked = dict(extra)
    for key in checked:
        if key in _OWN:
            raise ConfigError(f"DockerRunner extra_create_args[{key!r}] would replace what plugbay sets itself;"
                              f" use the runner's option {_OWN[key]}")
    if "labels" in checked:
        checked["labels"] = checked_labels(checked["labels"], "DockerRunner extra_create_args['labels']")
    for key in _MERGED_LISTS:
        value = checked.get(key)
        if value is not None and not isinstance(value, (list, tuple)):
            raise ConfigError(f"DockerRunner extra_create_args[{key!r}] must be a list (it is added to plugbay's"
                              f" own), got {value!r}")
    return checked


def check_network_args(extra: Mapping[str, Any], transport: str) -> None:
    """``network_mode`` in ``extra`` is honoured (the runner then joins no network of its own) or refused here:
    docker's containers.create drops it without a word when a ``network`` is given too (the runner's own, for
    tcp), and a tcp plugin in a mode no published port reaches could never be dialled."""
    mode, network = extra.get("network_mode"), extra.get("network")
    if mode is None:
        return
    if not isinstance(mode, str) or not mode:
        raise ConfigError(f"DockerRunner extra_create_args['network_mode'] must be a network mode as docker takes"
                          f" it ('bridge', a network's name, 'none', ...), got {mode!r:.80}")
    if network is not None and network != mode:
        raise ConfigError(f"DockerRunner extra_create_args gives network_mode={mode!r} and network={network!r}:"
                          " docker's containers.create would use network and drop network_mode; give one of them")
    if transport == "tcp" and (mode in ("host", "none") or mode.startswith("container:")):
        raise ConfigError(
            f"DockerRunner extra_create_args['network_mode'] = {mode!r} cannot serve transport='tcp': the engine"
            " publishes no port for a container in that mode (host networking discards published ports; 'none'"
            " and 'container:<id>' have none), and plugbay dials a tcp plugin only on its port published on"
            " 127.0.0.1. Use network= (a network plugbay made, or None for the engine's default bridge),"
            " extra_create_args={'network_mode': NAME} for a bridge network of your own, or transport='unix'"
            " for a container without a network")


def checked_options(labels: Any, extra: Mapping[str, Any] | None,
                    transport: str) -> tuple[dict[str, str], dict[str, Any]]:
    """A DockerRunner's ``labels=`` and ``extra_create_args=`` (for its ``transport``), checked."""
    checked = checked_extra_args(extra or {})
    check_network_args(checked, transport)
    return checked_labels(labels or {}, "DockerRunner labels="), checked


def add_extra_args(args: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Put ``extra`` (checked_extra_args's) into the create ``args``: plugbay's labels and list entries stay."""
    for key, value in extra.items():
        if key == "labels":
            args["labels"] = {**value, **args.get("labels", {})}
        elif key in _MERGED_LISTS:
            own = list(args.get(key) or [])
            args[key] = own + [item for item in value or () if item not in own] or None
        else:
            args[key] = value
