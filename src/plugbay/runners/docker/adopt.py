"""Reattach proof for the Docker runner: is the container in the reattach data one plugbay made?

Reattach data is untrusted. The container must exist, carry plugbay's
``plugbay.managed=true`` label, the digest of the data's reattach secret
(runners.reattachkey: its id is no secret) and, when the data names a socket folder, be
labelled with that folder and the marker plugbay wrote in it; otherwise nothing
is touched (plugbay never stops or removes what it cannot prove it made). The data's
transport and port must be the ones the container was started with (its labels).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from plugbay.core.protocol.handshake import is_tcp_port
from plugbay.errors import ReattachError, RunnerError
from plugbay.runners.docker.engine import engine_call, socket_dir_unproven
from plugbay.runners.reattachkey import DIGEST, digest, secret_unproven
from plugbay.runners.session import MANAGED, host_session_id, owner_name

# what the engine takes as a container's id (12-64 hex) or name: the id goes into the request's path,
# so a '/' in untrusted data would reach other endpoints ('x/../../images/NAME' inspects an image)
_CONTAINER_REF = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}")
# an image reference as reattach_data() writes it: a name[:tag] or an image id, never a pin (its '@'
# part is split off into the digest check when the runner is made)
_IMAGE_REF = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_./:-]{0,254}")
IMAGE = "plugbay.image"  # the image name the runner was given; the container runs that image's checked id
TRANSPORT = "plugbay.transport"  # what the plugin was started to listen on: a reattach must say the same
PORT = "plugbay.container-port"  # the tcp transport's port in the container (the one published)


def is_container_ref(text: str) -> bool:
    """Whether ``text`` is a container id or name the engine's request path may carry as it is."""
    return bool(_CONTAINER_REF.fullmatch(text))


def _shown(container_ref: str) -> str:
    """A container id as docker shows it (12 digits); a name whole."""
    return container_ref[:12] if re.fullmatch(r"[0-9a-f]{13,64}", container_ref) else container_ref


def reattach_id(data: Mapping[str, Any]) -> str:
    """The container id the reattach data names (not yet proven plugbay's)."""
    container_id = str(data.get("id") or "")
    if not container_id:
        fields = sorted(str(key)[:40] for key in data)[:20]  # not their values: one may be the reattach secret
        raise ReattachError(f"DockerRunner reattach data needs the container 'id', got the fields {fields};"
                            " pass what Client.reattach_config() / runner.reattach_data() returned")
    if not isinstance(data.get("id"), str) or not is_container_ref(container_id):
        raise ReattachError(f"reattach data names container {container_id[:80]!r}, which is neither a container id"
                            " (12-64 hex digits) nor a container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*); pass the JSON"
                            " that Client.reattach_config().to_json() produced")
    return container_id


def reattach_image(data: Mapping[str, Any]) -> str:
    """The reattach data's image, checked (ReattachError): a stand-in only, as the runner's image is
    read from the container once it is proven plugbay's (container_image)."""
    image = data.get("image")
    if image is None:
        return "unknown"
    if not isinstance(image, str) or not _IMAGE_REF.fullmatch(image):
        raise ReattachError(f"reattach data names image {str(image)[:80]!r}, which is no image name[:tag] or id"
                            " as plugbay writes it; pass the JSON that Client.reattach_config().to_json() produced")
    return image


def container_image(container: Any) -> str:
    """The image of a proven container: the name plugbay labelled it with, else the engine's Config.Image."""
    attrs = container.attrs if isinstance(container.attrs, dict) else {}
    labels = attrs.get("Config", {}).get("Labels") or {}
    image = labels.get(IMAGE) or attrs.get("Config", {}).get("Image")
    return str(image) if image else "unknown"


def reattach_transport(data: Mapping[str, Any], transports: tuple[str, ...]) -> tuple[str, int]:
    """The reattach data's (transport, container_port), checked: it is untrusted input."""
    transport, port = data.get("transport", "unix"), data.get("container_port") or 4000
    if transport not in transports or not is_tcp_port(port):
        raise ReattachError(f"reattach data for a container needs 'transport' in {transports} and"
                            f" 'container_port' a TCP port (1-65535), not {transport!r} and {port!r}; pass"
                            " the JSON that Client.reattach_config().to_json() produced")
    return str(transport), port


def reattach_labels(secret: str, transport: str, container_port: int) -> dict[str, str]:
    """The labels a reattach proves a container by (the secret's digest) and checks its data against."""
    return {DIGEST: digest(secret), TRANSPORT: transport, PORT: str(container_port)}


