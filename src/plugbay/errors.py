"""One exception hierarchy for all of plugbay.

Every message says what went wrong *and* what to do about it. Errors that
describe a timeout also derive from the builtin :class:`TimeoutError` so that
generic callers can catch them without importing plugbay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

# the hierarchy's root, below this module with how its errors are pickled; imported from here
from plugbay._errorroot import ConfigError as ConfigError, PlugbayError as PlugbayError, _rebuilt as _rebuilt
# the messages of the errors built from their parts below, composed in a module of their own
from plugbay import _errormessages as _messages
# the text helpers error messages use, imported from here across plugbay
from plugbay._text import clip as clip, printable as printable

if TYPE_CHECKING:  # the call errors' code(), details(), sent... for type checkers; at run time: object
    from plugbay._calltyping import (CallFailure as _CallFailure, CircuitRefusal as _CircuitRefusal,
                                     SentCallFailure as _SentCallFailure)
else:
    _CallFailure = _SentCallFailure = _CircuitRefusal = object


# --- handshake and start-up -------------------------------------------------


class HandshakeError(PlugbayError):
    """The plugin could not be started and negotiated with."""


class MagicCookieError(HandshakeError):
    """The plugin side was run without the host's magic cookie."""


class PluginExitedError(HandshakeError):
    """The plugin stopped before it printed its handshake line (or after it, while the host connected: ``when``)."""

    def __init__(self, name: str, exit_code: int | None, stderr_tail: Sequence[str] = (),
                 detail: str = "", when: str = _messages.BEFORE_HANDSHAKE, advice: str | None = None,
                 headline: str | None = None) -> None:
        self.exit_code = exit_code
        self.stderr_tail = list(stderr_tail)
        super().__init__(_messages.plugin_exited(name, exit_code, self.stderr_tail, detail, when, advice, headline))


class HandshakeTimeoutError(HandshakeError, TimeoutError):
    """The plugin did not print a handshake line within the start timeout."""


class MalformedHandshakeError(HandshakeError):
    """The plugin printed a line that is not a go-plugin handshake line, or one announcing an address
    plugbay does not dial (``refused=True``: the line itself was well formed)."""

    def __init__(self, line: str, reason: str, *, refused: bool = False) -> None:
        self.line = line
        self.reason = reason  # what is wrong, without the line's framing (a broker's refusal quotes it)
        super().__init__(_messages.malformed_handshake(line, reason, refused))


class UnprovenAddressError(MalformedHandshakeError):
    """A plugin the process runner started announced an address at which plugbay cannot prove that process
    (or one it started) listens: refused, never dialed. ClientConfig(trust_announced_address=True) opts out."""

    def __init__(self, name: str, network: str, address: str, why: str,
                 opt_out: str | None = "set ClientConfig(trust_announced_address=True)") -> None:
        """``opt_out``: how the caller dials such an address anyway (a command says its own flag); None where no
        opt-out would reach it (a socket this host may not open: ``why`` says what to do)."""
        self.name = name
        self.network = network
        self.address = address
        self.why = why
        self.opt_out = opt_out
        super().__init__(f"{network}|{address}", _messages.unproven_address(name, network, address, why, opt_out),
                         refused=True)

    def advising(self, opt_out: str) -> UnprovenAddressError:
        """This refusal with the caller's own opt-out (a command's flag, a gateway's option), unless it has none."""
        return UnprovenAddressError(self.name, self.network, self.address, self.why,
                                    None if self.opt_out is None else opt_out)


class TLSRequiredError(HandshakeError):
    """AutoMTLS is required but the plugin announced no certificate (it would run in plaintext)."""

    def __init__(self, name: str, why: str, opt_out: str = "pass ClientConfig(require_tls=False)") -> None:
        """``opt_out``: how the caller accepts plaintext (a command says its own flag)."""
        self.name = name
        self.why = why
        super().__init__(_messages.tls_required(name, why, opt_out))


class ProtocolMismatchError(HandshakeError):
    """Core protocol versions differ, or the plugin speaks a protocol plugbay cannot."""


class UnsupportedProtocolError(ProtocolMismatchError):
    """The plugin announced go-plugin's netrpc protocol (Go-only gob encoding)."""


class VersionMismatchError(HandshakeError):
    """Host and plugin share no application protocol version."""

    def __init__(self, host_versions: Sequence[int], plugin_versions: Sequence[int],
                 advice: str = _messages.VERSIONS_ADVICE) -> None:
        """``advice``: what to do, in the caller's own terms (a gateway's flag rather than VersionedPlugins)."""
        self.host_versions = list(host_versions)
        self.plugin_versions = list(plugin_versions)
        super().__init__(_messages.version_mismatch(self.host_versions, self.plugin_versions, advice))


class ChecksumMismatchError(PlugbayError):
    """SecureConfig: the plugin executable or image is not the one expected."""


# --- using a running plugin -------------------------------------------------


