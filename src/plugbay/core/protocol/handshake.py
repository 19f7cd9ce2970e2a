"""go-plugin's handshake: the magic cookie, the environment, and the handshake line.

The handshake line a plugin prints on stdout is

    CORE-PROTOCOL|APP-PROTOCOL|NETWORK|ADDRESS|PROTOCOL[|SERVER-CERT[|MULTIPLEX]]

where SERVER-CERT is the DER certificate in unpadded standard base64 (present
when AutoMTLS is on) and MULTIPLEX is "true" when the plugin accepts a
multiplexed broker (only printed when the host set PLUGIN_MULTIPLEX_GRPC; only a
host that did refuses a value that is no boolean, as go-plugin's reads it only then).
:class:`HandshakeInfo` holds those facts as one value, so that a runner's log
stream, a reattach config or a network lookup can all produce it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any

from plugbay.core.protocol.checks import GO_SPACE, go_atoi, kind
from plugbay.core.protocol.outlive import ENV_OUTLIVE_HOST, ENV_OUTLIVE_PIPE  # the ask to outlive the host
from plugbay.core.protocol.records import Frozen
from plugbay.errors import (
    ConfigError,
    MalformedHandshakeError,
    ProtocolMismatchError,
    UnsupportedProtocolError,
    clip,
)

CORE_PROTOCOL_VERSION = 1

ENV_PROTOCOL_VERSIONS = "PLUGIN_PROTOCOL_VERSIONS"
ENV_MIN_PORT = "PLUGIN_MIN_PORT"
ENV_MAX_PORT = "PLUGIN_MAX_PORT"
ENV_CLIENT_CERT = "PLUGIN_CLIENT_CERT"
ENV_UNIX_SOCKET_DIR = "PLUGIN_UNIX_SOCKET_DIR"
ENV_UNIX_SOCKET_GROUP = "PLUGIN_UNIX_SOCKET_GROUP"
ENV_MULTIPLEX_GRPC = "PLUGIN_MULTIPLEX_GRPC"
# Set by a plugbay host that multiplexes: it holds a brokered stream that arrives before its
# knock, so a plugbay plugin may open the stream right after knocking (go-plugin ignores it).
ENV_MUX_HOLDS_STREAMS = "PLUGBAY_MULTIPLEX_HOLDS_STREAMS"
# Set by every plugbay host (its session: runners.proctree): a plugin reads it as "a plugbay host launched me".
ENV_HOST_SESSION = "PLUGBAY_HOST_SESSION"
# What a host decides for its plugin. A host that is itself a plugin has its own host's values in its
# environment (a client certificate, multiplexing): its plugins must not inherit those as if asked.
HOST_SET_VARIABLES = (ENV_PROTOCOL_VERSIONS, ENV_MIN_PORT, ENV_MAX_PORT, ENV_CLIENT_CERT, ENV_UNIX_SOCKET_DIR,
                      ENV_UNIX_SOCKET_GROUP, ENV_MULTIPLEX_GRPC, ENV_MUX_HOLDS_STREAMS, ENV_OUTLIVE_HOST,
                      ENV_OUTLIVE_PIPE)
# Sent by a plugbay host that has no stdio sink on its StreamStdio call: a plugbay plugin then
# drops its output and ends the stream (no reader needed); go-plugin plugins ignore it and stream.
STDIO_DISCARD_METADATA = ("plugbay-stdio", "discard")
# A plugbay plugin's health Check answers with this trailing metadata: it queues broker messages
# until the host opens the broker stream, so the host may open it on first use (a go-plugin
# plugin's Send blocks until the stream exists, so its host opens it when plugin code can run).
BROKER_QUEUES_METADATA = ("plugbay-broker", "queues")

PROTOCOL_GRPC = "grpc"
PROTOCOL_NETRPC = "netrpc"

# go-plugin only looks at field 6 when it is longer than this; shorter values
# are treated as "no certificate".
_MIN_CERT_FIELD = 50
# what Go's strconv.ParseBool takes (go-plugin reads the multiplex field with it), and what it means
_GO_BOOLS = {**dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
             **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False)}
# the characters of a hostname; a str check, not a regex: compiling one was ~0.5M instructions of every start
_HOSTNAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
_MAX_HOSTNAME = 253
_MAX_LABEL = 63


_MAX_DIGITS = 20  # more than any port needs; int() raises past 4300
_ATOI = "is not a number (as Go's strconv.Atoi reads one: an optional sign, then decimal digits)"


def _number(text: str) -> int | None:
    """ASCII digits only (a port; versions: go_atoi): int() would take '١', '1_0', ' 1' and '+1' too."""
    return int(text) if len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit() else None


def is_tcp_port(value: object) -> bool:
    """Whether ``value`` is a TCP port number (an int 1-65535, not a bool): settings and reattach data."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def address_problem(network: str, address: str) -> str | None:
    """Why ``address`` is no dialable ``network`` address (None: it is), checked strictly.

    unix: an absolute path with no control characters (grpc truncates at NUL;
    a '%' is dialed percent-encoded, see sockets.unix_target); a relative path would
    resolve against the host's working folder. tcp: HOST:PORT with a port in
    1-65535 and a hostname, IPv4 or [IPv6] host.
    """
    if network == "unix":
        if not address.startswith("/"):
            return f"unix socket path {address!r} is not absolute"
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in address):
            return f"unix socket path {address!r} holds a control character"
        return None
    host, sep, port_text = address.rpartition(":")
    port = _number(port_text)
    if not sep or not host:
        return f"tcp address {address!r} is not HOST:PORT (no host or no port)"
    if port is None or not 1 <= port <= 65535:
        return f"port {port_text!r} of tcp address {address!r} is not a number in 1-65535"
    if host.startswith("[") and host.endswith("]"):
        import ipaddress  # host side, and only for [IPv6] addresses

        try:
            ipaddress.IPv6Address(host[1:-1])
            return None
        except ValueError:
            pass
    elif host.isascii() and not host.strip(_HOSTNAME_CHARS):  # host is not empty here
        return _dns_problem(host, address)
    return f"host {host!r} of tcp address {address!r} is not a hostname, IPv4 or [IPv6] address"


