"""What docs/host-side.md ("Sharing across threads") says may be shared by threads: one Client (its
dispense(), its stubs, calls through a RetryPolicy and a CircuitBreaker), one Supervisor and one
RemoteClient, each used by 8 threads at once against a real KV plugin: every thread gets the same
dispensed stub, and every Put is read back by its own thread's Get."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.net_util import Replica
from tests.test_network_pool import replicas  # noqa: F401 (a fixture)
from tests.thread_util import run_all

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402

from plugbay import (CircuitBreaker, Client, ClientConfig, RemoteClient, RemoteConfig, RetryPolicy,  # noqa: E402
                     Supervisor, install)

THREADS, CALLS = 8, 15
CONFIG = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                      cmd=[sys.executable, str(REPO / "examples" / "kv" / "plugin.py")])


def hammer(owner: Any) -> None:
    """THREADS threads, released together: each dispenses, then puts and reads back its own keys through
    the dispensed stub and through a raw stub of its own on the same channel."""
    start = threading.Barrier(THREADS)
    stubs: list[Any] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        try:
            start.wait(30)
            kv = owner.dispense(PLUGIN_NAME)
            raw = kv_pb2_grpc.KVStub(owner.channel)
            with lock:
                stubs.append(kv)
            for i in range(CALLS):
                kv.put(f"t{n}-{i}", f"{n}:{i}".encode())
                assert raw.Get(kv_pb2.GetRequest(key=f"t{n}-{i}"), timeout=30).value == f"{n}:{i}".encode()
                assert kv.get(f"t{n}-{i}") == f"{n}:{i}".encode()
        except BaseException as exc:  # reported below, on the test's thread
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,), name=f"plugbay-test-shared-{n}") for n in range(THREADS)]
    run_all(threads, 120)
    assert failures == []
    assert len(stubs) == THREADS and all(s is stubs[0] for s in stubs)  # dispense() made one stub


def test_one_client_with_retry_and_breaker(in_tmp: Path) -> None:
    with Client(CONFIG) as client:
        hammer(client)
        install(client, retry=RetryPolicy(all_idempotent=True), breaker=CircuitBreaker())
        hammer(client)


def test_one_supervisor(in_tmp: Path) -> None:
    with Supervisor(CONFIG, health_interval=0.5) as sup:
        hammer(sup)


def test_one_remote_client(replicas: Callable[..., Replica]) -> None:  # noqa: F811
    config = RemoteConfig(target=f"static:///{replicas().address}", handshake=HANDSHAKE,
                          plugins={PLUGIN_NAME: KVPlugin()}, insecure=True)
    with RemoteClient(config) as client:
        hammer(client)
