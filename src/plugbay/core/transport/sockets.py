"""Socket plumbing every transport piece shares: listeners, dialing, accept loops, closing and joining."""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from plugbay.errors import ConfigError

ACCEPT_POLL = 0.2  # accept loops wake this often to notice that they were closed
_BUSY_RETRY = 0.01  # a unix listener with a full backlog: dial again this much later
_WAIT_SLICE_MS = 50  # dial_until asks whether to give up this often while a tcp connect waits
# Seconds a peer has to complete a TLS handshake, in total: the relay's bound, and grpcio's
# server handshake bound in serve() (kept here so that a plaintext plugin need not load the relay).
HANDSHAKE_TIMEOUT = 10.0
_MAX_GID = 2**32 - 2
# accept() failing for want of descriptors or kernel memory: a moment (a burst of connections, another
# part of the process holding many), not the listener's end: accepted again ACCEPT_PAUSE later
ACCEPT_SHORTAGES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# ... failing for that one connection only (reset before it was accepted): the next one is accepted
ACCEPT_SKIPS = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR)
ACCEPT_PAUSE = 0.1
SHORTAGE_LOG_EVERY = 60.0  # a run of shortages is logged as it starts, then at most once this often

_log = logging.getLogger("plugbay.io")


def group_id(group: str | int, advice: str) -> int:
    """A host group, by name or numeric gid, as a gid (ConfigError with ``advice`` when there is none)."""
    # ASCII digits only (str.isdigit takes '١٢' too); -1 (2**32-1) means "leave the group" to chown
    if isinstance(group, int) or (group.isascii() and group.isdigit()):
        # length first: int() raises ValueError past 4300 digits
        if isinstance(group, bool) or len(str(group)) > 10 or not 0 <= int(group) <= _MAX_GID:
            raise ConfigError(f"gid {group!r} is outside 0..{_MAX_GID}; {advice}")
        return int(group)
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"failed to find gid from {group!r}: {group!r} is not a group on this host;"
                          f" {advice}") from None


def give_to_group(path: str, gid: int, mode: int) -> None:
    """Hand a socket (or its folder) to a group with ``mode``, as go-plugin's setGroupWritable does.

    Through an O_PATH handle on the name itself, never following a symlink: the
    folder may be writable by a container user, who could swap the socket's name
    for a link to one of the host's files between bind and chmod.
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISSOCK(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise OSError(errno.EPERM, f"{path} is not a socket or a folder; left alone")
        handle = f"/proc/self/fd/{fd}"  # chown/chmod of the very inode opened above
        if st.st_gid != gid:
            os.chown(handle, -1, gid)
        os.chmod(handle, mode)
    finally:
        os.close(fd)


def check_unix_path(path: str, shorter: str) -> None:
    """Make ready to listen at ``path``: refuse a path too long (``shorter`` says what to do), a
    file that is not a socket, or a socket another process listens on; remove a socket no one
    listens on any more (left by a process that is gone: a crashed plugin in a fixed-path setup).

    grpcio would bind over a live socket without a word, taking the path from its server.
    """
    if len(os.fsencode(path)) > 107:
        raise ConfigError(f"unix socket path {path!r} is longer than the 107 bytes the OS allows; {shorter}")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"couldn't listen on unix socket {path}: a file that is not a socket is"
                          " there; remove it or choose another path")
    if not socket_answers(path):
        unlink_quietly(path)
        return
    raise ConfigError(f"couldn't listen on unix socket {path}: another process is listening there;"
                      " stop it or choose another path")


def hung_up(sock: socket.socket | None) -> bool:
    """The peer shut its side, or the socket failed or was closed (seen without reading what is buffered)."""
    if sock is None:
        return False
    fd = sock.fileno()
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, getattr(select, "POLLRDHUP", 0) | select.POLLHUP)
    return bool(poller.poll(0))


def socket_answers(path: str) -> bool:
    """Whether a unix socket at ``path`` has a listener: only "refused" or "gone" say no.

    A live listener whose backlog is full answers EAGAIN to a connect, and one stopped
    (SIGSTOP) still queues it: neither is a socket left behind.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(path)
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        sock.close()
    return True


