"""GatewayConfig: what the gateway runs and where it listens, and the checks of it (Gateway() runs them)."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from plugbay.core.plugin.netconfig import DEFAULT_MAX_PEER_SESSIONS, check_peer_sessions
from plugbay.core.resilience.restart import RestartPolicy
from plugbay.core.transport.keepalive import DEFAULT as DEFAULT_KEEPALIVE, Keepalive
from plugbay.errors import ConfigError, PlugbayError, UnprovenAddressError, VersionMismatchError
from plugbay.core.host.deadline import NO_DEADLINE
from plugbay.network.figures import check_seconds, check_switch
from plugbay.network.gateway.starts import DEFAULT_MAX_CHILD_STARTS
from plugbay.runners.command import check_env, command_kept

# Forwarded calls at once (the gateway's own services have threads of their own).
DEFAULT_MAX_CALLS = 48
# A forwarded request message is received whole before it is passed on, so this bounds the memory one
# call costs the gateway. go-plugin's (gRPC-Go's) servers refuse more than 4 MiB anyway.
DEFAULT_MAX_MESSAGE = 4 << 20
# grpcio takes its options as C ints: a larger max_message failed the start with an untyped OverflowError
MAX_MAX_MESSAGE = 2**31 - 1


# how a gateway's user dials a child's unproven address anyway (UnprovenAddressError's advice)
TRUST_OPT_OUT = "set GatewayConfig(trust_announced_address=True) (plugbay gateway: --trust-announced-address)"
# the versions the gateway offers are its own setting: a VersionedPlugins entry is no gateway user's to add
VERSIONS_ADVICE = ("Give the gateway a version the plugin serves: GatewayConfig(protocol_versions=...) (plugbay"
                   " gateway: --protocol-versions, PLUGBAY_GATEWAY_PROTOCOL_VERSIONS), or upgrade the plugin.")


# Where a child's last words are, said as they are: its stderr lines reach the gateway's log, and its log records
# (written to the stderr it started with); but a plugin serving GRPCStdio (plugbay's serve(), go-plugin 1.4 and
# later) sends what it prints to stdout/stderr while serving over that stream, which the gateway discards, as
# go-plugin's host does by default: a print just before an exit is not kept
CHILD_WORDS = ("the gateway's log has the plugin's log records and stderr lines, but not what a plugin serving"
               " GRPCStdio (plugbay's serve(), go-plugin 1.4 and later) printed while serving: that goes to its"
               " GRPCStdio stream, which the gateway discards as go-plugin's host does; have it log its last words"
               " rather than print them")


def gateway_said(exc: PlugbayError) -> PlugbayError:
    """``exc`` as a gateway's user is told it: a refused child address names the gateway's opt-out, and no common
    version the gateway's --protocol-versions, not the ClientConfig option or VersionedPlugins the gateway set for
    them."""
    if isinstance(exc, UnprovenAddressError):
        return exc.advising(TRUST_OPT_OUT)
    if isinstance(exc, VersionMismatchError):
        return VersionMismatchError(exc.host_versions, exc.plugin_versions, VERSIONS_ADVICE)
    return exc


@dataclass
class GatewayConfig:
    """What the gateway runs and where it listens. TLS: all three files, or ``insecure=True``."""

    cmd: Sequence[str | os.PathLike[str]]  # check() makes it a list of str (os.PathLike items os.fspath'ed)
    cookie: tuple[str, str]
    listen: str = "0.0.0.0:7001"
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    insecure: bool = False
    protocol_versions: Sequence[int] = (1,)
    plugins: Sequence[str] = ()
    restart: RestartPolicy = field(default_factory=lambda: RestartPolicy(
        max_restarts=10, window=60.0, initial_backoff=0.2, max_backoff=5.0))
    start_timeout: float = 30.0
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the child
    cwd: str | None = None  # the child's working folder (default: the gateway's)
    # AutoMTLS between gateway and child, as go-plugin hosts do. Off saves the OpenSSL relay hop
    # a Go child's P-521 certificate needs, but leaves the child's socket unauthenticated locally.
    child_mtls: bool = True
    # dial the address each child announces without proving the child (or a process it started) listens
    # there (runners.ownsocket): for a command that hands the serving to another process (a `docker run` wrapper)
    trust_announced_address: bool = False
    logger: logging.Logger | None = None
    # Brokered callbacks: each remote yamux session gets its own multiplexing child (gateway/sessions.py).
    multiplex: bool = False
    # a brokering host's session: pinged after [0] quiet seconds, dropped (its child stopped) when nothing
    # answers within [1], or when no byte could be written to it for [2] (optional, 10 s by default; also the
    # child's session's), as NetworkServe's; the shared child: health-checked every [0] s, NOT_SERVING on no answer
    keepalive: tuple[float, ...] = DEFAULT_KEEPALIVE
    # forwarded calls at once; one more is refused with RESOURCE_EXHAUSTED rather than take a
    # thread that health checks and Discovery need to keep the gateway in the hosts' rotation
    max_calls: int = DEFAULT_MAX_CALLS
    # of those, at most this many from one peer IP address (None: three quarters of max_calls, at least 1), so
    # that one host holding calls open cannot refuse every other host's (with multiplex=True too: the front
    # tells the gateway each plain gRPC connection's peer address)
    max_peer_calls: int | None = None
    # bytes of one forwarded request message, at most; a larger one is refused with RESOURCE_EXHAUSTED
    # before it is buffered
    max_message: int = DEFAULT_MAX_MESSAGE
    # with multiplex=True: brokering sessions (each with a child of its own) one peer IP address may hold at
    # once, as NetworkServe(max_peer_sessions=); its next is refused, the host told why
    max_peer_sessions: int = DEFAULT_MAX_PEER_SESSIONS
    # with multiplex=True: sessions' children starting at once; a free turn goes to the next peer address
    # waiting (round robin), so one host opening sessions in a loop delays its own, not others' (gateway/starts.py)
    max_child_starts: int = DEFAULT_MAX_CHILD_STARTS

    @property
    def argv(self) -> list[str]:
        """The command as the exec gets it (check() has made ``cmd`` that already; a field set since, too)."""
        return [os.fspath(part) for part in self.cmd]

    def check(self) -> None:
        if not isinstance(self.cmd, (str, bytes)) and isinstance(self.cmd, Sequence) and (
                not self.cmd or self.cmd[0] == ""):
            raise ConfigError("the gateway needs the plugin's command; pass it after '--' (for example"
                              " `-- ./kv-plugin`) or as GatewayConfig(cmd=[...])")
        self.cmd = command_kept(self.cmd, "GatewayConfig.cmd")  # as text; a list of str stays the caller's
        cookie = self.cookie
        if (isinstance(cookie, str) or not isinstance(cookie, Sequence) or len(cookie) != 2
                or not all(isinstance(part, str) for part in cookie)):
            raise ConfigError(f"the gateway's cookie must be a (KEY, VALUE) pair of strings, got {cookie!r:.80};"
                              " pass for example GatewayConfig(cookie=('BASIC_PLUGIN', 'hello')) or --cookie"
                              " BASIC_PLUGIN=hello")
        key, value = cookie
        if not key or not value:
            raise ConfigError("the gateway needs the plugin's magic cookie as KEY=VALUE (--cookie"
                              " BASIC_PLUGIN=hello); it is in the plugin's HandshakeConfig")
        Keepalive.of(self.keepalive, "GatewayConfig keepalive")  # every figure > 0
        self._check_child()
        if self.multiplex and self.insecure:
            raise ConfigError("the gateway brokers (--multiplex) only over TLS: pass --cert, --key and"
                              " --client-ca instead of --insecure")
        if isinstance(self.max_calls, bool) or not isinstance(self.max_calls, int) or self.max_calls < 1:
            raise ConfigError(f"the gateway's max_calls must be a positive int (forwarded calls at once), got"
                              f" {self.max_calls!r}; pass for example --max-calls {DEFAULT_MAX_CALLS}")
        if (isinstance(self.max_message, bool) or not isinstance(self.max_message, int)
                or not 1 <= self.max_message <= MAX_MAX_MESSAGE):
            raise ConfigError(f"the gateway's max_message must be a positive int (bytes of one request message) of at"
                              f" most {MAX_MAX_MESSAGE} (gRPC's limit), got {self.max_message!r}; pass for example"
                              f" --max-message {DEFAULT_MAX_MESSAGE}")
        check_peer_sessions(self.max_peer_sessions, "the gateway's max_peer_sessions", "--max-peer-sessions ")
        starts = self.max_child_starts
        if isinstance(starts, bool) or not isinstance(starts, int) or not 1 <= starts <= 256:
            raise ConfigError(f"the gateway's max_child_starts must be an int from 1 to 256 (brokering sessions'"
                              f" children starting at once), got {starts!r:.80}; pass for example"
                              f" --max-child-starts {DEFAULT_MAX_CHILD_STARTS}")
        peer_calls = self.max_peer_calls
        if peer_calls is not None and (isinstance(peer_calls, bool) or not isinstance(peer_calls, int)
                                       or peer_calls < 1):
            raise ConfigError(f"the gateway's max_peer_calls must be a positive int (forwarded calls at once from"
                              f" one peer address) or None, got {peer_calls!r}; pass for example"
                              " --max-peer-calls 12")
        versions = self.protocol_versions
        if (isinstance(versions, str) or not isinstance(versions, Collection) or not versions
                or not all(_whole(v) and int(v) >= 1 for v in versions)):
            raise ConfigError(f"the gateway's protocol versions {versions!r:.80} are invalid; pass a list of positive"
                              " integers, for example GatewayConfig(protocol_versions=[1, 2]) or"
                              " --protocol-versions 1,2")
        plugins = self.plugins
        if isinstance(plugins, str) or not isinstance(plugins, Collection) or not all(
                isinstance(name, str) and name for name in plugins):
            raise ConfigError(f"the gateway's plugins must be a list of plugin names, got {plugins!r:.80}; pass for"
                              " example GatewayConfig(plugins=['kv_grpc']) or --plugins kv_grpc,other")

    def _check_child(self) -> None:
        """What the child is started and restarted with: checked here, as the child's own ClientConfig
        checks them only at start() (after the port is bound), and the keeper thread reads restart only
        when the child died (a wrong one killed the thread: the child was never restarted)."""
        if not isinstance(self.restart, RestartPolicy):
            raise ConfigError(f"GatewayConfig.restart must be a RestartPolicy, got {type(self.restart).__name__};"
                              " pass for example restart=RestartPolicy(max_restarts=10, window=60.0)")
        check_env(self.env, "GatewayConfig.env")
        if isinstance(self.cwd, bytes):  # as ProcessRunner takes it: decoded as the OS names files
            self.cwd = os.fsdecode(self.cwd)
        if self.cwd is not None and not isinstance(self.cwd, (str, os.PathLike)):
            raise ConfigError(f"GatewayConfig.cwd must be the path of the child's working folder (a str or"
                              f" os.PathLike) or None (the gateway's), got {self.cwd!r:.80}")
        # at most what the child's ClientConfig takes, which checks it only after the port is bound
        self.start_timeout = check_seconds(self.start_timeout, "GatewayConfig.start_timeout", 30.0,
                                           maximum=NO_DEADLINE)
        for switch in ("child_mtls", "multiplex", "trust_announced_address"):
            check_switch(getattr(self, switch), f"GatewayConfig.{switch}")
        if self.logger is not None and not isinstance(self.logger, (logging.Logger, logging.LoggerAdapter)):
            raise ConfigError(f"GatewayConfig.logger must be a logging.Logger or None, got"
                              f" {type(self.logger).__name__}; pass logging.getLogger(name)")


def _whole(value: object) -> bool:
    """An int (not a bool), or a str of ASCII digits (int() takes ' 1', '1_0' and '١' too)."""
    if isinstance(value, str):
        return value.isascii() and value.isdigit() and len(value) <= 9
    return isinstance(value, int) and not isinstance(value, bool)
