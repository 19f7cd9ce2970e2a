"""A plugin in a pod whose handshake line plugbay refuses gets the same typed error, at once, as a local one.

Pod logs merge stdout and stderr, so the pod runner picks the handshake line out of the log. A
line of a netrpc plugin or of another core protocol version was taken for a log line, and the host
reported a HandshakeTimeoutError ("did not print its handshake line") after the whole start_timeout.
The pods are local processes on the Kubernetes stand-in; the same line is also given to a process plugin.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from plugbay import Client, ClientConfig, HandshakeConfig  # noqa: E402
from plugbay.core.protocol.handshake import is_handshake_line  # noqa: E402
from plugbay.errors import ProtocolMismatchError, UnsupportedProtocolError  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.server import StandIn  # noqa: E402

pytestmark = pytest.mark.kubernetes
START_TIMEOUT = 10.0
REFUSED = [("1|1|tcp|127.0.0.1:4000|netrpc", UnsupportedProtocolError),
           ("1|1|tcp|127.0.0.1:4000", UnsupportedProtocolError),  # no protocol field: netrpc, as go-plugin
           ("2|1|tcp|127.0.0.1:4000|grpc", ProtocolMismatchError),
           ("1|1|tcp|127.0.0.1:4000|http", ProtocolMismatchError)]


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = StandIn(runtime="process").start()
    try:
        yield server.write_kubeconfig(str(tmp_path_factory.mktemp("kube") / "kubeconfig.yaml"))
    finally:
        server.stop()


def _program(line: str, log_first: bool) -> list[str]:
    # a pod's log has other lines before the handshake; a process's stdout must open with it
    first = "print('a log line first', flush=True); " if log_first else ""
    return [sys.executable, "-c", f"import time; {first}print({line!r}, flush=True); time.sleep(60)"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("line,error", REFUSED)
@pytest.mark.parametrize("where", ["process", "pod"])
def test_a_refused_handshake_line_is_reported_as_such(kubeconfig: str, line: str, error: type[Exception],
                                                      where: str) -> None:
    """The typed error, not a HandshakeTimeoutError once START_TIMEOUT is over (hence no time is asserted)."""
    source: dict[str, Any] = (
        {"cmd": _program(line, log_first=False)} if where == "process" else
        {"runner": KubernetesRunner("no-engine/refused:1", kubeconfig=kubeconfig,
                                    command=_program(line, log_first=True))})
    client = Client(ClientConfig(handshake=HandshakeConfig(1, "K", "V"), plugins={}, start_timeout=START_TIMEOUT,
                                 **source))
    try:
        with pytest.raises(error):
            client.start()
    finally:
        client.kill()


@pytest.mark.parametrize("line", [line for line, _ in REFUSED] + ["1|1|unix|/tmp/plugin.sock|grpc",
                                                                    " 1|2|tcp|[::1]:80|grpc|\n",
                                                                    # fields past the seventh are ignored (go-plugin)
                                                                    "1|1|tcp|127.0.0.1:1|grpc|x|true|extra"])
def test_handshake_lines_plugbay_refuses_are_handshake_lines(line: str) -> None:
    assert is_handshake_line(line)


@pytest.mark.parametrize("line", ["", "starting up", "10|20|30|40", "a|b|c|d|e", "2|x|tcp|127.0.0.1:1|grpc",
                                  "2|1|udp|127.0.0.1:1|grpc", "1|1|tcp|no port|grpc", "| 1|1|tcp|h:1|grpc",
                                  '{"@level":"info","@message":"1|1|tcp|127.0.0.1:1|grpc"}'])
def test_log_lines_are_not_handshake_lines(line: str) -> None:
    assert not is_handshake_line(line)
