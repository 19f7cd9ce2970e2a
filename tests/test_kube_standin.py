"""The Kubernetes API stand-in itself: HTTP API semantics, WebSocket framing, process fallback."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.stream import portforward

from plugbay.runners.base import LaunchSpec
from plugbay.runners.kubernetes import KubernetesRunner
from tests.kube_standin import TOKEN, StandIn
from tests.kube_standin.fixtures import kubeconfig, standin, testapp  # noqa: F401
from tests.kube_standin.portforward import OP_BINARY, OP_CLOSE, OP_PING, FrameReader, accept_key, frame

APP = Path(__file__).resolve().parent / "kube_standin" / "testapp" / "app.py"


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_frame_reader_handles_lengths_masks_fragments_and_partial_input() -> None:
    reader = FrameReader()
    big = os.urandom(70000)
    data = masked(OP_BINARY, b"\x00hi") + masked(OP_BINARY, b"\x00" + b"x" * 300) + masked(OP_BINARY, big) \
        + masked(OP_BINARY, b"\x00ab", fin=False) + masked(0, b"cd") + masked(OP_PING, b"p")
    out: list[tuple[int, bytes]] = []
    for i in range(0, len(data), 777):  # arrives in arbitrary pieces
        out += reader.feed(data[i:i + 777])
    assert out == [(OP_BINARY, b"\x00hi"), (OP_BINARY, b"\x00" + b"x" * 300), (OP_BINARY, big),
                   (OP_BINARY, b"\x00abcd"), (OP_PING, b"p")]
    assert frame(OP_BINARY, b"z" * 200)[:4] == bytes([0x82, 126]) + struct.pack(">H", 200)
    # RFC 6455's example key
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def raw(standin: StandIn, path: str, method: str = "GET", body: Any = None,
        token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(standin.url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def ws_upgrade(standin: StandIn, path: str) -> socket.socket:
    """A raw port-forward WebSocket (after the 101 response), with a 10 s timeout on every call."""
    url = urllib.parse.urlsplit(standin.url)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"server closed during the upgrade: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101") and accept_key(key).encode() in head, head
    return sock


def test_api_errors_are_kubernetes_status_objects(standin: StandIn, testapp: str) -> None:  # noqa: F811
    code, body = raw(standin, "/api/v1/namespaces/default/pods", token=None)
    assert code == 401 and body["kind"] == "Status" and body["reason"] == "Unauthorized"
    code, body = raw(standin, "/api/v1/namespaces/default/pods/nope")
    assert (code, body["reason"], body["message"]) == (404, "NotFound", 'pods "nope" not found')
    code, body = raw(standin, "/api/v1/namespaces/default/pods", "POST",
                     {"metadata": {"name": "bad"}, "spec": {"containers": [{"name": "c"}]}})
    assert code == 422 and "spec.containers[0].image: Required value" in body["message"]
    code, body = raw(standin, "/api/v1/nodes")
    assert code == 404
    standin.deny("list", "events")
    try:
        code, body = raw(standin, "/api/v1/namespaces/default/events")
        assert code == 403 and body["reason"] == "Forbidden" and body["code"] == 403
        assert 'cannot list resource "events" in API group "" in the namespace "default"' in body["message"]
    finally:
        standin.allow_all()


def test_pods_selectors_duplicates_logs_and_events(standin: StandIn, kubeconfig: str, testapp: str) -> None:  # noqa: F811
    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    try:
        pod = {"metadata": {"name": "sel-a", "labels": {"app": "a", "tier": "x"}},
               "spec": {"restartPolicy": "Never", "nodeSelector": {"disktype": "ssd"},
                        "containers": [{"name": "plugin", "image": testapp}]}}
        api.create_namespaced_pod("default", client.V1Pod.from_dict(pod))
        with pytest.raises(client.ApiException) as info:
            api.create_namespaced_pod("default", client.V1Pod.from_dict(pod))
        assert info.value.status == 409
        names = lambda sel: [p.metadata.name for p in api.list_namespaced_pod("default", label_selector=sel).items]  # noqa: E731
        assert names("app=a") == ["sel-a"] and names("app=a,tier!=x") == [] and names("app") == ["sel-a"]
        assert names("!app") == [] and names("app==b") == []
        # unschedulable: no container, so its log is refused like a kubelet would
        with pytest.raises(client.ApiException) as info:
            api.read_namespaced_pod_log("sel-a", "default")
        assert info.value.status == 400 and "is waiting to start" in info.value.body
        events = api.list_namespaced_event("default", field_selector="involvedObject.name=sel-a").items
        assert [e.reason for e in events] == ["FailedScheduling"]
        api.delete_namespaced_pod("sel-a", "default", grace_period_seconds=0)
    finally:
        api.api_client.close()


def test_port_forward_protocol_edges(standin: StandIn, kubeconfig: str, testapp: str) -> None:  # noqa: F811
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig)
    runner.start(LaunchSpec(env={}))
    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    try:
        assert next(runner.stdout_lines()).endswith("|grpc")
        # a port the container does not publish: the error channel says so and the data socket ends
        pf = portforward(api.connect_get_namespaced_pod_portforward, runner.pod_name, "default", ports="5555")
        sock = pf.socket(5555)
        sock.settimeout(10)
        assert sock.recv(10) == b""
        assert "error forwarding port 5555" in (pf.error(5555) or "")
        sock.close()
        # the published port relays both ways
        pf = portforward(api.connect_get_namespaced_pod_portforward, runner.pod_name, "default", ports="4000")
        sock = pf.socket(4000)
        sock.settimeout(10)
        sock.sendall(b"ping\n")
        assert sock.recv(100) == b"echo: ping\n"
        sock.close()
        # a close the server starts waits for the client's Close (RFC 6455 7.1.1): frames the
        # client still has in flight meet an open socket, not a reset
        with ws_upgrade(standin, f"/api/v1/namespaces/default/pods/{runner.pod_name}/portforward?ports=5555") as ws:
            reader, ops = FrameReader(), []
            while OP_CLOSE not in ops:
                data = ws.recv(65536)
                assert data, f"stream ended before the server's Close; frames so far: {ops}"
                ops += [op for op, _ in reader.feed(data)]
            ws.sendall(masked(OP_BINARY, b"\x00late data"))
            ws.sendall(masked(OP_CLOSE, struct.pack(">H", 1000)))
            assert ws.recv(65536) == b""
        # a plain GET (no WebSocket upgrade) is refused
        code, body = raw(standin, f"/api/v1/namespaces/default/pods/{runner.pod_name}/portforward?ports=4000")
        assert code == 400 and "WebSocket" in body["message"]
    finally:
        api.api_client.close()
        runner.kill(0)


def test_process_fallback_runs_the_pod_command(tmp_path: Path) -> None:
    server = StandIn(runtime="process").start()
    try:
        kubeconfig = server.write_kubeconfig(str(tmp_path / "kubeconfig"))
        runner = KubernetesRunner("no-engine/testapp:1", kubeconfig=kubeconfig,
                                  command=[sys.executable, "-u", str(APP)], allow_loopback=True)
        runner.start(LaunchSpec(env={"APP_MODE": "serve"}))
        try:
            line = next(runner.stdout_lines())
            announced = line.split("|")[3]  # a free 127.0.0.1 port: processes share the host's ports
            assert line.startswith("1|1|tcp|127.0.0.1:") and line.endswith("|grpc")
            for mode in ("port-forward", "in-cluster"):
                runner.address_mode = mode
                _, address = runner.plugin_to_host("tcp", announced)
                host, port = address.rsplit(":", 1)
                import socket

                with socket.create_connection((host, int(port)), timeout=10) as conn:
                    conn.sendall(b"from a process\n")
                    assert conn.makefile("rb").readline() == b"echo: from a process\n"
        finally:
            runner.kill(1)
        assert runner.wait(10) == 0
    finally:
        server.stop()


def test_kv_through_the_process_fallback(tmp_path: Path) -> None:
    """Without an engine the stand-in runs the pod's command: the KV example as a local process."""
    repo = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo / "examples" / "kv"))
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import Client, ClientConfig

    server = StandIn(runtime="process").start()
    try:
        kubeconfig = server.write_kubeconfig(str(tmp_path / "kubeconfig"))
        runner = KubernetesRunner("no-engine/kv:1", kubeconfig=kubeconfig,
                                  command=[sys.executable, str(repo / "examples" / "kv" / "plugin.py")])
        with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                                 start_timeout=60)) as kv_client:
            kv = kv_client.dispense(PLUGIN_NAME)
            kv.put("k", b"from a process pod")
            assert kv.get("k") == b"from a process pod"
        assert runner.wait(10) == 0
    finally:
        server.stop()