def _dns_problem(host: str, address: str) -> str | None:
    """DNS's lengths (RFC 1035): past them the resolver's IDNA step raises UnicodeError, no OSError."""
    if len(host) > _MAX_HOSTNAME:
        return (f"host {host[:40]!r}... of tcp address {address[:40]!r}... is {len(host)} bytes long, more than"
                f" DNS's {_MAX_HOSTNAME}")
    labels = (host[:-1] if host.endswith(".") else host).split(".")  # one trailing dot is the root
    bad = next((label for label in labels if not 0 < len(label) <= _MAX_LABEL), None)
    if bad is None:
        return None
    why = "an empty label" if not bad else f"a label of {len(bad)} bytes, more than DNS's {_MAX_LABEL}"
    return f"host {host!r} of tcp address {address!r} has {why}"


def env_problem(key: str, value: str) -> str | None:
    """What an environment entry ``key=value`` holds that no process environment can carry (None:
    nothing): execve takes NUL-terminated "key=value" strings, so a name cannot be empty or hold
    '=' and neither part can hold a NUL byte."""
    if not key:
        return "environment variable name '' is empty"
    if "\0" in key:
        return f"environment variable name {key!r} holds a NUL byte"
    if "=" in key:
        return f"environment variable name {key!r} holds '='"
    if "\0" in value:
        return f"the value of environment variable {key!r} holds a NUL byte"
    try:
        os.fsencode(key + value)  # as the process's environment takes them
    except UnicodeError:
        return f"entry {key!r}={value!r} holds a lone surrogate such as '\\ud800', which no environment can carry"
    return None


