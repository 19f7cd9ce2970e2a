"""A host that brokered before it forked: its forked child's own Client brokers too.

The parent's broker stream runs on grpc.aio. grpcio's asyncio stack is process-wide state polled
by a thread of its own, which a forked child inherits as running without the thread: the child's
broker stream, made on grpc.aio too, never sent the child's AddHelper, and the plugin's dial waited
out its timeout (the Put failed). Each host runs in a process of its own, and each child kills its
own plugin before it exits.

grpcio itself crashes some children forked while gRPC streams are open (SIGSEGV, SIGABRT), whatever
the child does: the host forks again then (tests/forking.py) and kills the plugin such a child left.
The forks grpcio crashed are in the facts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.gobuild import go_program_or_skip
from tests.procs import run_marked_host

REPO = Path(__file__).resolve().parent.parent
COUNTER = REPO / "examples" / "counter"

pytestmark = pytest.mark.go

_HOST = r"""
import json, os, shutil, signal, sys, tempfile, threading
sys.path[:0] = [{repo!r}, {src!r}, {counter!r}]
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin
from plugbay import Client, ClientConfig
from tests.forking import fork_child

go_plugin, child_kind = sys.argv[1], sys.argv[2]


class Adder:
    def sum(self, a, b):
        return a + b


def config(kind, folder=None):
    if kind == "go":
        return ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: CounterPlugin()}}, cmd=[go_plugin],
                            unix_socket_temp_dir=folder)
    return ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: CounterPlugin()}}, multiplex_broker=True,
                        cmd=[sys.executable, {plugin!r}], unix_socket_temp_dir=folder)


def child(write, key, folder):
    facts = {{}}
    client = Client(config(child_kind, folder))
    done, started = threading.Event(), []

    def work():
        try:
            client.start()
            started.append(int(client.runner.id))
            os.write(write, json.dumps(dict(plugin=started[0])).encode() + b"\n")
            counter = client.dispense(PLUGIN_NAME)
            counter.put(key, 20, Adder())  # brokered: the plugin calls this child's AddHelper to add
            counter.put(key, 3, Adder())
            facts["sum"] = counter.get(key)  # a plain call
        except Exception as exc:
            facts["error"] = f"{{type(exc).__name__}}: {{exc}}"
        done.set()

    threading.Thread(target=work, daemon=True).start()
    facts["hung"] = not done.wait(60)
    client.kill()
    for pid in started:
        try:
            os.kill(pid, 0)
            facts["plugin_left"] = True
        except ProcessLookupError:
            facts["plugin_left"] = False
    facts["folder_left"] = os.listdir(folder)  # the plugin's private folder is gone with it
    os.write(write, json.dumps(facts).encode() + b"\n")
    os._exit(0)


def end_its_plugin(output):  # the plugin a crashed child started (if it got that far): this host's to end
    for line in map(json.loads, output.splitlines()):
        if "plugin" in line:
            os.kill(line["plugin"], signal.SIGKILL)


parent = Client(config("go"))
counter = parent.dispense(PLUGIN_NAME)
counter.put("parent", 1, Adder())
stream = type(parent.broker.call).__name__  # the broker stream this test is about: on grpc.aio
folders = tempfile.mkdtemp()  # each child's plugin folder in one of its own: a crashed child's is removed here


def in_child(write, attempt):
    folder = os.path.join(folders, str(attempt))
    os.mkdir(folder)
    child(write, f"child{{attempt}}", folder)


forked = fork_child(in_child, end_its_plugin)
outcome = None
if forked.status is not None:
    lines = [json.loads(line) for line in forked.output.splitlines()]
    outcome = dict(status=forked.status, **{{k: v for line in lines for k, v in line.items() if k != "plugin"}})
shutil.rmtree(folders)
after = counter.get("parent")
parent.kill()
print(json.dumps(dict(stream=stream, child=outcome, crashed=forked.crashed, after=after)), flush=True)
"""


@pytest.mark.parametrize("child_kind", ["go", "python-multiplexed"])
def test_a_forked_child_of_a_brokering_host_brokers_with_its_own_client(tmp_path: Path, child_kind: str) -> None:
    go_plugin = go_program_or_skip("counter_plugin")
    script = _HOST.format(repo=str(REPO), src=str(REPO / "src"), counter=str(COUNTER),
                          plugin=str(COUNTER / "plugin.py"))
    out, err, code, left = run_marked_host(
        [sys.executable, "-c", script, str(go_plugin), child_kind.split("-")[0]], tmp_path, 240)
    assert code == 0, err[-3000:]
    assert left == [], "a plugin of the host or of its child was left running"
    facts = json.loads(out.splitlines()[-1])
    assert facts["stream"] == "AioStream", facts  # the parent's broker stream ran on grpc.aio at the fork
    child = facts["child"]
    assert child is not None, f"grpcio crashed every fork: {facts}"
    # both brokered Puts reached the child's AddHelper (20 + 3), and the plain Get answered; the child
    # killed its own plugin and ended by itself
    assert child == dict(status=0, sum=23, hung=False, plugin_left=False, folder_left=[]), facts
    assert facts["after"] == 1, facts  # the parent's plugin answers on
