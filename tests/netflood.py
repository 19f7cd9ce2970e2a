"""A network-mode KV plugin with some module constants lowered, and a raw yamux peer over mutual TLS.

What one authenticated peer can do to a network plugin: open yamux sessions
and streams without ever reading or calling (tests/test_network_stream_cap.py,
tests/test_network_peer_sessions.py).
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests import netcerts
from tests.test_network_serve import KV_PLUGIN, NetPlugin, tls_env

HDR = struct.Struct(">BBHII")
DATA, WINDOW_UPDATE, PING = 0, 1, 2
SYN, ACK, RST = 1, 2, 8

_RUN = """import runpy, sys
{sets}
sys.path.insert(0, {folder!r})
sys.argv = [{script!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


class LoweredPlugin(NetPlugin):
    """examples/kv/plugin.py in network mode, ``lowered`` ({module: {NAME: value}}) set before it starts."""

    def __init__(self, cwd: Path, certs: netcerts.CertSet, lowered: dict[str, dict[str, int]]) -> None:
        sets = "\n".join(f"import {mod}\n" + "".join(f"{mod}.{k} = {v!r}\n" for k, v in consts.items())
                         for mod, consts in lowered.items())
        code = _RUN.format(sets=sets, folder=str(KV_PLUGIN.parent), script=str(KV_PLUGIN))
        super().__init__(cwd, tls_env(certs), [sys.executable, "-c", code])


def peer(address: str, certs: netcerts.CertSet, source: str = "") -> ssl.SSLSocket:
    """A TLS connection with the valid client certificate, from ``source`` (an address of this machine)."""
    host, _, port = address.rpartition(":")
    ctx = netcerts.client_context(certs)
    raw = socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0) if source else None)
    try:
        return ctx.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def syns(first: int, count: int) -> bytes:
    """Stream-open frames for the client stream ids first, first+2, ..."""
    return b"".join(HDR.pack(0, WINDOW_UPDATE, SYN, first + 2 * i, 0) for i in range(count))


def ping(opaque: int) -> bytes:
    return HDR.pack(0, PING, SYN, 0, opaque)


def until_pong(sock: ssl.SSLSocket, opaque: int, timeout: float = 30) -> set[int] | None:
    """The stream ids the plugin reset, read until it answered ping ``opaque`` (None: it closed instead).

    The session's reader answers in the order it read, so every SYN sent before the ping has had
    its ACK, and its RST if refused, by then.
    """
    deadline = time.monotonic() + timeout
    data, resets = b"", set()
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionError, ssl.SSLError):
            return None
        if not chunk:
            return None
        got, data = split_frames(data + chunk)
        for kind, flags, sid, length in got:
            if kind == WINDOW_UPDATE and flags & RST:
                resets.add(sid)
            elif kind == PING and flags & ACK and length == opaque:
                return resets
    raise AssertionError(f"no answer to ping {opaque} within {timeout}s")


def session_until(address: str, certs: netcerts.CertSet, frames: bytes, opaque: int,
                  wanted: Callable[[set[int] | None], bool], what: str, source: str = "",
                  attempts: int = 200) -> ssl.SSLSocket:
    """A new session that sends ``frames`` and ping ``opaque``, made again until ``wanted`` takes its answer
    (until_pong's): the plugin frees an ended session's slots a moment after the end. The socket, open."""
    for _ in range(attempts):
        sock = peer(address, certs, source)
        try:
            sock.sendall(frames + ping(opaque))
            if wanted(until_pong(sock, opaque)):
                return sock
        except BaseException:
            sock.close()
            raise
        sock.close()
    raise AssertionError(f"{what} (not in {attempts} new sessions)")


def split_frames(data: bytes) -> tuple[list[tuple[int, int, int, int]], bytes]:
    """The whole yamux frames at the start of ``data`` as (type, flags, stream id, length), and the rest."""
    frames = []
    while len(data) >= HDR.size:
        _, kind, flags, sid, length = HDR.unpack(data[:HDR.size])
        size = HDR.size + (length if kind == DATA else 0)
        if len(data) < size:
            break
        data = data[size:]
        frames.append((kind, flags, sid, length))
    return frames, data


def proc_counts(pid: int) -> tuple[int, int]:
    """(threads, open descriptors) of process ``pid``."""
    threads = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("Threads:"))
    return threads, len(os.listdir(f"/proc/{pid}/fd"))
