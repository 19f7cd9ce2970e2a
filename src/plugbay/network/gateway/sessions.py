"""Brokering through the gateway: each remote host session spliced to a child of its own.

go-plugin gives each host its own plugin process with one broker. With
``GatewayConfig(multiplex=True)`` the gateway serves on serve()'s network
front (plugbay.core.plugin.netmux): plain gRPC connections still reach the
shared child through the forwarder, and every yamux session a remote host
opens gets a :class:`ChildSession`: the gateway starts a NEW child with
PLUGIN_MULTIPLEX_GRPC=true, opens ONE connection to it, runs a yamux session
over it as go-plugin's host would, and splices the two sessions stream by
stream, in the order they are opened (each side routes incoming streams by the
order of knocks, and knocks travel inside the spliced main connection, so
order is all a splice has to keep). The gateway never speaks gRPC with these
children: the remote host's main connection, broker stream and brokered
connections all pass through unchanged.

The child must announce multiplexing (a plugbay Python plugin does; go-plugin
1.0.x Go plugins cannot): otherwise the session is closed and the reason logged.
Between gateway and these children there is no AutoMTLS (their streams are
the remote host's, which does not know the child's certificate); the child's
socket is in a private 0700 folder. When either side of a session ends, the
other side is closed and the child stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Mapping, Sequence

from plugbay.core.host.launch import follow_output, launch_env, read_handshake
from plugbay.core.host.logs import LogPump
from plugbay.core.protocol.handshake import HandshakeConfig
from plugbay.core.transport.keepalive import DEFAULT as DEFAULT_KEEPALIVE, Keepalive
from plugbay.core.transport.sockets import dial
from plugbay.core.transport.streamcap import Share
from plugbay.core.transport.tempdirs import make_tempdir
from plugbay.core.transport.yamux import Session, Stream
from plugbay.errors import GatewayError, PlugbayError
from plugbay.network.gateway.twins import TwinOpener
from plugbay.runners.base import LaunchSpec
from plugbay.runners.process import ProcessRunner

log = logging.getLogger("plugbay.gateway")
_KILL_GRACE = 2.0


class ChildSession:
    """One remote host's yamux session and the child plugin that serves only that host."""

    def __init__(self, conn: socket.socket, cmd: Sequence[str], cookie: tuple[str, str],
                 versions: Sequence[int], *, env: Mapping[str, str], cwd: str | None, start_timeout: float,
                 logger: logging.Logger | None = None, peer: str | None = None,
                 keepalive: tuple[float, ...] = DEFAULT_KEEPALIVE) -> None:
        self._conn = conn
        # the child's session too: a child that stops answering (stopped, wedged) ends this session, so
        # the host reconnects to a new child; the host's own keepalive cannot see it, as this gateway
        # answers the host's pings itself
        self._child_alive = Keepalive.of(keepalive, "gateway keepalive")
        self._cmd = list(cmd)
        self._cookie = cookie
        self._versions = sorted({int(v) for v in versions})
        self._env = dict(env)
        self._cwd = cwd
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._tlock = threading.Lock()
        self._splices: set[threading.Thread] = set()
        self._threads: list[threading.Thread] = []
        self._logs = LogPump("gateway-session", logger)
        self._runner: ProcessRunner | None = None
        self._child: Session | None = None
        self._remote: Session | None = None
        self._failed = False
        self._closed = False
        # the remote host's streams, two splice threads each; with all sessions from its address (streamcap)
        self._share = Share(peer)
        # a reader never opens the twin itself: that waits on the other side's socket (see twins)
        self._to_child = TwinOpener(lambda: self._child, "gw-to-child", self._splices, self._tlock)
        self._to_remote = TwinOpener(lambda: self._remote, "gw-to-remote", self._splices, self._tlock)
        self._dir = make_tempdir("plugbay-gwchild-")
        os.chmod(self._dir, 0o700)
        self._starter = threading.Thread(target=self._start, name="plugbay-gateway-session", daemon=True)
        self._starter.start()

    @property
    def ended(self) -> bool:
        with self._lock:
            if self._failed:
                return True
            sessions = (self._remote, self._child)
        return any(s is not None and s.closed for s in sessions)

    def host_session(self) -> Session | None:
        """The remote host's session (the front's keepalive watches it; tick() the child's)."""
        with self._lock:
            return self._remote

    def tick(self, now: float) -> None:
        with self._lock:
            child = self._child
        self._child_alive.tick(child, now)

    def _start(self) -> None:
        try:
            self._launch()
        except Exception as exc:  # any: a thread that died here left the session, its child and host, forever
            expected = isinstance(exc, (PlugbayError, OSError))
            log.warning("gateway: a brokering host session could not get its own plugin: %s", exc,
                        exc_info=not expected)
            with self._lock:
                self._failed = True
                runner = None if self._closed else self._runner
            self._conn.close()
            if runner is not None:  # not left running until the front reaps this session
                runner.kill(_KILL_GRACE)

    def _launch(self) -> None:
        handshake = HandshakeConfig(self._versions[-1], self._cookie[0], self._cookie[1])
        env = launch_env(handshake, self._versions, env=self._env, socket_dir=self._dir, cert=None,
                         min_port=10000, max_port=25000, multiplex=True)
        runner = ProcessRunner(self._cmd, cwd=self._cwd)
        with self._lock:
            if self._closed:
                return
            self._runner = runner
        runner.start(LaunchSpec(env=env, socket_dir=self._dir, labels={"plugbay.plugin": "gateway-session"}))
        feed, _ = follow_output(runner, self._logs)  # ends with the runner; the LogPump's join waits for it
        info = read_handshake(runner, feed, time.monotonic() + self._start_timeout, "gateway-session",
                              self._start_timeout, multiplex=True)
        if not info.multiplex:
            raise GatewayError(f"the plugin {self._cmd[0]!r} does not multiplex brokered connections (no"
                               " PLUGIN_MULTIPLEX_GRPC support: go-plugin 1.0.x); serve the gateway without"
                               " --multiplex, or use a plugin that multiplexes (a plugbay plugin)")
        if info.app_version not in self._versions:
            raise GatewayError(f"the plugin chose app protocol version {info.app_version}, not one of"
                               f" {self._versions}; fix --protocol-versions")
        sock = dial(info.network, info.address, timeout=self._start_timeout)
        sock.settimeout(None)
        self._conn.settimeout(None)
        with self._lock:
            if self._closed:
                sock.close()
                return
            write_timeout = self._child_alive.write_timeout
            self._child = Session(sock, client=True, on_stream=self._from_child, name="gw-child",
                                  write_timeout=write_timeout)
            self._remote = Session(self._conn, client=False, on_stream=self._from_remote, name="gw-remote",
                                   write_timeout=write_timeout)

    # Both run on their session's reader thread, in the order the streams arrive; they never wait.
    def _from_remote(self, stream: Stream) -> None:
        share = self._share
        if not share.take():
            if (why := share.first_refusal()) is not None:
                log.warning("gateway: resetting a brokering host's new streams until some end: %s", why)
            stream.reset()
            return
        self._to_child.pair(stream, share.give)

    def _from_child(self, stream: Stream) -> None:
        self._to_remote.pair(stream)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            runner, sessions = self._runner, (self._remote, self._child)
        # the child first (SIGTERM, then after the grace SIGKILL; this also ends a handshake still
        # being waited for): a go-plugin child whose connection ended before it did logs that as
        # an ERROR ("grpc server error=EOF"), and its session ends with it all the same
        if runner is not None:
            runner.kill(_KILL_GRACE)
        for session in sessions:
            if session is not None:
                session.close()
        self._starter.join(timeout=self._start_timeout + 5)
        if self._remote is None:
            self._conn.close()
        for opener in (self._to_child, self._to_remote):  # before the splices: they may start more
            opener.join(5)
        for _ in range(3):
            with self._tlock:
                threads = list(self._splices)
            if not threads:
                break
            for t in threads:
                t.join(timeout=5)
        for t in self._threads:
            t.join(timeout=5)
        self._logs.join(5.0)
        shutil.rmtree(self._dir, ignore_errors=True)