class UnknownPluginError(PlugbayError, KeyError):
    """dispense() was asked for a plugin name the negotiated plugin set lacks."""

    def __init__(self, name: str, available: Sequence[str]) -> None:
        self.name = name
        self.available = sorted(available)
        super().__init__(_messages.unknown_plugin(name, self.available))

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class StubTypeError(PlugbayError, TypeError):
    """dispense(name, stub_type): the plugin definition built a stub that is not a ``stub_type``, or
    ``stub_type`` is no class isinstance() can check. ``built`` is the class of the stub that was built
    (None when the argument itself was refused)."""

    def __init__(self, message: str, name: str, expected: object, built: type | None = None) -> None:
        self.name = name
        self.expected = expected
        self.built = built
        super().__init__(message)


class ClientStateError(PlugbayError):
    """An operation was called in a state where it cannot work (e.g. after kill())."""


class ServerStoppedError(PlugbayError, RuntimeError):
    """The plugin's gRPC server stopped: add services inside grpc_server()."""


class PluginDiedError(PlugbayError, _SentCallFailure):
    """The plugin process, container or pod ended while the host was using it."""


class PluginUnavailableError(PlugbayError, _SentCallFailure):
    """A call could not reach a plugin that still runs (its connection failed or was reset).

    Also a ``grpc.RpcError`` with code UNAVAILABLE when raised by a call.
    """


class CallTimeoutError(PlugbayError, TimeoutError, _SentCallFailure):
    """A call to the plugin exceeded its deadline."""


class CircuitOpenError(PlugbayError, _CircuitRefusal):
    """Calls are refused because the plugin failed too often recently (never sent: UNAVAILABLE)."""


# --- runners ----------------------------------------------------------------


class RunnerError(PlugbayError):
    """A runner could not start, watch or stop its plugin."""


class EngineUnavailableError(RunnerError):
    """The container engine or cluster API cannot be reached."""


class ImageNotFoundError(RunnerError):
    """The plugin image does not exist where the runner looks for it."""


class PermissionDeniedError(RunnerError):
    """The runner's credentials lack a permission it needs."""


class AnnouncedUnreachableError(RunnerError):
    """A runner's refusal of an address it can never carry, whatever the plugin does next (a tcp address under
    a unix-only transport, a port it does not publish): known from the handshake line alone, so the host raises
    it at once instead of first waiting to learn whether the plugin exited. ``stderr_tail``: the plugin's last
    stderr lines the host held by then (a plugin that then crashes may have said why there)."""

    def __init__(self, reason: str, stderr_tail: Sequence[str] = ()) -> None:
        self.reason = reason
        self.stderr_tail = list(stderr_tail)
        super().__init__(_messages.announced_unreachable(reason, self.stderr_tail))


class NetworkSweptError(RunnerError):
    """The network a DockerRunner made for its container was removed (a sweep) each time before the container
    could use it."""


class ReattachError(ConfigError):
    """Reattach data names a process, container or folder plugbay cannot prove it started for
    this plugin; nothing it names was signalled or deleted."""


class StaleReattachError(ReattachError, RunnerError):
    """Reattach data names a plugin process that no longer runs: its pid is free, or now another
    process's (one started at another time). A ReattachError, as for any process plugbay cannot prove
    is the plugin, and a RunnerError, as it was before (the command line's 'unreachable')."""


# --- broker -----------------------------------------------------------------


class BrokerError(PlugbayError):
    """A brokered connection could not be set up."""


class BrokerTimeoutError(BrokerError, TimeoutError):
    """A broker id was never announced by the other side in time."""


class BrokerAddressRefusedError(BrokerError):
    """A broker id was announced at an address plugbay does not dial (malformed, a process plugin's tcp
    address off this machine, or one at which that plugin is not proven to listen: another process's socket;
    ClientConfig(trust_announced_address=True) opts out of that proof): refused at once, never dialed."""


