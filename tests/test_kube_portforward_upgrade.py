"""The port-forward WebSocket upgrade plugbay does itself: bounded in time, every bad answer a typed error.

The misbehaving API servers here are real sockets on 127.0.0.1 answering (or not)
what a broken API server or proxy would; the good path runs against the stand-in
over HTTPS with a client certificate and a bearer token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from plugbay.errors import EngineUnavailableError, PermissionDeniedError, RunnerError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.kubernetes import KubernetesRunner
from tests.kube_standin.fixtures import need_docker, testapp  # noqa: F401
from tests.kube_standin.server import StandIn
from tests.loopback_http_util import LoopbackServer

pytestmark = pytest.mark.kubernetes
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HANDSHAKE = "1|1|tcp|0.0.0.0:4000|grpc"

# (the request head) -> what the fake API server sends back; None: send nothing, hold the connection
Answer = Callable[[bytes], bytes | None]


class RawServer:
    """A TCP listener on 127.0.0.1 that reads one request head per connection and answers it as told."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="plugbay-test-rawserver")
        self._thread.start()

    def _run(self) -> None:
        conns = []
        try:
            while not self._stop.is_set():
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    continue
                conns.append(conn)
                head = self._read_head(conn)
                if head is None:
                    continue  # not HTTP (a TLS hello) or no end: hold it unanswered
                self.requests.append(head)
                reply = self.answer(head)
                if reply == b"":
                    conn.close()  # hang up without an answer
                elif reply is not None:
                    conn.sendall(reply)
        finally:
            for conn in conns:  # held open until the test ends: "accepted, never answered"
                conn.close()

    def _read_head(self, conn: socket.socket) -> bytes | None:
        conn.settimeout(0.2)
        head = b""
        while b"\r\n\r\n" not in head and not self._stop.is_set():
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            head += chunk
        return head if b"\r\n\r\n" in head else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._listener.close()


def raw_serving(answer: Answer) -> Iterator[RawServer]:
    """A RawServer for a fixture: closed at the end whatever the test did."""
    server = RawServer(answer)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture()
def raw_server(request: pytest.FixtureRequest) -> Iterator[RawServer]:
    yield from raw_serving(request.param)


def runner_for(url: str, start_timeout: float = 3.0) -> KubernetesRunner:
    """A runner for pod default/p on the API at ``url`` (no pod is made: plugin_to_host only port-forwards)."""
    cfg = client.Configuration(host=url, api_key={"authorization": "standin-token"},
                               api_key_prefix={"authorization": "Bearer"})
    runner = KubernetesRunner("img", namespace="default", address_mode="port-forward",
                              api_client=client.ApiClient(cfg), start_timeout=start_timeout)
    runner.pod_name = "p"
    return runner


def key_of(head: bytes) -> str:
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "sec-websocket-key":
            return value.strip()
    return ""


def accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def switching(accept_value: str) -> bytes:
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_value}\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n").encode()


def status(code: int, reason: str, message: str) -> bytes:
    body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                       "code": code}).encode()
    return (f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "\r\n").encode() + body


def never(head: bytes) -> None:
    return None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("raw_server", [never], indirect=True)
@pytest.mark.parametrize("scheme, step", [("http", "get an answer to the WebSocket upgrade from"),
                                          ("https", "complete the TLS handshake with")])
def test_an_api_server_that_never_answers_fails_within_start_timeout(raw_server: RawServer, scheme: str,
                                                                     step: str) -> None:
    runner = runner_for(f"{scheme}://127.0.0.1:{raw_server.port}", start_timeout=2)
    try:
        with pytest.raises(EngineUnavailableError,
                           match=f"port-forward to pod default/p port 4000: could not {step} the Kubernetes"
                                 f" API at {scheme}://127.0.0.1:{raw_server.port} within 2s.*raise the"
                                 " runner's start_timeout"):
            runner.plugin_to_host("tcp", "0.0.0.0:4000")
    finally:
        runner.detach()
    if scheme == "http":  # what was asked: the upgrade with the subprotocol and the Configuration's token
        head = raw_server.requests[0].decode()
        assert head.startswith("GET /api/v1/namespaces/default/pods/p/portforward?ports=4000 HTTP/1.1\r\n")
        assert "authorization: Bearer standin-token\r\n" in head
        assert "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n" in head and "Upgrade: websocket" in head


