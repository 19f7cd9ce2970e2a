"""A busy network plugin is not an outlier: calls its handler gate refuses do not eject it.

The counter example in network mode runs at most 32 handlers at once (ServeConfig.max_workers's network default); a
Put holds its slot while the host's brokered AddHelper runs. Helpers that wait until released fill
every slot, so each further Put is refused RESOURCE_EXHAUSTED at once, whatever the timing: more
refusals in a row than OutlierPolicy.consecutive_failures. The plugin is healthy and merely busy, so
its endpoint stays in (an ejection would shift all of a burst's calls onto the other replicas for
base_ejection_time, and a lone one would show as ejected with its multiplier raised).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from plugbay import AsyncRemoteClient, OutlierPolicy
from plugbay.core.plugin.slotwait import NETWORK_MAX_WORKERS
from tests import netcerts
from tests.resilience_util import wait_until
from tests.test_network_broker import PLUGIN_NAME, CounterReplica, counter_config, host_tls, remote

OUTLIER = OutlierPolicy(consecutive_failures=3)
OVER = 8  # Puts past the plugin's limit: each refused, well past consecutive_failures


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[tuple[CounterReplica, netcerts.CertSet]]:
    certs = netcerts.write_set(tmp_path / "tls")
    rep = CounterReplica(tmp_path / "a", certs)
    yield rep, certs
    code, err = rep.stop()
    assert code == 0, err[-2000:]
    rep.tmp.rmdir()


def _not_ejected(metrics: dict[str, object]) -> None:
    assert metrics["ejected"] == 0 and metrics["ejections"] == 0, metrics
    (endpoint,) = metrics["endpoints"].values()  # type: ignore[attr-defined]
    assert endpoint["ejected"] is False and endpoint["failures"] == 0, endpoint


def test_calls_refused_by_a_busy_plugin_do_not_eject_its_endpoint(
        replica: tuple[CounterReplica, netcerts.CertSet]) -> None:
    rep, certs = replica
    release = threading.Event()
    entered: list[int] = []
    lock = threading.Lock()

    class HeldAdder:
        def sum(self, a: int, b: int) -> int:
            with lock:
                entered.append(b)
            release.wait(60)
            return a + b

    with remote([rep], host_tls(certs), outlier=OUTLIER, call_timeout=90) as client:
        stub = client.dispense(PLUGIN_NAME)
        errors: list[BaseException] = []

        def put(i: int) -> None:
            try:
                stub.put(f"k{i}", 1, HeldAdder())
            except BaseException as exc:  # reported below
                errors.append(exc)

        held = [threading.Thread(target=put, args=(i,)) for i in range(NETWORK_MAX_WORKERS)]
        try:
            for t in held:
                t.start()
            assert wait_until(lambda: len(entered) == NETWORK_MAX_WORKERS, 60), len(entered)
            for i in range(OVER):  # every slot is held: refused at once
                with pytest.raises(grpc.RpcError) as refused:
                    stub.put(f"over{i}", 1, HeldAdder())
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
                assert "ServeConfig.max_workers" in str(refused.value.details())
            _not_ejected(client.pool.metrics())
        finally:
            release.set()
            for t in held:
                t.join(60)
        assert not errors, errors
        stub.put("after", 1, HeldAdder())
        assert rep.value("after") == '{"Value":1}'
        _not_ejected(client.pool.metrics())


def test_async_calls_refused_by_a_busy_plugin_do_not_eject_its_endpoint(
        replica: tuple[CounterReplica, netcerts.CertSet]) -> None:
    rep, certs = replica

    async def main() -> None:
        release = asyncio.Event()
        entered: list[int] = []

        class HeldAdder:
            async def sum(self, a: int, b: int) -> int:
                entered.append(b)
                await release.wait()
                return a + b

        async with AsyncRemoteClient(counter_config([rep], host_tls(certs), outlier=OUTLIER,
                                                    call_timeout=90)) as client:
            stub = await client.dispense(PLUGIN_NAME)
            held = [asyncio.ensure_future(stub.put(f"k{i}", 1, HeldAdder())) for i in range(NETWORK_MAX_WORKERS)]
            try:
                for _ in range(600):
                    if len(entered) == NETWORK_MAX_WORKERS:
                        break
                    await asyncio.sleep(0.1)
                assert len(entered) == NETWORK_MAX_WORKERS
                for i in range(OVER):
                    with pytest.raises(grpc.RpcError) as refused:
                        await stub.put(f"over{i}", 1, HeldAdder())
                    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
                _not_ejected(client.remote_client.pool.metrics())
            finally:
                release.set()
                results = await asyncio.gather(*held, return_exceptions=True)
            assert not [r for r in results if isinstance(r, BaseException)], results
            await stub.put("after", 1, HeldAdder())
            _not_ejected(client.remote_client.pool.metrics())

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert rep.value("after") == '{"Value":1}'
