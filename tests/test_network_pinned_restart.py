"""A Supervisor over a brokering RemoteClient restarts (its plugin's replica was killed with SIGKILL and came
back): a stub pinned by the old client's dispense() cannot reach the restarted plugin (its endpoint's broker
session went with that client), so its calls fail typed saying to dispense again from the Supervisor's
current client; the client's own advice (make a new RemoteClient) was wrong for a Supervisor's user.
Real counter replicas over mTLS on 127.0.0.1."""

from __future__ import annotations

import shutil
import signal
import socket
from pathlib import Path

import pytest

from plugbay import RestartPolicy, Supervisor
from plugbay.core.host.channel import ClientClosed
from tests import netcerts
from tests.test_network_broker import PLUGIN_NAME, Adder, CounterReplica, counter_config, host_tls, wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _end(rep: CounterReplica) -> None:
    rep.stop()
    shutil.rmtree(rep.tmp, ignore_errors=True)


def test_a_stub_pinned_by_the_old_clients_dispense_is_told_to_dispense_again_after_a_restart(
        tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    listen = f"127.0.0.1:{_free_port()}"
    reps = [CounterReplica(tmp_path / "r", certs, listen=listen)]
    sup = Supervisor(counter_config(reps, host_tls(certs), call_timeout=5.0), health_interval=0.3,
                     unhealthy_grace=1.0, restart=RestartPolicy(max_restarts=3, window=120, initial_backoff=0.05))
    try:
        sup.start()
        assert sup.client.multiplexed  # type: ignore[attr-defined]
        kv = sup.client.dispense(PLUGIN_NAME)
        kv.put("n", 1, Adder())
        reps[0].proc.send_signal(signal.SIGKILL)
        # the Supervisor judges it gone (health) and restarts: its new client waits for an endpoint
        assert wait_until(lambda: sup.restarts >= 1, 30), list(sup.events)
        reps.append(CounterReplica(tmp_path / "r", certs, listen=listen))  # the same address, the same files
        assert sup.wait_running(30), list(sup.events)
        with pytest.raises(ClientClosed, match="dispense it again from the Supervisor's current client") as err:
            kv.get("n")
        assert err.value.sent is False and "make a new RemoteClient" not in str(err.value).lower()
        again = sup.client.dispense(PLUGIN_NAME)  # as the error says: this one reaches the restarted plugin
        again.put("n", 2, Adder())
        assert again.get("n") == 3
    finally:
        sup.stop()
        for rep in reps:
            _end(rep)
