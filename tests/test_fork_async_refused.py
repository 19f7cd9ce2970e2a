"""A forked child of a host that ran grpc.aio: its AsyncClient, AsyncRemoteClient and AsyncSupervisor refuse to start.

grpcio's asyncio stack is process-wide state polled by a thread of its own, which a child forked
while it ran inherits as running without the thread: no grpc.aio call ever completes there, and an
AsyncClient made in the child started, and its first call waited for good. Each now refuses at once, typed, saying
why and what to do, before anything starts (no plugin process, no folder). Each host runs in a
process of its own; grpcio itself crashes some such forks (tests/forking.py forks again then).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.gobuild import go_program_or_skip
from tests.net_util import Replica
from tests.procs import run_marked_host

REPO = Path(__file__).resolve().parent.parent
KV = REPO / "examples" / "kv"
COUNTER = REPO / "examples" / "counter"
BOUND = 30  # seconds the child gives its three starts in all: a refusal takes none of it

_HOST = r"""
import asyncio, json, os, shutil, sys, tempfile, threading
sys.path[:0] = [{repo!r}, {src!r}, {kv!r}, {counter!r}]
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import (AsyncClient, AsyncRemoteClient, AsyncSupervisor, Client, ClientConfig, ClientStateError,
                     RemoteConfig)
from plugbay.core.broker.aiofork import _poller_running
from tests.forking import fork_child

parent_kind, address, go_counter, ran = sys.argv[1:5]
NAMES = ("AsyncClient", "AsyncRemoteClient", "AsyncSupervisor")
# the KV plugin, noting that it ran before it serves
LAUNCH = "import runpy, sys\nopen(sys.argv[1], 'a').close()\nrunpy.run_path(sys.argv[2], run_name='__main__')"


def local(folder):
    return ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}}, unix_socket_temp_dir=folder,
                        cmd=[sys.executable, "-c", LAUNCH, ran, {kv_plugin!r}])


def remote():
    return RemoteConfig(target=f"static:///{{address}}", handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}},
                        insecure=True, start_timeout=10)


async def attempts(folder, outcome):
    makers = dict(AsyncClient=lambda: AsyncClient(local(folder)), AsyncRemoteClient=lambda: AsyncRemoteClient(remote()),
                  AsyncSupervisor=lambda: AsyncSupervisor(local(folder), health_interval=None))
    for name in NAMES:
        try:
            async with makers[name]() as client:  # its start(); a failed start ends what it made
                kv = await client.dispense(PLUGIN_NAME)
                await kv.put("child", b"2")  # a grpc.aio call: it never completed
                outcome[name] = "called"
        except Exception as exc:
            outcome[name] = f"{{type(exc).__name__}}: {{exc}}"


def child(write, attempt):
    folder = tempfile.mkdtemp(dir=folders)  # the plugins' socket folder and this child's TMPDIR
    os.environ["TMPDIR"], tempfile.tempdir = folder, None
    outcome, done = {{}}, threading.Event()
    threading.Thread(target=lambda: (asyncio.run(attempts(folder, outcome)), done.set()), daemon=True).start()
    outcome["hung"] = not done.wait({bound})
    outcome["plugin_ran"], outcome["folder"] = os.path.exists(ran), os.listdir(folder)
    os.write(write, json.dumps(outcome).encode())
    refused = all(outcome.get(name, "").startswith("ClientStateError: ") for name in NAMES)
    os._exit(3 if outcome["hung"] else 0 if refused and not outcome["plugin_ran"] and not outcome["folder"] else 4)


folders = tempfile.mkdtemp()
if parent_kind == "async-client":  # an AsyncClient on a loop thread, its grpc.aio connection open at the fork
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def on_loop(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(60)

    parent = AsyncClient(ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}},
                                      cmd=[sys.executable, {kv_plugin!r}]))
    kv = on_loop(parent.dispense(PLUGIN_NAME))
    on_loop(kv.put("parent", b"1"))
    answer, end = lambda: on_loop(kv.get("parent")).decode(), lambda: on_loop(parent.kill())
else:  # a sync Client whose broker stream runs on grpc.aio (the Go counter plugin brokered)
    from counter_plugin_def import HANDSHAKE as COUNTER_HANDSHAKE, PLUGIN_NAME as COUNTER, CounterPlugin

    class Adder:
        def sum(self, a, b):
            return a + b

    parent = Client(ClientConfig(handshake=COUNTER_HANDSHAKE, plugins={{COUNTER: CounterPlugin()}}, cmd=[go_counter]))
    counter = parent.dispense(COUNTER)
    counter.put("parent", 1, Adder())
    answer, end = lambda: str(counter.get("parent")), parent.kill
running = _poller_running()  # grpc.aio's poller runs as the host forks: what the children cannot use
forked = fork_child(child)
after = answer()  # the parent's plugin answers on
end()
shutil.rmtree(folders)
print(json.dumps(dict(running=running, status=forked.status, crashed=forked.crashed,
                      child=json.loads(forked.output or "null"), after=after)), flush=True)
"""


@pytest.mark.parametrize("parent_kind", ["async-client", "brokered"])
def test_a_forked_child_of_a_host_running_grpc_aio_refuses_the_asyncio_clients_at_once(
        tmp_path: Path, parent_kind: str) -> None:
    go_counter = str(go_program_or_skip("counter_plugin")) if parent_kind == "brokered" else ""
    replica = Replica("127.0.0.1:0")  # a network plugin for the AsyncRemoteClient (it refuses before dialing)
    ran = str(tmp_path / "plugin-ran")
    script = _HOST.format(repo=str(REPO), src=str(REPO / "src"), kv=str(KV), counter=str(COUNTER),
                          kv_plugin=str(KV / "plugin.py"), bound=BOUND)
    out, err, code, left = run_marked_host(
        [sys.executable, "-c", script, parent_kind, replica.address, go_counter, ran], tmp_path, BOUND * 4,
        finally_=replica.stop)
    assert code == 0, err[-3000:]
    facts = json.loads(out.splitlines()[-1])
    assert facts["running"] is True, facts  # grpc.aio ran in the parent at the fork
    assert facts["status"] is not None, f"grpcio crashed every fork: {facts}"
    child = facts["child"]
    # exit status 3: a start or its call waited out the bound; 4: one was not refused, or left something
    assert facts["status"] == 0, facts
    assert left == [], "a plugin of the host or of its child was left running"
    assert child["hung"] is False and child["plugin_ran"] is False and child["folder"] == [], facts
    for name in ("AsyncClient", "AsyncRemoteClient", "AsyncSupervisor"):
        said = child[name]
        # why, and what to do instead
        assert said.startswith(f"ClientStateError: {name} cannot run in this process"), facts
        assert "forked child" in said and "grpc.aio" in said, facts
        assert "'spawn' or 'forkserver'" in said and "sync Client" in said, facts
    assert facts["after"] == "1", facts
