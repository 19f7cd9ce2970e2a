"""Where the plugin listens, and what sits between that address and gRPC.

go-plugin's plugin listens on a unix socket on POSIX (a fresh name in
PLUGIN_UNIX_SOCKET_DIR, else the temp dir; chgrp'd and made group-writable
0660 when PLUGIN_UNIX_SOCKET_GROUP is set, as current go-plugin does) and on
TCP 127.0.0.1 within PLUGIN_MIN_PORT..PLUGIN_MAX_PORT where unix sockets do
not exist. In a setgid folder (a folder shared with a container user, whose
group new files inherit) the socket is made 0660 as well. plugbay adds PLUGBAY_LISTEN for containers and pods:

=====================  ====================================================
``tcp:HOST:PORT``      listen there (port 0 picks one); announce the bound address
``tcp``                go-plugin's TCP listener: 127.0.0.1, port range from env
``unix:PATH``          listen on that socket path
=====================  ====================================================

gRPC binds the announced address itself when nothing has to sit in front of
it. A *front* (a Python object owning the announced socket and forwarding to
gRPC on a private unix socket) is used when:

* the host's AutoMTLS certificate is one grpcio cannot handshake with (a Go
  host's P-521): a TLSRelay in ``terminate`` mode does TLS with OpenSSL;
* multiplexing is on (PLUGIN_MULTIPLEX_GRPC): the broker's multiplexer owns
  the announced socket (see :func:`_multiplexer`, the seam for the broker).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import ssl
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from plugbay.core.plugin.goenv import go_int
from plugbay.core.protocol.records import Record
from plugbay.errors import ConfigError
from plugbay.core.protocol.handshake import ENV_MAX_PORT, ENV_MIN_PORT, ENV_UNIX_SOCKET_DIR, ENV_UNIX_SOCKET_GROUP
from plugbay.core.transport.sockets import (
    check_unix_path,
    give_to_group,
    group_id,
    listener_address,
    open_listener,
    private_folder_root,
    unix_target,
    unlink_quietly,
)
from plugbay.core.transport.tempdirs import private_room, private_socket

ENV_LISTEN = "PLUGBAY_LISTEN"


class Endpoint(Record):
    """An address to listen on: network "unix"/"tcp", and a path or HOST:PORT."""

    _fields = ("network", "address", "port_range", "socket_group", "owned_path")

    def __init__(self, network: str, address: str, port_range: tuple[int, int] | None = None,
                 socket_group: str | None = None, owned_path: bool = False) -> None:
        self.network = network
        self.address = address
        self.port_range = port_range  # tcp: try each port of the range
        self.socket_group = socket_group  # unix: chgrp to this and chmod 0660
        self.owned_path = owned_path  # unix: we picked the name, so we remove the file


class Listening(Record):
    """The announced address and everything to undo on shutdown."""

    _fields = ("network", "address", "multiplex", "mux", "_cleanups")

    def __init__(self, network: str, address: str, multiplex: bool, mux: Any = None,
                 _cleanups: list[Callable[[], None]] | None = None) -> None:
        self.network = network
        self.address = address
        self.multiplex = multiplex
        self.mux = mux  # the multiplexer front's session, for BrokerTransport.mux
        self._cleanups: list[Callable[[], None]] = [] if _cleanups is None else _cleanups
        self._names: list[Callable[[], None]] = []  # remove the socket file and private folder

    def remove_names(self) -> None:
        """Remove the socket file and private folder now; what listens on them serves on until close().

        A stopping plugin does this before anything that may wait: its host kills it when the
        stop takes long, and a killed process removes nothing.
        """
        _run_all(self._names)

    def close(self) -> None:
        _run_all(self._cleanups)
        _run_all(self._names)


def _run_all(cleanups: list[Callable[[], None]]) -> None:
    while cleanups:
        try:
            cleanups.pop()()
        except OSError:
            pass


def parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool; anything else is False (go-plugin ignores the error)."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


def plan_endpoint(env: Mapping[str, str]) -> Endpoint:
    """Decide the announced endpoint from the environment (no sockets yet)."""
    override = env.get(ENV_LISTEN, "").strip()
    if override:
        return _parse_override(override, env)
    if hasattr(socket, "AF_UNIX"):
        directory = env.get(ENV_UNIX_SOCKET_DIR) or tempfile.gettempdir()
        try:
            fd, path = tempfile.mkstemp(prefix="plugin", dir=directory)
        except OSError as exc:
            source = ENV_UNIX_SOCKET_DIR if env.get(ENV_UNIX_SOCKET_DIR) else "the temp dir"
            raise ConfigError(f"couldn't create the plugin's unix socket in {directory} ({source}):"
                              f" {exc.strerror}; point {source} at a writable folder") from None
        os.close(fd)
        os.unlink(path)  # the name has to be free for bind()
        return Endpoint("unix", path, socket_group=env.get(ENV_UNIX_SOCKET_GROUP) or None, owned_path=True)
    return Endpoint("tcp", "127.0.0.1:0", port_range=_port_range(env))


def _parse_override(value: str, env: Mapping[str, str]) -> Endpoint:
    kind, _, rest = value.partition(":")
    if kind == "tcp" and not rest:
        return Endpoint("tcp", "127.0.0.1:0", port_range=_port_range(env))
    if kind == "tcp":
        host, sep, port = rest.rpartition(":")
        number = go_int(port) if port.isdigit() else None  # ASCII digits (go_int): '²' is a digit to isdigit()
        if sep and host and number is not None and number < 65536:
            return Endpoint("tcp", f"{host}:{number}")
        if sep and host and port.isascii() and port.isdigit():  # digits, but no port (go_int: too many for Go)
            raise ConfigError(f"{ENV_LISTEN}={value!r:.120}: port {port[:12]}{'...' if len(port) > 12 else ''} is out"
                              " of range 0-65535 (0: any free port); use for example 'tcp:0.0.0.0:4000'")
    if kind == "unix" and rest:
        if not os.path.isabs(rest):  # a handshake's unix path is absolute: the host refused the line
            raise ConfigError(f"{ENV_LISTEN}={value!r} names a relative unix socket path, which the host"
                              " cannot dial (it runs in another folder); give an absolute path such as"
                              " 'unix:/run/plugin/plugin.sock'")
        return Endpoint("unix", rest, socket_group=env.get(ENV_UNIX_SOCKET_GROUP) or None, owned_path=True)
    raise ConfigError(
        f"{ENV_LISTEN}={value!r} is not a listen address; use 'tcp:HOST:PORT' (for example"
        " 'tcp:0.0.0.0:4000'), 'tcp' (127.0.0.1 within PLUGIN_MIN_PORT..PLUGIN_MAX_PORT) or 'unix:/path'"
    )


def _port_range(env: Mapping[str, str]) -> tuple[int, int]:
    values = []
    for name in (ENV_MIN_PORT, ENV_MAX_PORT):
        raw = env.get(name, "")
        value = go_int(raw, 32) if raw else 0  # as go-plugin reads it: a Go plugin refuses what this refuses
        if value is None:
            raise ConfigError(f"couldn't get value from {name}: {raw!r} is not a port number;"
                              " set it to an integer between 0 and 65535")
        values.append(value)
    low, high = values
    if low > high:
        raise ConfigError(f"{ENV_MIN_PORT} value of {low} is greater than {ENV_MAX_PORT} value of"
                          f" {high}; set a range with min <= max")
    if low < 0 or high > 65535:
        raise ConfigError(f"port range {low}..{high} is outside 0..65535; fix {ENV_MIN_PORT}/{ENV_MAX_PORT}")
    return low, high


def listen(server: grpc.Server, endpoint: Endpoint, *, credentials: grpc.ServerCredentials | None,
           relay_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None, multiplex: bool,
           folder: str | None = None) -> Listening:
    """Bind ``server`` (not started yet) and any fronts; return the announced address.

    ``multiplex`` is what the host asked for; ``Listening.multiplex`` says
    whether a multiplexer front is actually in place (announced in the
    handshake's 7th field). ``relay_context`` may be a provider the relay calls per connection.
    ``folder``: where a front's private socket folder goes (the host's PLUGIN_UNIX_SOCKET_DIR;
    None: the temp dir), so a plugin whose temp dir is read-only still starts.
    """
    mux = _multiplexer() if multiplex else None
    result = Listening("", "", mux is not None)
    try:
        if relay_context is None and mux is None:
            result.network, result.address = _bind_grpc(server, endpoint, credentials, result)
            return result
        from plugbay.core.transport.relay import TLSRelay  # a front is rare: load it only then

        private_dir, made = private_room("plugbay-grpc-", private_folder_root(folder))
        grpc_path, relay_path = private_socket(private_dir, "grpc"), private_socket(private_dir, "tls")
        if made:
            result._names.append(lambda: shutil.rmtree(private_dir, ignore_errors=True))
        else:
            result._names.extend([lambda: unlink_quietly(grpc_path), lambda: unlink_quietly(relay_path)])
        target = ("unix", grpc_path)
        _check_unix_path(target[1])  # longer than the announced one: grpcio's refusal is a bare RuntimeError
        if credentials is None:
            server.add_insecure_port(unix_target(target[1]))
        else:
            server.add_secure_port(unix_target(target[1]), credentials)
        sock = _bind_socket(endpoint, result)
        result.network, result.address = listener_address(sock)
        if mux is not None and relay_context is not None:
            # go-plugin runs TLS inside the multiplexed streams: mux -> relay -> gRPC.
            _check_unix_path(relay_path)
            relay_sock = open_listener("unix", relay_path)
            relay = TLSRelay(relay_sock, target, relay_context, mode="terminate")
            result._cleanups.append(relay.close)
            target = listener_address(relay_sock)
        if mux is not None:
            front = mux(sock, target)
            result.mux = front
            result._cleanups.append(front.close)
        else:
            assert relay_context is not None
            relay = TLSRelay(sock, target, relay_context, mode="terminate")
            result._cleanups.append(relay.close)
    except BaseException:
        result.close()
        raise
    return result


if TYPE_CHECKING:  # types only: a Protocol class is costly to create at every plugin start
    from typing import Protocol

    class _Front(Protocol):
        def close(self) -> None: ...


def _multiplexer() -> Callable[[socket.socket, tuple[str, str]], _Front] | None:
    """The multiplexer front, when this build has one.

    Seam for the multiplexed broker: ``plugbay.core.transport.muxplugin.plugin_front(listener,
    target)`` takes over the announced listening socket, serves go-plugin's
    multiplexed (yamux) session on it, forwards the main connection's streams
    to ``target`` (network, address) and returns the session object (with
    ``close()``); serve() hands it to the broker as ``BrokerTransport.mux``.
    Without it a host asking for multiplexing is told "not supported" (no 7th
    field), which a go-plugin host reports as ErrGRPCBrokerMuxNotSupported.
    """
    try:
        from plugbay.core.transport import muxplugin as mux
    except ImportError:
        return None
    factory = getattr(mux, "plugin_front", None)
    return factory if callable(factory) else None


def _bind_grpc(server: grpc.Server, endpoint: Endpoint, credentials: grpc.ServerCredentials | None,
               result: Listening) -> tuple[str, str]:
    def add(target: str) -> int:
        if credentials is None:
            return int(server.add_insecure_port(target))
        return int(server.add_secure_port(target, credentials))

    if endpoint.network == "unix":
        _check_unix_path(endpoint.address)
        try:
            add(unix_target(endpoint.address))
        except RuntimeError as exc:
            raise ConfigError(f"couldn't listen on unix socket {endpoint.address}: {exc}"
                              f"{_TLS_HINT if credentials is not None else ''}") from None
        _own_unix(endpoint, result)
        return "unix", endpoint.address
    host, _, port_text = endpoint.address.rpartition(":")
    for port in _candidate_ports(endpoint, host, int(port_text)):
        try:
            bound = add(f"{host}:{port}")
        except RuntimeError:
            continue
        if bound:
            return "tcp", f"{host}:{bound}"
    error = _bind_error(endpoint)
    if credentials is not None:
        error.args = (error.args[0] + _TLS_HINT,)
    raise error


def _bind_socket(endpoint: Endpoint, result: Listening) -> socket.socket:
    if endpoint.network == "unix":
        _check_unix_path(endpoint.address)
        try:
            sock = open_listener("unix", endpoint.address)
        except OSError as exc:
            raise ConfigError(f"couldn't listen on unix socket {endpoint.address}: {exc}") from None
        try:
            _own_unix(endpoint, result)
        except BaseException:
            sock.close()
            raise
        return sock
    host, _, port_text = endpoint.address.rpartition(":")
    for port in _candidate_ports(endpoint, host, int(port_text)):
        try:
            return open_listener("tcp", f"{host}:{port}")
        except OSError:
            continue
    raise _bind_error(endpoint)


def _candidate_ports(endpoint: Endpoint, host: str, port: int) -> Iterator[int]:
    if endpoint.port_range is None:
        yield port
        return
    low, high = endpoint.port_range
    # Probe with a plain socket first so grpcio does not log a bind error per busy port.
    for candidate in range(low, high + 1):
        probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        # as grpcio's and Go's listeners: a port a killed plugin's connection left in TIME_WAIT is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), candidate))
        except OSError:
            continue
        finally:
            probe.close()
        yield candidate


# grpcio refuses a certificate OpenSSL took (junk in its validity, say) only as the port is added,
# and says "Failed to bind" (go-plugin: "client cert provided but failed to parse")
_TLS_HINT = ("; if the address is fine, the TLS setup was refused: check the host's certificate in"
             " PLUGIN_CLIENT_CERT (one the gRPC library cannot load)")


def _bind_error(endpoint: Endpoint) -> ConfigError:
    if endpoint.port_range is not None:
        low, high = endpoint.port_range
        return ConfigError(f"couldn't bind plugin TCP listener: no free port on 127.0.0.1 in {low}..{high};"
                           f" widen {ENV_MIN_PORT}/{ENV_MAX_PORT} or free a port")
    host = endpoint.address.rpartition(":")[0]
    unusable = _unusable_host(host.removeprefix("[").removesuffix("]"))
    if unusable:  # no port would do: "free that port" sent the user after the wrong thing
        return ConfigError(f"couldn't bind plugin TCP listener on {endpoint.address}: the address is invalid"
                           f" ({unusable}); in {ENV_LISTEN} give one of this machine's addresses, for example"
                           " tcp:127.0.0.1:0 or tcp:0.0.0.0:4000")
    return ConfigError(f"couldn't bind plugin TCP listener on {endpoint.address}; free that port or"
                       f" choose another in {ENV_LISTEN}")


def _unusable_host(host: str) -> str | None:
    """Why no socket can be bound on ``host`` at any port (not an address, or none of this machine's), or None."""
    try:
        found = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return f"{host!r} is no IP address or name that resolves: {exc}"
    for family, kind, proto, _, address in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind(address)  # port 0: only whether the address is one of this machine's
            return None
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                return None
    return f"{host!r} is not an address of this machine"


def _check_unix_path(path: str) -> None:
    check_unix_path(path, f"set {ENV_UNIX_SOCKET_DIR} (or TMPDIR) to a shorter directory")


def _own_unix(endpoint: Endpoint, result: Listening) -> None:
    path = endpoint.address
    if endpoint.owned_path:
        result._names.append(lambda: unlink_quietly(path))
    if endpoint.socket_group:
        _set_group_writable(path, endpoint.socket_group)
    elif (folder := os.stat(os.path.dirname(path) or ".")).st_mode & stat.S_ISGID:
        # A setgid folder shared with another user (a container's): the socket
        # inherited the folder's group, which must be able to connect too. That
        # user can write in the folder and swap the socket's name for a symlink
        # before this runs: never follow the name, refuse what is not a socket.
        try:
            give_to_group(path, folder.st_gid, 0o660)
        except OSError as exc:
            raise ConfigError(f"couldn't make unix socket {path} group-writable in its setgid folder: {exc}") from None


def _set_group_writable(path: str, group: str) -> None:
    gid = group_id(group, f"set {ENV_UNIX_SOCKET_GROUP} to an existing group name or gid")
    try:
        give_to_group(path, gid, 0o660)
    except OSError as exc:
        raise ConfigError(f"couldn't give unix socket {path} to group {group}: {exc}") from None
