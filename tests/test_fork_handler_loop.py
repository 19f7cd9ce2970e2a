"""A host that forks: plugbay's asyncio handler loop and a Client whose start() runs at the fork.

The handler loop (transport/handlerloop.py) runs the ``async def`` servicers of brokered servers
and plugin servers on a thread of its own. A forked child inherited the parent's loop as running
although its thread does not exist there: an async handler served in the child was scheduled on a
loop nothing runs, and its call waited until the caller's deadline. A Client whose start() was
running on another thread at the fork has its lock held for ever in the child: its start() there
waited for good instead of saying the Client is the parent's. Each host runs in a process of its
own (a fork of the pytest process would copy its threads' state).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from tests.procs import live_with_env

REPO = Path(__file__).resolve().parent.parent

# a real gRPC server whose service is an `async def` servicer behind the plugin's gate (the gate hands
# it to the process's handler loop), called over a real channel before and after a fork
_LOOP_HOST = r"""
import asyncio, json, os, sys, threading
from concurrent.futures import ThreadPoolExecutor
sys.path[:0] = [{src!r}, {counter!r}]
import grpc
from counterproto import counter_pb2, counter_pb2_grpc
from plugbay.core.plugin.gate import HandlerGate
from plugbay.core.plugin.gatedserver import GatedServer


class Adder(counter_pb2_grpc.AddHelperServicer):
    async def Sum(self, request, context):
        await asyncio.sleep(0)
        return counter_pb2.SumResponse(r=request.a + request.b)


def serve_and_sum(a, b):
    gate = HandlerGate(4)
    server = grpc.server(ThreadPoolExecutor(8))
    counter_pb2_grpc.add_AddHelperServicer_to_server(Adder(), GatedServer(server, gate))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{{port}}") as channel:
            stub = counter_pb2_grpc.AddHelperStub(channel)
            try:
                return stub.Sum(counter_pb2.SumRequest(a=a, b=b), timeout=10).r
            except grpc.RpcError as err:
                return f"{{err.code().name}}: {{err.details()}}"
    finally:
        server.stop(0).wait(5)
        gate.close()


gate = HandlerGate(4)  # the parent's server stays up (its handler loop running) across the fork
server = grpc.server(ThreadPoolExecutor(8))
counter_pb2_grpc.add_AddHelperServicer_to_server(Adder(), GatedServer(server, gate))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
channel = grpc.insecure_channel(f"127.0.0.1:{{port}}")
stub = counter_pb2_grpc.AddHelperStub(channel)
before = stub.Sum(counter_pb2.SumRequest(a=1, b=2), timeout=10).r
read, write = os.pipe()
child = os.fork()
if child == 0:
    os.close(read)
    answer = serve_and_sum(20, 3)
    os.write(write, json.dumps(answer).encode())
    os._exit(0)
os.close(write)
_, status = os.waitpid(child, 0)
with os.fdopen(read) as pipe:
    in_child = json.loads(pipe.read() or "null")
after = stub.Sum(counter_pb2.SumRequest(a=4, b=5), timeout=10).r
channel.close()
server.stop(0).wait(5)
gate.close()
print(json.dumps(dict(before=before, in_child=in_child, after=after, status=status)), flush=True)
"""

# a Client whose start() is on another thread (the plugin holds its handshake back) when the host forks
_START_HOST = r"""
import json, os, sys, threading, time
sys.path[:0] = [{src!r}, {kv!r}]
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import Client, ClientConfig, ClientStateError

ready = sys.argv[1]
client = Client(ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}}, start_timeout=60,
                             cmd=[sys.executable, "-c", "import os, time\n"
                                  f"open({{ready!r}}, 'w').close()\n"
                                  "time.sleep(60)"]))
failures = []


def _start():
    try:
        client.start()
    except Exception as exc:
        failures.append(type(exc).__name__)


starting = threading.Thread(target=_start, daemon=True)
starting.start()
while not os.path.exists(ready):  # the plugin runs: start() holds the Client's lock, reading its handshake
    time.sleep(0.01)
read, write = os.pipe()
child = os.fork()
if child == 0:
    os.close(read)
    outcome = {{}}
    done = threading.Event()

    def attempt(name, call):
        try:
            call()
            outcome[name] = "returned"
        except ClientStateError as exc:
            outcome[name] = f"ClientStateError: {{exc}}"
        except Exception as exc:
            outcome[name] = f"{{type(exc).__name__}}: {{exc}}"

    def attempts():
        attempt("start", client.start)
        attempt("dispense", lambda: client.dispense(PLUGIN_NAME))
        done.set()

    threading.Thread(target=attempts, daemon=True).start()
    if not done.wait(20):  # a start() waiting for good: say so, and end this child
        outcome["hung"] = True
    os.write(write, json.dumps(outcome).encode())
    os._exit(0)
os.close(write)
_, status = os.waitpid(child, 0)
with os.fdopen(read) as pipe:
    in_child = json.loads(pipe.read() or "null")
client.kill()  # the parent's start() ends with its plugin
starting.join(30)
print(json.dumps(dict(in_child=in_child, status=status, pid=os.getpid(), parent_failed=failures,
                      joined=not starting.is_alive())), flush=True)
"""


def _run(script: str, *args: str, cwd: Path) -> dict[str, object]:
    mark = uuid.uuid4().hex  # in the environment of the host, its child and any plugin they start
    host = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd, env={**os.environ, "FORK_TEST": mark})
    try:
        out, err = host.communicate(timeout=120)
    finally:
        if host.poll() is None:  # a hung host: ended with what it started
            host.kill()
            host.communicate()
        for pid in live_with_env("FORK_TEST", mark):
            os.kill(pid, signal.SIGKILL)
    assert host.returncode == 0, err[-3000:]
    facts: dict[str, object] = json.loads(out.splitlines()[-1])
    return facts


def test_a_forked_child_serves_async_handlers_on_a_loop_of_its_own(tmp_path: Path) -> None:
    script = _LOOP_HOST.format(src=str(REPO / "src"), counter=str(REPO / "examples" / "counter"))
    facts = _run(script, cwd=tmp_path)
    # the child's own server answered from the child's own handler loop, not the parent's copy
    # (which no thread runs there: its call waited out its deadline); the parent served on
    assert facts == dict(before=3, in_child=23, after=9, status=0), facts


def test_a_forked_copy_of_a_starting_client_refuses_start_at_once(tmp_path: Path) -> None:
    ready = str(tmp_path / "plugin-runs")
    script = _START_HOST.format(src=str(REPO / "src"), kv=str(REPO / "examples" / "kv"))
    facts = _run(script, ready, cwd=tmp_path)
    in_child = facts["in_child"]
    assert isinstance(in_child, dict) and "hung" not in in_child, facts
    for name in ("start", "dispense"):  # both take the lock the parent's start() held at the fork
        said = str(in_child[name])
        assert said.startswith("ClientStateError") and f"process {facts['pid']}" in said, facts
    # the parent's own start() went on and ended with the parent's kill()
    assert facts["status"] == 0 and facts["joined"] is True and facts["parent_failed"] == ["ClientStateError"], facts
