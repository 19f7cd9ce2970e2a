"""A port-forward the pod refuses: the start fails at once, with the API server's words.

The kubelet dials the pod's port as each port-forward stream opens and, when
nothing listens there, writes why on the port's error channel. plugin_to_host()
used to succeed all the same (its first stream closed without reading), and the
start then failed after its whole timeout with gRPC's "Socket closed". The pods
here are local processes on the Kubernetes stand-in.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import pytest

pytest.importorskip("kubernetes")

from tests.resilience_util import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402 - puts examples/kv on sys.path

from plugbay import Client, ClientConfig  # noqa: E402
from plugbay.errors import RunnerError  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.process_fixtures import process_kubeconfig, process_standin  # noqa: E402,F401 - fixtures
from tests.kube_standin.server import StandIn  # noqa: E402

pytestmark = pytest.mark.kubernetes

# announces a port nothing listens on
NOTHING = "import time\nprint('1|1|tcp|127.0.0.1:4000|grpc', flush=True)\ntime.sleep(60)\n"

# listens until its first connection (the forwarder's first stream), then stops listening
ONCE = """\
import os, socket, time
host, port = os.environ["PLUGBAY_LISTEN"].split(":", 1)[1].rsplit(":", 1)
listener = socket.create_server((host, int(port)))
print(f"1|1|tcp|{host}:{port}|grpc", flush=True)
listener.accept()[0].close()
listener.close()
time.sleep(60)
"""


def _client(kubeconfig: str, program: str, timeout: float) -> Client:
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=[sys.executable, "-c", program],
                              start_timeout=timeout, api_timeout=5, address_mode="port-forward")
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                               start_timeout=timeout, require_tls=False))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("program", [NOTHING, ONCE], ids=["nothing-listens", "stops-after-the-probe"])
def test_a_refused_port_fails_the_start_at_once(server: StandIn, kubeconfig: str, program: str) -> None:
    client = _client(kubeconfig, program, 15)
    t0 = time.monotonic()
    try:
        with pytest.raises(RunnerError) as info:
            client.start()
    finally:
        client.kill()
    assert time.monotonic() - t0 < 10, "the refusal waited for the start timeout"
    text = str(info.value)
    assert re.search(rf"port-forward to pod {client.runner.id} port \d+: the API server said", text), text
    assert "Connection refused" in text and "listens on that port" in text, text


@pytest.mark.timeout(60)
def test_the_error_channels_text_is_quoted_escaped(server: StandIn, kubeconfig: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    # the API server's (or a proxy's) words on the error channel, with a line of its own for the host's log
    server.portforward_error = "no route\n2026-01-01 ERROR plugbay: forged line \x1b[31mred"
    caplog.set_level(logging.WARNING, logger="plugbay.runners.kubernetes")
    client = _client(kubeconfig, NOTHING, 15)
    try:
        with pytest.raises(RunnerError) as info:
            client.start()
    finally:
        client.kill()
    assert "the API server said 'no route\\x0a2026-01-01 ERROR plugbay: forged line \\x1b[31mred'" \
        in str(info.value), str(info.value)
    said = [r.getMessage() for r in caplog.records if "port-forward to" in r.getMessage() and "no route" in
            r.getMessage()]
    assert said, caplog.text
    for message in said:
        assert "\n" not in message and "\x1b" not in message, message
        assert "no route\\x0a2026-01-01 ERROR plugbay: forged line \\x1b[31mred" in message, message