def unix_target(path: str) -> str:
    """The grpcio target (to bind or dial) for a unix socket at ``path``: grpcio reads ``unix:`` targets
    as URIs, so a '%' in the path (a folder named so, a TMPDIR) is written %25, and '#' and '?', which
    would end the path there, %23 and %3F; a leading '//' (the same folder to Linux) would be read as a
    URI's authority."""
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return "unix:" + path.replace("%", "%25").replace("#", "%23").replace("?", "%3F")


def unlink_quietly(path: str) -> None:
    """Remove a socket file that may already be gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def open_listener(network: str, address: str) -> socket.socket:
    """Bind a listening socket; tcp addresses are host:port (port 0 picks one)."""
    bind_to: str | tuple[str, int]
    if network == "unix":
        bind_to = address
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    elif network == "tcp":
        host, _, port = address.rpartition(":")
        bind_to = (host.strip("[]"), int(port))
        sock = socket.socket(socket.AF_INET6 if ":" in bind_to[0] else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    else:
        raise ConfigError(f"unknown network {network!r}; use 'unix' or 'tcp'")
    try:
        sock.bind(bind_to)
        sock.listen(socket.SOMAXCONN)  # the system's backlog: a burst of connections must not be refused
    except BaseException:
        sock.close()  # a path too long, a port taken: no descriptor is left behind
        raise
    return sock


def listener_address(sock: socket.socket) -> tuple[str, str]:
    if sock.family == socket.AF_UNIX:
        return "unix", str(sock.getsockname())
    host, port = sock.getsockname()[:2]
    return "tcp", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def close_listener(sock: socket.socket) -> None:
    """Close a listener and remove its unix socket file."""
    network, address = listener_address(sock)
    sock.close()
    if network == "unix":
        unlink_quietly(address)


def shutdown_and_join(socks: Iterable[socket.socket], threads: Iterable[threading.Thread],
                      timeout: float = 5.0) -> None:
    """Wake every pump blocked on a socket, then wait for its thread.

    The raw socket is shut down (socket.socket.shutdown, also for an SSLSocket):
    SSLSocket.shutdown drops its TLS object first, and a pump sending on it in
    between would put plaintext on the wire.
    """
    for sock in socks:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass
    for thread in threads:
        thread.join(timeout=timeout)


class AcceptShortage:
    """One accept loop's runs of accept() failing for want of descriptors (ACCEPT_SHORTAGES): logged as
    a run starts, again at most once per SHORTAGE_LOG_EVERY while it lasts, and as it ends (a loop
    that pauses ACCEPT_PAUSE between tries would otherwise log ten lines a second). One thread's."""

    def __init__(self, what: str, log: logging.Logger = _log) -> None:
        self._what = what
        self._log = log
        self._since: float | None = None  # when the run began
        self._logged = 0.0
        self._count = 0

    def refused(self, exc: OSError) -> bool:
        """Whether ``exc`` (from accept()) is a shortage: pause and accept again, it is not the end."""
        if exc.errno not in ACCEPT_SHORTAGES:
            return False
        now = time.monotonic()
        self._count += 1
        if self._since is None:
            self._since = now
        if self._count == 1 or now - self._logged >= SHORTAGE_LOG_EVERY:
            self._logged = now
            still = f"still, {self._count} times in {now - self._since:.0f}s" if self._count > 1 else "trying again"
            self._log.warning("%s cannot accept connections (%s): %s every %gs (logged once per %gs while it"
                              " lasts); if this persists, raise the process's open-file limit (ulimit -n)",
                              self._what, exc.strerror or exc, still, ACCEPT_PAUSE, SHORTAGE_LOG_EVERY)
        return True

    def accepted(self) -> None:
        """A connection was accepted: a run of shortages (if any) is over."""
        if self._since is not None:
            self._log.warning("%s accepts connections again, after %d refusals in %.1fs", self._what,
                              self._count, time.monotonic() - self._since)
            self._since, self._count = None, 0


