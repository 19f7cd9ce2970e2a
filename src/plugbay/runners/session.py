"""Who started a plugin: the host session that Docker and Kubernetes runners label their plugins with.

Every container and pod a host starts carries these labels (as
testcontainers labels its containers), so a sweep can tell plugins whose host
is gone from live ones, and nothing is removed that another host still owns.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from plugbay.core.transport.tempdirs import proc_stat as proc_stat  # where runners have imported it from
from plugbay.core.transport.tempdirs import boot_id, own_proc, own_start_ticks, pid_namespace
from plugbay.core.transport.tempdirs import start_ticks as start_ticks
from plugbay.errors import ConfigError, clip, printable

MANAGED = "plugbay.managed"
SESSION = "plugbay.session"
SESSION_START = "plugbay.session-start"
HOST = "plugbay.host"
# The host's boot id and pid namespace: its pid (in SESSION) names the host process only where both are
# this process's own. A host in a container sharing this machine's name (--network host) has another.
HOST_PIDS = "plugbay.host-pids"
# The host's machine (machine_identity()): a boot id other than this one's is an earlier boot of this machine
# only when this label names this machine. A machine's name is no proof (many share "ubuntu" or "localhost"),
# nor is the pid namespace (the initial one's inode is the same on every Linux machine).
MACHINE = "plugbay.machine"
_MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
_OWNER_MARK = "_owner_"
# Exactly what owner_name() appends (session "<pid>-<12 hex>", then "." and the start ticks or nothing),
# anchored at the end: any other "_owner_" in a name is the user's or the engine's, not an ownership claim.
_OWNER_SUFFIX = re.compile(_OWNER_MARK + r"(\d+-[0-9a-f]{12})\.(\d*)\Z")


# This host process's (session id, start ticks), made at first use. A forked child makes its own:
# with its parent's, a sweep would take the child's plugins for the parent's once the parent exits
# (a daemon's fork, a pre-forking server's workers).
_identity: tuple[str, str] | None = None
_identity_lock = threading.Lock()


def _forget_identity() -> None:
    global _identity, _identity_lock
    _identity, _identity_lock = None, threading.Lock()  # the parent's lock may be held by a thread not copied


os.register_at_fork(after_in_child=_forget_identity)


def _own_identity() -> tuple[str, str]:
    global _identity
    with _identity_lock:
        if _identity is None:
            # through /proc/self: in a /proc of another pid namespace, os.getpid() is another process's pid
            _identity = (f"{os.getpid()}-{uuid.uuid4().hex[:12]}", own_start_ticks())
        return _identity


def host_session_id() -> str:
    """Identifies this host process on everything it starts (container and pod labels, process markers)."""
    return _own_identity()[0]


def host_session_start() -> str:
    """This host process's start, in clock ticks since boot (with its pid it tells a reused pid apart)."""
    return _own_identity()[1]


def host_session() -> str:
    """This host's session marker: its session id plus its start ticks (a reused pid differs)."""
    return f"{host_session_id()}.{host_session_start()}"


def __getattr__(name: str) -> Any:
    if name == "HOST_SESSION_ID":  # the name earlier releases exported: always this process's id
        return host_session_id()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_machine: str | None = None


def machine_identity() -> str:
    """This machine, as its labels name it: a keyed hash of its machine id (machine-id(5) asks that the id
    itself be kept private, and an application use such a hash), "" when it has none (then another boot of
    this machine is never told from another machine)."""
    global _machine
    if _machine is None:
        _machine = ""
        for path in _MACHINE_ID_FILES:
            try:
                with open(path, "rb") as f:
                    raw = f.read(64).strip()
            except OSError:
                continue
            # an empty file or "uninitialized" (an image's placeholder, the first boot) names no machine
            if re.fullmatch(rb"[0-9a-f]{32}", raw):
                _machine = hmac.new(raw, b"plugbay.machine", hashlib.sha256).hexdigest()[:32]
                break
    return _machine


def host_pids() -> str:
    """This process's boot id and pid namespace ("" when either cannot be read: then nothing is judged gone)."""
    boot, namespace = boot_id(), pid_namespace()
    return f"{boot}.{namespace}" if boot and namespace else ""


