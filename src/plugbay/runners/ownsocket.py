"""OwnListeners, a base of ProcessRunner: the socket a freshly started plugin announces is dialed only once
plugbay has proven that the process it started (or one of that process's descendants) listens there.

A handshake line is the plugin's word, untrusted. Announcing /var/run/docker.sock, another user's service
or 127.0.0.1:2375 would have the host send its calls, its client certificate's handshake and kill()'s
Shutdown there: a plugin dropped to fewer rights than its host (a wrapper that changes user or sandboxes
it) would reach, through the host, what it cannot reach itself. The proof:

- unix: the kernel's sock_diag (runners.unixdiag) names the listening socket bound to the very file the host's
  O_PATH handle holds, without connecting; that socket must be held open (/proc/PID/fd) by the started process
  or a descendant, each holder's parent links (/proc/PID/stat) read after its files and leading to the started
  process within _MAX_HOPS, each parent no younger than its child (a number reused meanwhile would be younger)
  and the started process still the one started (its start ticks). Where the kernel cannot tell (no sock_diag,
  a listener in another network namespace, nothing listening yet; unixdiag says when) or a process of the tree
  hides its open files (setuid, non-dumpable), SO_PEERCRED of one connection made and closed through the handle
  gives the pid that listens there (Linux sets it at listen()), checked the same way; a pid that vanished, or 0
  (a listener of a pid namespace this one cannot see: a container's), proves nothing. That connection is the
  one a server that serves once (go-plugin's multiplexed mode) would end on, and a Go plugin's gRPC logs: the
  multiplexed start asks with connect=False (ASK_A_CONNECTION where only a connection could tell) and proves
  its own one connection, made through the handle, on itself. gRPC and the multiplexed connection dial (and
  redial) the handle (core.host.connecting): a socket renamed onto the path later is never reached.
- tcp: the listening sockets a dial would reach (the host's own /proc/self/net/tcp, tcp6) must all be held open by the
  started process or its descendants (their /proc/PID/fd), in this host's network namespace: the process
  itself is looked at first, the rest of its tree (a scan of /proc's parent links) only if that fails.
  Addresses in ProcessRunner(trusted_networks=) are the caller's word and not proven.

What cannot be proven is refused (UnprovenAddressError): a command that hands the serving to a process it
does not start (``docker run``'s published port or bind-mounted socket, a service manager's, a daemon that
forked twice and left the tree). ClientConfig(trust_announced_address=True) opts out for such wrappers.
A reattach proves its address in runners.attached; Docker and pod runners dial addresses they mapped
themselves (a folder plugbay made and mounted, a port it published or forwarded), so neither asks here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

from plugbay.core.transport.tempdirs import own_proc
from plugbay.runners.announced import IPNetwork, trusted_address
from plugbay.runners.base import ASK_A_CONNECTION, HELD_BY_NONE, NOT_LISTENING
from plugbay.runners.listeners import host_tcp_listeners, listens_on, other_net_namespace, peer_pid, same_net_namespace
from plugbay.runners.listeners import socket_inodes, tcp_listeners, unix_peer_pid
from plugbay.runners.proctree import family, stat_of
from plugbay.runners.unixdiag import bound_listener

_MAX_HOPS = 64  # parent links walked from the listener: deeper than any wrapper chain of a plugin


def descends(pid: int, root: int, root_start: int) -> bool:
    """Whether live process ``pid`` is process ``root`` (started at ``root_start`` ticks) or its descendant."""
    child_start: int | None = None
    for _ in range(_MAX_HOPS):
        facts = stat_of(pid)  # None: gone or a zombie, which proves nothing
        if facts is None or pid <= 1:
            return False
        ppid, start = facts
        if child_start is not None and start > child_start:
            return False  # younger than its child: the parent's number was reused after the child was reparented
        if pid == root:
            return start == root_start
        if start < root_start:
            return False  # older than the plugin: no descendant of it
        pid, child_start = ppid, start
    return False


class OwnListeners:
    """ProcessRunner's proof of the address its plugin announced (the fields it reads below)."""

    _proc: subprocess.Popen[bytes] | None
    _start_ticks: int | None
    _trusted: tuple[IPNetwork, ...]

    def unproven_listener(self, network: str, address: str, conn: socket.socket | None = None,
                          connect: bool = True) -> str | None:
        """Why ``address`` (as mapped for the host) is not proven to be the started plugin's; None once it is,
        NOT_LISTENING while nothing listens there. ``conn``: a unix connection the host made there itself,
        proven on its own peer; ``connect=False``: ASK_A_CONNECTION where only a connection could tell."""
        proc = self._proc
        if proc is None or network not in ("unix", "tcp"):
            return None
        if network == "tcp" and trusted_address(address, self._trusted):  # the caller's word, as plugin_to_host's
            return None
        return self._why_not_own(proc, network, address, conn, connect)

    def _why_not_own(self, proc: subprocess.Popen[bytes], network: str, address: str,
                     conn: socket.socket | None, connect: bool) -> str | None:
        root, root_start = proc.pid, self._start_ticks
        if not own_proc():
            return ("this host's /proc is missing or shows another pid namespace's processes (unshare -p"
                    " without --mount-proc, some sandboxes), so no pid read there names the process it started:"
                    " mount this pid namespace's /proc")
        if proc.returncode is not None or _exited(root):
            return f"the plugin process {root} is gone, so nothing it made can listen there"
        if root_start is None:  # running, but its /proc/PID/stat could not be read at its start
            return (f"the plugin process {root} cannot be seen in this host's /proc (mounted with hidepid=, the"
                    " plugin running as another user), so no listener can be traced back to it")
        if network == "unix":
            return unix_listener_why(address, conn, root, root_start, connect)
        # read once: the host's own table when the root is in the host's namespace (checked before the read, and
        # of the host, not the root: a root that moves namespace meanwhile changes nothing listens_on compares);
        # a root in another one has its own table, read only to tell whether it listens yet
        in_host = same_net_namespace(root)
        listening = host_tcp_listeners(address) if in_host else tcp_listeners(root, address)
        if not listening:
            return NOT_LISTENING
        known = listening if in_host else None
        if listens_on([root], "tcp", address, known):
            return None
        tree = [root, *family(root, "", root_start)]
        if listens_on(tree, "tcp", address, known):
            return None
        # first: a process whose files this host may not read hides its namespace link as well
        hidden = next((pid for pid in tree if _fds_hidden(pid)), None)
        if hidden is not None:  # a setuid, file-capability or prctl(PR_SET_DUMPABLE, 0) process, to a non-root host
            return (f"the open files of the plugin's process {hidden} cannot be read here (/proc/{hidden}/fd: a"
                    " setuid or non-dumpable program), so which of its sockets listen there cannot be told")
        if other_net_namespace(root):
            # not trusted_networks for this address: loopback or this host's own addresses dial the host's ports
            return (f"the plugin process {root} runs in another network namespace (`ip netns exec`, `unshare -n`),"
                    " whose loopback and ports this host cannot reach at that address (dialing it would reach this"
                    " host's own port); run the plugin in the host's network namespace, or have it announce an"
                    " address of its own namespace the host routes to, named in ProcessRunner(trusted_networks=)")
        return (f"a socket listening there is held by no process of the plugin's (process {root}, which"
                " plugbay started, and its descendants): another service listens there (a port `docker run`"
                " published, another server)")