def accept_each(listener: socket.socket, closed: Callable[[], bool],
                what: str = "a listener") -> Iterator[socket.socket]:
    """Yield accepted connections until ``closed()`` or the listener is closed; a shortage of
    descriptors (``what`` names the listener in its log record) pauses it, ending nothing.

    The listener must have a timeout: that is how a loop notices ``closed()``.
    """
    shortage = AcceptShortage(what)
    while not closed():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError as exc:
            if shortage.refused(exc):
                time.sleep(ACCEPT_PAUSE)
                continue
            if exc.errno in ACCEPT_SKIPS:
                continue
            return  # closed (EBADF, EINVAL): the loop's end
        shortage.accepted()
        if conn.family != socket.AF_UNIX:  # small gRPC frames must not wait for Nagle's algorithm
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        yield conn


def dial_now(network: str, address: str) -> socket.socket | None:
    """A unix connection made without waiting (blocking from then on); None when it would wait
    (a full backlog) or ``network`` is not unix (tcp takes a round trip). OSError: refused, absent."""
    if network != "unix":
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(address)
    except BlockingIOError:
        sock.close()
        return None
    except OSError:
        sock.close()
        raise
    sock.setblocking(True)
    return sock


def dial_until(network: str, address: str, deadline: float,
               given_up: Callable[[], bool]) -> socket.socket | None:
    """A blocking connection made by ``deadline`` (time.monotonic()); None as soon as ``given_up()``
    says so (it is asked every few milliseconds while the connect waits). OSError on failure,
    TimeoutError at the deadline."""
    if network == "unix":  # a full backlog: try again (a unix connect does not wait by itself)
        while (conn := dial_now(network, address)) is None:
            if given_up():
                return None
            if time.monotonic() >= deadline:
                raise TimeoutError(errno.ETIMEDOUT, f"the listener at {address} kept its backlog full")
            time.sleep(_BUSY_RETRY)
        return conn
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        err = sock.connect_ex((host, int(port)))
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLOUT)
            while not poller.poll(_WAIT_SLICE_MS):
                if given_up():
                    sock.close()
                    return None
                if time.monotonic() >= deadline:
                    raise TimeoutError(errno.ETIMEDOUT, f"no answer from {address} in time")
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"cannot connect to {address}: {os.strerror(err)}")
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except BaseException:
        sock.close()
        raise


def dial(network: str, address: str, timeout: float | None) -> socket.socket:
    """A connection, made within ``timeout`` seconds (None: blocking); the socket keeps that timeout."""
    if network == "unix":
        if timeout is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(address)
            except OSError:
                sock.close()
                raise
            return sock
        # a full backlog fails a non-waiting unix connect at once rather than waiting as tcp's
        # does: the listener is busy, not gone, so dial_until tries again until the timeout
        conn = dial_until(network, address, time.monotonic() + timeout, lambda: False)
        assert conn is not None
        conn.settimeout(timeout)
        return conn
    host, _, port = address.rpartition(":")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except ValueError as exc:  # a name IDNA refuses raises UnicodeError, no OSError
        raise ConfigError(f"cannot dial tcp address {address!r:.120}: {exc}; the address is malformed") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def private_folder_root(socket_dir: str | None) -> str | None:
    """Where to make a private socket folder: None (the temp dir) while there is a usable one; else
    the host's socket folder (PLUGIN_UNIX_SOCKET_DIR) when this side can write there, as in a
    container whose temp dirs are read-only. (Reached over TCP, that folder may not exist.)"""
    import tempfile

    try:
        tempfile.gettempdir()
        return None
    except FileNotFoundError:  # "No usable temporary directory found"
        pass
    if socket_dir and os.path.isdir(socket_dir) and os.access(socket_dir, os.W_OK | os.X_OK):
        return socket_dir
    return None
