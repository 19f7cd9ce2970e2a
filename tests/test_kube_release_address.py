"""A pod plugin's port-forwards end with the last use of their address (release_address).

With the per-connection broker every brokered server listens on a port of its own, so each dial
mapped a new plugin port to a new PortForwarder (a listener and its accept thread). The runner had
no release_address: the broker's release when a channel closed did nothing, and the forwarders
piled up until kill(). The Client's own connection maps its address once and never releases it:
a brokered channel to the same port must not take its forwarder away.
"""

from __future__ import annotations

import socket
import sys
import threading

import pytest

pytest.importorskip("kubernetes")

from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.process_fixtures import process_kubeconfig, process_standin  # noqa: E402,F401 - fixtures
from tests.kube_standin.server import StandIn  # noqa: E402
from tests.test_kube_portforward_fds import ECHO  # noqa: E402
from tests.thread_util import until  # noqa: E402

pytestmark = pytest.mark.kubernetes


def _forwarded_ports(runner: KubernetesRunner) -> list[int]:
    """The plugin ports that have a forwarder: their accept threads are named plugbay-kpf-<pod>-<port>."""
    prefix = f"plugbay-kpf-{runner.pod_name}-"
    return sorted(int(t.name[len(prefix):]) for t in threading.enumerate()
                  if t.name.startswith(prefix) and t.name[len(prefix):].isdigit() and t.is_alive())


def _echoes(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"ping")
        got = b""
        while len(got) < 4 and (chunk := conn.recv(100)):
            got += chunk
    return got == b"ping"


@pytest.mark.timeout(120)
def test_released_addresses_free_their_forwarders_but_not_the_clients(server: StandIn, kubeconfig: str) -> None:
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=[sys.executable, "-c", ECHO],
                              start_timeout=20, api_timeout=5, address_mode="port-forward")
    runner.start(LaunchSpec(env={}))
    try:
        announced = next(runner.stdout_lines()).split("|")[3]
        main_port = int(announced.rsplit(":", 1)[1])
        _, main = runner.plugin_to_host("tcp", announced)  # the Client's connection: never released
        for port in range(5001, 5006):  # five brokered servers' ports, each dialled, its channel then closed
            net, address = runner.plugin_to_host("tcp", f"0.0.0.0:{port}")
            assert _forwarded_ports(runner) == sorted([main_port, port])
            runner.release_address(net, address)
        assert until(lambda: _forwarded_ports(runner) == [main_port], 10), _forwarded_ports(runner)

        # a brokered server announced at the main connection's port shares its forwarder
        net, shared = runner.plugin_to_host("tcp", announced)
        assert shared == main
        runner.release_address(net, shared)
        runner.release_address("tcp", "127.0.0.1:1")  # an address no forwarder has: nothing to free
        assert _forwarded_ports(runner) == [main_port]
        assert _echoes(main)
    finally:
        runner.kill(0)
    assert until(lambda: not _forwarded_ports(runner), 10)
