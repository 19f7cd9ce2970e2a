"""An AutoMTLS Client of a Go plugin dials its streams' second connection during start(), not under the first calls.

Through the OpenSSL relay that connection (the broker stream and GRPCStdio, on grpc.aio) costs a full
P-521 handshake on the shared loop and in the plugin: start() makes it beside the first and returns once
it is up, the streams ride it when they begin, and close/kill give it back however far the Client got.

Real parts: the go-plugin 1.0.1 Go KV plugin (tests/go/kv_plugin) with AutoMTLS as a child process, its
connections counted in /proc.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from plugbay import Client, ClientConfig
from plugbay.core.host import streams
from plugbay.core.transport import aioloop, ioloop
from plugbay.core.transport.secure import Redial
from tests.gobuild import go_program_or_skip
from tests.thread_util import plugbay_threads, wait_for

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "kv"))
import kv_plugin_def as kv  # noqa: E402


@pytest.fixture(autouse=True)
def _no_kick_but_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only start() (or a call) may begin the streams: their timer after the spawn waits a minute."""
    monkeypatch.setattr(streams, "DEFER", 60.0)
    monkeypatch.chdir(tmp_path)  # the Go KV plugin writes kv_<key> files in its cwd


def plugin_connections(client: Client) -> int:
    """The connections the plugin process holds: its sockets but its listener."""
    pid = client.runner.pid  # type: ignore[attr-defined]
    fds = f"/proc/{pid}/fd"
    sockets = [f for f in os.listdir(fds) if os.readlink(f"{fds}/{f}").startswith("socket:")]
    return len(sockets) - 1


def dial_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    dials: list[str] = []
    dial = Redial.aio_channel
    monkeypatch.setattr(Redial, "aio_channel", lambda self: (dials.append(self.target), dial(self))[1])
    return dials


def kv_config(**source: object) -> ClientConfig:
    return ClientConfig(handshake=kv.HANDSHAKE, plugins={kv.PLUGIN_NAME: kv.KVPlugin()}, auto_mtls=True,
                        **source)  # type: ignore[arg-type]


def test_the_second_connection_is_up_when_start_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    dials = dial_counter(monkeypatch)
    with Client(kv_config(cmd=[str(go_program_or_skip("kv_plugin"))])) as client:
        assert client.connection_mode == "relay-tls"
        assert plugin_connections(client) == 2 and len(dials) == 1  # the calls' and the streams'
        store = client.dispense(kv.PLUGIN_NAME)
        store.put("k", b"v")
        assert store.get("k") == b"v"
        wait_for(lambda: client.broker.call is not None, "the broker stream, begun by the first call")
        assert plugin_connections(client) == 2 and len(dials) == 1  # the streams rode it: no third
    assert plugbay_threads() == [] and not aioloop.shared().running
    assert ioloop.shared().registrations == 0


def test_a_client_killed_before_its_streams_began_gives_the_connection_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dials = dial_counter(monkeypatch)
    client = Client(kv_config(cmd=[str(go_program_or_skip("kv_plugin"))]))
    try:
        client.start()
        assert len(dials) == 1 and plugin_connections(client) == 2
    finally:
        client.kill()
    # the early hold was the last user of the shared loop and of grpc.aio's channel: both gone
    assert plugbay_threads() == [] and not aioloop.shared().running
    assert ioloop.shared().registrations == 0


def test_a_reattached_client_closed_before_its_streams_began_gives_the_connection_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dials = dial_counter(monkeypatch)
    owner = Client(kv_config(cmd=[str(go_program_or_skip("kv_plugin"))]))
    try:
        owner.start()
        other = Client(kv_config(reattach=owner.reattach_config()))
        other.start()
        assert len(dials) == 2 and plugin_connections(owner) == 4  # each Client's two
        other.close()
        wait_for(lambda: plugin_connections(owner) == 2, "the reattached Client's connections to close")
    finally:
        owner.kill()
    # a hold the closed Client kept would keep the shared loop running now
    assert plugbay_threads() == [] and not aioloop.shared().running
    assert ioloop.shared().registrations == 0
