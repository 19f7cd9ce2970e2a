"""A socket or folder this side cannot make for a brokered connection is a BrokerError saying what to do.

accept_and_serve and dial make unix sockets (a server's, a TLS relay's, a multiplexed dial's local
listener) in a private folder made in the temp dir; a missing temp dir or one whose path leaves no
room for a socket name raised a plain OSError ("AF_UNIX path too long") out of the broker. Where
the broker closed meanwhile (removing that folder), the error is BrokerClosedError instead.

Real parts: the go-plugin 1.0.1 Go counter plugin (accept_and_serve behind its Put), real gRPC servers
and OpenSSL relays (P-521 certificates, go-plugin's own) for the dials.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from plugbay import Client, ClientConfig
from plugbay.core.broker import spares
from plugbay.core.protocol.tls import generate_cert
from plugbay.core.transport import muxbridge, secure
from plugbay.errors import BrokerClosedError, BrokerError
from tests.gobuild import go_program_or_skip
from tests.test_broker import _close_pair, _tls_pair, register
from tests.test_broker_mux import close_mux_pair, make_mux_pair

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "counter"))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402

ADVICE = "set TMPDIR to an existing, writable folder with a short path"


@pytest.fixture()
def folder() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="bke", dir="/tmp")  # short: unix socket paths stay under 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Helper:
    def sum(self, a: int, b: int) -> int:
        return a + b


@pytest.mark.go
def test_accept_and_serve_without_a_temp_dir_raises_a_broker_error(
        folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = str(go_program_or_skip("counter_plugin"))
    if spares._SPARES is not None:
        pytest.skip("another broker of this process holds the spare servers (a spare would be served)")
    monkeypatch.chdir(folder)  # the Go counter plugin keeps its values in files named kv_<key>
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                             cmd=[plugin])) as client:
        counter = client.dispense(PLUGIN_NAME)
        with monkeypatch.context() as m:
            m.setattr(tempfile, "tempdir", os.path.join(folder, "gone"))  # removed by a temp cleaner, say
            with pytest.raises(BrokerError, match=ADVICE) as raised:
                counter.put("k", 1, Helper())
        assert isinstance(raised.value.__cause__, FileNotFoundError)
        counter.put("k", 1, Helper())  # the temp dir is back: the broker still serves
        assert counter.get("k") == 1


def test_dial_through_a_tls_relay_in_a_too_long_temp_dir_raises_a_broker_error(
        folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pair = _tls_pair(folder, generate_cert(ec.SECP521R1()), generate_cert(ec.SECP521R1()))
    try:
        sid = pair.host.next_id()
        pair.host.accept_and_serve(sid, register("h"))
        long = os.path.join(folder, "x" * 90)  # the relay's socket path would be over 107 bytes
        os.mkdir(long)
        monkeypatch.setattr(tempfile, "tempdir", long)  # where the dialing side's private folder goes
        with pytest.raises(BrokerError, match=ADVICE) as raised:
            pair.plugin.dial(sid)
        assert isinstance(raised.value.__cause__, OSError)
        assert pair.plugin._channels == []
    finally:
        _close_pair(pair)


def test_multiplexed_dial_without_a_temp_dir_raises_a_broker_error(
        folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pair = make_mux_pair("unix")
    try:
        sid = pair.plugin.next_id()
        pair.plugin.accept_and_serve(sid, register("p"))
        monkeypatch.setattr(tempfile, "tempdir", os.path.join(folder, "gone"))
        with pytest.raises(BrokerError, match=ADVICE):
            pair.host.dial(sid)
    finally:
        monkeypatch.undo()
        close_mux_pair(pair)


def test_a_dial_through_a_tls_relay_whose_broker_closes_meanwhile_says_it_closed(
        folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # close() removed the private folder the relay's socket was being made in: not a TMPDIR problem
    pair = _tls_pair(folder, generate_cert(ec.SECP521R1()), generate_cert(ec.SECP521R1()))
    try:
        sid = pair.host.next_id()
        pair.host.accept_and_serve(sid, register("h"))
        context = secure.client_context

        def closing_context(*args: Any) -> Any:
            pair.plugin.close()
            return context(*args)

        monkeypatch.setattr(secure, "client_context", closing_context)
        with pytest.raises(BrokerClosedError, match="the broker closed while it would dial"):
            pair.plugin.dial(sid)
    finally:
        _close_pair(pair)


def test_a_multiplexed_dial_whose_broker_closes_meanwhile_says_it_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = make_mux_pair("unix")
    try:
        sid = pair.plugin.next_id()
        pair.plugin.accept_and_serve(sid, register("p"))
        bridge = muxbridge.StreamBridge

        def closing_bridge(*args: Any, **kwargs: Any) -> Any:
            pair.host.close()
            return bridge(*args, **kwargs)

        monkeypatch.setattr(muxbridge, "StreamBridge", closing_bridge)
        with pytest.raises(BrokerClosedError, match="the broker closed while it would dial"):
            pair.host.dial(sid)
    finally:
        monkeypatch.undo()
        close_mux_pair(pair)
