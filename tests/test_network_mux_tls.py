"""A TLS refusal met by a multiplexed client (one TLS connection carrying yamux per endpoint, made by
plugbay's relay) is a RemoteTLSError, as on plain gRPC, not a NoEndpointsError at the call's deadline.

The counter example served in network mode over mTLS; the client starts against it, then the replica
is restarted on the same port with certificates the host's files do not fit: a plugin certificate from
another CA, or a plugin that no longer trusts the host's certificate. Calls on a stub dispensed before
and a new dispense() both fail typed, in multiplexed and in plain gRPC mode alike."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import RemoteClient, RemoteTLSError
from tests import netcerts
from tests.net_util import connection_lost
from tests.ports import HeldPort
from tests.test_network_broker import PLUGIN_NAME, Adder, CounterReplica, counter_config, host_tls, wait_until


def _refusing_set(certs: netcerts.CertSet, folder: Path, case: str) -> netcerts.CertSet:
    other = netcerts.write_set(folder / "other")
    if case == "plugin certificate from another CA":
        return other
    # the plugin's own certificate is still good, but it now trusts another client CA
    moved = netcerts.CertSet(folder / "moved", certs.server_ca, other.client_ca, certs.client)
    moved.dir.mkdir()
    moved.cert_file.write_bytes(certs.cert_file.read_bytes())
    moved.key_file.write_bytes(certs.key_file.read_bytes())
    moved.client_ca_file.write_bytes(other.client_ca.cert_pem)
    return moved


def _refused_while_down(client: RemoteClient, listen: str) -> None:
    """Waits (bounded) until a dial to the stopped replica's address was refused: the health checks dial it."""
    channel = client.pool.member(f"tcp:{listen}").channel
    assert wait_until(lambda: channel.redial_refused_at is not None, 15.0), "no dial to the stopped replica refused"


@contextmanager
def _refused_after_start(tmp_path: Path, case: str, multiplexed: bool, refused_first: bool = False,
                         **config: Any) -> Iterator[tuple[RemoteClient, Any, str]]:
    """A RemoteClient started against a counter replica, and a stub dispensed from it (with a brokered Put
    made when multiplexed), after which the replica is restarted on its port with ``case``'s certificates
    (``refused_first``: once a dial to it was refused while it was down; multiplexed only)."""
    certs = netcerts.write_set(tmp_path / "tls")
    replicas = [CounterReplica(tmp_path / "a", certs)]
    listen = replicas[0].address  # where it comes back
    try:
        with RemoteClient(counter_config(replicas, host_tls(certs), health_timeout=0.5, brokered=multiplexed,
                                         **config)) as client:
            assert client.multiplexed is multiplexed
            stub = client.dispense(PLUGIN_NAME)
            if multiplexed:
                stub.put("n", 1, Adder())
            replicas[0].stop()
            down = HeldPort(port=int(listen.rpartition(":")[2]))  # refusing while it is down: nothing else takes it
            try:
                if refused_first:
                    _refused_while_down(client, listen)
            finally:
                down.release()
            replicas.append(CounterReplica(tmp_path / "b", _refusing_set(certs, tmp_path, case), listen=listen))
            yield client, stub, listen
    finally:
        for replica in replicas:
            replica.stop()
            shutil.rmtree(replica.tmp, ignore_errors=True)


@pytest.mark.parametrize("multiplexed", [True, False], ids=["multiplexed", "plain"])
@pytest.mark.parametrize("case, expected", [
    ("plugin certificate from another CA", "the plugin's certificate is not signed by the CA given"),
    ("plugin no longer trusts the host", "failed: the plugin refused the"),
])
def test_a_tls_refusal_after_start_is_a_remote_tls_error(tmp_path: Path, multiplexed: bool, case: str,
                                                         expected: str) -> None:
    with _refused_after_start(tmp_path, case, multiplexed, call_timeout=10.0, health_interval=0.2) as (
            client, stub, listen):
        with pytest.raises(RemoteTLSError) as err:
            stub.get("n")
        assert f"TLS with remote plugin 'counter' at tcp:{listen} failed" in str(err.value)
        if multiplexed or case != "plugin certificate from another CA":  # gRPC names it otherwise
            assert expected in str(err.value)
        with pytest.raises(RemoteTLSError):
            client.dispense(PLUGIN_NAME).get("n")


