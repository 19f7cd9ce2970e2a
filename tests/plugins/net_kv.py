"""A KV plugin served on the network, as a network-mode plugin is: a test replica for the host side.

It serves, on NET_KV_LISTEN (HOST:PORT, port 0 picks one; or unix:PATH), the fault-switch KV
service of tests/plugins/resilience_kv.py, grpc.health.v1 (service "plugin"
SERVING), plugbay.network.v1.Discovery and a client-streaming
plugbay.test.Stream/Count (answers "PID:N:m1,m2" for the N request messages it
got), over mTLS when NET_KV_CERT, NET_KV_KEY and NET_KV_CA name files (client
certificates signed by the CA are required), else in plaintext. NET_KV_VERSIONS ("1" by default, e.g. "2,3") is
what Discovery offers; NET_KV_DISCOVERY=0 leaves Discovery out (an unmodified
go-plugin plugin). It prints "LISTENING HOST:PORT" once serving and stops on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests" / "plugins"))
sys.path.insert(0, str(REPO / "examples" / "kv"))

import grpc  # noqa: E402
from kvproto import kv_pb2_grpc  # noqa: E402
from resilience_kv import FaultyKV, _HEALTH  # noqa: E402

from plugbay._proto.plugbay import discovery_pb2, discovery_pb2_grpc  # noqa: E402
from plugbay.core.plugin.health import SERVING, HealthServicer, add_to_server  # noqa: E402


class Discovery(discovery_pb2_grpc.DiscoveryServicer):
    def __init__(self, versions: list[int]) -> None:
        self.versions = versions

    def Describe(self, request: discovery_pb2.DescribeRequest,
                 context: grpc.ServicerContext) -> discovery_pb2.DescribeResponse:
        return discovery_pb2.DescribeResponse(
            core_protocol=1, protocol="grpc", multiplex=False, server="plugbay-test/net_kv",
            versions=[discovery_pb2.VersionedPluginSet(version=v, plugins=["kv_grpc"]) for v in self.versions])


def count(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    got = [m.decode() for m in requests]
    return f"{os.getpid()}:{len(got)}:{','.join(got)}".encode()


def main() -> None:
    listen = os.environ.get("NET_KV_LISTEN", "127.0.0.1:0")
    server = grpc.server(ThreadPoolExecutor(max_workers=8, thread_name_prefix="net-kv"))
    kv_pb2_grpc.add_KVServicer_to_server(FaultyKV(), server)
    health = HealthServicer()
    health.set_status("plugin", SERVING)
    _HEALTH.append(health)  # Put("__health__", ...) steers it
    add_to_server(health, server)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "plugbay.test.Stream", {"Count": grpc.stream_unary_rpc_method_handler(count)})])
    if os.environ.get("NET_KV_DISCOVERY", "1") != "0":
        versions = [int(v) for v in os.environ.get("NET_KV_VERSIONS", "1").split(",")]
        discovery_pb2_grpc.add_DiscoveryServicer_to_server(Discovery(versions), server)  # type: ignore[no-untyped-call]
    cert, key, ca = (os.environ.get(f"NET_KV_{x}") for x in ("CERT", "KEY", "CA"))
    if cert and key and ca:
        creds = grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())],
                                            root_certificates=Path(ca).read_bytes(), require_client_auth=True)
        port = server.add_secure_port(listen, creds)
    else:
        port = server.add_insecure_port(listen)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    if listen.startswith("unix:"):
        print(f"LISTENING {listen}", flush=True)
    else:
        print(f"LISTENING {listen.rpartition(':')[0]}:{port}", flush=True)
    while not stop.wait(0.5):
        pass
    health.close()
    server.stop(0.5).wait(3)


if __name__ == "__main__":
    main()
