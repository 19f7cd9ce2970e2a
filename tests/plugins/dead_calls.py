"""Host program: calls every kind of RPC on a Client whose plugin was SIGKILLed.

Run as a subprocess by tests/test_dead_client_calls.py, so a crash inside grpcio
(SIGSEGV) fails the test instead of killing pytest. argv: iterations, "client" or
"supervisor". Prints one line per call ("kind: ErrorClass: message") and "ok".
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import grpc
REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "examples" / "streaming"))

from streaming_plugin_def import HANDSHAKE, PLUGIN_NAME, StreamerPlugin  # noqa: E402
from streamingproto import streaming_pb2  # noqa: E402

from plugbay import (  # noqa: E402
    Client,
    ClientConfig,
    ClientStateError,
    PluginDiedError,
    RestartBudgetExhaustedError,
    RestartPolicy,
    Supervisor,
)

PLUGIN = str(REPO / "examples" / "streaming" / "plugin.py")
EXPECTED = (PluginDiedError, ClientStateError, RestartBudgetExhaustedError)


def calls(stub: Any, channel: Any) -> dict[str, Any]:
    """Each kind of call, as a thunk that runs it to completion."""
    req = streaming_pb2.StatsRequest()
    chunks = [streaming_pb2.Chunk(seq=1, data=b"x")]
    # The streaming service has no stream-unary method: any name builds the call object.
    stream_unary = channel.stream_unary("/streaming.Streamer/Upload")
    return {
        "unary": lambda: stub.GetStats(req, timeout=5),
        "with_call": lambda: stub.GetStats.with_call(req, timeout=5),
        "future": lambda: stub.GetStats.future(req, timeout=5).result(),
        "unary_stream": lambda: list(stub.Generate(streaming_pb2.GenerateRequest(count=2, size=1),
                                                   timeout=5)),
        "stream_unary": lambda: stream_unary(iter([b"x"]), timeout=5),
        "stream_stream": lambda: list(stub.Echo(iter(chunks), timeout=5)),
        "stream_unary_future": lambda: stream_unary.future(iter([b"x"]), timeout=5).result(),
    }


def one_round(i: int, supervised: bool) -> None:
    cfg = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: StreamerPlugin()},
                       cmd=[sys.executable, PLUGIN], start_timeout=30)
    owner: Any
    if supervised:
        owner = Supervisor(cfg_factory(cfg), restart=RestartPolicy(max_restarts=0),
                           health_interval=None)
    else:
        owner = Client(cfg)
    with owner:
        streamer = owner.dispense(PLUGIN_NAME)
        streamer.stub.GetStats(streaming_pb2.StatsRequest(), timeout=10)  # one method in use
        client = owner.client if supervised else owner
        pid = int(client.runner.id)
        os.kill(pid, signal.SIGKILL)
        client.runner.wait(10)
        if i % 2:  # half the rounds: also let the exit watcher close the connection first
            deadline = time.monotonic() + 5
            while not client.exited and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)
        thunks = list(calls(streamer.stub, owner.channel).items())
        # a different first call each round
        order = thunks[i % len(thunks):] + thunks[:i % len(thunks)]
        for kind, thunk in order:
            try:
                thunk()
            except EXPECTED as exc:
                typed = next(cls for cls in EXPECTED if isinstance(exc, cls))
                print(f"{kind}: {typed.__name__}: {_rpc(exc)}: {exc}", flush=True)
            else:
                raise SystemExit(f"{kind}: a call on a dead plugin succeeded")
    if not supervised:  # and on a killed Client (the with block killed it)
        for kind, thunk in thunks:
            try:
                thunk()
            except EXPECTED as exc:  # the plugin died before kill(): PluginDiedError still
                typed = next(cls for cls in EXPECTED if isinstance(exc, cls))
                print(f"{kind}: {typed.__name__}: {_rpc(exc)}: {exc}", flush=True)
            else:
                raise SystemExit(f"{kind}: a call on a killed Client succeeded")


def _rpc(exc: BaseException) -> str:
    """rpc=CODE when the error is also a grpc.RpcError (every call failure should be), else not-rpc."""
    return f"rpc={exc.code().name}" if isinstance(exc, grpc.RpcError) else "not-rpc"


def cfg_factory(cfg: ClientConfig) -> Any:
    return lambda: cfg


def main() -> None:
    rounds, mode = int(sys.argv[1]), sys.argv[2]
    for i in itertools.islice(itertools.count(), rounds):
        one_round(i, mode == "supervisor")
    print("ok", flush=True)


if __name__ == "__main__":
    main()
