"""A KubernetesRunner start within the Client's start_timeout (LaunchSpec.deadline).

The runner's own start_timeout (default 120 s) bounds its wait for the pod, and api_timeout (default 30 s)
each API call; a Client's start_timeout shorter than either ends the start all the same: a pod that does
not run is a PodStartTimeoutError saying the Client's start_timeout ran out, and an API call the deadline
cut a HandshakeTimeoutError naming the call, as the Docker runner's are. The pod made is deleted, and its
process ends. The API server is the stand-in (pods as local processes), told to start pods late or to
stall one kind of request (a port-forward's upgrade too); the runner's own bounds are far past the Client's,
so the messages tell which bound ended the start. The pytest timeouts catch a hang; only the port-forward's
test bounds the time as well, generously (the runner's own bound there, OWN, is far past it).
"""

from __future__ import annotations

import sys
import threading
import time
import uuid

import pytest

pytest.importorskip("kubernetes")

from plugbay import Client, ClientConfig, HandshakeConfig  # noqa: E402
from plugbay.errors import HandshakeTimeoutError, PodStartTimeoutError  # noqa: E402
from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.server import StandIn  # noqa: E402
from tests.kube_standin.fixtures import server  # noqa: E402, F401 - the test's own stand-in
from tests.leakcheck import _pipes_and_sockets  # noqa: E402
from tests.procs import live_with_env  # noqa: E402
from tests.resilience_util import failed_start  # noqa: E402
from tests.thread_util import until  # noqa: E402

pytestmark = pytest.mark.kubernetes
MARK = "PLUGBAY_TEST_START_DEADLINE"
HANDSHAKE = "1|1|tcp|127.0.0.1:4000|grpc"
START = 1.0  # the Client's start_timeout
# the Client's start_timeout where the pod must run before it (a log's open stalled): a margin for a busy machine
START_RUNNING = 10.0
OWN = 30.0  # the runner's start_timeout (its api_timeout too: min(30 s, start_timeout)), far past START




def _runner(server: StandIn, tag: str, program: str = "import time; time.sleep(60)",
            start_timeout: float = OWN) -> KubernetesRunner:
    return KubernetesRunner("no-engine/x:1", kubeconfig=server.kubeconfig_path, env={MARK: tag},
                            command=[sys.executable, "-c", program], start_timeout=start_timeout)


def _client(runner: KubernetesRunner, start_timeout: float = START) -> Client:
    return Client(ClientConfig(handshake=HandshakeConfig(1, "K", "V"), plugins={}, runner=runner,
                               start_timeout=start_timeout))


def _left_nothing(server: StandIn, runner: KubernetesRunner, tag: str) -> None:
    assert not runner.pod_name or server.store.get("default", runner.pod_name) is None
    assert not [pod for pod in server.store.pods.values() if pod.obj["spec"]["containers"][0].get("env")
                and {"name": MARK, "value": tag} in pod.obj["spec"]["containers"][0]["env"]]
    assert until(lambda: not live_with_env(MARK, tag), 30), "the pod's process outlived its deletion"


@pytest.mark.timeout(120)
def test_a_pod_that_does_not_run_ends_at_the_clients_start_timeout(server: StandIn) -> None:
    server.store.start_delay = 90.0  # a slow image pull: the pod stays ContainerCreating
    tag = uuid.uuid4().hex
    runner = _runner(server, tag)
    client = _client(runner)
    try:
        with pytest.raises(PodStartTimeoutError) as info:
            client.start()
    finally:
        client.kill()
    text = str(info.value)
    assert f"the Client's start_timeout ran out while pod default/{runner.pod_name} was not Running yet" in text
    assert "Raise ClientConfig.start_timeout" in text and f"start_timeout, {OWN:g}s, bounds the wait too" in text
    assert "phase Pending" in text and "ContainerCreating" in text  # the diagnosis is still there
    assert isinstance(info.value, TimeoutError)
    assert server.calls.get(("delete", "pods")) == 1  # the start deleted its pod
    assert not server.container_start_seconds()  # no process was ever started for it
    _left_nothing(server, runner, tag)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("verb", "resource", "what"), [
    ("create", "pods", "create the pod"),
    ("get", "pods/log", "open the pod's log"),
    ("get", "pods", "read the pod"),  # the read that proves the opened log the pod's
])
def test_a_stalled_api_call_ends_at_the_clients_start_timeout(server: StandIn, verb: str, resource: str,
                                                              what: str) -> None:
    server.stall(verb, resource)
    tag = uuid.uuid4().hex
    runner = _runner(server, tag)
    client = _client(runner, START if verb == "create" else START_RUNNING)
    try:
        with pytest.raises(HandshakeTimeoutError) as info:
            client.start()
    finally:
        client.kill()
    text = str(info.value)
    assert f"the Client's start_timeout ran out while it asked the Kubernetes API at {server.url} to {what}" in text
    assert "raise ClientConfig.start_timeout" in text
    assert server.calls.get((verb, resource), 0) >= 1  # asked, and never answered
    if verb == "create":  # its outcome unknown: the Client's kill() deletes the name (the stand-in made none)
        assert f"pod default/{runner.pod_name} may exist all the same" in text
    else:
        assert "the pod it made is deleted" in text
    assert server.calls.get(("delete", "pods")) == 1
    _left_nothing(server, runner, tag)


