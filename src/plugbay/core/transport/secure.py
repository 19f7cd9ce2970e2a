"""The one place that decides how a gRPC connection is secured: grpcio's TLS, the OpenSSL relay, or none.

AutoMTLS gives each side one certificate and trusts exactly the peer's. grpcio's
BoringSSL cannot handshake with go-plugin's P-521 certificates, so when the
*peer's* certificate is one grpcio cannot use, gRPC stays plaintext on a
private unix socket and a TLSRelay speaks TLS to the peer: ``originate`` under
a dialed channel, ``terminate`` in front of a served socket. Every dial and
every served socket of plugbay (the main connection, brokered connections in
both modes) goes through :func:`dial` or :func:`serve_unix`, with one set of
channel options.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from plugbay.core.protocol.records import Frozen, Record
from plugbay.core.protocol.tls import HOSTNAME, CertKey, client_context, grpc_can_use, server_context
from plugbay.core.transport import aioloop
from plugbay.core.transport.grpcoptions import with_defaults
from plugbay.core.transport.sockets import open_listener, unix_target, unlink_quietly
from plugbay.core.transport.tempdirs import private_socket
from plugbay.errors import BrokerError, ConfigError

# go-plugin lifts gRPC's message size limits to math.MaxInt32 on both sides.
_MAX_MSG = 2**31 - 1
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", _MAX_MSG),
    ("grpc.max_receive_message_length", _MAX_MSG),
)
# How long the last user's release of an AioChannelShare lets cancelled calls settle before the close.
AIO_SETTLE = 0.1
# gRPC's words, read where a dial's failure is judged (a host's start, network mode's TLS advice): the
# peer's first bytes were no HTTP/2 frame; OpenSSL's, for a TLS handshake answered with no TLS
NOT_HTTP2_WORDS = "Failed parsing HTTP/2"
NOT_TLS_WORDS = "WRONG_VERSION_NUMBER"
# AutoMTLS certificates name HOSTNAME, whatever address carries the connection.
TLS_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.ssl_target_name_override", HOSTNAME),
    ("grpc.default_authority", HOSTNAME),
)


def grpc_target(network: str, address: str) -> str:
    """A grpcio target for a (network, address) pair; unix paths are made absolute."""
    if network == "unix":
        return unix_target(os.path.abspath(address))
    if network == "tcp":
        return address
    raise ConfigError(f"unknown network {network!r} at {address!r}; go-plugin speaks 'unix' or 'tcp' only")


class MutualTLS(Frozen):
    """This side's AutoMTLS certificate and the peer's, the only one trusted."""

    _fields = ("own", "peer_pem")
    own: CertKey
    peer_pem: bytes

    def __init__(self, own: CertKey, peer_pem: bytes) -> None:
        self._set(own=own, peer_pem=peer_pem)

    @property
    def needs_relay(self) -> bool:
        """True when grpcio cannot handshake with the peer's certificate (a Go peer's P-521)."""
        return not grpc_can_use(self.peer_pem)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.own.key_pem, self.own.cert_pem)],
                                           root_certificates=self.peer_pem, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.peer_pem, private_key=self.own.key_pem,
                                            certificate_chain=self.own.cert_pem)

    def relay_server_context(self, ctx: ssl.SSLContext | None = None) -> ssl.SSLContext:
        """The relay's OpenSSL server context; ``ctx``: a fresh one to set up (tls.early_server_context)."""
        return server_context(self.own, self.peer_pem, ctx)


class Redial(Frozen):
    """How a channel was dialed (target, credentials, options), to dial the same peer on grpc.aio.

    ``credentials`` is None for plaintext (which includes the local socket of an
    originating TLS relay: a second connection there is relayed like the first).
    """

    _fields = ("target", "credentials", "options")
    target: str
    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, Any], ...]

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None,
                 options: Sequence[tuple[str, Any]]) -> None:
        self._set(target=target, credentials=credentials, options=tuple(options))

    def aio_channel(self) -> grpc.aio.Channel:
        """A grpc.aio channel to the same peer, secured the same way. Call it on the loop that will use it."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        return grpc.aio.secure_channel(self.target, self.credentials, options=self.options)


class AioChannelShare:
    """One grpc.aio channel to a Redial's peer for the streams beside a Client's calls (loop thread only).

    The broker stream and GRPCStdio ride one second connection (go-plugin's host
    keeps every stream on its one connection; grpcio's sync and aio stacks cannot
    share one): the first :meth:`acquire` dials it, the last :meth:`release` closes it.
    """

    def __init__(self, redial: Redial) -> None:
        self.redial = redial
        self._channel: grpc.aio.Channel | None = None
        self._users = 0

    def acquire(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = self.redial.aio_channel()
        self._users += 1
        return self._channel

    async def release(self) -> None:
        """Give the channel back; the last user's release closes it, a moment later (see AIO_SETTLE)."""
        assert self._users > 0, "released more often than acquired"
        self._users -= 1
        channel = self._channel
        if self._users == 0 and channel is not None:
            # A call cancelled just now (its user's end) has batches in grpc's core still: closed under
            # them, the channel never completes them, and their callbacks keep a loop alive for ever (or
            # run on a closed one). The call's done()/code() say nothing here: a local cancel sets them at
            # once. So the close comes AIO_SETTLE later, in a task of its own (no kill() waits for it)
            # that holds no lease: it settles only while another user keeps the loop (a Supervisor
            # across its restarts). A loop that is ending (no lease left) closes the channel at once.
            # Released once the loop's last lease is gone (its end cancelling a stream): a task made now
            # might never start, and no settle may hold the loop up.
            if not aioloop.shared().on_loop():
                await self._close_unless_retaken(channel)
                return
            task = asyncio.get_running_loop().create_task(self._close_later(channel))
            _SETTLING.add(task)
            task.add_done_callback(_SETTLING.discard)

    async def _close_later(self, channel: grpc.aio.Channel) -> None:
        try:
            await asyncio.sleep(AIO_SETTLE)
        except asyncio.CancelledError:  # the loop's end cancels what is left: close before it is gone
            await self._close_unless_retaken(channel)
            raise
        await self._close_unless_retaken(channel)

    async def _close_unless_retaken(self, channel: grpc.aio.Channel) -> None:
        retaken = self._users > 0 or self._channel is not channel  # a user came back meanwhile
        if not retaken:
            self._channel = None
            await channel.close()


