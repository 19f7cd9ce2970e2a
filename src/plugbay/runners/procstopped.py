"""Whether a process plugin is stopped (SIGSTOP, a debugger's stop): the process plugbay started, or any
process that one started in turn.

A plugin launched through a wrapper that does not exec it (``sh -c 'python plugin.py; ...'``, a launcher
script, ``timeout``, a debugger's runner) is served by a child of the process plugbay started. Stopped while
the wrapper waits for it, that child answers nothing all the same; read from the leader alone the plugin
looked running, so kill() waited out a Shutdown it could not answer, and the restart of the unanswering
plugin continued it (SIGTERM with SIGCONT), letting it finish calls whose callers were told it had ended.

The tree is walked through the kernel's children lists (/proc/PID/task/TID/children): a read per process
(and thread) of the plugin's, not a scan of /proc. Where the kernel has no such lists, the parent links of
a /proc scan (proctree.family) stand in. A descendant reparented away from the tree (a daemon's double
fork) is not its any more here.
"""

from __future__ import annotations

import os

from plugbay.core.transport.tempdirs import own_proc, proc_stat
from plugbay.runners.proctree import family, stopped

_STOPPED = ("T", "t")  # /proc state: stopped by a signal, or at a tracer's stop
_MAX_PROCS = 4096  # a bound on the walk; a plugin's tree is a handful of processes


def tree_stopped(root: int, start: int | None = None) -> bool:
    """Whether process ``root`` or any of its descendants is stopped. With ``start`` (its start ticks),
    only while ``root`` is still that process (a reattached plugin's pid, proven by its start time)."""
    fields = proc_stat(root)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    if start is not None and (len(fields) <= 19 or fields[19] != str(start)):
        return False
    if fields[0] in _STOPPED:
        return True
    if not own_proc():  # another pid namespace's /proc: its pids name other processes here
        return False
    kids = _children(root)
    if kids is None:  # no children lists in this kernel (CONFIG_PROC_CHILDREN)
        return any(stopped(pid) for pid in family(root, "", start))
    seen = {root}
    frontier = kids
    while frontier and len(seen) < _MAX_PROCS:
        pid = frontier.pop()
        if pid in seen:
            continue
        seen.add(pid)
        if stopped(pid):
            return True
        frontier.extend(_children(pid) or ())
    return False


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
