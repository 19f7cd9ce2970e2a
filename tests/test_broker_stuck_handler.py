"""A host callback handler still running after its brokered server stopped holds up nothing else.

The process's one spare builder thread also shuts stopped servers' worker pools down; it waited there
for such a handler, so meanwhile no stopped server's pool was taken over by the next one (every later
callback started a worker thread of its own) and closing the last Client waited 10 s for the builder.
go-plugin's Stop() does not wait for handlers either.

Real parts: the go-plugin 1.0.1 Go counter plugin as a child process dialing the host's callbacks.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay import Client, ClientConfig
from plugbay.errors import PluginUnavailableError
from plugbay.core.broker import spares
from tests.gobuild import go_program_or_skip
from tests.thread_util import wait_for

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "counter"))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402

pytestmark = pytest.mark.go

CALLBACKS = 50


@pytest.fixture()
def go_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    plugin = str(go_program_or_skip("counter_plugin"))
    if spares._SPARES is not None:
        pytest.skip("another broker of this process holds the spare servers")
    folder = tempfile.mkdtemp(prefix="bkh", dir="/tmp")  # short: unix socket paths stay under 108 bytes
    monkeypatch.chdir(folder)  # the Go counter plugin keeps its values in files named kv_<key>
    yield plugin
    shutil.rmtree(folder, ignore_errors=True)


def brokered_workers() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("plugbay-brokered"))


class Helper:
    def sum(self, a: int, b: int) -> int:
        return a + b


class Stuck:
    """A callback that does not return until released (longer than its server lives)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def sum(self, a: int, b: int) -> int:
        self.entered.set()
        self.release.wait(60)
        return a + b


def test_a_handler_running_after_its_server_stopped_holds_up_no_other_callback_or_close(go_plugin: str) -> None:
    stuck = Stuck()
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, cmd=[go_plugin]))
    try:
        client.start()
        counter = client.dispense(PLUGIN_NAME)
        broker = client.broker
        ids: list[int] = []
        next_id = broker.next_id

        def recorded() -> int:
            ids.append(next_id())
            return ids[-1]

        broker.next_id = recorded  # type: ignore[method-assign]

        def stop_mid_call() -> None:  # the host stops serving the id while its handler runs
            if stuck.entered.wait(10):
                broker.stop_serving(ids[-1])

        stopper = threading.Thread(target=stop_mid_call)
        stopper.start()
        # the Go plugin's Put fails (its AddHelper call was cancelled) and answers UNAVAILABLE
        with pytest.raises(PluginUnavailableError, match="UNAVAILABLE"):
            counter.put("k", 1, stuck)
        stopper.join(10)
        assert stuck.entered.is_set()
        for _ in range(CALLBACKS):
            counter.put("k", 1, Helper())
        assert counter.get("k") == CALLBACKS
        # the stuck handler's worker, the pool taken over by each next server, a spare's first worker
        wait_for(lambda: brokered_workers() <= 4, "the last stopped servers' workers to be reaped", timeout=10)
        started = time.monotonic()
        client.kill()
        assert time.monotonic() - started < 3, "the last Client's kill() waited for the running handler"
    finally:
        stuck.release.set()
        client.kill()
    wait_for(lambda: brokered_workers() == 0, "the stuck handler's worker to end once it returned", timeout=10)
