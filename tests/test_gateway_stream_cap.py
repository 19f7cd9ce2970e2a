"""A brokering host opening streams past a session's cap through the gateway (--multiplex): the
streams past it are reset, and the gateway's splice threads (two per stream) stay bounded."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

from plugbay import Gateway
from plugbay.core.transport.yamux import MAX_STREAMS
from tests import netcerts
from tests.test_network_broker import _gateway_config, _silent_host, certs  # noqa: F401 (a fixture)

_HDR = struct.Struct(">BBHII")
_WINDOW_UPDATE, _SYN, _RST = 1, 1, 8


def _resets_until(sock: object, wanted: set[int], timeout: float) -> set[int]:
    """The stream ids the gateway reset, read until ``wanted`` are among them (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    data, resets = b"", set()
    while not wanted <= resets and time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))  # type: ignore[attr-defined]
        try:
            chunk = sock.recv(65536)  # type: ignore[attr-defined]
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        while len(data) >= _HDR.size:
            _, kind, flags, sid, length = _HDR.unpack(data[:_HDR.size])
            size = _HDR.size + (length if kind == 0 else 0)
            if len(data) < size:
                break
            data = data[size:]
            if kind == _WINDOW_UPDATE and flags & _RST:
                resets.add(sid)
    return resets


def test_streams_a_host_opens_past_the_cap_are_reset_and_splice_threads_stay_bounded(
        tmp_path: Path, certs: netcerts.CertSet) -> None:  # noqa: F811
    folder = tmp_path / "gw"
    folder.mkdir()
    extra = 200
    with Gateway(_gateway_config(certs, folder, multiplex=True)) as gw:
        host = _silent_host(gw.address, certs)
        try:
            host.sendall(b"".join(_HDR.pack(0, _WINDOW_UPDATE, _SYN, 2 * i + 1, 0)
                                  for i in range(MAX_STREAMS + extra)))
            past = {2 * i + 1 for i in range(MAX_STREAMS, MAX_STREAMS + extra)}
            resets = _resets_until(host, past, 60)
            assert past <= resets, f"{len(past - resets)} of the {extra} streams past the cap were not reset"
            splices = [t for t in threading.enumerate() if t.name.startswith("plugbay-splice")]
            assert len(splices) <= 2 * MAX_STREAMS, len(splices)
        finally:
            host.close()
