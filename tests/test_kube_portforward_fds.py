"""Port-forwarding in a host that holds many descriptors (a gateway with many clients, many plugins).

select.select() refuses descriptors of 1024 and up with ValueError: opening a port-forward then
failed with an untyped error, and each connection accepted on a descriptor that high died in its
relay thread. The pod is a local process on the Kubernetes stand-in; its program echoes.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

pytest.importorskip("kubernetes")

from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.process_fixtures import process_kubeconfig, process_standin  # noqa: E402,F401 - fixtures
from tests.kube_standin.server import StandIn  # noqa: E402

pytestmark = pytest.mark.kubernetes

ECHO = """\
import os, socket, threading, time
host, port = os.environ["PLUGBAY_LISTEN"].split(":", 1)[1].rsplit(":", 1)
listener = socket.create_server((host, int(port)))
print(f"1|1|tcp|{host}:{port}|grpc", flush=True)
def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
"""


@contextmanager
def many_fds() -> Iterator[None]:
    """Hold descriptors up to past 1024, so the sockets opened next get numbers select() refuses."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"the descriptor limit ({hard}) is too low to open descriptors past 1024")
    if soft != resource.RLIM_INFINITY and soft < 1300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1300, hard))
    filler: list[int] = []
    try:
        while not filler or filler[-1] < 1030:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("opened", ["among-them", "before-them"])
def test_port_forward_works_with_descriptors_past_1024(server: StandIn, kubeconfig: str, opened: str) -> None:
    """among-them: the forwarder's first stream failed; before-them: each connection's relay thread died."""
    errors: list[BaseException] = []
    hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)  # a relay thread's death is silent else
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=[sys.executable, "-c", ECHO],
                              start_timeout=20, api_timeout=5, address_mode="port-forward")
    try:
        with ExitStack() as fds:
            if opened == "among-them":
                fds.enter_context(many_fds())
            runner.start(LaunchSpec(env={}))
            announced = next(runner.stdout_lines()).split("|")[3]
            _, address = runner.plugin_to_host("tcp", announced)  # opens (and closes) a first stream to check it
            if opened == "before-them":
                fds.enter_context(many_fds())
            host, port = address.rsplit(":", 1)
            for n in range(2):
                with socket.create_connection((host, int(port)), timeout=10) as conn:
                    assert conn.fileno() >= 1024
                    conn.sendall(b"hello %d" % n)
                    got = b""
                    while len(got) < 7:
                        chunk = conn.recv(100)
                        if not chunk:
                            break
                        got += chunk
                    assert got == b"hello %d" % n, f"the forwarded connection failed; thread errors {errors!r}"
        assert not errors
    finally:
        threading.excepthook = hook
        runner.kill(0)