def test_a_pinned_call_after_a_refused_dial_meets_the_restarted_replicas_tls_refusal(tmp_path: Path) -> None:
    """A brokered stub's replica restarted on its address with certificates the host refuses; while it was down, a
    dial to its address was refused. A call made once it is back met that old refusal and failed
    PinnedEndpointGoneError ("nothing listens there now", the final CI's two failures, where the health checks'
    dial came in the gap by chance); a refusal from before the call says nothing of the address now, so the call
    dials again and meets the TLS refusal (RemoteTLSError), as without the gap."""
    with _refused_after_start(tmp_path, "plugin no longer trusts the host", True, refused_first=True,
                              call_timeout=10.0, health_interval=0.2) as (_, stub, listen):
        with pytest.raises(RemoteTLSError) as err:
            stub.get("n")
        assert f"TLS with remote plugin 'counter' at tcp:{listen} failed" in str(err.value)


def test_a_pinned_stub_reaches_its_replica_restarted_on_its_address(tmp_path: Path) -> None:
    """The same gap with the replica back with good certificates: the pinned stub's plain call is served by the
    restarted replica (its new session), not failed as gone because a dial was refused while it was down."""
    certs = netcerts.write_set(tmp_path / "tls")
    replicas = [CounterReplica(tmp_path / "a", certs)]
    listen = replicas[0].address  # where it comes back
    try:
        with RemoteClient(counter_config(replicas, host_tls(certs), health_timeout=0.5, brokered=True,
                                         call_timeout=10.0, health_interval=0.2)) as client:
            stub = client.dispense(PLUGIN_NAME)
            stub.put("n", 1, Adder())
            replicas[0].stop()
            down = HeldPort(port=int(listen.rpartition(":")[2]))  # refusing while it is down: nothing else takes it
            try:
                _refused_while_down(client, listen)
            finally:
                down.release()
            replicas.append(CounterReplica(tmp_path / "a", certs, listen=listen))  # the same folder: its kv_n
            assert stub.get("n") == 1
    finally:
        for replica in replicas:
            replica.stop()
            shutil.rmtree(replica.tmp, ignore_errors=True)


def test_a_dispense_waiting_for_a_session_ends_at_the_pools_tls_verdict(tmp_path: Path) -> None:
    """A multiplexed dispense() made right after a call met the plugin's TLS refusal, before the pool's health
    check had marked the endpoint, waited the whole call_timeout for a session that could not come and ended
    BrokerError ("did not come up"): its wait looked at session refusals only. It now ends at the health
    check's TLS verdict, as RemoteTLSError (a slow health interval makes the order certain)."""
    with _refused_after_start(tmp_path, "plugin no longer trusts the host", True, call_timeout=30.0,
                              health_interval=3.0) as (client, stub, _):
        with pytest.raises(RemoteTLSError):
            stub.get("n")
        with pytest.raises(RemoteTLSError) as err:
            client.dispense(PLUGIN_NAME).get("n")
        assert "failed: the plugin refused the" in str(err.value)



@contextmanager
def _beside_a_good_one(tmp_path: Path, case: str, multiplexed: bool,
                       call_timeout: float = 10.0) -> Iterator[tuple[RemoteClient, Any, Any]]:
    """A RemoteClient started against a replica with ``case``'s certificates and a good one, once the good
    one answered a call."""
    certs = netcerts.write_set(tmp_path / "tls")
    bad = CounterReplica(tmp_path / "bad", _refusing_set(certs, tmp_path, case))
    good = CounterReplica(tmp_path / "good", certs)
    try:
        with RemoteClient(counter_config([bad, good], host_tls(certs), health_interval=0.2, health_timeout=0.5,
                                         brokered=multiplexed, call_timeout=call_timeout)) as client:
            assert client.multiplexed is multiplexed
            with pytest.raises(grpc.RpcError) as missing:  # the good one answers
                client.dispense(PLUGIN_NAME).get("n")
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            yield client, bad, good
    finally:
        for replica in (bad, good):
            replica.stop()
            shutil.rmtree(replica.tmp, ignore_errors=True)


