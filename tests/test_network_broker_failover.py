"""A brokering RemoteClient over two replicas, one of which just went away (kill -9, or a graceful
stop): dispense() pins its stub to the replica that still serves, at once. It waited the client's
whole call_timeout for the lost replica's session while the other one served (round robin still
chose the lost one until a health check said so). Real counter replicas over mTLS on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netcerts
from tests.net_util import connection_lost
from tests.test_network_broker import PLUGIN_NAME, Adder, CounterReplica, host_tls, killable_pair, remote

CALL_TIMEOUT = 20.0


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


@pytest.fixture
def replicas(tmp_path: Path, certs: netcerts.CertSet) -> Iterator[list[CounterReplica]]:
    yield from killable_pair(tmp_path, certs)


def _both_healthy(client: object) -> None:
    """Until the pool holds both replicas healthy: a first health check slow on a loaded machine marks one
    unhealthy, and both dispense() calls then pin to the other (the next check is 60 s later)."""
    endpoints: dict[str, dict[str, object]] = {}
    for _ in range(1500):  # a hang guard only: about 150 s, past the next check
        endpoints = client.metrics()["endpoints"]  # type: ignore[attr-defined]
        if len(endpoints) == 2 and all(e["healthy"] for e in endpoints.values()):
            return
        time.sleep(0.1)
    raise AssertionError(f"the replicas did not both become healthy: {endpoints}")


def went_away(client: object, lost: CounterReplica, how: str) -> None:
    """``lost`` goes away (``how``: kill -9, or a graceful stop that must exit 0), and ``client`` has seen its
    connection to it end (else a dispense() may pin to its session, still up)."""
    if how == "kill":
        lost.proc.kill()
        lost.proc.wait()
    else:
        code, err = lost.stop()
        assert code == 0, err[-2000:]
    connection_lost(client, f"tcp:{lost.address}")


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_dispense_after_a_replica_went_away_pins_to_the_other_at_once(replicas: list[CounterReplica],
                                                                      certs: netcerts.CertSet, how: str) -> None:
    lost, serving = replicas
    # health checks far apart: only the lost connection can tell the client that the replica is gone
    with remote(replicas, host_tls(certs), multiplex=True, call_timeout=CALL_TIMEOUT, health_interval=60) as client:
        _both_healthy(client)
        for stub in (client.dispense(PLUGIN_NAME), client.dispense(PLUGIN_NAME)):  # one on each replica
            stub.put("n", 1, Adder())
        assert lost.value("n") == serving.value("n") == '{"Value":1}'
        went_away(client, lost, how)
        for expected in (2, 3):  # round robin's turn of the lost replica comes in these two
            began = time.monotonic()
            stub = client.dispense(PLUGIN_NAME)
            stub.put("n", 1, Adder())
            assert stub.get("n") == expected
            # not a speed target: below this, the lost replica's session was not waited for
            assert time.monotonic() - began < CALL_TIMEOUT / 2
        assert serving.value("n") == '{"Value":3}'
