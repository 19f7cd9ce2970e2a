"""Property-based fuzzing of the parsers that read untrusted input: only typed errors come out.

Handshake lines (a plugin's stdout), reattach JSON (a file or env var), broker
ConnInfo messages (the peer's broker stream) and yamux frames (the peer's
bytes on the multiplexed connection). Runs are bounded and derandomized so CI
sees the same examples every time.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.host.reattach import ReattachConfig
from plugbay.core.protocol.handshake import parse_handshake_line
from plugbay.core.transport import yamux
from plugbay.errors import PlugbayError

BOUNDED = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- handshake lines ------------------------------------------------------------------

_FIELD = st.one_of(
    st.sampled_from(["", "1", "2", "0", "-1", "tcp", "unix", "grpc", "netrpc", "true", "false", "t", "x",
                     "127.0.0.1:1234", "/tmp/plugin.sock", " 1 ", "1e3", "\u0661", "99999999999999999999"]),
    st.text(max_size=40),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", min_size=51,
            max_size=300),
)


@st.composite
def handshake_lines(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(st.text(max_size=400))
    fields = draw(st.lists(_FIELD, min_size=0, max_size=9))
    return "|".join(fields) + draw(st.sampled_from(["", "\n", "\r\n", " "]))


@BOUNDED
@given(handshake_lines())
def test_handshake_parser_raises_only_typed_errors(line: str) -> None:
    try:
        info = parse_handshake_line(line)
    except PlugbayError as exc:
        assert str(exc)  # says what went wrong
        return
    assert info.network in ("tcp", "unix") and info.address and info.core_version == 1


# --- reattach JSON --------------------------------------------------------------------

_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                       st.floats(allow_nan=False), st.text(max_size=30))
_JSON = st.recursive(_JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=12), inner, max_size=5)),
                     max_leaves=20)
_GOOD_HANDSHAKE = {"core_version": 1, "app_version": 1, "network": "unix", "address": "/tmp/x.sock",
                   "protocol": "grpc", "server_cert": None, "multiplex": False}


@st.composite
def reattach_texts(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.text(max_size=300))
    if kind == 1:
        return json.dumps(draw(_JSON))
    # near-valid: a real shape with fields replaced by arbitrary JSON
    hs: dict[str, Any] = dict(_GOOD_HANDSHAKE)
    for key in draw(st.lists(st.sampled_from(sorted(hs)), max_size=4)):
        hs[key] = draw(_JSON)
    if draw(st.booleans()):
        hs["server_cert"] = draw(st.one_of(st.text(max_size=60),
                                           st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())))
    doc: dict[str, Any] = {"protocol": "grpc", "version": 1, "handshake": hs,
                           "runner": {"kind": "ProcessRunner", "pid": 1, "id": "1", "start_time": "0"},
                           "client_cert": None, "name": "kv"}
    for key in draw(st.lists(st.sampled_from(sorted(doc)), max_size=3)):
        doc[key] = draw(_JSON)
    if kind == 3:
        doc["client_cert"] = draw(st.one_of(_JSON, st.fixed_dictionaries(
            {"cert_pem": st.text(max_size=40), "key_pem": _JSON})))
    return json.dumps(doc)


@BOUNDED
@given(reattach_texts())
def test_reattach_json_raises_only_typed_errors(text: str) -> None:
    try:
        cfg = ReattachConfig.from_json(text)
    except PlugbayError as exc:
        assert "reattach" in str(exc).lower() or str(exc)
        return
    # what it accepted round-trips
    assert ReattachConfig.from_json(cfg.to_json()).handshake == cfg.handshake


def test_deeply_nested_reattach_json_is_a_typed_error() -> None:
    with pytest.raises(PlugbayError, match="nested too deeply"):
        ReattachConfig.from_json("[" * 100_000 + "]" * 100_000)


# --- broker ConnInfo ------------------------------------------------------------------

_CONNINFO = st.builds(
    pb.ConnInfo,
    service_id=st.integers(0, 2**32 - 1),
    network=st.one_of(st.sampled_from(["", "tcp", "unix", "udp", "tcp6", "unix\x00"]), st.text(max_size=12)),
    address=st.one_of(st.sampled_from(["", "../../etc/passwd", "/", "\x00", "a" * 5000]), st.text(max_size=60)),
    knock=st.one_of(st.none(), st.builds(pb.ConnInfo.Knock, knock=st.booleans(), ack=st.booleans(),
                                         error=st.text(max_size=30))),
)


@BOUNDED
@given(st.lists(_CONNINFO, min_size=1, max_size=8))
def test_broker_receive_takes_arbitrary_conninfo_and_dial_fails_typed(msgs: list[pb.ConnInfo]) -> None:
    broker = GRPCBroker(BrokerTransport(), "host", dial_timeout=0.005)
    try:
        for msg in msgs:
            broker.receive(msg)  # the stream's reader calls exactly this per message
        for msg in msgs:
            if msg.network in ("unix", "tcp"):
                continue  # a well-formed announcement would be dialed lazily; nothing to check offline
            try:
                broker.dial(msg.service_id, timeout=0.005).close()
            except PlugbayError as exc:
                assert str(exc)
    finally:
        broker.close()


# --- yamux frames ---------------------------------------------------------------------

_HDR = yamux._HDR


@st.composite
def frame_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))
    out = bytearray()
    for _ in range(draw(st.integers(1, 8))):
        version = draw(st.sampled_from([0, 0, 0, 1, 255]))
        kind = draw(st.sampled_from([0, 1, 2, 3, 4, 200]))
        flags = draw(st.integers(0, 0xFFFF))
        sid = draw(st.sampled_from([0, 1, 2, 3, 4, 2**32 - 1]))
        payload = draw(st.binary(max_size=64))
        length = draw(st.sampled_from([len(payload), len(payload), 0, 2**31, 2**32 - 1,
                                       yamux.WINDOW + 1]))
        out += _HDR.pack(version, kind, flags, sid, length) + (payload if kind == 0 else b"")
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return bytes(out)


def _feed(data: bytes, errors: list[BaseException]) -> None:
    ours, theirs = socket.socketpair()
    streams: list[yamux.Stream] = []
    session = yamux.Session(ours, client=False, on_stream=streams.append, name="fuzz-mux")
    try:
        theirs.settimeout(2)
        try:
            theirs.sendall(data)
            theirs.shutdown(socket.SHUT_WR)  # the peer is done: the session must end by itself
        except OSError:
            pass  # the session already closed on a protocol error
        deadline = time.monotonic() + 5
        while not session.closed and time.monotonic() < deadline:
            try:
                theirs.recv(65536)  # drain our ACKs and PING answers so the session never blocks on them
            except (TimeoutError, OSError):
                break
        assert session.closed, "the yamux session did not end after the peer's bytes stopped"
        assert session.close_reason
        # closed is set first, then the streams are ended (on the reader thread, which ends after)
        session._reader.join(5)
        assert not session._reader.is_alive(), "the yamux reader thread did not end with the session"
        for stream in streams:
            # ended (reset, or closed by the peer) so a read cannot wait; what arrived before the end
            # may still be read, as Go's yamux gives it, then EOF
            assert stream._reset or stream._remote_fin, "a stream of the ended session would hang its reader"
            assert any(stream.read(1 << 20) == b"" for _ in range(64)), "a stream of the ended session never ended"
    finally:
        session.close()
        theirs.close()
    session._reader.join(5)
    assert not session._reader.is_alive()
    assert not errors, f"an exception escaped the yamux reader thread: {errors[0]!r}"


@BOUNDED
@given(frame_bytes())
def test_yamux_session_closes_cleanly_on_arbitrary_frames(data: bytes) -> None:
    errors: list[BaseException] = []
    old = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value) if args.exc_value else None
    try:
        _feed(data, errors)
    finally:
        threading.excepthook = old


def test_yamux_data_beyond_the_receive_window_closes_the_session() -> None:
    """A peer that ignores flow control must not make us buffer without bound (yamux: window exceeded)."""
    ours, theirs = socket.socketpair()
    streams: list[yamux.Stream] = []
    session = yamux.Session(ours, client=False, on_stream=streams.append, name="fuzz-window")
    try:
        theirs.sendall(_HDR.pack(0, yamux.WINDOW_UPDATE, yamux.SYN, 1, 0))
        size = yamux.WINDOW * 4
        theirs.settimeout(10)
        try:
            theirs.sendall(_HDR.pack(0, yamux.DATA, 0, 1, size) + b"x" * size)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at the frame's header, as hashicorp/yamux does: the rest of the body meets a closed socket
        deadline = time.monotonic() + 5
        while not session.closed and time.monotonic() < deadline:
            time.sleep(0.05)
        buffered = len(streams[0]._buf) if streams else 0
        assert session.closed and session.close_reason, (
            f"defect: a stream buffered {buffered} bytes against a {yamux.WINDOW}-byte receive window and the"
            " session stayed open; hashicorp/yamux closes the session (receive window exceeded)")
    finally:
        session.close()
        theirs.close()
