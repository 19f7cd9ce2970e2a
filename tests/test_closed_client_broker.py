"""A brokered stub used after its client was closed: docs/network-host.md says a closed client's calls raise
ClientClosed, "brokered (pinned) ones ... included", but the counter stub's put(), which serves its helper
on the broker first, raised the broker's BrokerClosedError. The error is now both (BrokerClientClosed):
either except clause catches it, and it says the client was closed and what to make. A launched Client
(the counter example as a process) and a RemoteClient of the counter served in network mode over mTLS.
"""

from __future__ import annotations

import pickle
import sys
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from plugbay import Client, ClientConfig, RemoteClient
from plugbay.core.host.callerrors import ClientClosed
from plugbay.errors import BrokerClosedError, ClientStateError
from tests import netcerts
from tests.test_network_broker import COUNTER, PLUGIN_NAME, Adder, CounterPlugin, CounterReplica, counter_config, \
    host_tls
from counter_plugin_def import HANDSHAKE  # noqa: E402,I001 (test_network_broker puts the example on sys.path)


def _closed_put(stub: object, kind: str) -> None:
    with pytest.raises(ClientClosed) as caught:
        stub.put("n", 1, Adder())  # type: ignore[attr-defined]
    error = caught.value
    assert isinstance(error, BrokerClosedError) and isinstance(error, ClientStateError)
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.CANCELLED and error.sent is False
    assert f"the {kind} of plugin" in str(error) and "was closed" in str(error), error
    assert f"make a new {kind}" in str(error), error
    copy = pickle.loads(pickle.dumps(error))  # the family pickles (its __init__ takes more than ``args``)
    assert type(copy) is type(error) and str(copy) == str(error) and copy.sent is False
    assert copy.code() == grpc.StatusCode.CANCELLED and copy.details() == error.details()


def test_a_launched_clients_brokered_stub_after_its_kill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the counter plugin writes kv_<key> files where it runs
    cfg = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                       cmd=[sys.executable, str(COUNTER / "plugin.py")])
    client = Client(cfg)
    try:
        client.start()
        counter = client.dispense(PLUGIN_NAME)
        counter.put("n", 1, Adder())
    finally:
        client.kill()  # a launched Client's close() refuses to leave its plugin running: kill is its end
    _closed_put(counter, "Client")


def test_a_reattached_clients_brokered_stub_after_its_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # close() of a reattached Client leaves the plugin running: its broker said "make a new Client", which
    # starts a second plugin; it says, as its calls do, that the plugin runs on and to reattach a new Client
    monkeypatch.chdir(tmp_path)
    cfg = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                       cmd=[sys.executable, str(COUNTER / "plugin.py")])
    client = Client(cfg)
    try:
        client.start()
        reattached = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                                         reattach=client.reattach_config()))
        counter = reattached.dispense(PLUGIN_NAME)
        counter.put("n", 1, Adder())
        reattached.close()
        with pytest.raises(ClientClosed) as caught:
            counter.put("n", 1, Adder())
        error = caught.value
        assert isinstance(error, BrokerClosedError) and error.sent is False
        assert "the plugin runs on" in str(error) and "reattach a new Client" in str(error), error
        assert "make a new" not in str(error) and "kill()" not in str(error), error
    finally:
        client.kill()


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[tuple[CounterReplica, netcerts.CertSet]]:
    certs = netcerts.write_set(tmp_path / "tls")
    rep = CounterReplica(tmp_path / "a", certs)
    try:
        yield rep, certs
    finally:
        rep.stop()
        shutil.rmtree(rep.tmp, ignore_errors=True)  # the plugin's own TMPDIR


@pytest.mark.parametrize("how", ["kill", "close"])
def test_a_remote_clients_pinned_brokered_stub_after_its_close(
        replica: tuple[CounterReplica, netcerts.CertSet], how: str) -> None:
    rep, certs = replica
    client = RemoteClient(counter_config([rep], host_tls(certs), multiplex=True))
    try:
        client.start()
        counter = client.dispense(PLUGIN_NAME)
        counter.put("n", 1, Adder())
    finally:
        getattr(client, how)()
    _closed_put(counter, "RemoteClient")


def test_errors_made_of_a_grpc_failure_keep_its_code_when_pickled() -> None:
    """Their code() is the failed call's: a copy, which has no call, kept the stale default instead."""
    from grpc.aio import AioRpcError

    from plugbay.core.host.callerrors import BrokerTLSRefused, Unavailable

    failure = AioRpcError(grpc.StatusCode.UNAVAILABLE, details="x509: certificate is valid for localhost, not unused")
    errors = [Unavailable("the plugin is unavailable", failure), ClientClosed.by_kill("counter", failure),
              BrokerTLSRefused.of("counter", str(failure.details()), failure)]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error), copy
        assert copy.code() == error.code() == grpc.StatusCode.UNAVAILABLE, (type(error), copy.code())
        assert copy.details() == error.details() == failure.details(), copy.details()


def test_the_network_pool_and_circuit_errors_pickle_too() -> None:
    """They take more than ``args`` too: pickling raised "__init__() missing 2 required positional arguments"."""
    from plugbay.core.resilience.circuit import CircuitOpen
    from plugbay.errors import CircuitOpenError, NoEndpointsError, RemoteProtocolError, RemoteTLSError
    from plugbay.network.poolcalls import NoEndpoints, NotGRPCFailure, RemoteTLSFailure

    tls = RemoteTLSFailure("TLS with remote plugin 'kv' failed", grpc.StatusCode.UNAVAILABLE, "handshake failed")
    tls.at_deadline = True
    errors = [NoEndpoints("no endpoint took the call", grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"), tls,
              NotGRPCFailure("remote plugin 'kv' is no gRPC plugin", grpc.StatusCode.UNAVAILABLE, "Failed parsing")]
    for error, family in zip(errors, (NoEndpointsError, RemoteTLSError, RemoteProtocolError)):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and isinstance(copy, family) and str(copy) == str(error), copy
        assert (copy.code(), copy.details()) == (error.code(), error.details()), copy
    assert pickle.loads(pickle.dumps(tls)).at_deadline is True
    circuit = CircuitOpen("circuit 'kv' is open", "kv", 2.5, "UNAVAILABLE: down")
    copy = pickle.loads(pickle.dumps(circuit))
    assert isinstance(copy, CircuitOpenError) and str(copy) == str(circuit) and copy.code() == circuit.code()
    assert (copy.name, copy.retry_in, copy.last_failure) == ("kv", 2.5, "UNAVAILABLE: down")
