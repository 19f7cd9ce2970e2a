"""Brokered gRPC servers started ahead of time, so a callback does not wait for one.

grpcio's server start (C-core listener set-up, its poll thread) and bind cost
a millisecond or more, and go-plugin's bidirectional pattern pays them on
every call: the host serves a fresh broker id for each call that needs a
callback. The process therefore keeps one *spare* (for all its brokers, so
many live plugins do not keep one each): a server already bound to a fresh
socket and started, with no services yet, built by a background thread while
the previous callback runs. accept_and_serve takes it and registers the
services through a :class:`Registrar`; each id still gets its own server on
its own socket, used for that id only and stopped with it, as in go-plugin.

A stopped server's worker pool (idle once grpcio's stop completed) is handed
to the next server built rather than shut down and made anew: starting and
joining its threads cost about what the callback itself does. A pool serves
one server at a time, so each server keeps its own workers (and their limit).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Executor

import grpc

from plugbay.core.broker.channels import Served, share_socket, stop_served
from plugbay.core.broker.lanes import Lane, new_pool
from plugbay.core.transport.grpcoptions import BRIDGED_OPTIONS
from plugbay.core.transport.secure import CHANNEL_OPTIONS, MutualTLS, serve_unix
from plugbay.core.transport.sockets import unlink_quietly
from plugbay.core.transport.tempdirs import private_room, private_socket
from plugbay.core.transport.unstarted import ready_to_stop
from plugbay.core.transport.workers import DaemonPool
from plugbay.errors import PlugbayError

log = logging.getLogger("plugbay.broker")

_JOIN = 10.0
_EXIT_JOIN = 1.0  # the builder, when the process exits: a spare being built ends in milliseconds
_IDLE_POOLS = 1  # stopped servers' worker pools kept for the next ones (one thread, as a spare had)
_FOLDER_ERRORS = (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EEXIST)  # this socket's problem only


Built = tuple[Served, str]  # a started server with no services and the unix socket path it listens on


def build_server(tls: MutualTLS | None, private_dir: str, path: str,
                 pools: Callable[[], DaemonPool | None] | None = None) -> Built:
    """A started gRPC server with no services listening on ``path`` (TLS as ``tls`` says).

    ``pools`` gives an idle worker pool a stopped server left (or None); without
    it the server gets a new pool with a worker started for its first call.
    """
    if pools is None:
        executor: Executor = new_pool()
        executor.submit(int)  # a worker thread is there for the first call
    else:
        executor = Lane(pools)
    # Every brokered server runs with the bridged options, multiplexed or not: its socket is local either
    # way (the window need not grow past 4 MiB), and one kind of server keeps one spare fitting both
    # kinds of broker (a spare per kind thrashed in a host using both: a review measured 0-27 takes of 440)
    served = Served(0, grpc.server(executor, options=[*CHANNEL_OPTIONS, *BRIDGED_OPTIONS]), executor, [])
    try:
        served.cleanup.extend(serve_unix(served.server, path, tls, private_dir))
    except BaseException:
        ready_to_stop(served.server)  # a server never started is never freed (core/transport/unstarted.py)
        stop_served(served)
        raise
    return served, path


class ServerSource:
    """Where accept_and_serve gets its started servers: the spare when there is one, else a new one.

    ``public_path`` (per-connection mode) names a fresh socket where the peer
    may dial: a server listens in ``private_dir()`` and its socket file is
    moved there (linked, then unlinked) when it is used (a listening unix
    socket listens on whatever path names it) and given the folder's group as
    share_socket does. Where the two folders are on different mounts (no
    link), or a setgid folder's group cannot be given, servers are bound at
    the public path directly, and without spares. Multiplexed servers
    (``public_path`` None) stay in the private folder. No spare is kept for a
    TLS relay (a Go peer's certificate).
    """

    def __init__(self, tls: MutualTLS | None, private_dir: Callable[[], str],
                 public_path: Callable[[], str] | None) -> None:
        self._tls = tls
        self._private_dir = private_dir
        self._public_path = public_path
        self._renames = True
        # a relay (a Go peer's certificate) is a listener and threads of its own: none kept idle
        self._spares = tls is None or not tls.needs_relay
        self._spare = join_spares()
        self._spare.hold(tls)
        self._left = False

    def _build_private(self, private: str | None = None) -> Built:
        """A server in ``private`` (default: this broker's private folder; a spare: the spares' folder)."""
        folder = private if private is not None else self._private_dir()
        return build_server(self._tls, folder, private_socket(folder, "spare" if self._public_path else "mux"),
                            self._spare.pool)

    def _take(self) -> Built | None:
        return self._spare.take(self._tls) if self._spares else None

    def get(self) -> Built:
        """A started server with no services and the socket path to announce (or route to)."""
        if self._public_path is None:
            return self._take() or self._build_private()
        if self._renames:
            served, path = self._take() or self._build_private()
            public = self._public_path()
            # its group and mode are set while only plugbay's private folder names it: nothing is
            # done by name in the shared folder, where a container user could swap the name
            share_socket(path, os.path.dirname(public))
            try:
                os.link(path, public)  # unlike rename, never replaces a file already there
            except OSError as exc:  # bound directly below: a bad folder is reported from there
                log.debug("cannot move a brokered socket to %s (%s); binding there directly", public, exc)
                stop_served(served)
                if exc.errno not in _FOLDER_ERRORS:  # another mount, no hard links: stop trying
                    self._renames = False
            else:
                served.cleanup.append(lambda: unlink_quietly(public))
                unlink_quietly(path)
                try:
                    grouped: bool | None = _has_folder_group(public)
                except OSError:  # the name is gone already (the plugin shares the folder): bind anew
                    grouped = None
                if grouped:
                    return served, public
                if grouped is False:
                    # a setgid folder's group (what a container user connects with) could not be given
                    log.debug("cannot give a moved brokered socket its folder's group; binding there directly")
                    self._renames = False
                stop_served(served)
        served, path = build_server(self._tls, self._private_dir(), self._public_path(), self._spare.pool)
        share_socket(path)
        return served, path

    def refill(self) -> None:
        """Have the next server started in the background (while the current one serves)."""
        if self._renames and self._spares:
            self._spare.refill(self._tls, self._build_private)

    def reap(self, finish: Callable[[], None]) -> None:
        self._spare.reap(finish)

    def recycle(self, executor: Executor) -> bool:
        """Keep a stopped server's idle worker pool for a later server (False: shut it down)."""
        return self._spare.recycle(executor)

    def close(self, wait: bool = True) -> None:
        if not self._left:
            self._left = True
            self._spare.leave(self._tls, wait=wait)


def _has_folder_group(path: str) -> bool:
    """False when ``path`` sits in a setgid folder without that folder's group (sockets made there have it)."""
    folder = os.stat(os.path.dirname(path))
    return not folder.st_mode & stat.S_ISGID or os.lstat(path).st_gid == folder.st_gid


class SpareServer:
    """Holds at most one started, unused brokered server for the whole process; ``refill()`` has one built.

    Shared by every broker of the process (a host with many live plugins keeps
    one spare, not one each): a spare is keyed by the TLS it serves with, and
    ``take(key)`` hands it only to a broker serving with the same (plaintext
    brokers share it). One long-lived builder thread (started when first
    needed) does the building: starting a thread per build would cost the
    caller about what a server start costs. It also shuts down the worker pools
    of stopped servers handed to ``reap()`` (never waiting for a handler still
    running) and frees their sockets, so stopping one does not wait for that.
    Brokers hold it between :func:`join_spares` and ``leave()``; the last to
    leave stops the spare, joins the builder and removes its folder.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._spare: tuple[MutualTLS | None, Built] | None = None
        self._builder: threading.Thread | None = None
        self._wanted: tuple[MutualTLS | None, Callable[[str], Built]] | None = None
        self._reaped: list[Callable[[], None]] = []
        self._closed = False
        self._users = 0
        self._dir: str | None = None
        self._made = True  # False: the folder is the host's (private_room); the spares' sockets go one by one
        self._pools: list[DaemonPool] = []  # stopped servers' idle worker pools
        # brokers serving with each key: a spare built for a key whose brokers all left (one closing
        # while its spare was being built or wanted) is stopped, not kept listening with its certificate
        self._keys: dict[MutualTLS | None, int] = {}

    def hold(self, key: MutualTLS | None) -> None:
        """One more broker serving with ``key`` (until its ``leave(key)``)."""
        with self._cond:
            self._keys[key] = self._keys.get(key, 0) + 1

    def take(self, key: MutualTLS | None) -> Built | None:
        with self._cond:
            if self._spare is None or self._spare[0] != key:
                return None
            spare, self._spare = self._spare[1], None
            return spare

    def refill(self, key: MutualTLS | None, build: Callable[[str], Built]) -> None:
        """Have a spare for ``key`` built (``build(folder)``) unless one is there or on its way."""
        with self._cond:
            if self._closed or key not in self._keys or self._wanted is not None or (
                    self._spare is not None and self._spare[0] == key):
                return
            self._wanted = (key, build)
            self._wake()

    def reap(self, finish: Callable[[], None]) -> None:
        """Run a stopped server's ``finish`` (wait, free, join) in the background (at once once closed)."""
        with self._cond:
            if not self._closed:
                self._reaped.append(finish)
                self._wake()
                return
        _finish(finish)

    def pool(self) -> DaemonPool | None:
        """An idle worker pool a stopped server left, or None (make a new one)."""
        with self._cond:
            return self._pools.pop() if self._pools else None

    def recycle(self, executor: Executor) -> bool:
        """Keep a stopped server's worker pool for a later one if nothing runs on it.

        True: kept (or there was none); False: the caller shuts ``executor`` down.
        """
        if not isinstance(executor, Lane):
            return False
        with self._cond:  # never both locks at once: a lane asks for a pool holding its own
            if self._closed or len(self._pools) >= _IDLE_POOLS:
                return False
        idle, pool = executor.release()
        if pool is None:
            return idle
        with self._cond:
            if not self._closed and len(self._pools) < _IDLE_POOLS:
                self._pools.append(pool)
                return True
        pool.shutdown(wait=True)  # taken meanwhile: nothing runs on it, so this only joins
        return True

    def _wake(self) -> None:  # with the lock held
        if self._builder is None:
            self._builder = threading.Thread(target=self._run, name="plugbay-broker-spare", daemon=True)
            self._builder.start()  # under the lock: leave() never sees an unstarted thread
        else:
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._wanted is None and not self._reaped and not self._closed:
                    self._cond.wait()
                reaped, self._reaped = self._reaped, []
                if self._closed:
                    break
                wanted = self._wanted
            for finish in reaped:
                _finish(finish)
            if wanted is not None:
                self._build_one(*wanted)
        for finish in reaped:
            _finish(finish)

    def _folder(self) -> str:
        with self._cond:
            if self._closed:  # leave() has removed the folder or is removing it: none made after that
                raise OSError(errno.ESHUTDOWN, "the spare servers' folder is gone: the last broker left")
            if self._dir is None:
                self._dir, self._made = private_room("plugbay-spares-")
            return self._dir

    def _build_one(self, key: MutualTLS | None, build: Callable[[str], Built]) -> None:
        built: Built | None = None
        try:
            built = build(self._folder())
        except (PlugbayError, OSError, RuntimeError, ValueError) as exc:
            # accept_and_serve then builds its own and reports the failure
            log.debug("could not prepare a spare brokered server: %s", exc)
        except Exception:  # a bug: said loudly, but the builder lives on and is not left "wanted"
            log.warning("preparing a spare brokered server failed unexpectedly", exc_info=True)
        old: Built | None = None
        with self._cond:
            self._wanted = None
            if built is not None and not self._closed and key in self._keys:
                old = self._spare[1] if self._spare is not None else None  # another key's: replaced
                self._spare, built = (key, built), None
        for unused in (built, old):
            if unused is not None:
                stop_served(unused[0])

    def leave(self, key: MutualTLS | None = None, wait: bool = True) -> None:
        """One broker less (serving with ``key``: once none serves with it, a spare for it goes too).

        The last one stops the spare, joins the builder and removes the folder. ``wait=False``
        (the process is exiting): stopped servers' workers still running are not joined.
        """
        global _SPARES
        with _SPARES_LOCK:
            self._users -= 1
            last = self._users <= 0
            if last and _SPARES is self:
                _SPARES = None
        with self._cond:
            held = self._keys.pop(key, 0) - 1
            if held > 0:
                self._keys[key] = held
            mine = self._spare if not last and held <= 0 and self._spare and self._spare[0] == key else None
            if mine is not None:
                self._spare = None
        if not last:
            if mine is not None:
                stop_served(mine[1][0])
            return
        with self._cond:
            self._closed = True  # from here _folder() makes no folder: the one read below is the last
            self._cond.notify()
            builder = self._builder
            spare, self._spare = self._spare, None
            folder = self._dir if self._made else None
        if spare is not None:
            stop_served(spare[1][0])  # no calls ever ran on it: nothing to wait for
        if folder is not None:  # before any wait: a process killed meanwhile leaves no folder
            shutil.rmtree(folder, ignore_errors=True)
        # the builder may be building a spare or waiting (10 s at most) for a stopped server's shutdown
        if builder is not None:
            builder.join(_JOIN if wait else _EXIT_JOIN)
        if folder is not None and os.path.lexists(folder):  # a spare being built bound a socket during rmtree
            shutil.rmtree(folder, ignore_errors=True)
        with self._cond:
            if wait or builder is None or not builder.is_alive():
                reaped, self._reaped = self._reaped, []
            else:  # the builder, still busy, runs these next, then ends
                reaped = []
            pools, self._pools = self._pools, []
        for finish in reaped:
            _finish(finish)
        for pool in pools:
            pool.shutdown(wait=wait)


_SPARES: SpareServer | None = None
_SPARES_LOCK = threading.Lock()


def join_spares() -> SpareServer:
    """The process's spare server holder, for one more broker (which calls ``leave()`` when it closes)."""
    global _SPARES
    with _SPARES_LOCK:
        if _SPARES is None:
            _SPARES = SpareServer()
        _SPARES._users += 1
        return _SPARES


def _forget_in_child() -> None:
    """A forked child has none of its parent's spares (nor its builder thread)."""
    global _SPARES, _SPARES_LOCK
    _SPARES, _SPARES_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def _finish(finish: Callable[[], None]) -> None:
    try:
        finish()
    except Exception:  # a bug: said loudly, the other servers are still freed
        log.warning("freeing a stopped brokered server failed", exc_info=True)