class HandshakeConfig(Frozen):
    """What host and plugin must agree on before they talk (go-plugin's HandshakeConfig)."""

    _fields = ("protocol_version", "magic_cookie_key", "magic_cookie_value")
    protocol_version: int
    magic_cookie_key: str
    magic_cookie_value: str

    def __init__(self, protocol_version: int, magic_cookie_key: str, magic_cookie_value: str) -> None:
        if isinstance(protocol_version, bool) or not isinstance(protocol_version, int) or protocol_version < 0:
            raise ConfigError(f"HandshakeConfig.protocol_version must be a whole number (go-plugin's uint) such"
                              f" as 1, got {protocol_version!r}")
        if not isinstance(magic_cookie_key, str) or not isinstance(magic_cookie_value, str):
            raise ConfigError("HandshakeConfig's magic_cookie_key and magic_cookie_value must be strings")
        self._set(protocol_version=protocol_version, magic_cookie_key=magic_cookie_key,
                  magic_cookie_value=magic_cookie_value)
        if not self.magic_cookie_key or not self.magic_cookie_value:
            raise ConfigError(
                "HandshakeConfig needs a non-empty magic_cookie_key and magic_cookie_value;"
                " pick a unique pair and use it on both host and plugin"
            )
        problem = env_problem(magic_cookie_key, magic_cookie_value)
        # the host passes the cookie to the plugin in its environment; a raw byte ('\udcff', as os.environ
        # shows one) goes to a process as it came, so only container and pod runners refuse it (their env is JSON)
        if problem is not None:
            raise ConfigError(f"HandshakeConfig's magic cookie is passed to the plugin as an environment variable,"
                              f" but its {problem}; pick a cookie key and value without them")


class HandshakeInfo(Frozen):
    """The facts a plugin announces: where it listens and how to talk to it."""

    _fields = ("core_version", "app_version", "network", "address", "protocol", "server_cert", "multiplex",
               "extra")
    core_version: int
    app_version: int
    network: str
    address: str
    protocol: str
    server_cert: bytes | None  # DER
    multiplex: bool
    extra: Mapping[str, str]

    def __init__(self, core_version: int, app_version: int, network: str, address: str,
                 protocol: str = PROTOCOL_GRPC, server_cert: bytes | None = None, multiplex: bool = False,
                 extra: Mapping[str, str] | None = None) -> None:
        self._set(core_version=core_version, app_version=app_version, network=network, address=address,
                  protocol=protocol, server_cert=server_cert, multiplex=multiplex,
                  extra={} if extra is None else extra)

    def with_address(self, network: str, address: str) -> HandshakeInfo:
        return self.replace(network=network, address=address)

    def to_line(self) -> str:
        cert = base64.b64encode(self.server_cert).decode().rstrip("=") if self.server_cert else ""
        parts = [str(self.core_version), str(self.app_version), self.network, self.address,
                 self.protocol, cert]
        line = "|".join(parts)
        if self.multiplex:
            line += "|true"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "core_version": self.core_version,
            "app_version": self.app_version,
            "network": self.network,
            "address": self.address,
            "protocol": self.protocol,
            "server_cert": base64.b64encode(self.server_cert).decode() if self.server_cert else None,
            "multiplex": self.multiplex,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HandshakeInfo:
        """Untrusted handshake facts (to_dict's form), checked as parse_handshake_line checks a line."""
        if not isinstance(data, Mapping):  # a user's edit: "handshake": 5 read "'int' object has no attribute 'get'"
            raise ConfigError(f"handshake facts must be a JSON object, got {kind(data)}; pass ReattachConfig.to_json()"
                              " output")
        missing = [field for field in ("network", "address") if field not in data]
        if missing:
            raise ConfigError(f"handshake facts lack the field {missing[0]!r}; pass ReattachConfig.to_json() output")
        cert = data.get("server_cert")
        network, address = str(data["network"]), str(data["address"])
        if network not in ("tcp", "unix"):
            raise ConfigError(f"handshake facts field 'network' must be 'tcp' or 'unix', got {network!r:.80};"
                              " pass ReattachConfig.to_json() output")
        problem = address_problem(network, address)
        if problem is not None:
            raise ConfigError(f"handshake facts name an address plugbay will not dial: {problem}")
        core = _whole_number(data, "core_version")
        if core != CORE_PROTOCOL_VERSION:
            raise ConfigError(f"handshake facts field 'core_version' is {core}; plugbay speaks core protocol"
                              f" {CORE_PROTOCOL_VERSION} only. Pass ReattachConfig.to_json() output")
        app = _whole_number(data, "app_version")
        if app < 0:
            raise ConfigError(f"handshake facts field 'app_version' must be 0 or more, got {app};"
                              " pass ReattachConfig.to_json() output")
        protocol = data.get("protocol", PROTOCOL_GRPC)
        if protocol != PROTOCOL_GRPC:  # netrpc included: only Go speaks it
            raise ConfigError(f"handshake facts field 'protocol' must be {PROTOCOL_GRPC!r} (plugbay speaks"
                              f" gRPC only), got {protocol!r:.80}; pass ReattachConfig.to_json() output")
        multiplex = data.get("multiplex", False)
        if not isinstance(multiplex, bool):  # bool("false") is True
            raise ConfigError(f"handshake facts field 'multiplex' must be true or false, got {multiplex!r:.80};"
                              " pass ReattachConfig.to_json() output")
        return cls(core_version=core, app_version=app, network=network, address=address, protocol=protocol,
                   server_cert=_server_cert(cert) if cert not in (None, "") else None, multiplex=multiplex)

    def to_json(self) -> str:
        import json  # here: a plugin process never writes one (~2 ms of its start)

        return json.dumps(self.to_dict())


