"""AutoMTLS on the plugin side: serve()'s certificate and the TLS it serves behind.

When the host sends its certificate in PLUGIN_CLIENT_CERT, the plugin makes a
fresh one of its own (announced in the handshake line) and trusts only the
host's. A peer certificate grpcio can use (a plugbay host's P-256) gets
grpcio's own TLS; a go-plugin host's P-521 one gets the OpenSSL relay
(plugbay.core.transport.relay) in front of a plaintext gRPC server.

The relay's OpenSSL context is made on a thread, in two steps that each
overlap the main thread's own work, OpenSSL releasing the GIL in both: the
bare ``SSLContext`` while the certificate is made (a process's first context
costs 3-10 ms), then our key and the host's certificate loaded into it
(OpenSSL 3's PEM key decoder, ~3 ms) while serve() binds, registers and starts
its gRPC server. serve() waits for it before it prints the handshake line
(:meth:`ServerTLS.ready`): a bad key still fails the start there, and the host
never reaches an unfinished context.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from plugbay.core.protocol.handshake import ENV_CLIENT_CERT
from plugbay.errors import ConfigError

if TYPE_CHECKING:
    import grpc

    from plugbay.core.protocol.tls import CertKey
    from plugbay.core.transport.secure import MutualTLS


class ServerTLS:
    """The plugin's certificate, the host's, and how the listener serves TLS (credentials or relay)."""

    def __init__(self, own: CertKey, peer_pem: bytes, credentials: grpc.ServerCredentials | None,
                 relay: _RelayContext | None) -> None:
        self.own = own
        self.peer_pem = peer_pem
        self.credentials = credentials  # grpcio's TLS (a peer certificate it can use), else None
        self.relay = relay  # the relay's context provider (TLSRelay calls it per connection), else None

    def ready(self) -> None:
        """Wait for the relay's context to be set up; raises what setting it up raised."""
        if self.relay is not None:
            self.relay()

    def check_peer(self) -> None:
        """Raise ConfigError if OpenSSL cannot load the host's certificate.

        grpcio's own TLS reports such a certificate only as a failed bind: serve() asks this then.
        """
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=self.peer_pem.decode())
        except ssl.SSLError as exc:
            raise _unloadable(exc) from None

    def settle(self) -> None:
        """serve() failed before ready(): wait for the context's thread to end (its outcome unused)."""
        if self.relay is not None:
            self.relay.settle()


def server_tls(env: Mapping[str, str]) -> ServerTLS | None:
    """AutoMTLS for this plugin when the host asked for it (PLUGIN_CLIENT_CERT), else None."""
    client_cert = env.get(ENV_CLIENT_CERT, "")
    if not client_cert:
        return None
    from plugbay.core.protocol import tls as tlsmod
    from plugbay.core.transport import secure

    try:
        peer_pem = client_cert.encode()  # undecodable bytes in the environment are surrogates: no str encodes them
        tlsmod.pem_to_der(peer_pem)
    except (ConfigError, UnicodeEncodeError):
        raise ConfigError(f"{ENV_CLIENT_CERT} does not hold a PEM certificate; the host must pass"
                          " its AutoMTLS certificate there (or leave it unset for plaintext)") from None
    relay = None if tlsmod.grpc_can_use(peer_pem) else _RelayContext()  # starts at once: see above
    try:
        mutual = secure.MutualTLS(tlsmod.generate_cert(), peer_pem)
    except BaseException:
        if relay is not None:
            relay.abandon()
        raise
    if relay is None:
        return ServerTLS(mutual.own, peer_pem, mutual.server_credentials(), None)
    relay.configure(mutual)
    return ServerTLS(mutual.own, peer_pem, None, relay)


def _unloadable(exc: ssl.SSLError) -> ConfigError:
    return ConfigError(f"{ENV_CLIENT_CERT} holds a certificate OpenSSL cannot load ({exc.reason or exc}); the host"
                       " must pass its own AutoMTLS certificate there, unaltered (or leave it unset for plaintext)")


class _RelayContext:
    """A server ``SSLContext`` made and set up on a thread; calling it waits for it."""

    def __init__(self) -> None:
        self._mutual: MutualTLS | None = None
        self._given = threading.Event()
        self._made: list[ssl.SSLContext] = []
        self._failed: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="plugbay-tls-context", daemon=True)
        self._thread.start()

    def configure(self, mutual: MutualTLS) -> None:
        """Our certificate and the peer's are known: load them into the context (on the thread)."""
        self._mutual = mutual
        self._given.set()

    def abandon(self) -> None:
        """No certificate is coming (its making failed): let the thread end."""
        self._given.set()

    def _run(self) -> None:
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._given.wait()
            if self._mutual is not None:
                self._made.append(self._mutual.relay_server_context(ctx))
        except ssl.SSLError as exc:  # our own key loads: OpenSSL refused the host's certificate
            self._failed.append(_unloadable(exc))
        except BaseException as exc:  # noqa: BLE001  (raised again by __call__, on the caller's thread)
            self._failed.append(exc)

    def settle(self) -> None:
        self._thread.join()  # configured or abandoned by now: it has no more than OpenSSL's work left

    def __call__(self) -> ssl.SSLContext:
        self._thread.join()
        if self._failed:
            raise self._failed[0]
        return self._made[0]  # made: an abandoned context (no certificate) never reaches a listener