BAD_ANSWERS = {
    "wrong-accept": (lambda head: switching(accept("not-the-key")), RunnerError,
                     r"not a valid one \(Sec-WebSocket-Accept: .* \(expected .*\)\)\. Check for a proxy"),
    "no-accept": (lambda head: switching(accept(key_of(head))).replace(b"Sec-WebSocket-Accept", b"X-Other"),
                  RunnerError, r"Sec-WebSocket-Accept: \(missing\)"),
    "200-not-101": (lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", RunnerError,
                    "port 4000 failed: 200 OK: OK. Check that the pod is Running"),
    "500-status": (lambda head: status(500, "Internal Server Error", "etcd is on fire"), RunnerError,
                   "failed: 500 Internal Server Error: etcd is on fire. Check that the pod is Running"),
    "403": (lambda head: status(403, "Forbidden", "user cannot create pods/portforward"), PermissionDeniedError,
            r"refused to create pods/portforward.*\(server said: user cannot create pods/portforward\)"),
    "401": (lambda head: status(401, "Unauthorized", "Unauthorized"), PermissionDeniedError,
            r"rejected the host's credentials \(401\).*refresh the kubeconfig's token"),
    "not-http": (lambda head: b"SSH-2.0-OpenSSH_9.2\r\n\r\n", RunnerError,
                 "answered the WebSocket upgrade with 'SSH-2.0-OpenSSH_9.2', which is not an HTTP/1.1 status"),
    # a status code of non-ASCII digits (str.isdigit() says yes to these, int() does not)
    "latin1-digit-status": (lambda head: b"HTTP/1.1 \xb2\xb3\xb9 Weird\r\n\r\n", RunnerError,
                            r"answered the WebSocket upgrade with 'HTTP/1.1 \xb2\xb3\xb9 Weird', which is not"),
    # a refusal whose body nests deeper than Python's recursion limit: the reason is the message
    "deep-json-body": (lambda head: (b"HTTP/1.1 500 Deep\r\nContent-Length: 60000\r\n\r\n" + b"[" * 60000),
                       RunnerError, "port 4000 failed: 500 Deep: Deep. Check that the pod is Running"),
    "hang-up": (lambda head: b"", EngineUnavailableError,
                "closed the connection before it answered the upgrade. Check that the cluster .*is up"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("raw_server, error, message", list(BAD_ANSWERS.values()), ids=list(BAD_ANSWERS),
                         indirect=["raw_server"])
def test_a_bad_answer_to_the_upgrade_is_a_typed_error(raw_server: RawServer, error: type[Exception],
                                                      message: str) -> None:
    runner = runner_for(f"http://127.0.0.1:{raw_server.port}")
    try:
        with pytest.raises(error, match=message):
            runner.plugin_to_host("tcp", "0.0.0.0:4000")
    finally:
        runner.detach()


def test_a_good_answer_from_the_raw_server_is_accepted(tmp_path: Path) -> None:
    """The checks above are not over-strict: the same server answering correctly gets through the upgrade."""
    server = RawServer(lambda head: switching(accept(key_of(head))))
    runner = runner_for(f"http://127.0.0.1:{server.port}")
    try:
        _, address = runner.plugin_to_host("tcp", "0.0.0.0:4000")  # the probe stream opened and closed
        assert address.startswith("127.0.0.1:")
    finally:
        runner.detach()
        server.close()


# --- the good path over HTTPS, client certificate and bearer token, against the stand-in -----------

@pytest.fixture(scope="module")
def tls_standin() -> Iterator[StandIn]:
    need_docker()
    server = StandIn(runtime="docker", tls=True, client_certs=True).start()
    try:
        yield server
    finally:
        server.stop()


def test_port_forward_over_tls_with_client_cert_and_token(tls_standin: StandIn, tmp_path: Path,
                                                          testapp: str) -> None:  # noqa: F811
    kubeconfig = tls_standin.write_kubeconfig(str(tmp_path / "kubeconfig.yaml"))
    assert tls_standin.url.startswith("https://")
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60, address_mode="port-forward")
    runner.start(LaunchSpec(env={}, labels={"plugbay.plugin": "testapp"}))
    try:
        assert next(runner.stdout_lines()) == HANDSHAKE
        _, address = runner.plugin_to_host("tcp", "0.0.0.0:4000")
        for line in ("over tls", "x" * 40000):  # a line longer than one TLS record, both ways
            with socket.create_connection(tuple(address.rsplit(":", 1)), timeout=10) as conn:  # type: ignore[arg-type]
                conn.sendall(line.encode() + b"\n")
                assert conn.makefile("rb").readline().decode().strip() == f"echo: {line}"
    finally:
        runner.kill(0)


def test_tls_to_an_api_server_with_an_unknown_ca_is_a_typed_error(tls_standin: StandIn, tmp_path: Path) -> None:
    ca = tmp_path / "other-ca.pem"
    from tests.kube_standin.tlscerts import make_cluster_certs

    ca.write_bytes(make_cluster_certs().ca.cert)
    cfg = client.Configuration(host=tls_standin.url, api_key={"authorization": "Bearer standin-token"})
    cfg.ssl_ca_cert = str(ca)
    runner = KubernetesRunner("img", namespace="default", address_mode="port-forward",
                              api_client=client.ApiClient(cfg), start_timeout=5)
    runner.pod_name = "p"
    try:
        with pytest.raises(EngineUnavailableError, match="TLS handshake with the Kubernetes API at https://.*"
                                                         "failed: .*certificate verify failed.*certificate-authority"):
            runner.plugin_to_host("tcp", "0.0.0.0:4000")
    finally:
        runner.detach()


class ConnectProxy(LoopbackServer):
    """An HTTP CONNECT proxy on 127.0.0.1 that tunnels to 127.0.0.1 ports only and records each request."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        super().__init__("plugbay-test-proxy")

    def serve(self, conn: socket.socket) -> None:
        import select

        with conn:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head and (chunk := conn.recv(1)):
                head += chunk
            text = head.decode("latin-1")
            self.requests.append(text)
            host, _, port = text.split(" ")[1].rpartition(":")
            if host != "127.0.0.1":  # never dial anything but loopback
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                return
            with socket.create_connection((host, int(port)), timeout=5) as up:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                conn.settimeout(None)
                up.settimeout(None)
                while not self.stopping.is_set():
                    ready, _, _ = select.select([conn, up], [], [], 0.2)
                    for src in ready:
                        data = src.recv(65536)
                        if not data:
                            return
                        (up if src is conn else conn).sendall(data)


def test_port_forward_through_an_http_proxy(tls_standin: StandIn, tmp_path: Path, testapp: str) -> None:  # noqa: F811
    from kubernetes import config

    from plugbay.runners.kubernetes.portforward import PortForwarder

    kubeconfig = tls_standin.write_kubeconfig(str(tmp_path / "kubeconfig.yaml"))
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60, address_mode="port-forward")
    runner.start(LaunchSpec(env={}, labels={"plugbay.plugin": "testapp"}))
    proxy = ConnectProxy()
    try:
        assert next(runner.stdout_lines()) == HANDSHAKE
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        cfg.proxy = f"http://127.0.0.1:{proxy.port}"
        cfg.proxy_headers = {"proxy-authorization": "Basic dTpw"}
        fwd = PortForwarder(cfg, "default", runner.pod_name, 4000, "denied", timeout=10)
        try:
            host, port = fwd.address.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                conn.sendall(b"via proxy\n")
                assert conn.makefile("rb").readline() == b"echo: via proxy\n"
        finally:
            fwd.close()
        api_port = tls_standin.url.rsplit(":", 1)[1]
        assert proxy.requests and all(r.startswith(f"CONNECT 127.0.0.1:{api_port} HTTP/1.1\r\n")
                                      and "proxy-authorization: Basic dTpw\r\n" in r for r in proxy.requests)
    finally:
        proxy.close()
        runner.kill(0)


@pytest.mark.parametrize("no_proxy", ["127.0.0.0/8", "example.org,127.0.0.1", ""])
def test_no_proxy_bypasses_the_proxy(no_proxy: str, closed_port: int) -> None:
    closed = closed_port  # nothing listens here
    server = RawServer(lambda head: switching(accept(key_of(head))))
    runner = runner_for(f"http://127.0.0.1:{server.port}")
    runner._api_client.configuration.proxy = f"http://127.0.0.1:{closed}"
    runner._api_client.configuration.no_proxy = no_proxy
    try:
        if no_proxy:
            assert runner.plugin_to_host("tcp", "0.0.0.0:4000")[1].startswith("127.0.0.1:")
        else:
            with pytest.raises(EngineUnavailableError, match="could not connect through the proxy to the Kubernetes"
                                                             " API at http://127.0.0.1:.*Connection refused"):
                runner.plugin_to_host("tcp", "0.0.0.0:4000")
    finally:
        runner.detach()
        server.close()


@pytest.mark.timeout(60)
def test_detach_does_not_wait_for_a_port_forward_being_opened() -> None:
    """The upgrade is answered only after detach() returned: detach cannot have waited for the opening."""
    gate = threading.Event()
    server = RawServer(lambda head: switching(accept(key_of(head))) if gate.wait(20) else None)
    runner = runner_for(f"http://127.0.0.1:{server.port}", start_timeout=30)
    errors: list[BaseException] = []

    def open_forward() -> None:
        try:
            runner.plugin_to_host("tcp", "0.0.0.0:4000")
        except BaseException as exc:
            errors.append(exc)

    opener = threading.Thread(target=open_forward, name="plugbay-test-opener")
    opener.start()
    try:
        for _ in range(200):  # bounded: until the upgrade request arrived
            if server.requests:
                break
            threading.Event().wait(0.05)
        assert server.requests, "the port-forward upgrade never reached the server"
        runner.detach()
    finally:
        gate.set()
        opener.join(timeout=30)
        server.close()
    assert len(errors) == 1 and isinstance(errors[0], RunnerError)
    assert "was killed or detached while its port-forward opened; start a new runner" in str(errors[0])
    assert not [t.name for t in threading.enumerate() if t.name.startswith("plugbay-kpf-")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("headers", [{"proxy-authorization": "Basic dTpw\r\nX-Injected: 1"},
                                     {"X-Injected: 1\r\nproxy-authorization": "Basic dTpw"}])
def test_a_line_break_in_proxy_headers_is_refused_before_the_proxy_sees_it(headers: dict[str, str]) -> None:
    """Config values never become extra header lines in the CONNECT request (header injection)."""
    proxy = RawServer(never)
    runner = runner_for("http://127.0.0.1:1")  # never dialled: the proxy is asked to tunnel there
    runner._api_client.configuration.proxy = f"http://127.0.0.1:{proxy.port}"
    runner._api_client.configuration.proxy_headers = headers
    try:
        with pytest.raises(RunnerError, match="the kubeconfig's proxy headers contain a line break or a bad"
                                              " header name; fix the proxy settings"):
            runner.plugin_to_host("tcp", "0.0.0.0:4000")
    finally:
        runner.detach()
        proxy.close()
    assert not [r for r in proxy.requests if b"X-Injected" in r]


@pytest.mark.timeout(60)
def test_close_ends_a_stream_whose_upgrade_is_still_unanswered(caplog: pytest.LogCaptureFixture) -> None:
    """close() (kill, detach) must not leave a connection's thread and socket waiting out the upgrade's
    start_timeout: the API server answers the probe, then takes the next upgrade and never answers it."""
    answers = iter([True])
    server = RawServer(lambda head: switching(accept(key_of(head))) if next(answers, False) else None)
    runner = runner_for(f"http://127.0.0.1:{server.port}", start_timeout=50)
    try:
        _, address = runner.plugin_to_host("tcp", "0.0.0.0:4000")
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            for _ in range(200):  # bounded: until the connection's own upgrade reached the server
                if len(server.requests) >= 2:
                    break
                threading.Event().wait(0.05)
            assert len(server.requests) == 2, "the connection's upgrade never reached the server"
            with caplog.at_level("WARNING", logger="plugbay.runners.kubernetes"):
                runner.detach()
            assert "failed" not in caplog.text  # ending the upgrade is close()'s doing, not a failure
            left = [t.name for t in threading.enumerate() if t.name.startswith("plugbay-kpf-")]
            assert not left, f"close() left {left} waiting for the upgrade's answer"
            conn.settimeout(10)
            assert conn.recv(1) == b""  # the host's connection was closed too
    finally:
        runner.detach()
        server.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "https://127.0.0.1:port"])
def test_a_bad_port_in_the_api_address_is_a_typed_error(url: str) -> None:
    # a client passed with such a host is refused as it is passed (test_kube_api_client_host.py); one whose
    # configuration changed afterwards is still refused by the upgrade, typed
    runner = runner_for("http://127.0.0.1:1")
    runner._api_client.configuration.host = url
    try:
        with pytest.raises(RunnerError, match="is not an http\\(s\\) URL; fix the server field of the kubeconfig"):
            runner.plugin_to_host("tcp", "0.0.0.0:4000")
    finally:
        runner.detach()


def test_a_bad_port_in_the_proxy_address_is_a_typed_error() -> None:
    runner = runner_for("http://127.0.0.1:1")
    runner._api_client.configuration.proxy = "http://127.0.0.1:99999"
    try:
        with pytest.raises(RunnerError, match="the kubeconfig's proxy 'http://127.0.0.1:99999' is not an http://"
                                              " proxy URL with a valid port; .* Use an http:// proxy or none"):
            runner.plugin_to_host("tcp", "0.0.0.0:4000")
    finally:
        runner.detach()