def unix_listener_why(address: str, conn: socket.socket | None, root: int, root_start: int,
                      connect: bool = True) -> str | None:
    """Why the unix socket at ``address`` (or the listener of ``conn``, a connection the host made there) is not
    proven to be listened on by process ``root`` (started at ``root_start`` ticks) or a descendant; None once it
    is, NOT_LISTENING while nothing listens there. The started plugin's and a reattached one's proof alike.
    ``connect=False``: ASK_A_CONNECTION where the kernel cannot tell and only a connection's peer could (the
    caller proves the connection it makes anyway: a multiplexed server serves one)."""
    if conn is None:
        # connect() needs write permission on the file: asked without connecting (a missing file: nothing there)
        if os.access(address, os.F_OK) and not os.access(address, os.W_OK, effective_ids=True):
            return _no_connecting("Permission denied: its file's permissions")
        listener = bound_listener(address)  # the kernel's word: no connection a one-shot server would end on
        if listener is not None:
            why = _held_why(listener, root, root_start)
            if why is not _ASK_THE_PEER:
                return why
        if not connect:
            return ASK_A_CONNECTION
    try:
        pid = peer_pid(conn) if conn is not None else unix_peer_pid(address)
    except PermissionError as exc:
        folder = unsearchable_folder(address) if conn is None else None
        return _no_connecting(f"{exc.strerror}: " + (f"this host's user may not search folder {folder!r}, on its"
                                                      " path" if folder else "its file's permissions or a security"
                                                      " module"))
    except OSError as exc:
        return f"the connection to it tells no listener ({exc})"
    if pid is None:
        return NOT_LISTENING
    if descends(pid, root, root_start):
        return None
    return _not_ours(f"process {pid}" if pid else "a process of another pid namespace (a container's, as"
                     " `docker run` with the socket's folder mounted gives)", root)


