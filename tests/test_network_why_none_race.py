"""The endpoints' states a brokered dispense() reports when it finds none are read under the pool's lock:
read without it (as remote.py did) while discovery changed the endpoints, the dict changed size during
iteration and dispense() raised that RuntimeError instead of its NoEndpointsError. Real pools whose
endpoints are 127.0.0.1 ports nothing listens on."""

from __future__ import annotations

import socket
import threading
import time

from plugbay.network.pool import EndpointPool
from plugbay.network.resolver import Endpoint
from tests.test_network_tls_renewal import _Steered

_ROUNDS = 100_000  # the race showed within about 15,000 reads
_SECONDS = 30.0


def test_why_none_reads_the_endpoints_while_discovery_changes_them() -> None:
    with socket.socket() as held:  # a port nothing listens on (bound, never listening: refuses)
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        many = [Endpoint("tcp", f"127.0.{i}.1:{port}") for i in range(1, 41)]
        # health checks far apart: the endpoints stay as discovery left them
        pool = EndpointPool(_Steered(many), insecure=True, health_interval=30.0, health_timeout=1.0, name="race")
        stop = threading.Event()
        failed: list[BaseException] = []

        def change() -> None:  # discovery: one endpoint leaves and comes back, again and again
            report = pool._resolver.report  # type: ignore[attr-defined]
            while not stop.is_set():
                try:
                    report(many[:-1])
                    report(many)
                except BaseException as exc:  # noqa: BLE001 (reported by the test)
                    failed.append(exc)
                    return

        try:
            pool.start()
            changer = threading.Thread(target=change, name="test-discovery")
            changer.start()
            try:
                end = time.monotonic() + _SECONDS
                for _ in range(_ROUNDS):
                    if time.monotonic() >= end or failed:
                        break
                    assert "127.0.1.1" in pool.why_none()
            finally:
                stop.set()
                changer.join(10)
            assert not changer.is_alive()
            assert not failed, failed
        finally:
            pool.close()
