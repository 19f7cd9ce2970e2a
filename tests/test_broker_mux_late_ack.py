"""A knock's ack that no dial takes is kept about as long as go-plugin keeps it (its timeoutWait:
5 s), not until a later dial of the same id takes it for its own.

The sequence is go-plugin's too: a dial of id X gives up on its ack, a second dial of X takes the
late ack (as go-plugin's does), and the ack of the second knock is left with nobody waiting for
it. Kept for good, a third dial of X much later took it at once and opened its stream before its
knock reached the plugin, which routed that stream by no knock: to its main gRPC server. Real
processes: the probe plugin, stopped (SIGSTOP) so that the first ack comes late, and the
third knock and the stream after it reach it together.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from plugbay import Client, ClientConfig
from plugbay.errors import BrokerTimeoutError
from tests.test_broker import check

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402

PROBE = ROOT / "tests" / "plugins" / "probe.py"
GO_KEEPS = 5.0  # grpc_broker.go: timeoutWait drops an ack nobody took after this
SERVING = 1


def _reaches_only_the_brokered_server(channel: grpc.Channel) -> None:
    assert check(channel, "") == SERVING
    with pytest.raises(grpc.RpcError) as err:  # the brokered server serves health only, the main one KV too
        kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key="k"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_an_ack_left_by_a_late_ack_is_not_a_later_dials(in_tmp: Path) -> None:
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                 cmd=[sys.executable, str(PROBE)], multiplex_broker=True))
    with client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("announce", b"")
        sid = int(kv.get("announced"))
        client.broker.open_stream()
        pid = int(client.runner.id)
        second: list[object] = []

        def dial_again() -> None:
            try:
                second.append(client.broker.dial(sid, timeout=10))
            except BaseException as exc:
                second.append(exc)

        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(BrokerTimeoutError):
                client.broker.dial(sid, timeout=0.5)  # its ack comes late
            dialer = threading.Thread(target=dial_again, name="plugbay-test-dial-again")
            dialer.start()
            time.sleep(0.3)  # its knock is out too
        finally:
            os.kill(pid, signal.SIGCONT)
        dialer.join(15)
        assert len(second) == 1 and isinstance(second[0], grpc.Channel), second
        _reaches_only_the_brokered_server(second[0])
        time.sleep(GO_KEEPS + 1.0)  # go-plugin has dropped the second knock's ack by now

        third: list[object] = []
        os.kill(pid, signal.SIGSTOP)  # the plugin reads the third knock, and any stream after it, at once
        try:
            dialer = threading.Thread(target=lambda: third.append(client.broker.dial(sid, timeout=10)),
                                      name="plugbay-test-dial-third")
            dialer.start()
            time.sleep(0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        dialer.join(15)
        assert len(third) == 1 and isinstance(third[0], grpc.Channel), third
        _reaches_only_the_brokered_server(third[0])
