"""A RemoteClient's Discovery: what stands in for a launched plugin's stdout handshake.

The host asks the plugin's plugbay.network.v1.Discovery/Describe (through the endpoint pool, trying
until start_timeout) and makes the HandshakeInfo of its answer: the core protocol, "grpc", the
highest app protocol version both sides offer and whether brokered connections are multiplexed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import grpc

from plugbay._proto.plugbay import discovery_pb2, discovery_pb2_grpc
from plugbay.core.protocol.handshake import CORE_PROTOCOL_VERSION, PROTOCOL_GRPC, HandshakeInfo
from plugbay.core.protocol.versions import negotiate_version
from plugbay.errors import (
    HandshakeTimeoutError,
    NoEndpointsError,
    ProtocolMismatchError,
    RemoteProtocolError,
    RemoteRefusedError,
    RemoteTLSError,
    UnsupportedProtocolError,
    clip,
)
from plugbay.network.muxconn import Sessions, refusal_of
from plugbay.network.pool import EndpointPool

_log = logging.getLogger("plugbay.network")


class Asker(NamedTuple):
    """The RemoteClient that asks: what its errors name, how long it asks, and its check for a close()."""

    name: str
    target: str
    start_timeout: float
    protocol_version: int  # the handshake's: assumed when the plugin serves no Discovery
    stop_if_killed: Callable[[], None]  # raises once close() or kill() came from another thread


def describe(pool: EndpointPool, deadline: float, asker: Asker,
             sessions: Sessions | None = None) -> discovery_pb2.DescribeResponse | None:
    """The plugin's Discovery answer; None when it serves none. ``sessions``: the endpoints' yamux sessions,
    once Discovery answered over plain gRPC (then no answer is expected, and a refused session ends it)."""
    stub = discovery_pb2_grpc.DiscoveryStub(pool)  # type: ignore[no-untyped-call]
    last = "no answer yet"
    # the last try's, at that try's deadline: raised at start's
    late_tls: RemoteTLSError | RemoteProtocolError | None = None
    while True:
        asker.stop_if_killed()
        refused = refusal_of(sessions, f"{asker.name!r} at {asker.target!r}") if sessions is not None else None
        if refused is not None:
            raise refused  # at once: sessions are refused again until some of the address's end
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            # a server that is starting refuses until it listens: refusals are waited out like any silence, for
            # start_timeout (the user's budget); only its end says they were all there was
            refusing = pool.refused_since()
            raise late_tls if late_tls is not None else refused_error(asker, refusing, last) if refusing else (
                HandshakeTimeoutError(
                    f"remote plugin {asker.name!r} at {asker.target!r} did not answer Discovery within"
                    f" {asker.start_timeout:.1f}s (last: {last}). Check the target, that the plugin"
                    " is served in network mode, and its TLS setup; raise start_timeout if it is slow"))
        try:
            answer: discovery_pb2.DescribeResponse = stub.Describe(
                discovery_pb2.DescribeRequest(), timeout=min(remaining, 5.0))
            return answer
        except (RemoteTLSError, RemoteProtocolError) as exc:
            if not getattr(exc, "at_deadline", False):
                raise
            late_tls = exc  # a replica failing TLS beside one still booting: wait out start_timeout
            continue
        except NoEndpointsError as exc:
            asker.stop_if_killed()  # the kill closed the pool: not an endpoint problem
            details = getattr(exc, "details", None)
            late_tls, last = None, str(details() if callable(details) else exc)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                if sessions is not None:
                    return None
                _log.warning("remote plugin %s does not serve plugbay.network.v1.Discovery; assuming"
                             " app protocol version %d (the handshake's)", asker.name, asker.protocol_version)
                return None
            late_tls, last = None, f"{exc.code().name}: {exc.details()}"  # the latest try's reason is the one
        time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))


def refused_error(asker: Asker, refused: tuple[float, list[str]], last: str) -> RemoteRefusedError:
    """A start's end when every endpoint refused the connection throughout its last stretch (``refused``:
    since when, and where)."""
    since, addresses = refused
    where = ", ".join(addresses[:5]) + (f" and {len(addresses) - 5} more" if len(addresses) > 5 else "")
    return RemoteRefusedError(
        f"remote plugin {asker.name!r} at {asker.target!r}: the connection was refused for"
        f" {time.monotonic() - since:.0f}s, until start_timeout ({asker.start_timeout:.1f}s) ran out: nothing"
        f" listens at {where} (last: {last}). Check the address and port, and that the plugin's service runs"
        " there in network mode; raising start_timeout helps only if it is still starting")


def handshake_info(answer: discovery_pb2.DescribeResponse | None, address: str, name: str,
                   protocol_version: int, versions: Iterable[int]) -> HandshakeInfo:
    """The handshake a Discovery ``answer`` (None: none served) amounts to, for the endpoint at ``address``;
    ``versions``: the app protocol versions this host offers."""
    network, _, addr = address.partition(":")
    if answer is None:
        return HandshakeInfo(CORE_PROTOCOL_VERSION, protocol_version, network, addr, PROTOCOL_GRPC)
    if answer.core_protocol != CORE_PROTOCOL_VERSION:
        raise ProtocolMismatchError(
            f"remote plugin {name!r} speaks go-plugin core protocol {answer.core_protocol}, this"
            f" host {CORE_PROTOCOL_VERSION}; use a host and a plugin of compatible go-plugin versions")
    if answer.protocol != PROTOCOL_GRPC:
        raise UnsupportedProtocolError(
            f"remote plugin {name!r} offers protocol {clip(repr(answer.protocol))}; network mode carries"
            " only 'grpc' (serve the plugin with gRPC)")
    version = negotiate_version(versions, [v.version for v in answer.versions])
    return HandshakeInfo(answer.core_protocol, version, network, addr, PROTOCOL_GRPC,
                         multiplex=answer.multiplex, extra={"server": answer.server})


def warn_unlisted(answer: discovery_pb2.DescribeResponse | None, version: int, name: str, served_by: str,
                  warned: set[str]) -> None:
    """Log once per name (in ``warned``) that the Discovery ``answer`` lists the plugins of app protocol ``version``
    and not ``name``; never refuse it. The list is the plugin's own plugin-set keys, while the name a host
    dispenses is a key in the host's set only: calls route by gRPC service name, as go-plugin's do, so a host
    may name a plugin differently. The answer is also one replica's, given once at start (a rolling upgrade or a
    restart may serve more). A gateway's list is its --plugins flag, not its child's word. No answer or no names
    listed: not known, nothing said."""
    if answer is None or name in warned:
        return
    listed = next((list(v.plugins) for v in answer.versions if v.version == version), [])
    if not listed or name in listed:
        return
    warned.add(name)
    _log.warning("%s: its Discovery lists only %s for app protocol version %d, not %r; dispensing %r anyway (calls"
                 " route by gRPC service, not by plugin name): a first call failing UNIMPLEMENTED means the plugin"
                 " serves no such service", served_by, clip(repr(sorted(listed))), version, name, name)
