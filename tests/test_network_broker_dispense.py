"""dispense() on a brokering RemoteClient whose endpoint lost its session: the wait for the session
is the client's call_timeout (it was a fixed 10 s), and a close() from another thread ends it (it
waited that out under the client's lock). Real counter replicas over mTLS on 127.0.0.1."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from plugbay import RemoteClient
from plugbay.errors import BrokerError, ClientStateError, NoEndpointsError
from plugbay.network.muxconn import MuxEndpoint
from tests import netcerts
from tests.test_network_broker import PLUGIN_NAME, CounterReplica, host_tls, remote


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


def _lose_the_session(tmp_path: Path, certs: netcerts.CertSet, **kw: object) -> tuple[RemoteClient, MuxEndpoint]:
    rep = CounterReplica(tmp_path / "r", certs)
    # health checks far apart: the endpoint stays the one to pin to while its session is gone
    client = remote([rep], host_tls(certs), health_interval=60, **kw)
    client.start()
    client.dispense(PLUGIN_NAME)
    key = client.pool.any_key()
    assert key is not None
    endpoint = client.pool.channel_of(key)
    assert isinstance(endpoint, MuxEndpoint)
    rep.proc.kill()
    rep.stop()
    shutil.rmtree(rep.tmp)  # kill -9 leaves its sockets
    deadline = time.monotonic() + 20
    while endpoint._broker is not None and endpoint._broker.lost_reason is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return client, endpoint


def _dispenser(client: RemoteClient) -> tuple[threading.Thread, list[BaseException]]:
    """A thread (not started) that calls client.dispense(), and the list that gets what it raised."""
    failed: list[BaseException] = []

    def dispense() -> None:
        try:
            client.dispense(PLUGIN_NAME)
        except BaseException as exc:  # noqa: BLE001 (what the waiting dispense() ended with is the point)
            failed.append(exc)

    return threading.Thread(target=dispense, name="test-dispense"), failed


def test_the_wait_for_a_lost_session_is_the_call_timeout(tmp_path: Path, certs: netcerts.CertSet) -> None:
    client, _ = _lose_the_session(tmp_path, certs, call_timeout=1.0)
    try:
        with pytest.raises(BrokerError, match=r"did not come up within 1s \(the client's call_timeout\).*"
                                              r"dispense\(\) again"):
            client.dispense(PLUGIN_NAME)
    finally:
        client.close()


def test_close_from_another_thread_ends_a_dispense_waiting_for_the_session(tmp_path: Path,
                                                                           certs: netcerts.CertSet) -> None:
    client, endpoint = _lose_the_session(tmp_path, certs, call_timeout=None, start_timeout=60)
    waiter, failed = _dispenser(client)
    waiter.start()
    try:
        # until dispense() waits for the session (start_timeout: 60 s); a loaded machine took over 5 s once
        deadline = time.monotonic() + 50
        while not getattr(endpoint, "_waits", None) and waiter.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert getattr(endpoint, "_waits", None), f"dispense() never waited for the session (it ended: {failed})"
    finally:
        client.close()  # a failed check too: the client's threads and folders would outlive the test
    waiter.join(30)  # hang detection only
    assert not waiter.is_alive()
    assert len(failed) == 1 and isinstance(failed[0], BrokerError), failed
    assert "was closed (its client was closed" in str(failed[0]) and "dispense() again on an open client" \
        in str(failed[0])


def _killed_and_marked_down(rep: CounterReplica, client: RemoteClient) -> None:
    """Kills the replica and waits (20 s at most) for the client's health checks to mark it down."""
    rep.proc.kill()
    rep.stop()
    deadline = time.monotonic() + 20
    while client.metrics()["available"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.metrics()["available"] == 0, "the killed replica was never marked down"


def test_close_from_another_thread_ends_a_dispense_waiting_for_an_endpoint(tmp_path: Path,
                                                                           certs: netcerts.CertSet) -> None:
    """With no endpoint available (the only replica killed and marked down), dispense() waits for one as a
    call does; a close() from another thread ends that wait at once with the closed client's refusal."""
    rep = CounterReplica(tmp_path / "r", certs)
    client = remote([rep], host_tls(certs), health_interval=0.2, call_timeout=60)
    waiter, failed = _dispenser(client)
    try:
        client.start()
        client.dispense(PLUGIN_NAME)
        _killed_and_marked_down(rep, client)
        waiter.start()
        time.sleep(1.0)  # well into the wait for an endpoint (call_timeout: 60 s)
        assert waiter.is_alive(), f"dispense() did not wait for an endpoint (it ended: {failed})"
    finally:
        asked = time.monotonic()
        client.close()  # a failed check too: the client's threads and folders would outlive the test
        if waiter.ident is not None:
            waiter.join(30)  # hang detection only
        took = time.monotonic() - asked
        shutil.rmtree(rep.tmp, ignore_errors=True)
    assert not waiter.is_alive()
    assert took < 20, f"close() left dispense() waiting {took:.1f}s"
    assert len(failed) == 1 and isinstance(failed[0], ClientStateError), failed
    assert "was closed (close() or kill())" in str(failed[0]) and "RemoteClient" in str(failed[0]), failed[0]


def test_a_dispense_that_finds_no_endpoint_says_each_ones_state(tmp_path: Path, certs: netcerts.CertSet) -> None:
    """It said only "no endpoint was available to pin a brokered stub to", where a call's NoEndpointsError
    says what each endpoint's state is (here: the killed replica, refused)."""
    rep = CounterReplica(tmp_path / "r", certs)
    client = remote([rep], host_tls(certs), health_interval=0.2, call_timeout=0.5)
    try:
        client.start()
        client.dispense(PLUGIN_NAME)
        key = client.pool.any_key()
        _killed_and_marked_down(rep, client)
        with pytest.raises(NoEndpointsError, match=rf"pin a brokered stub to within 0.5s \({key} unhealthy \("):
            client.dispense(PLUGIN_NAME)
    finally:
        client.close()
        shutil.rmtree(rep.tmp, ignore_errors=True)
