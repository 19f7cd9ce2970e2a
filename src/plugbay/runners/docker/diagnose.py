"""What the Docker runner says when a plugin failed: the container's state and its last output lines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plugbay.errors import printable
from plugbay.runners.docker.logs import ContainerLogStream

DIAG_LINES = 10


def describe_container(container_id: str, image: str, state: Mapping[str, Any] | None,
                       pumps: Mapping[str, ContainerLogStream], client: Any) -> str:
    """The state (exit code, OOM kill, engine error) and last stdout/stderr lines of a container.

    ``state`` is the container's engine State (None: it no longer exists); the
    lines come from the runner's log streams, or from the engine for a reattached
    container (whose output is not followed).
    """
    if not container_id:
        return f"container for image {image!r} was never created"
    if state is None:
        return f"container {container_id[:12]} ({image}) no longer exists"
    parts = [f"container {container_id[:12]} ({image}): state {state.get('Status')}"]
    if state.get("Status") in ("exited", "dead"):
        parts.append(f"exit code {state.get('ExitCode')}")
    parts.append(f"OOMKilled={bool(state.get('OOMKilled'))}")
    if state.get("Error"):
        parts.append(f"engine error: {state['Error']}")
    text = ", ".join(parts)
    for which in ("stderr", "stdout"):
        lines = last_lines(container_id, which, pumps, client)
        text += f"\n  last {which} lines:\n" + ("\n".join("    " + printable(line) for line in lines) or "    (none)")
        pump = pumps.get(which)
        if pump is not None and pump.error:
            text += f"\n  ({pump.error})"
    return text


def last_lines(container_id: str, which: str, pumps: Mapping[str, ContainerLogStream], client: Any) -> list[str]:
    """The last DIAG_LINES lines of ``which`` (stdout/stderr): from its log stream, else asked of the engine."""
    pump = pumps.get(which)
    if pump is not None:
        return list(pump.tail)[-DIAG_LINES:]
    try:
        raw = client.api.logs(container_id, stdout=which == "stdout", stderr=which == "stderr", tail=DIAG_LINES)
    except Exception:  # noqa: BLE001 - diagnosis is best effort
        return []
    return [str(line) for line in raw.decode("utf-8", "replace").splitlines()]
