"""An announcement nobody dialed is kept about as long as go-plugin keeps it (grpc_broker.go's
timeoutWait: 5 s from its arrival), not for a minute.

Every host that attaches to a running plugin numbers its broker ids from 1 again, while the
plugin's broker, and what it was told, lives on. A host whose announcement for id 1 was never
dialed (it went away first) left it there; the next host serves id 1 elsewhere and, as
go-plugin's hosts do (``go broker.AcceptAndServe(id, ...)`` then the call), may announce it
just after the call that carries the id. The plugin's dial must wait for that announcement, not
take the gone host's and dial a socket nobody serves. Real processes: the example counter plugin
and three hosts attached to it over its socket.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from plugbay import Client, ClientConfig

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "counter"
sys.path.insert(0, str(EXAMPLE))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402
from counterproto import counter_pb2, counter_pb2_grpc  # noqa: E402

GO_KEEPS = 5.0  # grpc_broker.go: timeoutWait deletes an unclaimed ConnInfo after this


class _Adder(counter_pb2_grpc.AddHelperServicer):
    def __init__(self) -> None:
        self.calls = 0

    def Sum(self, request: counter_pb2.SumRequest, context: object) -> counter_pb2.SumResponse:
        self.calls += 1
        return counter_pb2.SumResponse(r=request.a + request.b)


def _attached(first: Client) -> Client:
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                                 reattach=first.reattach_config()))
    client.start()
    return client


def test_a_gone_hosts_unclaimed_announcement_is_not_dialed_by_the_next_host(in_tmp: Path) -> None:
    first = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                                cmd=[sys.executable, str(EXAMPLE / "plugin.py")]))
    try:
        first.start()
        gone = _attached(first)
        try:
            gone.broker.open_stream()
            sid = gone.broker.next_id()
            gone.broker.accept_and_serve(sid, lambda s: counter_pb2_grpc.add_AddHelperServicer_to_server(_Adder(), s))
            time.sleep(0.5)  # the plugin has it; this host goes before telling the plugin the id
        finally:
            gone.close()  # its brokered server and socket go with it
        time.sleep(GO_KEEPS + 1.0)

        later = _attached(first)
        try:
            later.broker.open_stream()
            time.sleep(0.5)  # the plugin's broker took this host's stream
            again = later.broker.next_id()
            assert again == sid  # a fresh broker numbers from 1 again
            adder = _Adder()

            def serve_late() -> None:  # go-plugin's host: `go AcceptAndServe(id, ...)`, then Put
                time.sleep(0.5)
                later.broker.accept_and_serve(
                    again, lambda s: counter_pb2_grpc.add_AddHelperServicer_to_server(adder, s))

            server = threading.Thread(target=serve_late, name="plugbay-test-serve-late")
            server.start()
            try:
                stub = counter_pb2_grpc.CounterStub(later.channel)
                stub.Put(counter_pb2.PutRequest(add_server=again, key="k", value=3), timeout=20)
            finally:
                server.join(10)
            assert adder.calls == 1
            assert stub.Get(counter_pb2.GetRequest(key="k"), timeout=10).value == 3
        finally:
            later.close()
    finally:
        first.kill()
