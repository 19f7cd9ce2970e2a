"""Whether a process plugin is stopped (SIGSTOP, a debugger's stop): the processes that serve it, the
topmost of those holding the listener it announced, are all stopped.

A plugin launched through a wrapper that does not exec it (``sh -c 'python plugin.py; ...'``, a launcher
script, ``timeout``) is served by a descendant of the process plugbay started. Stopped while the wrapper
waits for it, that server answers nothing all the same; read from the leader alone the plugin looked
running, so kill() waited out a Shutdown it could not answer, and the restart of the unanswering plugin
continued it (SIGTERM with SIGCONT), letting it finish calls whose callers were told it had ended. Any
other stopped descendant (a helper the plugin stopped itself) says nothing of whether the plugin answers,
so only the servers are read; with none found (no address known yet, a listener in another namespace)
the leader is, as it always was. A child the server forked after it listened holds the listener too but
serves nothing of it while its parent is stopped: only holders with no holding ancestor are read.

The leader counts as stopped in state T or t (proctree.stopped). A descendant counts only in state T (a
signal's or job control's stop), never t: under a tracer (``strace -f``) a process sits in t at every
system call until the tracer next runs, for as long as a busy machine keeps the tracer waiting, and a
SIGSTOP it takes shows as t too. So a plugin served by a traced descendant is never judged frozen: it is
ended with SIGTERM and its grace, never SIGKILLed at once.

The tree is walked through the kernel's children lists (/proc/PID/task/TID/children): a read per process
(and thread) of the plugin's, not a scan of /proc. Where the kernel has no such lists, the parent links of
a /proc scan (proctree.family) stand in.
"""

from __future__ import annotations

import os

from plugbay.core.transport.tempdirs import own_proc, proc_stat
from plugbay.runners.listeners import socket_inodes, tcp_listeners, unix_listeners
from plugbay.runners.proctree import family, stopped

_MAX_PROCS = 4096  # a bound on the walk; a plugin's tree is a handful of processes


def plugin_stopped(root: int, served_at: tuple[str, str] | None, start: int | None = None) -> bool:
    """Whether the processes serving the plugin led by ``root`` are all stopped: the topmost of ``root``
    and its descendants holding a socket that listens on ``served_at`` (network, address as announced),
    else ``root`` alone. With ``start`` (its start ticks), only while ``root`` is still that process (a
    reattached plugin's pid, proven by its start time)."""
    fields = proc_stat(root)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    if start is not None and (len(fields) <= 19 or fields[19] != str(start)):
        return False
    servers = _servers(root, served_at, start) if served_at is not None and own_proc() else []
    if not servers:
        return stopped(root, start)
    return all(stopped(root, start) if pid == root else _signal_stopped(pid) for pid in servers)


def _signal_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped by a signal or job control (state T); a tracer's stop (t) is not read."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] == "T"


def _servers(root: int, served_at: tuple[str, str], start: int | None) -> list[int]:
    """The topmost of ``root`` and its descendants that hold a socket listening on ``served_at``: those
    with no holding ancestor (a child forked after the listen inherits the socket, not the serving)."""
    network, address = served_at
    if network == "unix":
        listening = unix_listeners(root, address)
    elif network == "tcp":
        listening = tcp_listeners(root, address)
    else:
        return []
    if not listening:
        return []
    holders = {pid for pid in [root, *_descendants(root, start)] if socket_inodes(pid) & listening}
    return [pid for pid in holders if not _held_above(pid, root, holders)]


def _held_above(pid: int, root: int, holders: set[int]) -> bool:
    """Whether a process between ``pid`` (excluded) and ``root`` (included) is among ``holders``."""
    for _ in range(_MAX_PROCS):
        if pid == root:
            return False
        fields = proc_stat(pid)
        if fields is None or len(fields) < 2 or not fields[1].isdigit():
            return False
        pid = int(fields[1])
        if pid in holders:
            return True
        if pid <= 1:
            return False
    return False


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
