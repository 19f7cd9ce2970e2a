"""A KV plugin (plugbay.serve) with fault switches, for the resilience tests.

It serves the KV example's service (cookie BASIC_PLUGIN=hello, plugin kv_grpc)
with an in-memory store, plus control keys:

Put("__fail__", b"N")     the next N Gets of other keys abort with UNAVAILABLE
Put("__fail_text__", b"T") those aborts say T (default "injected failure")
Put("__slow__", b"N")     the next N Gets of other keys sleep 10 s first (a stuck call)
Put("__health__", b"S")   set health service "plugin" to S (SERVING | NOT_SERVING)
(a file "stall_health" in the cwd: each health Check waits 2 s first)
Get("__calls__")          how many Gets of other keys arrived (failed ones included)
Get("__pid__")            this process's pid
Get("__tag__")            the RESILIENCE_TAG environment variable
Get("__sleep__")          sleep 1.5 s, then answer b"slept"
Get("__raise__")          the handler raises (grpcio answers UNKNOWN: an application error); counted
                          in __calls__ as other keys are
Get("__die__")            log "dying now" (the host's stderr tail), exit(9) in the middle of the call
Get("__print_then_die__") log "logged last words", print "printed last words" to sys.stderr (the GRPCStdio
                          stream once serve() began), exit(9) in the middle of the call
Get("__die_chatty__")     answer, then log 6 quick lines and "last words" and exit(9), 0.1 s later
Get("__die_once__")       the same, unless the file "died" exists in the cwd (it is created first);
                          then answer b"survived"
Put("__apply_then_die__", b"V")  write V to the file "applied" in the cwd (the Put took effect), then exit(9)
                          before answering: a call the plugin ran that the host gets no answer to
Get of a missing key      NOT_FOUND (an application error)

RESILIENCE_NO_WATCH=1     health Watch answers UNIMPLEMENTED (as a plugin with a Check-only health server)
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "kv"))
sys.path.insert(0, str(REPO / "src"))

import grpc  # noqa: E402
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME  # noqa: E402
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402

import plugbay.core.plugin.server as server_module  # noqa: E402
from plugbay.core.broker.broker import GRPCBroker  # noqa: E402
from plugbay.core.plugin.health import NOT_SERVING, SERVING, HealthServicer  # noqa: E402
from plugbay.core.broker.plugin import GRPCPlugin  # noqa: E402

_HEALTH: list[HealthServicer] = []


def _die_chatty() -> None:
    time.sleep(0.1)
    log = logging.getLogger("resilience_kv")  # fd 2 is the GRPCStdio stream: log records are the host's stderr
    for line in [f"chatter {i}" for i in range(6)] + ["last words"]:
        log.warning(line)
        for handler in logging.getLogger().handlers:
            handler.flush()
        time.sleep(0.001)
    os._exit(9)


class _RecordingHealth(HealthServicer):
    """serve()'s own health servicer, remembered so that Put("__health__") can steer it."""

    def __init__(self) -> None:
        super().__init__()
        _HEALTH.append(self)

    def Check(self, request, context):  # type: ignore[no-untyped-def]
        if os.path.exists("stall_health"):  # an overloaded plugin: its health checks wait (its calls do not)
            time.sleep(2)
        return super().Check(request, context)

    def Watch(self, request, context):  # type: ignore[no-untyped-def]
        if os.environ.get("RESILIENCE_NO_WATCH") == "1":
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        return super().Watch(request, context)


server_module.HealthServicer = _RecordingHealth  # type: ignore[misc]


class FaultyKV(kv_pb2_grpc.KVServicer):
    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.fail = 0
        self.slow = 0
        self.calls = 0
        self.fail_text = "injected failure"

    def Get(self, request: kv_pb2.GetRequest, context: grpc.ServicerContext) -> kv_pb2.GetResponse:
        key = request.key
        if key == "__calls__":
            return kv_pb2.GetResponse(value=str(self.calls).encode())
        if key == "__pid__":
            return kv_pb2.GetResponse(value=str(os.getpid()).encode())
        if key == "__tag__":
            return kv_pb2.GetResponse(value=os.environ.get("RESILIENCE_TAG", "").encode())
        if key == "__sleep__":
            time.sleep(1.5)
            return kv_pb2.GetResponse(value=b"slept")
        if key == "__die__":
            logging.getLogger("resilience_kv").warning("dying now")  # a log record: to the host's stderr
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(9)
        if key == "__print_then_die__":
            logging.getLogger("resilience_kv").warning("logged last words")
            for handler in logging.getLogger().handlers:
                handler.flush()
            print("printed last words", file=sys.stderr, flush=True)
            os._exit(9)
        if key == "__die_chatty__":  # quick lines make the host's pipe follower rest: the exit comes in the rest
            threading.Thread(target=_die_chatty, daemon=True).start()
            return kv_pb2.GetResponse(value=b"dying soon")
        if key == "__die_once__":
            marker = Path("died")
            if not marker.exists():
                marker.write_text("x")
                os._exit(9)
            return kv_pb2.GetResponse(value=b"survived")
        with self.lock:
            self.calls += 1
            fail = self.fail > 0
            slow = not fail and self.slow > 0
            self.fail -= fail
            self.slow -= slow
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, self.fail_text)
        if slow:
            deadline = time.monotonic() + 10
            while context.is_active() and time.monotonic() < deadline:
                time.sleep(0.05)
        if key == "__raise__":
            raise ValueError("the handler failed")
        if key not in self.store:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no key {key!r}")
        return kv_pb2.GetResponse(value=self.store[key])

    def Put(self, request: kv_pb2.PutRequest, context: grpc.ServicerContext) -> kv_pb2.Empty:
        if request.key == "__fail__":
            self.fail = int(request.value)
        elif request.key == "__fail_text__":
            self.fail_text = request.value.decode()
        elif request.key == "__slow__":
            self.slow = int(request.value)
        elif request.key == "__apply_then_die__":
            Path("applied").write_bytes(request.value)
            os._exit(9)
        elif request.key == "__health__":
            status = SERVING if request.value == b"SERVING" else NOT_SERVING
            for health in _HEALTH:
                health.set_status("plugin", status)
        else:
            self.store[request.key] = request.value
        return kv_pb2.Empty()


class FaultyKVPlugin(GRPCPlugin):
    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        kv_pb2_grpc.add_KVServicer_to_server(FaultyKV(), server)

    def grpc_client(self, broker: GRPCBroker, channel: grpc.Channel) -> object:
        raise NotImplementedError("the host uses examples/kv's KVPlugin")


def main() -> None:
    server_module.serve(server_module.ServeConfig(handshake=HANDSHAKE,
                                                  plugins={PLUGIN_NAME: FaultyKVPlugin()}))


if __name__ == "__main__":
    main()