def prove_container(client: Any, container_id: str, data: Mapping[str, Any], transport: str, port: int) -> Any:
    """The running container ``container_id``, once proven the one plugbay wrote the reattach ``data`` for
    (to be reached by ``transport`` on ``port``); RunnerError/ReattachError otherwise."""
    from docker.errors import NotFound

    try:
        container = engine_call(lambda: client.containers.get(container_id), "find the container")
    except NotFound:
        raise RunnerError(f"cannot reattach: container {_shown(container_id)} no longer exists;"
                          " start the plugin again") from None
    shown = _shown(container_id)
    labels = _container_labels(container, container_id)
    why = None if labels.get(MANAGED) == "true" else f"it lacks plugbay's label {MANAGED}=true"
    refused = (secret_unproven(data, labels.get(DIGEST), f"container {shown}", "label",
                               f"docker rm -f {container.short_id}") if why is None else None)
    if refused is not None:
        raise refused
    socket_dir = data.get("host_socket_dir")
    if why is None and socket_dir is not None:
        why = socket_dir_unproven(socket_dir, labels)
    if why is not None:
        raise ReattachError(
            f"cannot reattach to container {shown}: {why}, so plugbay cannot prove it"
            " started it (and its socket folder) for this plugin and leaves them alone. Pass the JSON"
            " that Client.reattach_config().to_json() produced for a running plugin")
    _check_transport(container_id, labels, transport, port)
    if container.status == "paused":  # the handshake and every call would hang until it is unpaused
        short = container.short_id  # the id: the data may give a name, which a claim renames
        raise RunnerError(f"cannot reattach: container {short} is paused; unpause it (`docker unpause {short}`)"
                          f" and reattach again, or end it (`docker rm -f {short}`) and start the plugin again")
    if container.status != "running":
        code = container.attrs["State"].get("ExitCode")  # a dict: _container_labels checked it
        raise RunnerError(f"cannot reattach: container {shown} is {container.status}"
                          f" (exit code {code}); start the plugin again")
    return container


def _check_transport(container_id: str, labels: Mapping[str, str], transport: str, port: int) -> None:
    """ReattachError unless the proven container was started for the data's transport (and tcp port): the
    host would dial a socket or port the plugin never listens on, and fail with a misleading reason."""
    said = labels.get(TRANSPORT)
    if said == transport and (transport != "tcp" or labels.get(PORT) == str(port)):
        return
    wanted = f"transport {transport!r}" + (f" on container port {port}" if transport == "tcp" else "")
    started = (f"transport {said!r}" + (f" on container port {labels.get(PORT)}" if said == "tcp" else "")
               if said else "no transport its labels record")
    raise ReattachError(f"cannot reattach to container {_shown(container_id)}: the reattach data says {wanted}, but"
                        f" plugbay started it with {started} (its label {TRANSPORT}), so plugbay leaves it alone."
                        " Pass the JSON that Client.reattach_config().to_json() produced for it, unedited")


def _container_labels(container: Any, container_id: str) -> dict[str, str]:
    """The labels of what the engine answered, once it is shaped as a container's inspect (else ReattachError):
    the SDK would fail on a missing part with a bare KeyError, mid-way through the proof."""
    attrs = container.attrs if isinstance(container.attrs, dict) else {}
    state, config = attrs.get("State"), attrs.get("Config")
    labels = config.get("Labels") if isinstance(config, dict) else None
    if not (isinstance(attrs.get("Id"), str) and isinstance(state, dict) and isinstance(state.get("Status"), str)
            and isinstance(config, dict) and isinstance(labels, (dict, type(None)))):
        raise ReattachError(f"cannot reattach to container {_shown(container_id)}: the engine's answer for it is not"
                            " a container's (no Id, State or Config.Labels), so plugbay leaves it alone. Pass the"
                            " JSON that Client.reattach_config().to_json() produced for a running plugin")
    return {str(k): str(v) for k, v in (labels or {}).items()}


def claim(container: Any) -> tuple[str, str] | None:
    """Record this host as the container's owner, so a sweep does not take it from this host; return the
    (former name, claimed name) give_back() takes, None when the engine refused the rename."""
    before = str(container.name)
    claimed = owner_name(before, host_session_id())
    try:
        container.rename(claimed)
    except Exception:  # noqa: BLE001 - ownership marking is best effort
        return None
    return before, claimed


def give_back(client: Any, container_id: str, names: tuple[str, str]) -> None:
    """Hand a container this host claimed (claim()'s ``names``) back to its former owner, as this host leaves
    it running: a sweep judges one claimant only, and a host that reattached before this one may use it still.
    A container another host claimed since keeps that claim; the engine has no conditional rename, so only
    a claim in the moment between this inspect and the rename is lost."""
    before, claimed = names
    try:
        if str(client.api.inspect_container(container_id).get("Name", "")).lstrip("/") == claimed:
            client.api.rename(container_id, before)
    except Exception:  # noqa: BLE001 - best effort, as the claim (its name may be another container's now)
        pass