def managed_labels() -> dict[str, str]:
    session, start = _own_identity()
    return {MANAGED: "true", SESSION: session, SESSION_START: start, HOST: socket.gethostname(),
            HOST_PIDS: host_pids(), MACHINE: machine_identity()}


def owner_name(name: str, session: str) -> str:
    """``name`` with its owner suffix (another host's claim replaced) naming ``session`` as the owner."""
    claim = _OWNER_SUFFIX.search(name)
    base = name[:claim.start()] if claim else name
    own, start = _own_identity()
    return f"{base}{_OWNER_MARK}{session}.{start if session == own else ''}"


def owner_of(name: str, labels: dict[str, str]) -> tuple[str, str]:
    """(session, start ticks) of the host that owns a container: a claim owner_name() wrote, else its labels."""
    claim = _OWNER_SUFFIX.search(name)
    if claim:
        return claim.group(1), claim.group(2)
    return labels.get(SESSION, ""), labels.get(SESSION_START, "")


def session_gone(host: str | None, pids: str | None, session: str, start: str, machine: str | None = None) -> bool:
    """Whether the host session that labelled a container or pod is proven gone from here: this machine's
    name (``host``), and this boot and pid namespace (``pids``, HOST_PIDS) with its process no longer running,
    or an earlier boot of this machine (``machine``, MACHINE, naming this machine). False when it cannot tell
    (another pid namespace, another boot of a machine not proven this one, no such label, a /proc of another
    pid namespace than this process's)."""
    own = host_pids()
    if host != socket.gethostname() or not own or not pids or pids.count(".") != 1:
        return False
    if pids.split(".")[0] != own.split(".")[0]:
        # Every process of an earlier boot has ended; but another boot id is as well another machine of
        # the same name, whose host may run: only this machine's identity tells them apart. Without it (labels
        # of an earlier release, a machine without a machine id) the session is not judged gone.
        mine = machine_identity()
        return bool(mine) and machine == mine
    # a foreign /proc would show another namespace's process (or none) under that pid
    return pids == own and own_proc() and not session_alive(session, start)


def session_running(host: str | None, pids: str | None, session: str, start: str) -> bool:
    """Whether that host session is proven to run here still (its process, in this pid namespace)."""
    return host == socket.gethostname() and bool(pids) and pids == host_pids() and session_alive(session, start)


def session_may_run(host: str | None, pids: str | None, session: str, start: str) -> bool:
    """Whether that host session may run here still: proven to (session_running), or of this machine, boot
    and pid namespace while /proc cannot tell (a /proc of another pid namespace than this process's)."""
    if host != socket.gethostname() or not pids or pids != host_pids():
        return False
    return not own_proc() or session_alive(session, start)


def session_alive(session: str, start: str) -> bool:
    """Whether the host process behind ``session`` is proven to run still in this pid namespace (False
    also when /proc is another namespace's: not a proof that it is gone)."""
    if not own_proc():
        return False
    try:
        pid = int(session.split("-", 1)[0])
    except ValueError:
        return False
    ticks = start_ticks(pid)
    return bool(ticks) and (not start or ticks == start)


def session_scope(sessions: Iterable[str] | None, held_by: str) -> frozenset[str] | None:
    """A sweep's ``sessions=`` as a set (None: every session), checked before anything is swept; ``held_by``: where
    the caller finds such an id (a Docker label, a process's environment)."""
    if sessions is None:
        return None
    if isinstance(sessions, (str, bytes)):  # its characters would be the sessions
        one = sessions.decode(errors="replace") if isinstance(sessions, bytes) else sessions
        raise ConfigError(f"sweep(sessions=) takes host session ids, not one {type(sessions).__name__}: pass"
                          f" [{clip(printable(repr(one)), 200)}]")
    scope = frozenset(sessions)
    if not all(isinstance(s, str) and s for s in scope):
        raise ConfigError(f"sweep(sessions=) takes host session ids (non-empty str), as {held_by} and"
                          " plugbay.runners.session.host_session_id() hold them")
    return scope
