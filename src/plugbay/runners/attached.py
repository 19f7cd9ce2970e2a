"""Reattaching to a local plugin process by pid: this host did not start it, so it proves it first.

Reattach data is untrusted: the process is only signalled when plugbay can
prove it started it for this plugin, by its start time and the random
PLUGBAY_PLUGIN_ID that ProcessRunner.start() put in its environment (read
back from /proc/PID/environ), and an address is only dialed once that process
is shown to listen there (plugbay.runners.listeners). Once that proven process has
exited, kill() still ends the process group it led, as ProcessRunner does, while
/proc proves the group is still the one it led (proctree.led_group_stands). Its exit
is heard through a pidfd on the shared I/O loop where the kernel has pidfds. Nothing
is proven through a /proc of another pid namespace (tempdirs.own_proc): a pid read
there names another process than the one this host would signal.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from plugbay.core.protocol.handshake import ENV_UNIX_SOCKET_DIR
from plugbay.core.transport.tempdirs import own_proc, remove_left_folder
from plugbay.errors import BrokerClosedError, ReattachError, StaleReattachError, UnprovenAddressError, clip
from plugbay.runners.base import NOT_LISTENING, REATTACH_OPT_OUT, AttachedRunner, Cancellable, register_reattacher
from plugbay.runners.listeners import host_tcp_listeners, listens_on
from plugbay.runners.ownsocket import NO_CONNECTING, unix_listener_why
from plugbay.runners.pidsignal import HeldPid
from plugbay.runners.procio import pidfd, watch_pid
from plugbay.runners.procclaims import claim, release
from plugbay.runners.proctree import ENV_PLUGIN_ID, environ, family, led_group_stands, signal_all, signal_group
from plugbay.runners.procstopped import plugin_stopped
from plugbay.runners.session import proc_stat, start_ticks

REAP_TIMEOUT = 10.0
# Right after start() returns, /proc/PID/environ may still read empty (exec is setting up the
# new program's stack): _unproven() looks again for up to this many 5 ms steps.
_EXEC_TRIES = 10
# Exit code reported for a reattached process: the host is not its parent, so
# the real code is unknowable.
UNKNOWN_EXIT_CODE = -1
PID_MAX = 1 << 22  # Linux's PID_MAX_LIMIT: a larger pid is no process's (and overflows os.kill)


def _start_time(pid: int) -> int | None:
    """The process start time in clock ticks: tells a pid from a reused one."""
    ticks = start_ticks(pid)
    return int(ticks) if ticks else None


def _foreign_proc(pid: int) -> str:
    return (f"/proc here shows another pid namespace's processes, so its process {pid} is not the process {pid}"
            " this host would signal (this host runs in a pid namespace of its own without a /proc of its own:"
            " unshare --pid without --mount-proc, or nsenter -p). Reattach from the pid namespace that started"
            " the plugin, or give this one its own /proc (unshare --pid --fork --mount-proc)")


def _unproven(pid: int, start_time: int | None, plugin_id: str) -> str | None:
    """Why process ``pid`` cannot be proven to be plugbay's plugin ``plugin_id`` (None: it can)."""
    if not own_proc():  # its start time and environment would be another process's
        return _foreign_proc(pid)
    if start_time is None or not plugin_id:
        return "the reattach data lacks its 'start_time' or 'plugin_id' (not written by this plugbay)"
    if _start_time(pid) != start_time:
        return f"process {pid} started at another time than the plugin (its pid was reused)"
    env = environ(pid)
    for _ in range(_EXEC_TRIES):  # just exec'd: the kernel shows its environment only once set up
        if env != {}:
            break
        time.sleep(0.005)
        env = environ(pid)
    if env is None:
        return f"process {pid}'s environment cannot be read (/proc/{pid}/environ)"
    if env.get(ENV_PLUGIN_ID) != plugin_id:
        # the id is the reattach data's, untrusted: quoted (a newline or an escape would reach a log as
        # itself) and clipped (plugbay's are 32 hex digits)
        return f"process {pid} does not carry {ENV_PLUGIN_ID}={clip(repr(plugin_id), 80)} in its environment"
    return None


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _proc_state(pid: int) -> str | None:
    fields = proc_stat(pid)
    return fields[0] if fields else None