def _server_cert(value: Any) -> bytes:
    """The base64 DER certificate of untrusted handshake facts (to_dict's form): strict, and never empty."""
    try:
        der = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except ValueError:
        der = b""
    if not der:
        raise ConfigError(f"handshake facts field 'server_cert' must be the plugin certificate in base64 (or null),"
                          f" got {value!r:.80}; pass ReattachConfig.to_json() output")
    from plugbay.core.protocol.der import check_server_cert  # only AutoMTLS needs it

    try:  # as parse_handshake_line checks a line's: whole, by OpenSSL, not at the first TLS dial
        check_server_cert(der)
    except ValueError:
        raise ConfigError(f"handshake facts field 'server_cert' is base64 but not a DER X.509 certificate OpenSSL"
                          f" loads (got {value!r:.80}); pass ReattachConfig.to_json() output, unedited") from None
    return der


def _whole_number(data: Mapping[str, Any], key: str) -> int:
    """A version field of untrusted handshake facts: a JSON integer, nothing else (no 1.5, no Infinity)."""
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"handshake facts field {key!r} must be a whole number, got {value!r}; pass"
                          " ReattachConfig.to_json() output")
    return value


def parse_handshake_line(line: str, *, multiplex: bool = False) -> HandshakeInfo:
    """Parse a go-plugin handshake line (4 to 7 fields) into a HandshakeInfo.

    Fields past the seventh are ignored, as go-plugin's client ignores them: a later go-plugin
    may add one, and its hosts would still take the line. The seventh (multiplexing) is one of
    Go's booleans (strconv.ParseBool); anything else reads as False, unless ``multiplex`` (the
    host asked for the multiplexed broker): go-plugin's host reads that field only then, and
    refuses a value that is no boolean.

    Raises MalformedHandshakeError for lines that are not handshake lines,
    ProtocolMismatchError for a core version other than 1 and
    UnsupportedProtocolError for netrpc plugins.
    """
    raw = line
    line = line.strip(GO_SPACE)
    parts = line.split("|")
    if len(parts) < 4:
        raise MalformedHandshakeError(raw, f"expected at least 4 '|'-separated fields, got {len(parts)}")
    core = go_atoi(parts[0])
    if core is None:
        raise MalformedHandshakeError(raw, f"core protocol version {parts[0]!r} {_ATOI}")
    if core != CORE_PROTOCOL_VERSION:
        raise ProtocolMismatchError(
            f"incompatible core API version with plugin: plugin speaks {core}, plugbay speaks"
            f" {CORE_PROTOCOL_VERSION}. Build the plugin with a go-plugin release that speaks"
            f" core protocol {CORE_PROTOCOL_VERSION}."
        )
    app = go_atoi(parts[1])
    if app is None:
        raise MalformedHandshakeError(raw, f"app protocol version {parts[1]!r} {_ATOI}")
    network, address = parts[2], parts[3]
    if network not in ("tcp", "unix"):
        raise MalformedHandshakeError(raw, f"unknown address type {network!r} (want tcp or unix)")
    if not address:
        raise MalformedHandshakeError(raw, "empty address")
    problem = address_problem(network, address)
    if problem is not None:
        raise MalformedHandshakeError(raw, f"address field: {problem}")
    protocol = parts[4] if len(parts) >= 5 and parts[4] else PROTOCOL_NETRPC
    if protocol == PROTOCOL_NETRPC:
        raise UnsupportedProtocolError(
            "the plugin serves go-plugin's netrpc protocol (Go's gob encoding), which only Go"
            " can speak. Rebuild the plugin to serve gRPC (plugin.ServeConfig{GRPCServer:"
            " plugin.DefaultGRPCServer}) and allow ProtocolGRPC on the host."
        )
    if protocol != PROTOCOL_GRPC:
        raise ProtocolMismatchError(
            f"the plugin announced unknown protocol {clip(repr(protocol))}; plugbay speaks {PROTOCOL_GRPC!r}."
            " Check that the plugin is a go-plugin gRPC plugin."
        )
    cert: bytes | None = None
    if len(parts) >= 6 and len(parts[5].encode("utf-8", "surrogateescape")) > _MIN_CERT_FIELD:  # Go's len(): bytes
        from plugbay.core.protocol.der import handshake_cert  # only AutoMTLS needs it

        try:  # go-plugin's host parses it at the handshake too, not at the first TLS dial
            cert = handshake_cert(parts[5])
        except ValueError as exc:
            raise MalformedHandshakeError(raw, str(exc)) from None
    field7 = parts[6] if len(parts) >= 7 else "false"
    if multiplex and field7 not in _GO_BOOLS:
        raise MalformedHandshakeError(raw, f"multiplex field {field7!r} is not a boolean (true or false), and this"
                                      " host asked for the multiplexed broker (multiplex_broker=True), which"
                                      " go-plugin's host refuses too; have the plugin print true or false"
                                      " there, or set multiplex_broker=False")
    return HandshakeInfo(core, app, network, address, protocol, cert, _GO_BOOLS.get(field7, False))