def test_services_and_endpointslices_api(standin: StandIn, kubeconfig: str, testapp: str) -> None:  # noqa: F811
    """Services CRUD, the slices the stand-in keeps for them, resourceVersion replay and 410 Expired."""
    svc = {"metadata": {"name": "echo", "labels": {"tier": "x"}},
           "spec": {"selector": {"app": "echo"}, "ports": [{"name": "tcp", "port": 80, "targetPort": 4000}]}}
    code, created = raw(standin, "/api/v1/namespaces/default/services", "POST", svc)
    assert code == 201 and created["spec"]["clusterIP"] == "None"  # headless: no kube-proxy here
    assert raw(standin, "/api/v1/namespaces/default/services", "POST", svc)[0] == 409
    code, body = raw(standin, "/api/v1/namespaces/default/services", "POST",
                     {"metadata": {"name": "bad"}, "spec": {"ports": [{"port": 1}, {"port": 2}]}})
    assert code == 422 and "spec.ports[0].name: Required value" in body["message"]
    assert [s["metadata"]["name"] for s in raw(standin, "/api/v1/namespaces/default/services?labelSelector=tier%3Dx")[1]["items"]] == ["echo"]
    slices_path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Decho"
    code, listed = raw(standin, slices_path)
    assert code == 200 and listed["items"] == []
    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    try:
        api.create_namespaced_pod("default", client.V1Pod.from_dict({
            "metadata": {"name": "echo-1", "labels": {"app": "echo"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": testapp,
                                                                "ports": [{"containerPort": 4000}]}]}}))
        deadline = time.monotonic() + 60
        while not raw(standin, slices_path)[1]["items"]:
            assert time.monotonic() < deadline, "no slice for the running pod"
            time.sleep(0.2)
        (slc,) = raw(standin, slices_path)[1]["items"]
        (ep,) = slc["endpoints"]
        assert ep["addresses"] == ["127.0.0.1"] and ep["targetRef"]["name"] == "echo-1"
        assert ep["conditions"] == {"ready": True, "serving": True, "terminating": False}
        (port,) = slc["ports"]
        deadline = time.monotonic() + 30
        while True:  # the slice is reachable (once the app inside listens: no readiness probes here)
            try:
                with socket.create_connection(("127.0.0.1", port["port"]), timeout=10) as conn:
                    conn.sendall(b"hi\n")
                    line = conn.makefile("rb").readline()
                if line:  # the engine's proxy accepts and closes while nothing listens inside yet
                    assert line == b"echo: hi\n"
                    break
                raise ConnectionResetError("closed before an answer")
            except ConnectionError:
                assert time.monotonic() < deadline, "the pod's published port never answered"
                time.sleep(0.2)
        assert raw(standin, f"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/{slc['metadata']['name']}")[1] == slc
        # a watch from the list's version replays later changes: the deletion drains, then removes
        api.delete_namespaced_pod("echo-1", "default", grace_period_seconds=1)
        since = listed["metadata"]["resourceVersion"]
        events = watch_events(standin, slices_path + f"&watch=true&resourceVersion={since}&timeoutSeconds=20",
                              until="DELETED")
        kinds = [(e["type"], (e["object"]["endpoints"] or [{}])[0].get("conditions", {}).get("terminating"))
                 for e in events]
        assert kinds[0] == ("ADDED", False) and ("MODIFIED", True) in kinds and kinds[-1][0] == "DELETED"
        # after expire_watches() an old version is gone: an ERROR event with a 410 Status
        standin.expire_watches()
        (err,) = watch_events(standin, slices_path + f"&watch=true&resourceVersion={since}", until="ERROR")
        assert err["object"]["code"] == 410 and err["object"]["reason"] == "Expired"
        code, _ = raw(standin, "/api/v1/namespaces/default/services/echo", "DELETE")
        assert code == 200 and raw(standin, "/api/v1/namespaces/default/services/echo")[0] == 404
        standin.deny("list", "endpointslices")
        code, body = raw(standin, slices_path)
        assert code == 403 and 'in API group "discovery.k8s.io"' in body["message"]
    finally:
        standin.allow_all()
        api.api_client.close()