class AttachedProcess(AttachedRunner):
    """A plugin process this host did not start (reattach by pid).

    This runner did not start it (it may be the child of another Client in this very process), so it
    cannot read its exit status: wait() polls /proc and returns UNKNOWN_EXIT_CODE once the process is gone.
    """

    def __init__(self, pid: int, start_time: int | None = None, name: str = "",
                 plugin_id: str = "") -> None:
        self.pid = pid
        self._start_time = start_time
        self._name = name or str(pid)
        self.plugin_id = plugin_id
        self.proven = False  # plugin_id was read back from the process itself (reattach proved it)
        self._leads_group = False  # the proven plugin led a process group (its pid is the group's id)
        self._claim: str | None = None  # this runner's adoption record (procclaims.claim), released on detach
        self._listening: dict[tuple[str, str], str] = {}  # addresses proven to be the plugin's -> what to dial
        self._first_asked: tuple[str, str] | None = None  # the reattach data's address (plugin_to_host)
        self._recorded: dict[int, int] = {}  # descendants seen before a Shutdown (record_descendants)
        # the socket folder the proven plugin's host gave it (its environment): that host's to remove, but
        # a killed host cannot, and once the plugin is gone no one else would (see _remove_left_folder)
        self._folder = ""

    @property
    def id(self) -> str:
        return str(self.pid)

    @property
    def private_transport(self) -> bool:
        return True  # a child process on this machine: go-plugin's own model

    def _alive(self) -> bool:
        # No waitpid here: the pid comes from untrusted data, and if it is a child of this host
        # its Popen owns the exit status (a zombie reads as gone all the same).
        state = _proc_state(self.pid)
        if state is None or state in ("Z", "X"):
            return False
        return self._start_time is None or _start_time(self.pid) == self._start_time

    def frozen(self) -> bool:
        """A stopped plugin (SIGSTOP, of the topmost processes holding its listener, as a wrapper's server:
        procstopped), so that a restart of an unanswering one SIGKILLs it (force_kill) instead of
        continuing it. Read only of the process reattach proved, by its start time."""
        served_at = next(iter(self._listening), None)  # the first proven is the reattach data's address
        return self.proven and self._start_time is not None and plugin_stopped(self.pid, served_at, self._start_time)

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._alive():
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
        return UNKNOWN_EXIT_CODE

    def exit_words(self, code: int) -> str:
        # not "not this host's child": the Client that started it may share this process, and that one can
        return (f"exited; its exit status is unknown: this Client reattached to process {self.pid} rather than"
                " starting it, so it cannot read how it ended (a signal, or an exit code: only the Client that"
                " started it can)")

    def watch_exit(self, on_exit: Callable[[int], None]) -> Cancellable:
        """A pidfd on the shared I/O loop (taken, then the pid proven still ours); polls without pidfds."""
        fd = pidfd(self.pid)
        if fd is not None and self._alive():
            return watch_pid(fd, lambda: UNKNOWN_EXIT_CODE, on_exit)
        if fd is not None:
            os.close(fd)  # gone already (or the pid changed hands): the poller reports it at once
        return super().watch_exit(on_exit)

    def plugin_to_host(self, network: str, address: str) -> tuple[str, str]:
        """The address, once the proven process is shown to listen there. The first asked is the reattach data's
        (as in frozen()), later ones its brokered servers' (ConnInfo on the broker stream): both untrusted, and
        dialing either unproven could reach, and at kill() shut down, any local server."""
        proven = self._listening.get((network, address))
        if proven is not None:
            return network, proven
        if self._first_asked is None:
            self._first_asked = (network, address)
        if self.proven and not self._alive() and self._first_asked != (network, address):
            # a brokered server's address (a ConnInfo): it went with its plugin, as a dial's BrokerClosedError says
            raise BrokerClosedError(f"not dialing {network} address {address!r}: the reattached plugin process"
                                    f" {self.pid} is gone, and the brokered server it announced there with it;"
                                    " start the plugin again to broker")
        if not self.proven or not self._alive():
            raise ReattachError(f"not dialing {network} address {address!r}: process {self.pid} is not the"
                                " proven plugin (any more); start the plugin again")
        why = self._listener_why(network, address)
        if why is not None:
            if self._first_asked == (network, address) and why.startswith(NO_CONNECTING):
                # permission, not the data: other reattach data or another Client would meet the same refusal
                raise ReattachError(
                    f"reattach data names {network} address {address!r}, but plugbay cannot tell whether plugin"
                    f" process {self.pid} listens there: {why}. Nothing was dialed")
            if self._first_asked == (network, address):
                raise ReattachError(
                    f"reattach data names {network} address {address!r}, but plugin process {self.pid} does not"
                    f" listen there ({why}), so plugbay does not dial it (it would reach another server). Pass the"
                    " JSON that Client.reattach_config().to_json() produced for this plugin, or stop it and start it"
                    " again from a Client of your own, whose reattach_config() names the address that Client proved")
            # the plugin's own word (a brokered server's ConnInfo): the broker says which id announced it; no opt-out
            # reaches a socket this host may not connect to (``why`` says what to do)
            raise UnprovenAddressError(self._name, network, address, why,
                                       None if why.startswith(NO_CONNECTING) else REATTACH_OPT_OUT)
        # dialed as resolved now: a symlink re-pointed later cannot send the next dial elsewhere
        dial = os.path.realpath(address) if network == "unix" else address
        self._listening[(network, address)] = dial
        return network, dial

    def _listener_why(self, network: str, address: str) -> str | None:
        """Why the proven plugin (or a descendant) is not shown to listen at ``address``; None once it is. A unix
        socket is traced by its file, not its name: the kernel's table names the path a socket was bound to, and
        plugbay's brokered sockets are bound at a private path and linked to the one announced (as a fresh
        Client's proof does: unix_listener_why)."""
        if network == "unix":
            if not os.path.isabs(address):
                return "a relative path names another file to this host than to the plugin"
            if self._start_time is None:  # proven implies a start time (_unproven): a runner made by hand
                return "its start time is unknown, so no listener can be traced back to it"
            # where the kernel cannot tell, this asks by a connection, and the proof of the host's handle on the
            # file that every dial makes next asks again: two connections, but a socket nothing listens on or a
            # foreign one is a ReattachError here, at once, whatever the file system
            why = unix_listener_why(address, None, self.pid, self._start_time)
            return None if why is None else ("no socket listens there" if why == NOT_LISTENING else why)
        # the host's own tcp table, read once for both asks (listens_on asks only of processes in its namespace)
        known = host_tcp_listeners(address) if network == "tcp" else None
        if listens_on([self.pid], network, address, known) or listens_on(
                family(self.pid, self.plugin_id, self._start_time), network, address, known):
            return None
        return ("a socket listening there is held by no process of the plugin's: neither it nor a descendant"
                if known else "no socket of the plugin's listens there")

    def unproven_listener(self, network: str, address: str, conn: socket.socket | None = None,
                          connect: bool = True) -> str | None:
        """Why the unix socket the host holds (its handle on the inode plugin_to_host() proved, or ``conn``, its
        one connection) is not listened on by the reattached plugin or a descendant: a socket renamed onto the
        path between that proof and the handle's opening is another server's. A tcp port cannot be renamed
        onto: plugin_to_host() proved its listeners."""
        if network != "unix":
            return None
        if not self.proven or self._start_time is None or not self._alive():
            return (f"process {self.pid} is not the proven plugin (any more), so nothing it made can listen"
                    " there")
        return unix_listener_why(address, conn, self.pid, self._start_time, connect)

    def record_descendants(self) -> None:
        if not self.proven or not self._alive() or _unproven(self.pid, self._start_time, self.plugin_id):
            return
        found = family(self.pid, "", self._start_time)  # parent links only: the marker is found at kill()
        if self._alive():  # still the plugin after the scan: the parent links read were to it
            self._recorded.update(found)

    def detach(self) -> None:
        claimed, self._claim = self._claim, None
        if self.proven and claimed is not None:
            release(self.plugin_id, claimed)
        self._remove_left_folder()

    def _remove_left_folder(self) -> None:
        """Once the plugin is gone, its socket folder when the temp sweep would remove it: plugbay's (name,
        owner, marker), its maker (the plugin's first host) gone, no socket in it answering. A living maker
        removes its folder itself."""
        if self._folder and self.proven and not self._alive():
            folder, self._folder = self._folder, ""
            remove_left_folder(folder)

    def kill(self, grace: float = 2.0) -> None:
        try:
            self._kill(grace)
        finally:
            self.detach()

    def _kill(self, grace: float) -> None:
        # the pidfd is taken before the proof, so the proof is of the process it holds: the signals
        # go through it, never to a process that got the pid in between (pidsignal)
        with HeldPid(self.pid) as held:
            self._kill_held(held, grace)

    def _kill_held(self, held: HeldPid, grace: float) -> None:
        # those seen before a Shutdown: once the plugin exited, a helper with an environment of its own
        # is tied to it by nothing else (signal_all skips a pid reused since)
        strays: dict[int, int] = dict(self._recorded)
        proven, held_proven = self.proven, False
        if self._alive():
            why = _unproven(self.pid, self._start_time, self.plugin_id)
            if why is not None:  # checked again: the pid may have changed hands since reattach
                raise ReattachError(f"not killing process {self.pid}: {why}. plugbay signals only the"
                                    " plugin it started; stop that process yourself if it is yours")
            proven, held_proven, self._leads_group = True, held.fd is not None, _leads_group(self.pid)
            strays.update(family(self.pid, self.plugin_id, self._start_time))  # proven above: descendants, marked kin
            if grace > 0:
                for sig in (signal.SIGTERM, signal.SIGCONT):  # SIGCONT: a stopped plugin acts on SIGTERM
                    self._signal(held, sig)
                    signal_all(strays, sig)
                self.wait(grace)
            if self._alive():
                self._signal(held, signal.SIGKILL)
                self.wait(REAP_TIMEOUT)
        if not proven:
            return
        # The leader is gone (it obeyed Shutdown or SIGTERM), not its group: a helper the plugin started
        # with an environment of its own carries no plugin id, and would be orphaned. As ProcessRunner does,
        # that group is ended: through the proven pidfd (the kernel's group of that process, whatever
        # bears its number now), else while /proc shows it is the plugin's (proctree.led_group_stands).
        if self._leads_group and not (held_proven and held.signal_group(signal.SIGKILL)) \
                and led_group_stands(self.pid, self._start_time):
            signal_group(self.pid, signal.SIGKILL)
        signal_all({**strays, **family(None, self.plugin_id, self._start_time)}, signal.SIGKILL)

    def _signal(self, held: HeldPid, sig: int) -> None:
        """The proven live plugin, through its pidfd: its group when it leads one, else the process alone."""
        if self._leads_group:
            if not held.signal_group(sig):  # no pidfd group signal here: by number, proven a moment ago
                signal_group(self.pid, sig)
            return
        held.signal(sig)

    def reattach_data(self) -> dict[str, Any]:
        return {"kind": "ProcessRunner", "id": str(self.pid), "pid": self.pid, "name": self._name,
                "start_time": self._start_time, "plugin_id": self.plugin_id}