def is_handshake_line(line: str) -> bool:
    """Whether ``line`` is a plugin's handshake line: one parse_handshake_line() takes, or one it refuses
    only for the core version or protocol (netrpc), so that the host raises that error at once.

    For a stream mixing the handshake with log lines (a pod's log). Another core version's line is
    told by the fields after the versions, checked as core version 1's.
    """
    core, _, rest = line.strip(GO_SPACE).partition("|")
    if go_atoi(core) is None:
        return False
    try:
        parse_handshake_line(f"{CORE_PROTOCOL_VERSION}|{rest}")
    except MalformedHandshakeError:
        return False
    except (ProtocolMismatchError, UnsupportedProtocolError):
        pass
    return True


def parse_versions(value: str) -> list[int]:
    """A host's own PLUGIN_PROTOCOL_VERSIONS setting ("1,2,3"); a piece that is no version number is a
    ConfigError. (A plugin reads the one its host sent as Go does instead: core.plugin.goenv.)"""
    out: list[int] = []
    for piece in value.split(","):
        piece = piece.strip()
        if not piece:
            continue
        number = _number(piece)
        if number is None:
            raise ConfigError(f"{ENV_PROTOCOL_VERSIONS} holds {piece!r}, which is not a version number;"
                              " set it to comma-separated integers such as '1,2'")
        out.append(number)
    return out
