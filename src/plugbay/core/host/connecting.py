"""Connecting a started Client to the plugin its handshake announced: the address mapped to one this
host can dial, the channel dialed (AutoMTLS when a certificate was exchanged; through a yamux session
when the broker is multiplexed), the broker and stdio streams built, the health check waited for.

The Client's classes stack: ClientParts (what it holds, how it lets go) <- ExitNotice (its plugin's exit)
<- Connecting (this) <- Client (the lifecycle around them: start, dispense, kill, close).
"""

from __future__ import annotations

import logging
import socket
import stat
import time

from plugbay._proto.plugin import grpc_controller_pb2_grpc
from plugbay.core.broker.plugin import PluginSet
from plugbay.core.host.channel import ManagedChannel
from plugbay.core.host.connect import EXIT_GRACE, SOCKET_GRACE, announced_file, dial, start_connecting, wait_healthy
from plugbay.core.host.exitnotice import ExitNotice
from plugbay.core.host.launch import exited_after_handshake, no_socket, not_a_socket, refuse_announced
from plugbay.core.host.socketpin import Proven, prove_listener
from plugbay.core.host.streams import StreamKick, open_streams
from plugbay.core.protocol.handshake import HandshakeInfo
from plugbay.core.transport.grpcoptions import with_defaults
from plugbay.core.transport.keepalive import Keepalive
from plugbay.core.transport.muxhost import HostMux
from plugbay.errors import ClientStateError, HandshakeError, HandshakeTimeoutError, RunnerError, TLSRequiredError
from plugbay.errors import AnnouncedUnreachableError, UnprovenAddressError, clip
from plugbay.runners.base import HELD_BY_NONE, NOT_LISTENING, REATTACH_OPT_OUT

_log = logging.getLogger("plugbay.client")
# No long-lived stream holds the connection any more (the broker's opens on first use), so grpcio
# would drop an unused one after 30 idle minutes; keep it, as go-plugin's host does (grpc_options win: with_defaults).
_KEEP_CONNECTED = ("grpc.client_idle_timeout_ms", 2**31 - 1)