class SessionRefusedError(BrokerError):
    """A network plugin refused the host's brokering (multiplexed) session: one of its caps on
    sessions was reached (``reason`` says which)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class BrokerClosedError(BrokerError):
    """The broker stream ended; pending and future dials fail."""


class BrokerTLSError(BrokerError, PluginUnavailableError):
    """The plugin could not dial this host's brokered server under AutoMTLS, in a way every retry meets
    again: go-plugin 1.0.1's plugin side checks the host's certificate against the name "unused" (its bug
    #109). A newer go-plugin, or AutoMTLS off, is the way out.

    Also a PluginUnavailableError, which the call's failure (UNAVAILABLE from a plugin that runs) was before
    it had a type of its own, so code catching that still catches it; RetryPolicy never retries it."""


class NoNewStreamsError(BrokerClosedError):
    """The multiplexed connection opens no new streams: the peer sent a GoAway (it is shutting down),
    or the connection used up its stream ids. The streams already open keep working."""


class ConnectionWriteTimeoutError(BrokerClosedError, TimeoutError):
    """The multiplexed connection could not write any byte of a frame for its write timeout (the
    peer stopped reading), hashicorp/yamux's ErrConnectionWriteTimeout: the connection is closed,
    and every stream of it ends."""


# --- Kubernetes pods (appended by the Kubernetes runner) ----------------------


class PodUnschedulableError(RunnerError):
    """No node can take the plugin's pod (node selector, taints, resources)."""


class PodStartTimeoutError(RunnerError, TimeoutError):
    """The plugin's pod did not reach Running within the runner's start timeout."""


class PodCrashLoopError(PluginExitedError):
    """The plugin's container keeps crashing (CrashLoopBackOff) before its handshake."""


class PodFailedError(PluginExitedError):
    """The cluster ended the plugin's pod (evicted, or the kubelet refused it at admission: OutOfcpu):
    its status.reason says why, and the plugin itself did nothing wrong."""


# --- resilience (supervisor) -----------------------------------------------------


class RestartBudgetExhaustedError(PlugbayError):
    """A Supervisor restarted its plugin as often as its RestartPolicy allows and gave up."""

    def __init__(self, name: str, restarts: int, window: float, last_failure: str, kind: str = "Supervisor") -> None:
        self.name = name
        self.restarts = restarts
        self.window = window
        self.last_failure = last_failure
        self.kind = kind  # what the message calls the one that gave up: "Supervisor" or "AsyncSupervisor"
        super().__init__(_messages.restart_budget_exhausted(name, restarts, window, last_failure, kind))


# --- network mode (plugin side and gateway) ------------------------------------


class NetworkError(PlugbayError):
    """Serving or reaching a plugin over the network failed."""


class TLSConfigError(NetworkError, ConfigError):
    """The provided TLS files (certificate, key, client CA) are missing, unreadable or do not match."""


class GatewayError(NetworkError):
    """The gateway could not start or keep its plugin running."""


# --- network mode, host side (remote plugins found by discovery) ------------------


class DiscoveryError(NetworkError):
    """A target's discovery source (DNS, Kubernetes, the plugin's Discovery service) failed."""


class DiscoveryPermissionError(DiscoveryError, PermissionDeniedError):
    """Discovery was refused for want of a permission (kubernetes:///: RBAC on EndpointSlices, or 401)."""


class DiscoveryRefusedError(DiscoveryError, ConfigError):
    """Discovery named only addresses plugbay refuses to dial, loopback ones among them: ``allow_loopback=True``
    (the CLI's --allow-loopback) takes those; a configuration matter, not a failed plugin."""


class DiscoveryUnavailableError(DiscoveryError, EngineUnavailableError):
    """The discovery source cannot be reached (kubernetes:///: no API server, or no usable kubeconfig; dns:///: no
    DNS server answered). Also an EngineUnavailableError (what a host can reach is down, not the plugin wrong)."""


class NoEndpointsError(DiscoveryError, TimeoutError, _CallFailure):
    """No endpoint of a remote plugin could take the call before its deadline.

    Also a ``grpc.RpcError`` (code UNAVAILABLE) when raised by a call, so code that catches
    gRPC errors keeps working; see plugbay.network.pool.
    """


class PinnedEndpointGoneError(NoEndpointsError):
    """The endpoint a stub is pinned to (a brokered ``dispense()``'s, or ``pool.pinned(key)``'s) cannot be
    reached now, as far as plugbay knows for sure: discovery no longer lists it (or listed it again, on a new
    connection), or the connection (session) the stub's broker rode ended and dialing its address again was
    refused or reset. Raised at once, not at the deadline; ``dispense()`` again for a stub on a live replica
    (``pool.pinned(key)`` again for such a channel)."""


class RemoteTLSError(HandshakeError, NetworkError):
    """The TLS handshake with a remote plugin failed (wrong, missing or untrusted certificate,
    or plaintext spoken to a TLS server)."""


class RemoteProtocolError(ProtocolMismatchError, NetworkError):
    """A remote plugin's endpoint, dialed in plaintext (insecure), answered with something other than HTTP/2
    (gRPC): an HTTP/1 server, another service. Plaintext spoken to a TLS server is a RemoteTLSError (the
    plugin may want TLS).

    Also a ``grpc.RpcError`` with code UNAVAILABLE when raised by a call, and never retried by a RetryPolicy.
    """

# --- command line (plugbay.cli) ----------------------------------------------------


class TargetUnreachableError(PlugbayError):
    """A plugin named by a target, a reattach config or its handshake's address cannot be reached
    (gone, refused, no route)."""


class RemoteRefusedError(TargetUnreachableError, HandshakeTimeoutError, NetworkError):
    """A remote plugin's start ran out of start_timeout while every endpoint refused the connection (nothing
    listens there). A HandshakeTimeoutError too: it ends the start at the same moment, with the cause."""


class CallFailedError(PlugbayError):
    """A call the command line made to a plugin failed (unknown method, bad request, plugin error)."""
