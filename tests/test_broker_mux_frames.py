"""What a multiplexed brokered callback's HTTP/2 connection carries: no BDP probe pings.

Every frame on a brokered connection that rides a yamux stream costs a Python
bridge hand-off on both sides, and a callback's connection carries few: gRPC's
BDP probe (a PING after the first data each way, and the answers) was 3 of
its ~13 frames. The dialer's channel and the brokered server run without it
(grpcoptions.BRIDGED_OPTIONS). Read off the host's yamux session: the bytes
of every stream the plugin opened (its brokered dials), parsed as HTTP/2.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "counter"
sys.path.insert(0, str(EXAMPLE))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402

from plugbay import Client, ClientConfig  # noqa: E402
from plugbay.core.transport import yamux  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PING, GOAWAY = 0, 1, 6, 7


class Adder:
    def sum(self, a: int, b: int) -> int:
        return a + b


def frame_types(raw: bytes) -> list[int]:
    """The HTTP/2 frame types in ``raw`` (a client's bytes start with the preface)."""
    if raw.startswith(PREFACE):
        raw = raw[len(PREFACE):]
    types = []
    while len(raw) >= 9:
        length = int.from_bytes(raw[:3], "big")
        types.append(raw[3])
        raw = raw[9 + length:]
    return types


@pytest.mark.usefixtures("in_tmp")
def test_a_multiplexed_callback_connection_carries_no_bdp_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    received: dict[int, bytearray] = defaultdict(bytearray)  # plugin -> host, per stream the plugin opened
    sent: dict[int, bytearray] = defaultdict(bytearray)  # host -> plugin
    stream_frame, send = yamux.Session._stream_frame, yamux.Session._send

    def spy_in(self: Any, sid: int, flags: int, payload: Any, delta: int | None) -> str | None:
        if sid % 2 == 0 and isinstance(payload, (bytes, bytearray, memoryview)):
            received[sid] += payload
        return stream_frame(self, sid, flags, payload, delta)

    def spy_out(self: Any, kind: int, flags: int, sid: int, length: int, payload: Any = None,
                still: Any = None) -> None:
        if sid % 2 == 0 and kind == yamux.DATA and payload is not None:
            sent[sid] += payload[:length]
        send(self, kind, flags, sid, length, payload, still)

    monkeypatch.setattr(yamux.Session, "_stream_frame", spy_in)
    monkeypatch.setattr(yamux.Session, "_send", spy_out)
    cfg = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                       cmd=[sys.executable, str(EXAMPLE / "plugin.py")], multiplex_broker=True)
    with Client(cfg) as client:
        counter = client.dispense(PLUGIN_NAME)
        for _ in range(3):
            counter.put("k", 2, Adder())
        assert counter.get("k") == 6
    assert len(received) == 3  # one brokered stream per Put
    for sid in received:
        assert received[sid].startswith(PREFACE)
        up, down = frame_types(bytes(received[sid])), frame_types(bytes(sent[sid]))
        # the Sum call went both ways on it ...
        assert HEADERS in up and DATA in up and HEADERS in down and DATA in down, (sid, up, down)
        # ... and no PING: neither side probed the bandwidth (a server that stops sends one with its
        # GOAWAY, to learn which streams the client started: gRPC's graceful shutdown, not a probe)
        before_goaway = down[:down.index(GOAWAY)] if GOAWAY in down else down
        assert PING not in up and PING not in before_goaway, (sid, up, down)