class Connecting(ExitNotice):
    """start()'s second half: from the plugin's handshake line to a healthy connection."""

    # the Client's own, set in its __init__ and by kill()/close() while start() runs
    _keepalive: Keepalive  # the yamux session's keepalive (ClientConfig.mux_keepalive)
    _abandoned: bool  # abandon_start(): the start gives up waiting on the plugin
    _kill_asked: bool  # kill() came while this thread started: it ends the start
    _versions: dict[int, PluginSet]  # ClientConfig.versions(): what the handshake may announce

    def _raise_if_exited(self, code: int | None) -> None:
        if code is not None:
            self._logs.join(2.0)
            raise exited_after_handshake(self.name, code, self._logs.last(20))

    def _accept(self, info: HandshakeInfo) -> None:
        refuse_announced(info, self._versions, self.config.multiplex_broker, self.name)
        self._announced = info
        self._version = info.app_version

    def _prove_listener(self, network: str, address: str, announced: HandshakeInfo, deadline: float,
                        connect: bool = True) -> Proven:
        """What to dial once the runner proves the plugin listens at ``address``; UnprovenAddressError
        once it says another process does. While nothing listens there (a plugin that prints before it listens)
        it is looked at again, as gRPC would redial, until the plugin exits, kill() or abandon_start() comes, or
        the start's ``deadline`` passes (HandshakeTimeoutError).

        A unix socket is proven, and dialed, through a handle on its inode (``/proc/self/fd/N``, held until the
        Client closes): a plugin may rename another socket onto its path once the proof is made, and gRPC
        dials (and redials) a path by name. ``connect=False`` (the multiplexed connection: go-plugin's server
        there serves one connection, which a probe would use up): where only a connection could tell, the
        handle comes back marked ``on_connection``, for the caller to prove the one connection it makes."""
        runner = self._need(self._runner, "runner")
        pause = 0.005
        while True:
            found = prove_listener(runner, network, address, announced, self.name, self.config.reattach is not None,
                                   connect=connect)
            if isinstance(found, Proven):
                self._pinned_socket = found.handle
                return found
            why = found
            self._raise_if_exited(runner.wait(0))  # an exit says more than what is left at the address
            if why != NOT_LISTENING:  # a reattach's own way out: trust_announced_address does not apply to it
                # A plugin whose server is going away right after its line (a dying process's listener outlives
                # its file table for a moment: held by no process; a wrapper exits once its server did) is
                # exiting, and that is the cause to tell: the address advice (trust_announced_address) would
                # not help. So its exit is waited for a moment, as for a missing socket file, before refusing;
                # a listener a live process holds (another service, the host itself) is refused at once
                if HELD_BY_NONE in why:
                    self._raise_if_exited(runner.wait(min(EXIT_GRACE, max(deadline - time.monotonic(), 0.0))))
                raise UnprovenAddressError(self.name, announced.network, announced.address, why,
                                           *((REATTACH_OPT_OUT,) if self.config.reattach is not None else ()))
            if self._abandoned or self._kill_asked:
                raise ClientStateError(f"the start of plugin {self.name!r} was ended (kill(), close() or a"
                                       " cancelled start()) while nothing listened yet at the address it"
                                       " announced; make a new Client to try again")
            if time.monotonic() >= deadline:
                raise HandshakeTimeoutError(
                    f"plugin {self.name!r} printed its handshake, but nothing listened at the {network} address it"
                    f" announced ({clip(repr(announced.address), 200)}) within the start timeout"
                    f" ({self.config.start_timeout:.1f}s). Check that the plugin listens there before it prints"
                    " its handshake line, as go-plugin does")
            time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
            pause = min(pause * 2, 0.1)

    def _connect(self, announced: HandshakeInfo, deadline: float) -> None:
        runner = self._need(self._runner, "runner")
        handshake_at = time.monotonic()  # the line (or the reattach facts) was read just now
        try:
            network, address = runner.plugin_to_host(announced.network, announced.address)
        except RunnerError as exc:  # a plugin gone at once has no address left to map (a stopped container's port)
            # an address the runner can never carry is the line's fault, exit or not: an exit heard already
            # is still told, none is waited for
            self._raise_if_exited(runner.wait(0 if isinstance(exc, AnnouncedUnreachableError) else 1.0))
            if isinstance(exc, AnnouncedUnreachableError):  # what the plugin said so far may say why (a crash)
                raise AnnouncedUnreachableError(exc.reason, self._logs.last(20)) from None
            raise
        info = announced.with_address(network, address)
        if self._cert is not None and info.server_cert is None:
            if self._require_tls:
                # No certificate from a plugin that is gone: its exit says why. An exit right after the line
                # reaches the runner late (an engine's wait answer), so it is waited for, up to exit_notice_time.
                notice = min(runner.exit_notice_time, max(deadline - time.monotonic(), 0.0))
                self._raise_if_exited(runner.wait(notice))
                why = ("require_tls=True" if self.config.require_tls else
                       f"{type(runner).__name__}'s connection leaves the host's private folder")
                raise TLSRequiredError(self.name, why)
            _log.warning("plugin %s sent no AutoMTLS certificate; connecting in plaintext", self.name)
        mode = announced_file(address, handshake_at, lambda: runner.wait(0) is not None) if network == "unix" else 0
        if mode is None:
            self._raise_if_exited(runner.wait(EXIT_GRACE))  # an exit explains the missing file better
            raise HandshakeError(no_socket(self.name, announced.address, address, self.config.reattach is not None,
                                           SOCKET_GRACE))
        if mode and not stat.S_ISSOCK(mode):  # a file that is there and no socket never becomes one: not dialed
            raise not_a_socket(self.name, announced.address, address, self.config.reattach is not None, mode)
        # a reattach proves its address whatever trust_announced_address says (its docs): the address is
        # read from a file, and the process it names was started by someone else
        prove = not self.config.trust_announced_address or self.config.reattach is not None
        dial_to = (network, address)
        on_connection = False  # the kernel could not tell who listens: the multiplexed connection is proven on itself
        if prove:  # before any connection: a multiplexed server (go-plugin's) serves the first one it takes
            proven = self._prove_listener(network, address, announced, deadline,
                                          connect=not self.config.multiplex_broker)
            dial_to, on_connection = (network, proven.address), proven.on_connection
        if self.config.multiplex_broker:
            # One connection carries a yamux session; the main channel and every
            # brokered connection are streams in it (TLS, if any, runs per stream).
            target = dial_to[1]  # dial_to names the mux's own local socket below: the check asks of the plugin's

            def check(conn: socket.socket) -> None:  # made through the pinned handle: its peer is the proof
                # a tcp port is proven again at each redial from the socket tables (another process may hold it
                # by then); a unix handle's inode cannot be listened on by another socket
                why = runner.unproven_listener(network, target, conn if network == "unix" else None)
                if why is not None:
                    self._raise_if_exited(runner.wait(0))
                    raise UnprovenAddressError(self.name, announced.network, announced.address, why)

            self._mux = HostMux(*dial_to, timeout=max(deadline - time.monotonic(), 5.0), keepalive=self._keepalive,
                                check=check if on_connection or (prove and network == "tcp") else None)
            dial_to = self._mux.local_address
        self._conn = dial(*dial_to, tls=self._cert, server_cert_der=info.server_cert,
                          relay_dir=self._tmpdir, options=with_defaults([_KEEP_CONNECTED], self.config.grpc_options))
        start_connecting(self._conn.channel)  # grpcio's threads connect while this one builds the rest
        self._info = info
        self._channel = ManagedChannel(self._conn.channel, self.config.call_timeout,
                                       self._exit_probe, self.name)
        # Built now: building a call object on a channel the exit watcher closed crashes grpcio.
        self._controller = grpc_controller_pb2_grpc.GRPCControllerStub(self._conn.channel)  # type: ignore[no-untyped-call]
        if self._kick is None:  # reattached: no spawn to arm it at
            self._kick = StreamKick()
        # a reattached Client's own folder is not the one a container has mounted: the runner's, if it has one
        streams = open_streams(self._conn, info, self._cert, runner.broker_socket_dir or self._tmpdir, runner,
                               self._mux, self.config, self.name)
        self._broker = streams.broker
        remaining = max(deadline - time.monotonic(), 1.0)
        self._broker_queues = wait_healthy(self._conn.channel, remaining, name=self.name,
                                           exited=lambda: self._abandoned or self._kill_asked
                                           or runner.wait(0) is not None, detail=runner.connect_detail)
        if self._abandoned:
            raise ClientStateError(f"the start of plugin {self.name!r} was abandoned (close() came while it"
                                   " reattached, or its AsyncClient's start() was cancelled); make a new client"
                                   " to try again")
        self._raise_if_exited(runner.wait(0))
        if self._kill_asked:  # a reattached plugin kill() could not reach yet: start() ends it
            raise ClientStateError(f"kill() was asked while plugin {self.name!r} was connecting")
        self._stdio = streams.stdio_for(self._broker_queues)
        self._kick.set_stdio(self._stdio, self._broker_queues)
        self._channel.after_call = self._kick.now
        # Told of the exit at once (the process runner: a pidfd on the shared I/O thread, taken at spawn).
        if self._exit_watch is None:
            self._exit_watch = runner.watch_exit(self._on_exit)
        self._exit_gate.open()
        # it ended while start() ran: as if told now. _exit_heard, not _exit_code: an exit watch the gate
        # said no to has set the first, not yet the second (either way exactly one of us acts: tell())
        code = self._exit_heard if self._exit_heard is not None else self._exit_code
        if code is not None:
            self._on_exit(code)