# the settling closes under way: a task the loop holds only weakly would be collected mid-wait
_SETTLING: set[asyncio.Task[None]] = set()


class SecureChannel(Record):
    """A dialed channel and what carries it; ``mode`` is 'plaintext', 'grpc-tls' or 'relay-tls'."""

    _fields = ("channel", "mode", "cleanup", "redial")

    def __init__(self, channel: grpc.Channel, mode: str, cleanup: list[Callable[[], None]] | None = None,
                 redial: Redial | None = None) -> None:
        self.channel = channel
        self.mode = mode
        self.cleanup: list[Callable[[], None]] = [] if cleanup is None else cleanup
        self.redial = redial

    def close(self) -> None:
        self.channel.close()
        for func in reversed(self.cleanup):
            func()


def dial(network: str, address: str, tls: MutualTLS | None, relay_dir: str | None,
         options: Sequence[tuple[str, Any]] = ()) -> SecureChannel:
    """A channel to (network, address): plaintext, grpcio TLS, or through an originating relay.

    ``relay_dir`` is a private folder for the relay's socket (needed only when
    the peer's certificate calls for the relay).
    """
    opts = with_defaults(CHANNEL_OPTIONS, options)
    if network == "unix" and address.startswith("/proc/self/fd/"):
        # a handle on a container's socket (runners/docker/sockethandles): once released, its number
        # names the next handle, and grpcio's process-wide subchannels would hand a channel to the new
        # target the open connection to the old socket; connections of its own
        opts = with_defaults([("grpc.use_local_subchannel_pool", 1)], opts)
    target = grpc_target(network, address)
    if tls is None:
        return SecureChannel(grpc.insecure_channel(target, options=opts), "plaintext",
                             redial=Redial(target, None, opts))
    if not tls.needs_relay:
        creds, tls_opts = tls.channel_credentials(), with_defaults(TLS_CHANNEL_OPTIONS, opts)
        channel = grpc.secure_channel(target, creds, options=tls_opts)
        return SecureChannel(channel, "grpc-tls", redial=Redial(target, creds, tls_opts))
    if relay_dir is None:
        raise ConfigError("a TLS relay needs a private folder for its socket (relay_dir)")
    from plugbay.core.transport.relay import TLSRelay  # only a Go peer's certificate needs it

    context = client_context(tls.own, tls.peer_pem)  # before the listener: a failure here leaks nothing
    path = private_socket(relay_dir, "relay")
    listener = open_listener("unix", path)
    os.chmod(path, 0o600)
    relay = TLSRelay(listener, (network, address), context, "originate", server_hostname=HOSTNAME)
    local = grpc_target("unix", path)
    try:
        channel = grpc.insecure_channel(local, options=opts)
    except BaseException:
        relay.close()
        raise
    return SecureChannel(channel, "relay-tls", [relay.close], Redial(local, None, opts))


def bind_unix(server: grpc.Server, path: str, credentials: grpc.ServerCredentials | None) -> None:
    """Add a unix-socket port to a gRPC server, or say why it cannot listen there."""
    target = unix_target(path)
    try:
        bound = server.add_secure_port(target, credentials) if credentials else server.add_insecure_port(target)
    except RuntimeError:  # grpcio >= 1.4x raises instead of returning 0
        bound = 0
    if bound == 0:
        raise BrokerError(f"could not listen on unix socket {path!r}; check that its folder"
                          " exists, is writable, and the path is under 108 bytes")


def serve_unix(server: grpc.Server, path: str, tls: MutualTLS | None, relay_dir: str) -> list[Callable[[], None]]:
    """Start ``server`` so that peers connecting to the unix socket ``path`` get it, secured as needed.

    With a relay, gRPC listens on a private socket in ``relay_dir`` and the
    relay terminates TLS on ``path``. Returns the cleanups that free the sockets.
    """
    if tls is not None and tls.needs_relay:
        from plugbay.core.transport.relay import TLSRelay

        private = private_socket(relay_dir, "grpc")
        bind_unix(server, private, None)
        server.start()
        relay = TLSRelay(open_listener("unix", path), ("unix", private), tls.relay_server_context(), "terminate")
        return [lambda: unlink_quietly(private), relay.close]
    bind_unix(server, path, tls.server_credentials() if tls is not None else None)
    server.start()
    return [lambda: unlink_quietly(path)]
