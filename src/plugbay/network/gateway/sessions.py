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
1.0.x Go plugins cannot). Gateway.start() checks that once (:class:`MultiplexCheck`:
a child started as a session's is, its handshake read, the child stopped) and
refuses to start with a GatewayError saying to drop --multiplex, rather than
offer hosts sessions that could only fail. Should a session's child announce no
multiplexing later all the same (the plugin's file was replaced), its session is
closed, ``on_no_multiplex`` told (the gateway then stops offering multiplexing
in Discovery), and the gateway refuses later sessions at once (``refused``).
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
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

from plugbay.core.host.launch import follow_output, launch_env, read_handshake
from plugbay.core.host.logs import LogPump
from plugbay.core.host.socketpin import prove_listener
from plugbay.core.protocol.exits import exit_said
from plugbay.core.protocol.handshake import HandshakeConfig, HandshakeInfo
from plugbay.core.protocol.outlive import ENV_OUTLIVE_HOST
from plugbay.core.transport.keepalive import DEFAULT as DEFAULT_KEEPALIVE, Keepalive
from plugbay.core.transport.sockets import dial, hung_up
from plugbay.core.transport.streamcap import Share
from plugbay.core.transport.tempdirs import make_tempdir
from plugbay.core.transport.yamux import Session, Stream
from plugbay.errors import GatewayError, PlugbayError, UnprovenAddressError
from plugbay.network.gateway.config import TRUST_OPT_OUT
from plugbay.network.gateway.starts import FairStarts
from plugbay.network.gateway.twins import TwinOpener
from plugbay.runners import hostbound
from plugbay.runners.base import NOT_LISTENING, LaunchSpec
from plugbay.runners.process import ProcessRunner

log = logging.getLogger("plugbay.gateway")
_KILL_GRACE = 2.0


def die_with_gateway() -> bool:
    """Every child the gateway starts ends with it, even a SIGKILLed one, where the kernel can be asked to
    (Linux with util-linux's setpriv: runners/hostbound.py); Gateway.start() warns where it cannot."""
    return hostbound.available()


def child_runner(cmd: Sequence[str], cwd: str | None) -> ProcessRunner:
    """The runner of a plugin the gateway starts: it ends with the gateway (die_with_gateway), and where the
    kernel cannot be asked a plugbay plugin still stops once the gateway's end of its stderr closes (no
    gateway reattaches, so nothing asks it to outlive one: PLUGBAY_OUTLIVE_HOST=0)."""
    return ProcessRunner(list(cmd), cwd=cwd, die_with_host=die_with_gateway(), env={ENV_OUTLIVE_HOST: "0"})


def no_multiplex(cmd: Sequence[str]) -> str:
    """What to say of a plugin whose handshake, asked to multiplex, announces no multiplexing."""
    return (f"the plugin {cmd[0]!r} does not multiplex brokered connections (asked with"
            " PLUGIN_MULTIPLEX_GRPC=true, its handshake announces no multiplexing: a go-plugin 1.0.x plugin);"
            " run the gateway without --multiplex (GatewayConfig(multiplex=False)): hosts then call it over"
            " plain gRPC, without brokered callbacks. Or serve a plugin that multiplexes (a plugbay plugin)")


def start_child(runner: ProcessRunner, socket_dir: str, cmd: Sequence[str], cookie: tuple[str, str],
                versions: Sequence[int], env: Mapping[str, str], start_timeout: float, logs: LogPump,
                label: str) -> HandshakeInfo:
    """Start a child as a brokering session's is (PLUGIN_MULTIPLEX_GRPC=true, no AutoMTLS) and read its
    handshake; typed errors for one that fails to start or chose a version not asked for."""
    handshake = HandshakeConfig(versions[-1], cookie[0], cookie[1])
    launch = launch_env(handshake, versions, env=env, socket_dir=socket_dir, cert=None,
                        min_port=10000, max_port=25000, multiplex=True)
    runner.start(LaunchSpec(env=launch, socket_dir=socket_dir, labels={"plugbay.plugin": label}))
    feed, _ = follow_output(runner, logs)  # ends with the runner; the LogPump's join waits for it
    info = read_handshake(runner, feed, time.monotonic() + start_timeout, label, start_timeout,
                          multiplex=True)
    if info.app_version not in versions:
        raise GatewayError(f"the plugin chose app protocol version {info.app_version}, not one of"
                           f" {list(versions)}; fix --protocol-versions")
    return info


class MultiplexCheck:
    """Gateway.start()'s check that the plugin multiplexes: one child started as a session's would be,
    its handshake read, the child stopped. ``abort()`` (another thread: a stop() during the start)
    ends a check still waiting for the handshake."""

    def __init__(self, cmd: Sequence[str], cookie: tuple[str, str], versions: Sequence[int], *,
                 env: Mapping[str, str], cwd: str | None, start_timeout: float,
                 logger: logging.Logger | None = None) -> None:
        self._cmd = list(cmd)
        self._cookie = cookie
        self._versions = sorted({int(v) for v in versions})
        self._env = dict(env)
        self._start_timeout = start_timeout
        self._logger = logger
        self._runner = child_runner(self._cmd, cwd)
        self._aborted = threading.Event()

    def run(self) -> None:
        """Return if the plugin multiplexes; else raise GatewayError saying what to do."""
        logs = LogPump("gateway-multiplex-check", self._logger)
        folder = make_tempdir("plugbay-gwcheck-")
        try:
            os.chmod(folder, 0o700)
            info = start_child(self._runner, folder, self._cmd, self._cookie, self._versions, self._env,
                               self._start_timeout, logs, "gateway-multiplex-check")
        except GatewayError:
            raise
        except PlugbayError as exc:
            if self._aborted.is_set():  # abort() killed it: that is the stop, not a plugin failure
                raise GatewayError("the gateway was stopped while it checked that its plugin multiplexes") from exc
            raise GatewayError(f"the gateway could not start its plugin {self._cmd} with PLUGIN_MULTIPLEX_GRPC=true"
                               f" to check that it multiplexes (--multiplex): {exc}") from exc
        finally:
            self._runner.kill(_KILL_GRACE)
            logs.join(5.0)
            shutil.rmtree(folder, ignore_errors=True)
        if not info.multiplex:
            raise GatewayError(no_multiplex(self._cmd))

    def abort(self) -> None:
        self._aborted.set()
        self._runner.kill(_KILL_GRACE)  # before its start, too: that start is then refused


class ChildSession:
    """One remote host's yamux session and the child plugin that serves only that host."""

    def __init__(self, conn: socket.socket, cmd: Sequence[str], cookie: tuple[str, str],
                 versions: Sequence[int], *, env: Mapping[str, str], cwd: str | None, start_timeout: float,
                 logger: logging.Logger | None = None, peer: str | None = None,
                 keepalive: tuple[float, ...] = DEFAULT_KEEPALIVE, refused: str = "",
                 on_no_multiplex: Callable[[str], None] | None = None, starts: FairStarts | None = None,
                 trust_announced_address: bool = False) -> None:
        self._conn = conn
        self._trust = trust_announced_address  # GatewayConfig's: the child's address dialed unproven
        self._starts = starts  # the gateway's turns for children's starts, shared by its sessions
        self._refused = refused  # why no child is started for this session: its connection is closed at once
        self._on_no_multiplex = on_no_multiplex
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
        self._peer = peer
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
        if sessions[0] is None:  # nothing reads the host's connection yet: its hang-up is the sign it left
            return self._host_left()
        return any(s is not None and s.closed for s in sessions)

    def _host_left(self) -> bool:
        """The host hung up before its session began (while it waited for a turn, or its child started)."""
        with self._lock:
            if self._closed or self._remote is not None:
                return self._closed
        return hung_up(self._conn)

    def host_session(self) -> Session | None:
        """The remote host's session (the front's keepalive watches it; tick() the child's)."""
        with self._lock:
            return self._remote

    def tick(self, now: float) -> None:
        with self._lock:
            child = self._child
        self._child_alive.tick(child, now)

    def _start(self) -> None:
        if self._refused:
            log.debug("gateway: closing a brokering host's session at once: %s", self._refused)
            with self._lock:
                self._failed = True
            self._conn.close()
            return
        try:
            self._launch()
        except Exception as exc:  # any: a thread that died here left the session, its child and host, forever
            expected = isinstance(exc, (PlugbayError, OSError))
            with self._lock:
                closed = self._closed
            if (closed or self._host_left()) and expected:  # it ended first (its host left while its child
                # waited or started): a peer's own doing, which it could repeat at will
                log.debug("gateway: a brokering host session ended while its plugin started: %s", exc)
            else:
                log.warning("gateway: a brokering host session could not get its own plugin: %s", exc,
                            exc_info=not expected)
            with self._lock:
                self._failed = True
                runner = None if self._closed else self._runner
            self._conn.close()
            if runner is not None:  # not left running until the front reaps this session
                runner.kill(_KILL_GRACE)

    def _launch(self) -> None:
        runner = child_runner(self._cmd, self._cwd)
        with self._lock:
            if self._closed:
                return
            self._runner = runner
        with self._turn():
            info = start_child(runner, self._dir, self._cmd, self._cookie, self._versions, self._env,
                               self._start_timeout, self._logs, "gateway-session")
        if not info.multiplex:
            why = no_multiplex(self._cmd)
            if self._on_no_multiplex is not None:
                self._on_no_multiplex(why)
            raise GatewayError(why)
        sock = self._dial_child(runner, info)
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
        runner.watch_exit(self._child_exited)

    def _dial_child(self, runner: ProcessRunner, info: HandshakeInfo) -> socket.socket:
        """The one connection to the child's multiplexed server, at the address its handshake announced, mapped
        and refused as a Client's would be (this machine's), and proven as a Client's multiplexed connection is
        (the child or a process it started listens there): before it is made (the server serves the first
        connection it takes), through a handle on the unix socket; only where the kernel cannot tell, on the
        connection itself, before a byte is written."""
        network, address = runner.plugin_to_host(info.network, info.address)
        if self._trust:
            return dial(network, address, timeout=self._start_timeout)
        try:
            found = prove_listener(runner, network, address, info, "gateway-session", reattached=False,
                                   connect=False)
        except UnprovenAddressError as exc:  # the handle could not be taken: the gateway's own words
            raise exc.advising(TRUST_OPT_OUT) from None
        if found == NOT_LISTENING:  # as the dial it replaces failed: the child's server is not up (any more)
            raise GatewayError(f"the brokering session's plugin announced {info.network} address"
                               f" {info.address!r}, but nothing listens there")
        if isinstance(found, str):
            raise UnprovenAddressError("gateway-session", info.network, info.address, found, opt_out=TRUST_OPT_OUT)
        try:  # one connection, never redialed: the handle is needed only to make it
            sock = dial(network, found.address, timeout=self._start_timeout)
        finally:
            if found.handle is not None:
                os.close(found.handle)
        why = runner.unproven_listener(network, found.address, sock) if found.on_connection else None
        if why is not None:
            sock.close()
            raise UnprovenAddressError("gateway-session", info.network, info.address, why, opt_out=TRUST_OPT_OUT)
        return sock

    def _turn(self) -> AbstractContextManager[None]:
        """One of the gateway's turns to start a child, waited for within start_timeout (see starts.py)."""
        if self._starts is None:
            return nullcontext()
        # a host that left gives its turn up (and the front reaps its session): one address opening sessions
        # and leaving at once queued a child start for each, for nobody, ahead of everyone's later turns
        return self._starts.turn(self._peer or "", time.monotonic() + self._start_timeout, self._host_left)

    def _child_exited(self, code: int) -> None:
        """On the shared I/O loop (never blocks): a crash is told as the shared child's is; a child close()
        stopped is not. Its session then ends with it (its connection closes), the host reconnecting."""
        with self._lock:
            if self._closed:
                return
        log.warning("gateway: the plugin of the brokering session from %s %s; ending that session (the host"
                    " reconnects to a new one)", self._peer or "a local peer", exit_said(code))

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
        if self._starts is not None:
            self._starts.wake()  # a turn still waited for ends now
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
