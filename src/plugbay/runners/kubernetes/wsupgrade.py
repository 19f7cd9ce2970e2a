"""The port-forward WebSocket's opening handshake (RFC 6455 4.1), done by plugbay under one deadline.

The kubernetes client's ``stream`` hands websocket-client no timeout, so an API
server (or a proxy in front of it) that takes the TCP connection and never
answers the upgrade would hang the caller for good; websocket-client's only
knob is a process-wide default that would change every other user of that
library. Here the connect, the proxy CONNECT, the TLS handshake and the HTTP/1.1
upgrade each get what is left of one deadline. The TLS, auth and proxy settings
are the kubernetes client Configuration's, read as its own REST client reads
them, so a kubeconfig that works for pod calls works for port-forward too.
The result is the bare socket past the handshake: wsframes.py frames the rest.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from plugbay.errors import EngineUnavailableError, PlugbayError, RunnerError, clip, printable

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3
MAX_HEAD = 16384  # an answer's status line and headers; more is not an HTTP answer
MAX_BODY = 65536  # a refusal's body (a Kubernetes Status) read for its message
MAX_SAID = 1000  # characters of the API server's own words an error message quotes at most

# (status, reason, the body's message) -> the error to raise for a refused upgrade
Refusal = Callable[[int, str, str], PlugbayError]


class _Deadline:
    """What is left of one time budget, applied to a socket before each blocking step."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def arm(self, sock: socket.socket) -> None:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def api_url_problem(host_url: str) -> str | None:
    """What makes ``host_url`` (a Configuration's host) no address of an API server, or None when it is one:
    an http(s) URL with a host and a port (if any) in range, that urllib3 (the REST calls') can parse too."""
    from urllib3.util import parse_url

    parts = urlsplit(host_url)
    try:
        port_ok = parts.port is None or parts.port > 0  # ValueError: not a number, or out of range
        parse_url(host_url)  # its LocationParseError is a ValueError: a host with a space, say
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        return f"the Kubernetes API address {host_url!r} is not an http(s) URL"
    return None


