"""A status a network plugin's handler passed through from a call of its own does not eject its replica.

tests/plugins/nested_net.py (plugbay.serve in network mode, one replica over mTLS) answers UNAVAILABLE
because its own backend is down, marked plugbay-handler-status (core/transport/handlerfail.py): the replica
answered, so the pool counts the call as an answer, more of them in a row than
OutlierPolicy.consecutive_failures. The same UNAVAILABLE unmarked (the replica's own failure: the
handler aborts) ejects it. A stream's failure reached the pool without its trailers (a status rebuilt
from its code and details), so a marked stream counted as the replica's failure and ejected it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import AsyncRemoteClient, OutlierPolicy, RemoteClient, RemoteConfig
from plugbay.core.protocol.handlerstatus import HANDLER_STATUS, handler_status
import plugbay.network.pool as pool_module
import plugbay.network.pooltls as pooltls_module
from tests import netcerts
from tests.resilience_util import wait_until
from tests.test_network_broker import HANDSHAKE, CounterReplica, host_tls

sys.path.insert(0, str(Path(__file__).resolve().parent / "plugins"))
from nested_net import NAME, SERVICE, NestedPlugin  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "plugins" / "nested_net.py"
OUTLIER = OutlierPolicy(consecutive_failures=3)
CALLS = 6  # failed calls in a row: twice consecutive_failures


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


@pytest.fixture
def replica(tmp_path: Path, certs: netcerts.CertSet, request: pytest.FixtureRequest) -> Iterator[CounterReplica]:
    marked = getattr(request, "param", True)
    rep = CounterReplica(tmp_path / "a", certs, script=SCRIPT, extra={"NESTED_UNMARKED": "0" if marked else "1"})
    yield rep
    code, err = rep.stop()
    assert code == 0, err[-2000:]
    rep.tmp.rmdir()


def _config(rep: CounterReplica, certs: netcerts.CertSet) -> RemoteConfig:
    return RemoteConfig(target=f"static:///{rep.address}", handshake=HANDSHAKE, plugins={NAME: NestedPlugin()},
                        tls=host_tls(certs), name=NAME, start_timeout=20, call_timeout=30, outlier=OUTLIER)


def _unavailable(error: BaseException, marked: bool) -> None:
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAVAILABLE, error
    trailers = getattr(error, "trailing_metadata", None)  # unmarked, the host tells it as its own failure
    assert ((HANDLER_STATUS, "1") in tuple(trailers() or () if trailers else ())) == marked, error


def _settled(metrics: Any) -> Any:
    """The endpoint's metrics once every call's outcome reached the pool (a stream's comes after its end)."""
    assert wait_until(lambda: all(e["inflight"] == 0 for e in metrics()["endpoints"].values()), 30), metrics()
    (endpoint,) = metrics()["endpoints"].values()
    return endpoint


def _sync_calls(channel: grpc.Channel, method: str, marked: bool) -> None:
    for _ in range(CALLS):
        with pytest.raises(grpc.RpcError) as info:
            if method == "Unary":
                channel.unary_unary(f"/{SERVICE}/Unary")(b"")
            else:
                call = channel.unary_stream(f"/{SERVICE}/Stream")(b"")
                assert next(call) == b"first"
                next(call)
        _unavailable(info.value, marked)


@pytest.mark.parametrize("method", ["Unary", "Stream"])
def test_a_handlers_nested_status_does_not_eject_its_replica(replica: CounterReplica, certs: netcerts.CertSet,
                                                             method: str) -> None:
    with RemoteClient(_config(replica, certs)) as client:
        _sync_calls(client.dispense(NAME), method, marked=True)
        endpoint = _settled(client.pool.metrics)
        assert endpoint["ejected"] is False and endpoint["ejections"] == 0 and endpoint["failures"] == 0, endpoint


def test_the_pool_reads_a_calls_mark_once(replica: CounterReplica, certs: netcerts.CertSet,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # EndpointPool.done() read a marked call's trailers to count its outcome, then PoolTLS.tls_answered() read
    # them again (and derived the code again) to tell whether the plugin answered
    reads: list[BaseException] = []

    def read(error: BaseException) -> bool:
        reads.append(error)
        return handler_status(error)

    for module in (pool_module, pooltls_module):  # where each reads it (pooltls no longer does)
        monkeypatch.setattr(module, "handler_status", read, raising=False)
    with RemoteClient(_config(replica, certs)) as client:
        _sync_calls(client.dispense(NAME), "Unary", marked=True)
        endpoint = _settled(client.pool.metrics)
    assert endpoint["ejections"] == 0 and endpoint["failures"] == 0, endpoint
    marked = [error for error in reads if handler_status(error)]
    assert len({id(error) for error in marked}) == CALLS and len(marked) == CALLS, marked


@pytest.mark.parametrize("replica", [False], indirect=True)
@pytest.mark.parametrize("method", ["Unary", "Stream"])
def test_the_same_status_unmarked_ejects_it(replica: CounterReplica, certs: netcerts.CertSet, method: str) -> None:
    with RemoteClient(_config(replica, certs)) as client:
        _sync_calls(client.dispense(NAME), method, marked=False)
        endpoint = _settled(client.pool.metrics)
        assert endpoint["ejections"] == 1 and endpoint["failures"] >= OUTLIER.consecutive_failures, endpoint


@pytest.mark.parametrize("method", ["Unary", "Stream"])
def test_an_async_hosts_nested_status_does_not_eject_the_replica(replica: CounterReplica, certs: netcerts.CertSet,
                                                                 method: str) -> None:
    async def main() -> Any:
        async with AsyncRemoteClient(_config(replica, certs)) as client:
            channel = await client.dispense(NAME)
            for _ in range(CALLS):
                with pytest.raises(grpc.RpcError) as info:
                    if method == "Unary":
                        await channel.unary_unary(f"/{SERVICE}/Unary")(b"")
                    else:
                        call = channel.unary_stream(f"/{SERVICE}/Stream")(b"")
                        assert await call.read() == b"first"
                        await call.read()
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
            for _ in range(300):
                if all(e["inflight"] == 0 for e in client.remote_client.pool.metrics()["endpoints"].values()):
                    break
                await asyncio.sleep(0.1)
            return _settled(client.remote_client.pool.metrics)

    loop = asyncio.new_event_loop()
    try:
        endpoint = loop.run_until_complete(main())
    finally:
        loop.close()
    assert endpoint["ejected"] is False and endpoint["ejections"] == 0 and endpoint["failures"] == 0, endpoint
