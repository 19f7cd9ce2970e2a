"""Brokered gRPC servers started ahead of time, so a callback does not wait for one.

grpcio's server start (C-core listener set-up, its poll thread) and bind cost
a millisecond or more, and go-plugin's bidirectional pattern pays them on
every call: the host serves a fresh broker id for each call that needs a
callback. A broker therefore keeps one *spare*: a server already bound to a
fresh socket and started, with no services yet, built by a background thread
while the previous callback runs. accept_and_serve takes it and registers the
services through a :class:`Registrar`; each id still gets its own server on
its own socket, used for that id only and stopped with it, as in go-plugin.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from plugbay.core.broker.channels import Served, share_socket, stop_served
from plugbay.core.transport.secure import (
    CHANNEL_OPTIONS,
    MutualTLS,
    private_socket,
    serve_unix,
)
from plugbay.core.transport.sockets import unlink_quietly
from plugbay.errors import BrokerError, PlugbayError

log = logging.getLogger("plugbay.broker")

_JOIN = 10.0
_SERVER_WORKERS = 16
_FOLDER_ERRORS = (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EEXIST)  # this socket's problem only


class Registrar(grpc.Server):  # type: ignore[misc]
    """What ``register`` gets in accept_and_serve: a started brokered server that takes services only.

    grpcio takes generic handlers on a started server but ignores
    registered-method handlers, so those are added as generic ones (what
    generated ``add_*Servicer_to_server`` code also adds). Binding, starting
    and stopping belong to the broker.
    """

    def __init__(self, server: grpc.Server) -> None:
        self._server = server
        self._services: set[str] = set()

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[Any]) -> None:
        handlers = tuple(generic_rpc_handlers)
        for handler in handlers:
            name = getattr(handler, "service_name", None)
            if callable(name):
                self._services.add(str(name()))
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        if service_name in self._services:
            return  # generated code adds the same handlers generically first
        self.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, method_handlers),))

    def _refuse(self, what: str) -> BrokerError:
        return BrokerError(f"a brokered server's register callback called {what}(); the broker binds,"
                           " starts and stops brokered servers itself, so register only adds services"
                           " (add_*Servicer_to_server(servicer, server))")

    def add_insecure_port(self, address: str) -> int:
        raise self._refuse("add_insecure_port")

    def add_secure_port(self, address: str, server_credentials: Any) -> int:
        raise self._refuse("add_secure_port")

    def start(self) -> None:
        raise self._refuse("start")

    def stop(self, grace: float | None) -> Any:
        raise self._refuse("stop")

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        raise self._refuse("wait_for_termination")


Built = tuple[Served, str]  # a started server with no services and the unix socket path it listens on


def build_server(tls: MutualTLS | None, private_dir: str, path: str) -> Built:
    """A started gRPC server with no services listening on ``path`` (TLS as ``tls`` says)."""
    executor = ThreadPoolExecutor(max_workers=_SERVER_WORKERS, thread_name_prefix="plugbay-brokered")
    served = Served(0, grpc.server(executor, options=CHANNEL_OPTIONS), executor, [])
    try:
        served.cleanup.extend(serve_unix(served.server, path, tls, private_dir))
        executor.submit(int)  # a worker thread is there for the first call
    except BaseException:
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
        self._spare = SpareServer(self._build_private)

    def _build_private(self) -> Built:
        private = self._private_dir()
        return build_server(self._tls, private, private_socket(private, "spare" if self._public_path else "mux"))

    def get(self) -> Built:
        """A started server with no services and the socket path to announce (or route to)."""
        if self._public_path is None:
            return self._spare.take() or self._build_private()
        if self._renames:
            served, path = self._spare.take() or self._build_private()
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
                if _has_folder_group(public):
                    return served, public
                # a setgid folder's group (what a container user connects with) could not be given
                log.debug("cannot give a moved brokered socket its folder's group; binding there directly")
                self._renames = False
                stop_served(served)
        served, path = build_server(self._tls, self._private_dir(), self._public_path())
        share_socket(path)
        return served, path

    def refill(self) -> None:
        """Have the next server started in the background (while the current one serves)."""
        if self._renames and self._spares:
            self._spare.refill()

    def reap(self, finish: Callable[[], None]) -> None:
        self._spare.reap(finish)

    def close(self) -> None:
        self._spare.close()


def _has_folder_group(path: str) -> bool:
    """False when ``path`` sits in a setgid folder without that folder's group (sockets made there have it)."""
    folder = os.stat(os.path.dirname(path))
    return not folder.st_mode & stat.S_ISGID or os.lstat(path).st_gid == folder.st_gid


class SpareServer:
    """Holds at most one started, unused brokered server; ``refill()`` has the next one built.

    One long-lived builder thread (started when first needed) does the
    building: starting a thread per build would cost the caller about what
    a server start costs. It also joins the worker threads of stopped
    servers handed to ``reap()`` and frees their sockets, so stopping one does not wait for that.
    """

    def __init__(self, build: Callable[[], Built]) -> None:
        self._build = build
        self._cond = threading.Condition()
        self._spare: Built | None = None
        self._builder: threading.Thread | None = None
        self._wanted = False
        self._reaped: list[Callable[[], None]] = []
        self._closed = False

    def take(self) -> Built | None:
        with self._cond:
            spare, self._spare = self._spare, None
            return spare

    def refill(self) -> None:
        """Have a spare built unless one is there or on its way (a no-op once closed)."""
        with self._cond:
            if self._closed or self._spare is not None or self._wanted:
                return
            self._wanted = True
            self._wake()

    def reap(self, finish: Callable[[], None]) -> None:
        """Run a stopped server's ``finish`` (wait, free, join) in the background (at once once closed)."""
        with self._cond:
            if not self._closed:
                self._reaped.append(finish)
                self._wake()
                return
        _finish(finish)

    def _wake(self) -> None:  # with the lock held
        if self._builder is None:
            self._builder = threading.Thread(target=self._run, name="plugbay-broker-spare", daemon=True)
            self._builder.start()  # under the lock: close() never sees an unstarted thread
        else:
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._wanted and not self._reaped and not self._closed:
                    self._cond.wait()
                reaped, self._reaped = self._reaped, []
                if self._closed:
                    break
                wanted = self._wanted
            for finish in reaped:
                _finish(finish)
            if wanted:
                self._build_one()
        for finish in reaped:
            _finish(finish)

    def _build_one(self) -> None:
        built: Built | None = None
        try:
            built = self._build()
        except (PlugbayError, OSError, RuntimeError, ValueError) as exc:
            # accept_and_serve then builds its own and reports the failure
            log.debug("could not prepare a spare brokered server: %s", exc)
        except Exception:  # a bug: said loudly, but the builder lives on and is not left "wanted"
            log.warning("preparing a spare brokered server failed unexpectedly", exc_info=True)
        with self._cond:
            self._wanted = False
            if built is not None and not self._closed:
                self._spare, built = built, None
        if built is not None:
            stop_served(built[0])

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
            builder = self._builder
            spare, self._spare = self._spare, None
        if builder is not None:
            builder.join(_JOIN)
        with self._cond:
            reaped, self._reaped = self._reaped, []
        for finish in reaped:
            _finish(finish)
        if spare is not None:
            stop_served(spare[0])


def _finish(finish: Callable[[], None]) -> None:
    try:
        finish()
    except Exception:  # a bug: said loudly, the other servers are still freed
        log.warning("freeing a stopped brokered server failed", exc_info=True)
