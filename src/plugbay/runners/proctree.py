"""A process plugin's descendants and orphans, found through /proc by plugbay's markers.

The process runner gives every plugin two environment variables, which its children inherit:
``PLUGBAY_PLUGIN_ID`` (random per plugin) and ``PLUGBAY_HOST_SESSION`` (the host's session id and
start ticks). A grandchild that left the plugin's process group (its own session) escapes ``killpg``;
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
from typing import TypeGuard

from plugbay.core.protocol.handshake import ENV_HOST_SESSION as ENV_HOST_SESSION  # re-exported: its runner side
from plugbay.core.transport.tempdirs import own_proc, pid_namespace
from plugbay.runners.pidsignal import HeldPid
from plugbay.runners.procclaims import claimants, drop_claim, forget_claims_of_ended
from plugbay.runners.session import host_session as host_session  # re-exported: where runners have imported it
from plugbay.runners.session import proc_stat, session_scope

ENV_PLUGIN_ID = "PLUGBAY_PLUGIN_ID"


def _running(fields: list[str] | None) -> TypeGuard[list[str]]:
    """Whether a read of /proc/PID/stat (proc_stat's fields) shows the process there, not gone nor a zombie."""
    return fields is not None and fields[0] not in ("Z", "X")


def stat_of(pid: int) -> tuple[int, int] | None:
    """(parent pid, start ticks) of a live process; None when gone or a zombie."""
    fields = proc_stat(pid)
    return (int(fields[1]), int(fields[19])) if _running(fields) else None


def ended(pid: int) -> bool:
    """Whether process ``pid`` is gone or a zombie (one read of /proc/PID/stat)."""
    return not _running(proc_stat(pid))


_PF_EXITING = 0x4  # the kernel's task flag: the process is in exit(), past running any code of its own
_SIGKILL_BIT = 1 << 8


def ended_or_ending(pid: int) -> bool:
    """Whether process ``pid`` is gone, a zombie, or past running any code of its own: in exit(), or with a
    SIGKILL pending, which no process can catch or block (the kernel ends it before it returns to its own
    code). Bytes written to its socket from then on are never read by it. One read of /proc/PID/stat: its
    flags (field 9) and the main thread's pending signals (field 31)."""
    fields = proc_stat(pid)
    if not _running(fields):
        return True
    try:
        return bool(int(fields[6]) & _PF_EXITING or int(fields[28]) & _SIGKILL_BIT)
    except (IndexError, ValueError):
        return False


def stopped(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP, a debugger's stop: /proc state T or t), acting on
    nothing but SIGKILL (SIGTERM only once continued). With ``start`` (its start ticks), only while the
    pid is still that process's: state and start time come from one read of /proc/PID/stat."""
    fields = proc_stat(pid)
    if fields is None or fields[0] not in ("T", "t"):
        return False
    return start is None or (len(fields) > 19 and fields[19] == str(start))


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


def _pids() -> list[int]:
    """The pids /proc lists: none where /proc is another pid namespace's, whose numbers os.kill() would
    take for other processes of this one."""
    if not own_proc():
        return []
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
    if not own_proc():
        return  # a /proc of another pid namespace cannot prove which process a pid names here
    for pid, start in procs.items():
        with HeldPid(pid) as held:  # taken before the check: the signal reaches the process checked
            facts = stat_of(pid)
            if facts is None or facts[1] != start:
                continue
            held.signal(sig)


def signal_group(pgid: int, sig: int) -> None:
    """Signal process group ``pgid`` (one gone, or not ours to signal, is left)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def led_group_stands(leader: int, start: int | None) -> bool:
    """Whether process group ``leader``, led by the plugin process ``leader`` that started at ``start``
    ticks, may still be signalled as that plugin's, now that the caller does not hold that process.

    Yes while /proc shows it (running or a zombie, same start ticks), or shows no process ``leader``:
    Linux gives no new process a pid that a group still bears, so a group of that number is the one
    the plugin led (its children after the plugin was reaped). No where /proc is another pid
    namespace's (unshare -p without a /proc of its own): a pid of this namespace names another
    process there, or none, so nothing about the group is proven and it is left alone.
    """
    if not own_proc():
        return False
    fields = proc_stat(leader)
    if fields is None:
        return True
    return start is not None and fields[19] == str(start)


def _gone(marker: str, live: set[str] | None) -> bool:
    session = marker.rpartition(".")[0]
    if live is not None:
        return session not in live
    return own_proc() and not _session_alive(marker)  # a foreign /proc: the pid is another's there


def _session_alive(marker: str) -> bool:
    session, _, start = marker.rpartition(".")
    try:
        pid = int(session.split("-", 1)[0])
    except ValueError:
        return False
    facts = stat_of(pid)
    # no start ticks: the host could not read its own; its pid alone then keeps it
    return facts is not None and (not start or str(facts[1]) == start)


def _in_own_namespace(pid: int) -> bool:
    """Whether process ``pid`` is of this process's pid namespace, as its host's pid in the marker
    then is (a host in a namespace of its own, a container's, is seen here under another pid)."""
    try:
        return str(os.stat(f"/proc/{pid}/ns/pid").st_ino) == pid_namespace()
    except OSError:
        return False


def _adopted(plugin_id: str, live: set[str] | None, mine: str) -> bool:
    """Whether a running host claims ``plugin_id``; the claims of hosts gone are removed."""
    adopted = False
    for path, session in claimants(plugin_id).items():
        if session == mine or (session and not _gone(session, live)):
            adopted = True
        else:
            drop_claim(path)
    return adopted


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def sweep(live_sessions: Iterable[str] | None = None, *, sessions: Iterable[str] | None = None) -> list[int]:
    """SIGKILL process plugins (and their children) whose host session is gone; return their pids.

    A process is swept only if its environment carries plugbay's
    ``PLUGBAY_HOST_SESSION`` marker, and that session is not this process's and
    its host no longer runs (same pid *and* start time, looked up in this pid
    namespace's /proc: a plugin of another namespace is left alone). With ``live_sessions``
    (``host_session_id()`` values), every session not listed counts as gone.
    A plugin another host reattached to (its claim, see :func:`plugbay.runners.procclaims.claim`) is spared
    while that host's session is not gone.
    Only this user's processes are swept: another user's plugin may be claimed by a host of
    theirs in folders this process must not trust (as root it could read them, and be led to
    delete or hang on what they hold), so it is theirs to sweep.

    ``sessions`` (``host_session_id()`` values), as the Docker sweep's: only the plugins one of these host
    sessions started (its ``PLUGBAY_HOST_SESSION``) or claimed by a reattach are looked at; the others, and the
    claims on them or on plugins that ended, are left alone (an empty ``sessions`` looks at nothing). A plugin
    may be between hosts: its starting host gone, the host reattaching to it not yet its claimant; a sweep of
    every session kills it then, so a caller that knows whose plugins it means names them. A str, or an id
    that is no non-empty str, is a ConfigError.
    """
    scope = session_scope(sessions, "a plugin's PLUGBAY_HOST_SESSION (up to its last '.')")
    if not own_proc():
        return []  # nothing listed there is provably a process of this namespace, nor any claim moot
    live = set(live_sessions) if live_sessions is not None else None
    mine = host_session()
    doomed: dict[int, int] = {}
    running: set[str] = set()  # plugin ids of live processes: the claims of the others are moot
    me = os.geteuid()
    for pid in _pids():
        if pid == os.getpid():
            continue
        env = environ(pid)
        if env and env.get(ENV_PLUGIN_ID):
            running.add(env[ENV_PLUGIN_ID])  # another user's too: a claim of this user's on it stands
        marker = env.get(ENV_HOST_SESSION) if env else None
        if not marker or marker == mine or _owner(pid) != me:
            continue
        if scope is not None and not _in_scope(marker, env.get(ENV_PLUGIN_ID, "") if env else "", scope):
            continue  # not the caller's to judge
        gone = _gone(marker, live) and (live is not None or _in_own_namespace(pid))
        if gone and env and _adopted(env.get(ENV_PLUGIN_ID, ""), live, mine):
            continue  # a live host reattached to it
        facts = stat_of(pid)
        if gone and facts is not None:
            doomed[pid] = facts[1]
    signal_all(doomed, signal.SIGKILL)
    if scope is None:  # claims of any session's ended plugins: a scoped sweep leaves them to a sweep of all
        forget_claims_of_ended(running)
    return sorted(doomed)


def _in_scope(marker: str, plugin_id: str, scope: frozenset[str]) -> bool:
    """Whether the plugin whose host session marker is ``marker`` was started or claimed by a session of
    ``scope`` (markers are an id and start ticks: the id is what sweep(sessions=) names)."""
    if marker.rpartition(".")[0] in scope:
        return True
    return any(claim.rpartition(".")[0] in scope for claim in claimants(plugin_id).values())