def watch_events(standin: StandIn, path: str, until: str) -> list[dict[str, Any]]:
    """Read a watch stream's events up to the first of type ``until`` (10 s per read)."""
    req = urllib.request.Request(standin.url + path)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    events = []
    with urllib.request.urlopen(req, timeout=10) as resp:
        for line in resp:
            events.append(json.loads(line))
            if events[-1]["type"] == until:
                return events
    raise AssertionError(f"the watch ended before a {until} event: {events}")


def test_deployments_api_edges(standin: StandIn) -> None:  # noqa: F811
    base = "/apis/apps/v1/namespaces/default/deployments"
    dep = {"metadata": {"name": "web"}, "spec": {
        "replicas": 0, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}
    code, created = raw(standin, base, "POST", dep)
    assert code == 201 and created["status"] == {"observedGeneration": 1, "replicas": 0, "readyReplicas": 0,
                                                 "availableReplicas": 0, "updatedReplicas": 0}
    assert raw(standin, base, "POST", dep)[0] == 409
    bad = {**dep, "metadata": {"name": "bad"}, "spec": {**dep["spec"], "selector": {"matchLabels": {"app": "db"}}}}
    code, body = raw(standin, base, "POST", bad)
    assert code == 422 and "`selector` does not match template `labels`" in body["message"]
    code, scale = raw(standin, f"{base}/web/scale")
    assert code == 200 and scale["kind"] == "Scale" and scale["spec"] == {"replicas": 0}
    assert scale["status"]["selector"] == "app=web"
    code, body = raw(standin, f"{base}/web/scale", "PATCH", {"spec": {"replicas": -1}})
    assert code == 422 and "non-negative integer" in body["message"]
    assert raw(standin, f"{base}/nope/scale", "PATCH", {"spec": {"replicas": 1}})[0] == 404
    standin.deny("patch", "deployments/scale")
    try:
        code, body = raw(standin, f"{base}/web/scale", "PATCH", {"spec": {"replicas": 1}})
        assert code == 403 and 'subresource "scale" in API group "apps"' in body["message"]
    finally:
        standin.allow_all()
    assert [d["metadata"]["name"] for d in raw(standin, base)[1]["items"]] == ["web"]
    assert raw(standin, f"{base}/web", "DELETE")[0] == 200 and raw(standin, f"{base}/web")[0] == 404


def test_separate_standin_serves_from_its_own_process_and_stops_with_stdin() -> None:
    from tests.kube_standin.separate import SeparateStandIn

    standin = SeparateStandIn(runtime="process").start()
    proc = standin._proc
    assert proc is not None and proc.pid != os.getpid()
    try:
        api = client.CoreV1Api(config.new_client_from_config(config_file=standin.kubeconfig))
        assert api.list_namespaced_pod("default").items == []
        folder = os.path.dirname(standin.kubeconfig)
    finally:
        standin.stop()
    assert proc.returncode == 0  # stopped by its stdin closing, not killed
    assert standin.container_start_seconds() == []  # the process runtime starts no containers
    assert not os.path.exists(folder)


def test_a_log_read_stopped_early_closes_its_engine_connection(standin: StandIn) -> None:  # noqa: F811
    # the reader stops when the log's HTTP client went away, the container still logging: docker-py's
    # stream close() leaves the socket's descriptor to the response, in a cycle only the collector freed
    import gc

    from tests.kube_standin.images import BASE_IMAGE
    from tests.kube_standin.runtime import ContainerRequest

    def sockets() -> set[str]:
        found = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                found.add(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                continue
        return {t for t in found if t.startswith("socket:")}

    box = standin.store.backend.run(ContainerRequest(
        pod_key="default/early-log", image=BASE_IMAGE, command=["sh", "-c", "while :; do echo x; sleep 0.1; done"],
        args=None, env={}, ports=[], labels={}))
    gc.disable()
    try:
        before = sockets()
        chunks = box.logs(True, None)
        assert b" x" in next(chunks)
        chunks.close()
        assert sockets() <= before
    finally:
        gc.enable()
        box.remove()