_ASK_THE_PEER = "the open files of a process of the plugin's cannot be read: SO_PEERCRED tells"


def _held_why(listener: int, root: int, root_start: int) -> str | None:
    """Why socket inode ``listener`` is not shown held open by ``root`` or a descendant (its /proc/PID/fd, each
    holder proven a descendant after its files were read: a pid reused meanwhile proves nothing); _ASK_THE_PEER
    when a process of the tree hides its files (a setuid or non-dumpable one) and the listener may be its."""
    if listener in socket_inodes(root) and descends(root, root, root_start):
        return None
    tree = list(family(root, "", root_start))
    if any(listener in socket_inodes(pid) and descends(pid, root, root_start) for pid in tree):
        return None
    if any(_fds_hidden(pid) for pid in [root, *tree]):
        return _ASK_THE_PEER
    holder, looked = _holder(listener)  # a refusal's cost only: it names who serves there
    if holder is not None:
        return _not_ours(f"process {holder}", root)
    if looked is not None:
        return _not_ours(f"a process not found in the {_HOLDER_BUDGET:g} s this host looks for one (the open"
                         f" files of {looked} of this machine's processes looked at)", root)
    return _not_ours("a process whose open files this host cannot read (another user's, or another pid"
                     f" namespace's: a container's), or {HELD_BY_NONE} (a socket held only in flight, passed in a"
                     " unix message not yet received, or by a process that exited meanwhile)", root)


_HOLDER_BUDGET = 0.3  # seconds a refusal spends naming the foreign listener's holder (every fd of every process)


def _holder(inode: int) -> tuple[int | None, int | None]:
    """(a process of this host's /proc that holds socket ``inode`` open, None); (None, how many were read) when
    the time budget ran out first (a busy host: reattach data reaches here, so its cost is bounded); (None, None)
    when no process this host may read holds it."""
    deadline = time.monotonic() + _HOLDER_BUDGET
    looked = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        if time.monotonic() >= deadline:
            return None, looked
        if inode in socket_inodes(int(name)):
            return int(name), None
        looked += 1
    return None, None


NO_CONNECTING = "this host may not connect to that socket"  # how every refusal for want of permission begins


def _no_connecting(why: str) -> str:
    """A refusal where connecting is not allowed: asked of the file's permissions, or met on connecting."""
    # not "loosen it": a plugin's socket folder is private to its user on purpose
    return f"{NO_CONNECTING} ({why}), so neither can gRPC; run the host as a user who may connect (the plugin's own)"


def unsearchable_folder(path: str) -> str | None:
    """The first folder on ``path``'s way that this process may not search (connect() needs each one's search
    permission, as a file's open does), or None. Asked of the effective ids and capabilities: root without
    CAP_DAC_OVERRIDE meets a folder's mode as any user does."""
    folder = os.path.dirname(os.path.abspath(path))
    parts = [part for part in folder.split("/") if part]
    for depth in range(len(parts) + 1):
        here = "/" + "/".join(parts[:depth])
        if not os.access(here, os.X_OK, effective_ids=True):
            return here if os.path.isdir(here) else None  # its parent was searched: a stat tells a folder gone
    return None


def _not_ours(who: str, root: int) -> str:
    return (f"the socket there is listened on by {who}, which is neither the plugin process {root}"
            " plugbay started nor one of its descendants")


def _exited(pid: int) -> bool:
    """Whether child ``pid`` has exited (a zombie, or reaped already); it is not reaped here."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
    except OSError:
        return False


def _fds_hidden(pid: int) -> bool:
    """Whether process ``pid`` runs but its open files cannot be listed by this process."""
    try:
        os.listdir(f"/proc/{pid}/fd")
    except PermissionError:
        return stat_of(pid) is not None
    except OSError:
        pass
    return False
