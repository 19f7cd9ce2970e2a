"""A call waiting on its brokered callback when the host itself ends the plugin fails typed.

Ending a Client stops this host's brokered server; the Python counter plugin's nested call into it
fails UNAVAILABLE ("Cancelling all calls"), and the plugin passes that on as its handler's answer,
marked (plugbay-handler-status). The host returned marked statuses as they were before it looked
at its own kill, so the caller got grpcio's raw _InactiveRpcError / AioRpcError instead of the
ClientClosed (kill(), Supervisor.stop()) or PluginRestarted (a health restart) the docs promise,
and the Go counter plugin (which marks nothing) gets.

Real parts: the counter example's Python plugin as a child process calling back into this host.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import grpc

from plugbay import AsyncClient, Client, ClientConfig, ClientStateError, RestartPolicy, Supervisor
from plugbay.core.host.channel import ManagedChannel
from tests.resilience_util import wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "counter"
sys.path.insert(0, str(EXAMPLE))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402

OWN_UNAVAILABLE = ROOT / "tests" / "plugins" / "own_unavailable_counter.py"

BOUND = 30.0
FAST = RestartPolicy(max_restarts=3, window=120, initial_backoff=0.05, max_backoff=0.2)


def config() -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, call_timeout=BOUND,
                        cmd=[sys.executable, str(EXAMPLE / "plugin.py")], name="counter")


class Held:
    """The host's AddHelper: its first call runs ``on_enter`` and then waits until released."""

    def __init__(self, on_enter: Callable[[], None] = lambda: None) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.on_enter = on_enter

    def sum(self, a: int, b: int) -> int:
        if not self.entered.is_set():
            self.entered.set()
            self.on_enter()
            self.release.wait(BOUND)
        return a + b


def put_ending(counter: object, held: Held, end: Callable[[], None]) -> BaseException:
    """counter.put() with ``held`` as its callback, ``end()`` called while the callback runs; what put raised."""
    errors: list[BaseException] = []

    def put() -> None:
        try:
            counter.put("k", 1, held)  # type: ignore[attr-defined]
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=put)
    caller.start()
    try:
        assert held.entered.wait(BOUND), "the plugin never called the host's callback"
        end()
    finally:
        held.release.set()
        caller.join(BOUND)
    assert not caller.is_alive() and len(errors) == 1, errors
    return errors[0]


def test_kill_during_a_callback_fails_the_call_client_closed(in_tmp: Path) -> None:
    client = Client(config())
    try:
        client.start()
        error = put_ending(client.dispense(PLUGIN_NAME), Held(), client.kill)
    finally:
        client.kill()
    assert isinstance(error, ClientStateError), repr(error)
    assert "killed" in str(error), error


def test_supervisor_stop_during_a_callback_fails_the_call_typed(in_tmp: Path) -> None:
    sup = Supervisor(config, restart=FAST, health_interval=None)
    try:
        sup.start()
        error = put_ending(sup.dispense(PLUGIN_NAME), Held(), sup.stop)
    finally:
        sup.stop()
    assert isinstance(error, ClientStateError), repr(error)
    # the Supervisor's advice, not its Client's (start a new Client), and no claim that the call did not run
    assert "Supervisor" in str(error) and "start a new Client" not in str(error), error
    assert "may have run" in str(error), error


def test_an_async_kill_during_a_callback_fails_the_call_client_closed(in_tmp: Path) -> None:
    async def main() -> BaseException:
        client = AsyncClient(config())
        await client.start()
        held = Held()
        try:
            counter = await client.dispense(PLUGIN_NAME)
            put = asyncio.ensure_future(counter.put("k", 1, held))
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, held.entered.wait, BOUND), "no callback came"
            await client.kill()
            held.release.set()
            try:
                await asyncio.wait_for(put, BOUND)
            except BaseException as exc:
                return exc
            raise AssertionError("the put succeeded although its Client was killed under it")
        finally:
            held.release.set()
            await client.kill()

    error = asyncio.run(main())
    assert isinstance(error, ClientStateError) and "killed" in str(error), repr(error)


def test_the_plugins_own_unavailable_during_a_kill_is_its_answer(in_tmp: Path) -> None:
    """Only the server-stop failure of a callback into this host is the kill's: a plugin whose handler's own
    call failed UNAVAILABLE while kill() waited out its Shutdown answered the call (ClientClosed hid that,
    and told a retry it may run again what the plugin had fully answered)."""
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, call_timeout=BOUND,
                                 cmd=[sys.executable, str(OWN_UNAVAILABLE), str(in_tmp)], name="counter"))
    errors: list[BaseException] = []

    def put() -> None:
        try:
            counter.put("k", 1, Held())  # a brokered server of this host's is open while the put runs
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=put)
    killer = threading.Thread(target=client.kill)
    try:
        client.start()
        counter = client.dispense(PLUGIN_NAME)
        caller.start()
        assert wait_until(lambda: (in_tmp / "entered").exists(), BOUND), "the put never reached the plugin"
        channel = client.channel
        assert isinstance(channel, ManagedChannel)
        killer.start()
        assert wait_until(channel.refuses_calls, BOUND), "kill() never began"
        (in_tmp / "go").write_text("1")  # the handler's own call fails now, during kill()'s Shutdown grace
        caller.join(BOUND)
    finally:
        (in_tmp / "go").write_text("1")
        client.kill()
        for thread in (caller, killer):
            if thread.ident is not None:
                thread.join(BOUND)
    assert not caller.is_alive() and len(errors) == 1, errors
    error = errors[0]
    assert not isinstance(error, ClientStateError), repr(error)
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAVAILABLE, repr(error)
    assert "Cancelling all calls" not in str(error.details()), error
