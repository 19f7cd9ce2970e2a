"""What the Docker runner says when a plugin failed: the container's state and its last output lines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plugbay.core.protocol.hclog import shown_line
from plugbay.runners.docker.connect import engine_call
from plugbay.runners.docker.logs import ContainerLogStream

DIAG_LINES = 10
_OOM_CODE = 137  # 128 + SIGKILL: how the kernel's OOM killer ends a container's PID 1 (and `docker kill` too)


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
        text += f"\n  last {which} lines:\n" + ("\n".join("    " + shown_line(line) for line in lines) or "    (none)")
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


def oom_said(client: Any, container_id: str, code: int, final: Mapping[str, Any] | None, timeout: float) -> str:
    """"killed for memory (OOMKilled: mem_limit 64m)" when the engine says the kernel's OOM killer ended
    the container (exit code 137 reads exactly like `docker kill` otherwise); "" when not, or when it cannot
    tell. One inspect of the dead container, bounded by ``timeout`` of its own (a call's error waits for it),
    not the client's engine_timeout (``final``: its last State, kept by a kill() that removed it)."""
    if code != _OOM_CODE or client is None or not container_id:
        return ""
    api = client.api
    try:
        # the engine's inspect request with a read bound of its own (docker-py's inspect_container takes none)
        attrs = engine_call(lambda: api._result(api._get(api._url("/containers/{0}/json", container_id),
                                                         timeout=timeout), True), "inspect the container", timeout)
    except Exception:  # noqa: BLE001 - best effort: the exit code is said anyway
        attrs = {"State": final}
    state = attrs.get("State") if isinstance(attrs, Mapping) else None
    if not isinstance(state, Mapping) or state.get("OOMKilled") is not True:
        return ""
    host = attrs.get("HostConfig")
    if not isinstance(host, Mapping):  # only the kept State: the engine did not say what limit it had
        return "killed for memory (OOMKilled: the kernel's OOM killer; its mem_limit is unknown)"
    limit = host.get("Memory")
    if type(limit) is not int or limit <= 0:  # the engine's answer: a number, or nothing said
        return "killed for memory (OOMKilled: the kernel's OOM killer; the container had no mem_limit set)"
    return f"killed for memory (OOMKilled: mem_limit {_size(limit)})"


def _size(count: int) -> str:
    """A byte count as docker's mem_limit takes it: 64m, 1g, or bytes."""
    for unit, shift in (("g", 30), ("m", 20), ("k", 10)):
        if count % (1 << shift) == 0:
            return f"{count >> shift}{unit}"
    return f"{count} bytes"