@pytest.mark.timeout(60)
def test_a_deadline_passed_before_the_start_makes_no_pod(server: StandIn) -> None:
    runner = _runner(server, uuid.uuid4().hex)
    with pytest.raises(HandshakeTimeoutError, match="ran out before it could ask the Kubernetes API at .* to create"
                                                    " the pod, so KubernetesRunner for 'no-engine/x:1' gave up"
                                                    " starting the plugin; it made no pod"):
        runner.start(LaunchSpec(env={}, deadline=time.monotonic()))
    runner.kill(0)
    assert not runner.pod_name and ("create", "pods") not in server.calls and ("delete", "pods") not in server.calls


@pytest.mark.timeout(60)
def test_the_runners_own_start_timeout_is_named_when_it_ends_first(server: StandIn) -> None:
    server.store.start_delay = 90.0
    tag = uuid.uuid4().hex
    runner = _runner(server, tag, start_timeout=0.5)
    try:
        with pytest.raises(PodStartTimeoutError, match=r"did not reach Running within 0\.5s, the runner's"
                                                       r" start_timeout \(phase Pending\)\. Raise the runner's"
                                                       " start_timeout"):
            runner.start(LaunchSpec(env={}, deadline=time.monotonic() + 60))
    finally:
        runner.kill(0)
    _left_nothing(server, runner, tag)


@pytest.mark.timeout(60)
def test_a_start_within_its_deadline_runs_the_pod(server: StandIn) -> None:
    tag = uuid.uuid4().hex
    runner = _runner(server, tag, f"import time\nprint({HANDSHAKE!r}, flush=True)\ntime.sleep(60)\n")
    try:
        runner.start(LaunchSpec(env={}, deadline=time.monotonic() + 60))
        assert next(runner.stdout_lines()) == HANDSHAKE
        assert live_with_env(MARK, tag)
    finally:
        runner.kill(0)
    _left_nothing(server, runner, tag)


@pytest.mark.timeout(120)
def test_a_stalled_port_forward_upgrade_ends_at_the_clients_start_timeout(server: StandIn) -> None:
    """The port-forward the Client's start opens to its plugin's address (plugin_to_host's probe) is one
    more request of the start: an API server that takes the upgrade and never answers it ends the start at
    the Client's start_timeout, not at the runner's own (OWN, the port-forward's per-stream bound)."""
    server.stall("get", "pods/portforward")
    tag = uuid.uuid4().hex
    runner = _runner(server, tag, f"import time\nprint({HANDSHAKE!r}, flush=True)\ntime.sleep(60)\n")
    client = _client(runner, START_RUNNING)
    sockets = _pipes_and_sockets()
    error, took = failed_start(client, HandshakeTimeoutError)
    text = str(error)
    assert (f"the Client's start_timeout ran out while it asked the Kubernetes API at {server.url} to open a"
            f" port-forward to pod default/{runner.pod_name} port 4000") in text
    assert "raise ClientConfig.start_timeout" in text and isinstance(error, TimeoutError)
    # the error is the Client's (above); its bound, not the runner's own OWN (30 s), ended the open. The whole
    # start() also holds the failed pod's teardown: under load its log follower's retries took 10 s more
    assert took < OWN, took
    assert server.calls.get(("get", "pods/portforward"), 0) >= 1  # asked, and never answered
    assert server.calls.get(("delete", "pods")) == 1  # the Client's kill() deleted the pod
    _left_nothing(server, runner, tag)
    assert len(runner._forwards) == 0
    assert not [t.name for t in threading.enumerate() if t.name.startswith("plugbay-kpf")]
    server.unstall()  # the stand-in lets go of the upgrade it held: no socket of the start is left then
    assert until(lambda: not server.conns and _pipes_and_sockets().items() <= sockets.items(), 10), \
        (server.conns, set(_pipes_and_sockets().items()) - set(sockets.items()))