def open_websocket(configuration: Any, path: str, protocols: Sequence[str], timeout: float,
                   what: str, refused: Refusal,
                   track: Callable[[socket.socket], None] | None = None) -> tuple[socket.socket, str]:
    """(the connected socket past the 101 answer, the subprotocol the server chose).

    ``path`` is the request path with its query; ``what`` names the stream for
    messages ("port-forward to pod ns/name port 4000"). A non-101 answer raises
    ``refused(status, reason, message)``; no answer within ``timeout`` seconds
    (connect, TLS and upgrade together) raises EngineUnavailableError.
    ``track(sock)`` sees each socket the handshake waits on (the TCP one, then the
    TLS one) so a closing owner can shut it down rather than wait out ``timeout``;
    it may raise to stop the handshake.
    """
    host_url = str(configuration.host).rstrip("/")
    problem = api_url_problem(host_url)
    if problem is not None:
        raise RunnerError(f"{what}: {problem}; fix the server field of the kubeconfig's cluster")
    parts = urlsplit(host_url)
    given_port = parts.port
    tls = parts.scheme == "https"
    host, port = parts.hostname or "", given_port or (443 if tls else 80)  # api_url_problem: it has a host
    deadline = _Deadline(timeout)
    sock: socket.socket | None = None
    step = "connect to"
    try:
        proxy = _proxy_for(configuration, host_url)
        if proxy is None:
            sock = socket.create_connection((host, port), timeout=timeout)
            if track is not None:
                track(sock)
        else:
            step = "connect through the proxy to"
            sock = _connect_via_proxy(proxy, configuration, host, port, deadline, track)
        if tls:
            step = "complete the TLS handshake with"
            deadline.arm(sock)
            context = _tls_context(configuration)
            raw, sock = sock, None  # wrap_socket detaches the raw socket (and closes it if it fails)
            try:
                sock = context.wrap_socket(raw, server_hostname=configuration.tls_server_name or host,
                                           do_handshake_on_connect=False)
            finally:
                if sock is None:
                    raw.close()
            if track is not None:
                track(sock)
            sock.do_handshake()
        step = "get an answer to the WebSocket upgrade from"
        key = base64.b64encode(os.urandom(16)).decode()
        authority = parts.netloc.rsplit("@", 1)[-1]
        head = [f"GET {parts.path.rstrip('/')}{path} HTTP/1.1", f"Host: {authority}", "Upgrade: websocket",
                "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                f"Sec-WebSocket-Protocol: {', '.join(protocols)}", *_auth_headers(configuration)]
        deadline.arm(sock)
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        status, reason, headers = _read_head(sock, deadline)
        if status != 101:
            raise refused(status, said(reason), said(_status_message(sock, headers, deadline, reason)))
        _check_answer(headers, key, what)
        sock.settimeout(None)
        chosen = headers.get("sec-websocket-protocol", "")
        result, sock = sock, None
        return result, chosen
    except TimeoutError as exc:
        raise EngineUnavailableError(
            f"{what}: could not {step} the Kubernetes API at {host_url} within {timeout:.0f}s."
            " Check that the API server (and any proxy in front of it) is up and passes WebSocket"
            " upgrades, or raise the runner's start_timeout if it is only slow") from exc
    except ssl.SSLError as exc:
        raise EngineUnavailableError(
            f"{what}: the TLS handshake with the Kubernetes API at {host_url} failed: {exc}. Check the"
            " kubeconfig's certificate-authority and client certificate for this cluster") from exc
    except OSError as exc:
        raise EngineUnavailableError(
            f"{what}: could not {step} the Kubernetes API at {host_url}: {exc}. Check that the"
            " cluster (and the kubeconfig's proxy-url, if set) is up and the kubeconfig points at it") from exc
    finally:
        if sock is not None:
            sock.close()


def _tls_context(configuration: Any) -> ssl.SSLContext:
    """Verification, CA and client certificate as the kubernetes client's urllib3 pool sets them."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(["http/1.1"])  # the upgrade is an HTTP/1.1 request
    if configuration.verify_ssl:
        cafile = configuration.ssl_ca_cert or None
        cadata = getattr(configuration, "ca_cert_data", None) or None
        if cafile or cadata:
            ctx.load_verify_locations(cafile=cafile, cadata=cadata)
        else:
            ctx.load_default_certs()
        ctx.check_hostname = configuration.assert_hostname is not False
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        ctx.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    return ctx


def _auth_headers(configuration: Any) -> list[str]:
    """The Configuration's header auth (a bearer token, refreshed by its hook), as its ApiClient sends it."""
    out = []
    for setting in configuration.auth_settings().values():
        if setting.get("in") == "header" and setting.get("value"):
            out.append(f"{setting['key']}: {setting['value']}")
    for line in out:
        if "\r" in line or "\n" in line:
            raise RunnerError("the kubeconfig's credentials contain a line break; fix the token in it")
    return out


def _proxy_for(configuration: Any, host_url: str) -> str | None:
    proxy = getattr(configuration, "proxy", None)
    if not proxy:
        return None
    host = (urlsplit(host_url).hostname or "").lower()
    for entry in str(getattr(configuration, "no_proxy", None) or "").split(","):
        entry = entry.strip().lower().lstrip(".")
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry) or _in_network(host, entry))):
            return None
    return str(proxy)


def _in_network(host: str, entry: str) -> bool:
    """no_proxy's CIDR entries (10.0.0.0/8) for an API server addressed by IP."""
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False


def _connect_via_proxy(proxy: str, configuration: Any, host: str, port: int, deadline: _Deadline,
                       track: Callable[[socket.socket], None] | None = None) -> socket.socket:
    """A tunnel through an HTTP proxy (CONNECT), with the Configuration's proxy headers."""
    parts = urlsplit(proxy)
    try:
        proxy_port = parts.port or 80  # ValueError: not a number, or out of range
    except ValueError:
        proxy_port = -1
    if parts.scheme != "http" or not parts.hostname or proxy_port == -1:
        raise RunnerError(f"the kubeconfig's proxy {proxy!r} is not an http:// proxy URL with a valid port;"
                          " plugbay's port-forward tunnels through HTTP proxies only (CONNECT). Use an"
                          " http:// proxy or none")
    extra = _proxy_header_lines(configuration)  # checked before anything is sent
    sock = socket.create_connection((parts.hostname, proxy_port), timeout=deadline.seconds)
    try:
        if track is not None:
            track(sock)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        deadline.arm(sock)
        sock.sendall("\r\n".join([f"CONNECT {target} HTTP/1.1", f"Host: {target}", *extra, "", ""]).encode())
        status, reason, _ = _read_head(sock, deadline)
        if status != 200:
            raise EngineUnavailableError(f"the proxy {proxy} refused to tunnel to {target}: {status} {reason}."
                                         " Check the kubeconfig's proxy-url and its credentials")
        return sock
    except BaseException:
        sock.close()
        raise