REFUSALS = pytest.mark.parametrize("case, expected", [
    ("plugin certificate from another CA", "the plugin's certificate is not signed by the CA given"),
    ("plugin no longer trusts the host", "the plugin refused the"),
])


@pytest.mark.parametrize("multiplexed", [True, False], ids=["multiplexed", "plain"])
@REFUSALS
def test_a_replica_failing_tls_beside_a_good_one_is_named_in_its_health_detail(
        tmp_path: Path, multiplexed: bool, case: str, expected: str, caplog: pytest.LogCaptureFixture) -> None:
    """Such a replica was only logged at INFO; its health detail showed gRPC's words alone and, multiplexed
    (where gRPC sees only the relay's close), blamed "a proxy whose backend is down". Multiplexed, the
    start's plain pool and the multiplexed one each warned of it, and gRPC's words named the relay's
    private socket (unix:/tmp/plugbay-mux-.../main.sock) for the endpoint. Its "health bad" INFO line,
    multiplexed, came before the TLS probe's verdict and named a cause not known yet: the handshake cut short
    by a proxy whose backend is down."""
    caplog.set_level(logging.INFO, logger="plugbay.network")
    with _beside_a_good_one(tmp_path, case, multiplexed) as (client, bad, _):
        def detail() -> str:
            return str(client.metrics()["endpoints"][f"tcp:{bad.address}"]["health_detail"])
        wait_until(lambda: "TLS failure" in detail(), 15.0)
        assert "TLS failure: " in detail() and "cut short" not in detail(), detail()
        assert "check NetworkTLS(cert_file, key_file, ca_file, server_name)" in detail()
        assert "plugbay-mux-" not in detail(), detail()
        if multiplexed or case != "plugin certificate from another CA":  # gRPC names it otherwise
            assert expected in detail(), detail()
        warned = [r.getMessage() for r in caplog.records if f"endpoint tcp:{bad.address} fails TLS" in r.getMessage()]
        assert len(warned) == 1, warned
        went_bad = [line for line in (r.getMessage() for r in caplog.records)
                    if f"endpoint tcp:{bad.address} health bad" in line]
        assert went_bad and not any("cut short" in line for line in went_bad), went_bad


@pytest.mark.parametrize("multiplexed", [True, False], ids=["multiplexed", "plain"])
@REFUSALS
def test_once_the_good_replica_is_gone_calls_end_with_the_tls_failure(tmp_path: Path, multiplexed: bool, case: str,
                                                                      expected: str) -> None:
    """With the good replica down, dispense() (multiplexed) and calls waited out call_timeout and ended
    NoEndpointsError (gRPC's raw words) or BrokerError "did not come up": the pool's TLS verdict ended calls
    only when every endpoint had failed TLS, and a dead one never does. The wait still runs to its deadline
    (the good one may come back: tests/test_network_tls_beside.py), and then ends with the RemoteTLSError,
    which says why the good one could not take the call."""
    with _beside_a_good_one(tmp_path, case, multiplexed, call_timeout=3.0) as (client, bad, good):
        good.stop()
        connection_lost(client, f"tcp:{good.address}")  # else the call may break in flight (not sent again)
        with pytest.raises(RemoteTLSError) as err:
            client.dispense(PLUGIN_NAME).get("n")
        assert f"TLS with remote plugin 'counter' at tcp:{bad.address} failed" in str(err.value)
        assert f"No other endpoint could take it: tcp:{good.address} unhealthy" in str(err.value)
        assert "plugbay-mux-" not in str(err.value), err.value  # gRPC's words name the endpoint, not the relay
        if multiplexed or case != "plugin certificate from another CA":
            assert expected in str(err.value)
