"""What a network front (plugbay.core.plugin.netmux) keeps per host session: a FrontSession, made by a
SessionFactory for each yamux connection it routes; serve()'s is an InstanceSession, an AcceptedSession whose
un-knocked streams reach that host's own plugin instance (Instance: its gRPC server's address, and how to stop
it). The gateway's sessions are FrontSessions too. Kept apart from netmux, which re-exports them."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from plugbay.core.transport.keepalive import WRITE_TIMEOUT, Pingable
from plugbay.core.transport.muxplugin import AcceptedSession
from plugbay.core.transport.muxsession import MuxSession

log = logging.getLogger("plugbay.server")


@dataclass
class Instance:
    """One host's plugin instance: where its gRPC server listens, and how to stop it."""

    address: tuple[str, str]
    close: Callable[[], None]


InstanceFactory = Callable[[MuxSession, str], Instance]  # (the session, a socket path to serve on)


class FrontSession(Protocol):
    """What the front keeps per yamux connection: ended once the host is gone; close() frees it."""

    @property
    def ended(self) -> bool: ...

    def host_session(self) -> Pingable | None:
        """The yamux session with the remote host (what the keepalive watches), once there is one."""

    def tick(self, now: float) -> None:
        """The front's periodic call (about once a second), for watches of the session's own."""

    def close(self) -> None: ...


# (the connection, a fresh socket path, the peer's IP address: "" for a unix socket)
SessionFactory = Callable[[socket.socket, str, str], FrontSession]


class InstanceSession:
    """serve()'s session: an AcceptedSession whose un-knocked streams reach its own plugin instance."""

    def __init__(self, conn: socket.socket, path: str, peer: str, make_instance: InstanceFactory,
                 write_timeout: float = WRITE_TIMEOUT) -> None:
        self.mux = AcceptedSession(("unix", path), peer, write_timeout)
        self.instance = make_instance(self.mux, path)  # listening before the first stream is routed
        self.mux.run(conn)

    @property
    def ended(self) -> bool:
        return self.mux.ended

    def host_session(self) -> Pingable | None:
        return self.mux.session

    def tick(self, now: float) -> None:
        """Nothing of its own to watch: its plugin instance is in this process."""

    def close(self) -> None:
        for what, step in (("instance", self.instance.close), ("session", self.mux.close)):
            try:
                step()
            except Exception:
                log.exception("stopping a host session's %s failed", what)


def instance_sessions(make_instance: InstanceFactory, write_timeout: float = WRITE_TIMEOUT) -> SessionFactory:
    return lambda conn, path, peer: InstanceSession(conn, path, peer, make_instance, write_timeout)