def _proxy_header_lines(configuration: Any) -> list[str]:
    """The Configuration's proxy headers as lines; a value or name that would start a header of its own is refused."""
    lines = []
    for name, value in (getattr(configuration, "proxy_headers", None) or {}).items():
        name, value = str(name), str(value)
        if not name or any(c in name for c in "\r\n:\0 \t") or any(c in value for c in "\r\n\0"):
            raise RunnerError("the kubeconfig's proxy headers contain a line break or a bad header name;"
                              f" fix the proxy settings (header {name[:40]!r})")
        lines.append(f"{name}: {value}")
    return lines


def _read_head(sock: socket.socket, deadline: _Deadline) -> tuple[int, str, dict[str, str]]:
    """The status line and headers, read a byte at a time: the frames right behind them stay unread."""
    data = bytearray()
    while not data.endswith(b"\r\n\r\n"):
        if len(data) > MAX_HEAD:
            raise RunnerError(f"the Kubernetes API sent more than {MAX_HEAD} bytes without ending its"
                              " HTTP answer; check what listens at the kubeconfig's server address")
        deadline.arm(sock)
        byte = sock.recv(1)
        if not byte:
            raise ConnectionResetError("the server closed the connection before it answered the upgrade")
        data += byte
    lines = data.decode("latin-1").split("\r\n")
    fields = lines[0].split(" ", 2)
    # isascii(): str.isdigit() also says yes to latin-1's superscript digits, which int() refuses
    if (len(fields) < 2 or not fields[0].startswith("HTTP/1.") or len(fields[1]) != 3
            or not (fields[1].isascii() and fields[1].isdigit())):
        raise RunnerError(f"the Kubernetes API answered the WebSocket upgrade with {lines[0][:80]!r},"
                          " which is not an HTTP/1.1 status line; check the kubeconfig's server address")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(fields[1]), fields[2] if len(fields) > 2 else "", headers


def _status_message(sock: socket.socket, headers: dict[str, str], deadline: _Deadline, reason: str) -> str:
    """A refusal's text: the Kubernetes Status message in its body if there is one (best effort)."""
    try:
        size = min(int(headers.get("content-length", "0")), MAX_BODY)
        body = bytearray()
        while len(body) < size:
            deadline.arm(sock)
            chunk = sock.recv(size - len(body))
            if not chunk:
                break
            body += chunk
        return str(json.loads(bytes(body)).get("message") or reason)
    except (OSError, ValueError, AttributeError, RecursionError):  # RecursionError: a body nested too deep
        return reason


def said(text: str) -> str:
    """What the API server (or a proxy at its URL) said, as an error message may quote it: its control and
    bidi characters escaped (a newline would forge a log line of the host's) and its middle cut to
    MAX_SAID characters (a message of megabytes is no message)."""
    return clip(printable(text), MAX_SAID)


def _check_answer(headers: dict[str, str], key: str, what: str) -> None:
    """RFC 6455 4.1's checks of a 101 answer (the caller judges the chosen subprotocol)."""
    problems = []
    if headers.get("upgrade", "").lower() != "websocket":
        problems.append(f"Upgrade: {headers.get('upgrade', '(missing)')}")
    if "upgrade" not in [t.strip().lower() for t in headers.get("connection", "").split(",")]:
        problems.append(f"Connection: {headers.get('connection', '(missing)')}")
    if headers.get("sec-websocket-accept") != accept_key(key):
        problems.append(f"Sec-WebSocket-Accept: {headers.get('sec-websocket-accept', '(missing)')}"
                        f" (expected {accept_key(key)})")
    if problems:
        raise RunnerError(f"{what}: the Kubernetes API's answer to the WebSocket upgrade is not a valid"
                          f" one ({'; '.join(problems)}). Check for a proxy in front of the API server"
                          " that rewrites or breaks WebSocket upgrades")
