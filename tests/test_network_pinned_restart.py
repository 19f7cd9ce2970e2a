"""A Supervisor over a brokering RemoteClient restarts (its plugin's replica was killed with SIGKILL and came
back): a stub pinned by the old client's dispense() cannot reach the restarted plugin (its endpoint's broker
session went with that client), so its calls fail typed saying to dispense again from the Supervisor's
current client; the client's own advice (make a new RemoteClient) was wrong for a Supervisor's user. An asyncio
stub pinned by an AsyncRemoteClient's dispense() is told the same (it got the main channel's restart words, "later
calls go to the restarted plugin", which it never reaches), and once the Supervisor is stopped after the restart,
both are told that it was stopped (they got the restart's advice, to dispense again from a client no longer there).
Real counter replicas over mTLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from plugbay import AsyncRemoteClient, RemoteConfig, RestartPolicy, Supervisor
from plugbay.core.host.channel import ClientClosed
from plugbay.network.remote import RemoteClient
from tests import netcerts
from tests.ports import HeldPort
from tests.test_network_broker import PLUGIN_NAME, Adder, CounterReplica, counter_config, host_tls, wait_until


def _end(rep: CounterReplica) -> None:
    rep.stop()
    shutil.rmtree(rep.tmp, ignore_errors=True)


class _AsyncClients:
    """A Supervisor's config (a ClientMaker) whose every client is an AsyncRemoteClient's sync client, so that
    asyncio stubs can be pinned by the dispense() of the client the Supervisor runs."""

    def __init__(self, config: RemoteConfig) -> None:
        self.config, self.name = config, config.name
        self.made: list[AsyncRemoteClient] = []

    def make_client(self) -> RemoteClient:
        self.made.append(AsyncRemoteClient(self.config))
        return self.made[-1].remote_client


class _HeldRestart:
    """A Supervisor's config (a ClientMaker) that makes its first client at once and holds each restart's until
    ``release`` is set; ``entered`` says one is held."""

    def __init__(self) -> None:
        self.source: Any = None
        self.name: str | None = None
        self.calls = 0
        self.entered, self.release = threading.Event(), threading.Event()

    def make_client(self) -> RemoteClient:
        self.calls += 1
        if self.calls > 1:
            self.entered.set()
            self.release.wait(60)
        client: RemoteClient = self.source.make_client()
        return client


@contextmanager
def _restarted(tmp_path: Path, on_loop: bool,
               held: _HeldRestart | None = None) -> Iterator[tuple[Supervisor, Callable[[str], Any]]]:
    """A Supervisor restarted after its replica was SIGKILLed and came back on the same address, with a stub
    pinned by the old client's dispense() (an asyncio one when ``on_loop``) and ``get(key)``: that stub's call,
    made on the loop the asyncio stub was dispensed on. With ``held``, the restart is under way instead: its
    client is held by ``held`` (released when this ends), and the replica does not come back."""
    certs = netcerts.write_set(tmp_path / "tls")
    reps = [CounterReplica(tmp_path / "r", certs)]
    listen = reps[0].address  # where it comes back
    down: HeldPort | None = None
    config = counter_config(reps, host_tls(certs), call_timeout=5.0)
    maker = _AsyncClients(config)
    source: Any = maker if on_loop else config
    if held is not None:
        held.source, held.name, source = source, config.name, held
    sup = Supervisor(source, health_interval=0.3, unhealthy_grace=1.0,
                     restart=RestartPolicy(max_restarts=3, window=120, initial_backoff=0.05))
    loop = asyncio.new_event_loop()

    def run(work: Coroutine[Any, Any, Any]) -> Any:
        return loop.run_until_complete(asyncio.wait_for(work, 60))  # hang detection only

    try:
        sup.start()
        assert sup.client.multiplexed  # type: ignore[attr-defined]
        if on_loop:
            async def dispensed() -> Any:
                await maker.made[0].start()  # its sync client runs already: the Supervisor started it
                stub = await maker.made[0].dispense(PLUGIN_NAME)
                await stub.put("n", 1, Adder())
                return stub
            kv = run(dispensed())
        else:
            kv = sup.client.dispense(PLUGIN_NAME)
            kv.put("n", 1, Adder())
        reps[0].proc.send_signal(signal.SIGKILL)
        reps[0].proc.wait(10)
        down = HeldPort(port=int(listen.rpartition(":")[2]))  # refusing while it is down: nothing else takes it
        # the Supervisor judges it gone (health) and restarts: its new client waits for an endpoint
        assert wait_until(lambda: sup.restarts >= 1, 30), list(sup.events)
        if held is None:
            down.release()
            reps.append(CounterReplica(tmp_path / "r", certs, listen=listen))  # the same address, the same files
            assert sup.wait_running(30), list(sup.events)
        yield sup, (lambda key: run(kv.get(key))) if on_loop else kv.get
    finally:
        if down is not None:
            down.release()
        if held is not None:
            held.release.set()  # before the stop, which waits for the restart under way
        sup.stop()
        for client in maker.made:
            run(client.kill())
        loop.close()
        for rep in reps:
            _end(rep)


@pytest.mark.parametrize("on_loop", [False, True], ids=["sync", "asyncio"])
def test_a_stub_pinned_by_the_old_clients_dispense_is_told_to_dispense_again_after_a_restart(
        tmp_path: Path, on_loop: bool) -> None:
    with _restarted(tmp_path, on_loop) as (sup, get):
        with pytest.raises(ClientClosed, match="dispense it again from the Supervisor's current client") as err:
            get("n")
        assert err.value.sent is False and "make a new RemoteClient" not in str(err.value).lower()
        again = sup.client.dispense(PLUGIN_NAME)  # as the error says: this one reaches the restarted plugin
        again.put("n", 2, Adder())
        assert again.get("n") == 3


@pytest.mark.parametrize("on_loop", [False, True], ids=["sync", "asyncio"])
def test_once_the_supervisor_is_stopped_after_a_restart_an_old_pinned_stub_is_told_it_was_stopped(
        tmp_path: Path, on_loop: bool) -> None:
    with _restarted(tmp_path, on_loop) as (sup, get):
        sup.stop()
        with pytest.raises(ClientClosed) as err:
            get("n")
        said = str(err.value)
        assert err.value.sent is False and f"the Supervisor of plugin {sup.name!r} was stopped, which ended the" \
            " plugin; the call was not sent. Start a new Supervisor" in said, said
        assert "dispense it again" not in said and "restarted" not in said, said


@pytest.mark.parametrize("on_loop", [False, True], ids=["sync", "asyncio"])
def test_an_old_pinned_stub_is_told_the_supervisor_was_stopped_as_soon_as_stop_begins(
        tmp_path: Path, on_loop: bool) -> None:
    # stop() waits for the restart held here, long before it says STOPPED: its calls were told the restart's advice
    # meanwhile, to dispense again from a current client that stop() is about to end
    held = _HeldRestart()
    with _restarted(tmp_path, on_loop, held) as (sup, get):
        assert held.entered.wait(30), list(sup.events)
        stopping = threading.Thread(target=sup.stop, name="test-stop")
        stopping.start()
        try:
            assert wait_until(sup._stop.is_set, 10)
            with pytest.raises(ClientClosed) as err:
                get("n")
            assert sup.state != "stopped"  # still within stop()
        finally:
            held.release.set()
            stopping.join(60)
        assert not stopping.is_alive() and sup.state == "stopped"
    said = str(err.value)
    assert err.value.sent is False and f"the Supervisor of plugin {sup.name!r} was stopped, which ended the" \
        " plugin; the call was not sent" in said, said
    assert "dispense it again" not in said, said
