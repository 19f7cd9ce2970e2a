"""This machine's process tree, read from /proc: who descends from whom (the leak check, the Go
test hosts' run_program and the tests that look for a plugin's children use it)."""

from __future__ import annotations

import os
from pathlib import Path


def table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command name) of every process that can be read now."""
    found: dict[int, tuple[int, str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # the command name is in parentheses and may itself hold spaces and parentheses
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        found[int(entry)] = (int(ppid), state, stat[stat.index("(") + 1:stat.rindex(")")])
    return found


def children(pid: int, *, zombies: bool = True) -> list[int]:
    """The processes whose parent is ``pid`` (``zombies=False``: only those still running)."""
    return [p for p, (ppid, state, _) in table().items() if ppid == pid and (zombies or state != "Z")]


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command name) of every process descended from ``root``."""
    procs = table()
    out: list[tuple[int, str]] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, name) in procs.items():
            if ppid == parent:
                out.append((pid, name))
                frontier.append(pid)
    return out
