"""Whether a process plugin is stopped (SIGSTOP, a debugger's stop): the processes that serve it, those
holding the listener it announced, are all stopped.

A plugin launched through a wrapper that does not exec it (``sh -c 'python plugin.py; ...'``, a launcher
script, ``timeout``, a tracer such as ``strace -f``) is served by a descendant of the process plugbay
started. Stopped while the wrapper waits for it, that server answers nothing all the same; read from the
leader alone the plugin looked running, so kill() waited out a Shutdown it could not answer, and the restart
of the unanswering plugin continued it (SIGTERM with SIGCONT), letting it finish calls whose callers were
told it had ended. Any other stopped descendant (a helper the plugin stopped itself) says nothing of
whether the plugin answers, so only the servers are read; with none found (no address known yet, a
listener in another namespace) the leader is, as it always was.

A tracing stop (/proc state ``t``) is a moment at every system call of a process under ``strace -f``: it
counts only while the process stays in it, making no progress (context switches), for _TRACE_WATCH.

The tree is walked through the kernel's children lists (/proc/PID/task/TID/children): a read per process
(and thread) of the plugin's, not a scan of /proc. Where the kernel has no such lists, the parent links of
a /proc scan (proctree.family) stand in.
"""

from __future__ import annotations

import os
import time

from plugbay.core.transport.tempdirs import own_proc, proc_stat
from plugbay.runners.listeners import socket_inodes, tcp_listeners, unix_listeners
from plugbay.runners.proctree import family

_MAX_PROCS = 4096  # a bound on the walk; a plugin's tree is a handful of processes
# a tracer's stop lasts microseconds unless a debugger holds it: watched this long, every _TRACE_STEP
_TRACE_WATCH, _TRACE_STEP = 0.02, 0.005


def plugin_stopped(root: int, served_at: tuple[str, str] | None, start: int | None = None) -> bool:
    """Whether the processes serving the plugin led by ``root`` are all stopped: those of ``root`` and its
    descendants holding a socket that listens on ``served_at`` (network, address as announced), else
    ``root`` alone. With ``start`` (its start ticks), only while ``root`` is still that process (a
    reattached plugin's pid, proven by its start time)."""
    fields = proc_stat(root)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    if start is not None and (len(fields) <= 19 or fields[19] != str(start)):
        return False
    servers = _servers(root, served_at, start) if served_at is not None and own_proc() else []
    if not servers:
        return held_stopped(root, start)
    return all(held_stopped(pid) for pid in servers)


def held_stopped(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` is stopped: by a signal (state T), or at a tracer's stop (t) that it stays
    in without progress for _TRACE_WATCH. With ``start``, only while the pid is still that process's."""
    fields = proc_stat(pid)
    if fields is None or fields[0] not in ("T", "t"):
        return False
    if start is not None and (len(fields) <= 19 or fields[19] != str(start)):
        return False
    if fields[0] == "T":
        return True
    switches = _switches(pid)  # each stop and each resume is one: unchanged, it has not run meanwhile
    deadline = time.monotonic() + _TRACE_WATCH
    while switches is not None:
        time.sleep(_TRACE_STEP)
        fields = proc_stat(pid)
        if fields is None or fields[0] != "t" or _switches(pid) != switches:
            return False
        if time.monotonic() >= deadline:
            return True
    return False


def _switches(pid: int) -> tuple[str, ...] | None:
    """The context switch counts of ``pid`` (its main thread, as its /proc state), None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            lines = status.read().splitlines()
    except OSError:
        return None
    return tuple(line.decode("ascii", "replace") for line in lines if b"ctxt_switches" in line)


def _servers(root: int, served_at: tuple[str, str], start: int | None) -> list[int]:
    """``root`` and those of its descendants that hold a socket listening on ``served_at``."""
    network, address = served_at
    if network == "unix":
        listening = unix_listeners(root, address)
    elif network == "tcp":
        listening = tcp_listeners(root, address)
    else:
        return []
    if not listening:
        return []
    return [pid for pid in [root, *_descendants(root, start)] if socket_inodes(pid) & listening]


def _descendants(root: int, start: int | None) -> list[int]:
    kids = _children(root)
    if kids is None:  # no children lists in this kernel (CONFIG_PROC_CHILDREN)
        return list(family(root, "", start))
    seen = {root}
    found: list[int] = []
    frontier = kids
    while frontier and len(seen) < _MAX_PROCS:
        pid = frontier.pop()
        if pid in seen:
            continue
        seen.add(pid)
        found.append(pid)
        frontier.extend(_children(pid) or ())
    return found


def _children(pid: int) -> list[int] | None:
    """The children of every thread of ``pid`` (a child's parent is the thread that forked it); [] when it
    is gone, None when the kernel keeps no children lists."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    listed = False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as lists:
                text = lists.read()
        except FileNotFoundError:
            continue
        except OSError:  # the thread ended meanwhile
            listed = True
            continue
        listed = True
        found.extend(int(child) for child in text.split())
    return found if listed or not tasks else None