def checked_pid(data: Mapping[str, Any]) -> tuple[int, int | None]:
    """Reattach data's (pid, start_time), refused unless they could name a plugin process."""
    pid, start = data.get("pid"), data.get("start_time")
    if type(pid) is not int:
        raise ReattachError(f"ProcessRunner reattach data needs an integer 'pid', got {clip(repr(pid), 80)};"
                            " pass the JSON that Client.reattach_config().to_json() produced")
    if not 1 < pid <= PID_MAX:  # 0, -1 and negatives signal groups or every process; 1 is init
        raise ReattachError(f"reattach data names pid {clip(str(pid), 80)}, which is no plugin's; pass the JSON that"
                            " Client.reattach_config().to_json() produced")
    if start is not None and type(start) is not int:
        raise ReattachError(f"reattach data's 'start_time' must be an integer, got {clip(repr(start), 80)}")
    return pid, start


def _reattach(data: Mapping[str, Any]) -> AttachedRunner:
    pid, start = checked_pid(data)
    if not own_proc():  # before _alive(), which would read the wrong process too
        raise ReattachError(f"cannot reattach to process {pid}: {_foreign_proc(pid)}")
    plugin_id = data.get("plugin_id")
    runner = AttachedProcess(pid, start, str(data.get("name", "")),
                             plugin_id if isinstance(plugin_id, str) else "")
    if not runner._alive():  # gone, or its pid another process's: the data is stale, the process left alone
        raise StaleReattachError(
            f"cannot reattach: plugin process {pid} is no longer running (or its pid was reused);"
            " start the plugin again"
        )
    why = _unproven(pid, start, runner.plugin_id)
    if why is not None:
        raise ReattachError(
            f"cannot reattach to process {pid}: {why}, so plugbay cannot prove it started it for"
            " this plugin and leaves it alone. Pass the JSON that Client.reattach_config().to_json()"
            " produced for a running plugin, or start the plugin again")
    runner.proven = True
    runner._leads_group = _leads_group(pid)
    folder = (environ(pid) or {}).get(ENV_UNIX_SOCKET_DIR, "")
    runner._folder = folder if os.path.isabs(folder) else ""  # a relative one: against which folder?
    runner._claim = claim(runner.plugin_id)  # sweep() spares a plugin a live host adopted
    return runner


register_reattacher("ProcessRunner", _reattach)
