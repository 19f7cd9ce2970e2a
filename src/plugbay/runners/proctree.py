"""A process plugin's descendants and orphans, found through /proc by plugbay's markers.

The process runner gives every plugin two environment variables, which its
children inherit: ``PLUGBAY_PLUGIN_ID`` (random per plugin) and
``PLUGBAY_HOST_SESSION`` (the host's session id and start ticks). A grandchild
that left the plugin's process group (its own session) escapes ``killpg``;
the process runner's kill() also finds it (:func:`family`: parent links and the plugin id) and
kills it with the plugin. :func:`sweep` ends the plugins (and their children)
of hosts that are gone, e.g. SIGKILLed before they could kill them. Only
processes that carry the marker in ``/proc/PID/environ`` are ever signalled.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from pathlib import Path

from plugbay.runners.session import host_session_id, host_session_start, proc_stat

ENV_PLUGIN_ID = "PLUGBAY_PLUGIN_ID"
ENV_HOST_SESSION = "PLUGBAY_HOST_SESSION"


def stat_of(pid: int) -> tuple[int, int] | None:
    """(parent pid, start ticks) of a live process; None when gone or a zombie."""
    fields = proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def environ(pid: int) -> dict[str, str] | None:
    """A process's initial environment (None when it is gone or not ours to read)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return out


def host_session() -> str:
    """This host's session marker: its session id plus its start ticks (a reused pid differs)."""
    return f"{host_session_id()}.{host_session_start()}"


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def family(root: int | None, plugin_id: str, since: int | None = None) -> dict[int, int]:
    """{pid: start ticks} of ``root``'s descendants and of every process marked with ``plugin_id``.

    Pass ``root=None`` once the plugin may have been reaped (its pid could be reused).
    ``since`` is the plugin's start ticks: nothing older can be its descendant or
    carry its id, so those processes' environments are never read (on a busy
    machine that is most of /proc, and kill() pays it twice).
    """
    me = os.getpid()
    parents: dict[int, tuple[int, int]] = {}
    for pid in _pids():
        facts = stat_of(pid)
        if facts is not None and (since is None or facts[1] >= since or pid == root):
            parents[pid] = facts
    found: dict[int, int] = {}
    frontier = [root] if root is not None else []
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start) in parents.items():
            if ppid == parent and pid not in found and pid != me:
                found[pid] = start
                frontier.append(pid)
    if plugin_id:
        for pid, (_, start) in parents.items():
            if pid not in found and pid not in (me, root):
                env = environ(pid)
                if env is not None and env.get(ENV_PLUGIN_ID) == plugin_id:
                    found[pid] = start
    return found


def signal_all(procs: dict[int, int], sig: int) -> None:
    """Signal each process that is still the one recorded (same start ticks)."""
    for pid, start in procs.items():
        facts = stat_of(pid)
        if facts is None or facts[1] != start:
            continue
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _session_alive(marker: str) -> bool:
    session, _, start = marker.rpartition(".")
    try:
        pid = int(session.split("-", 1)[0])
    except ValueError:
        return False
    facts = stat_of(pid)
    return facts is not None and str(facts[1]) == start


def sweep(live_sessions: Iterable[str] | None = None) -> list[int]:
    """SIGKILL process plugins (and their children) whose host session is gone; return their pids.

    A process is swept only if its environment carries plugbay's
    ``PLUGBAY_HOST_SESSION`` marker, and that session is not this process's and
    its host no longer runs (same pid *and* start time). With ``live_sessions``
    (``host_session_id()`` values), every session not listed counts as gone.
    Processes of other users, whose environment cannot be read, are left alone.
    """
    live = set(live_sessions) if live_sessions is not None else None
    mine = host_session()
    doomed: dict[int, int] = {}
    for pid in _pids():
        if pid == os.getpid():
            continue
        env = environ(pid)
        marker = env.get(ENV_HOST_SESSION) if env else None
        if not marker or marker == mine:
            continue
        session = marker.rpartition(".")[0]
        gone = session not in live if live is not None else not _session_alive(marker)
        facts = stat_of(pid)
        if gone and facts is not None:
            doomed[pid] = facts[1]
    signal_all(doomed, signal.SIGKILL)
    return sorted(doomed)
