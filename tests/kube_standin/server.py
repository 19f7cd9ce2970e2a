"""A Kubernetes API server stand-in that really runs pods (tests only; no cluster runs here).

Speaks the subset of the core/v1 API plugbay's pod runner uses, over plain HTTP
on 127.0.0.1 with bearer-token auth: pods create/get/list/watch/delete,
pods/log (with follow), events list, and pods/portforward over WebSocket; and
for network mode Services (create/get/list/delete) with the EndpointSlices
(discovery.k8s.io/v1 get/list/watch) kept for them (services.py), and minimal
apps/v1 Deployments (create/get/list/scale/delete, deployments.py).
Fault knobs: :meth:`StandIn.deny` (403 with a Kubernetes Status body),
:meth:`StandIn.drop_portforwards`, :meth:`StandIn.delete_pod` (under the host),
:meth:`StandIn.expire_watches` (410 Gone for slice watches that resume),
:meth:`StandIn.stall` (take the request, never answer it: a hung API server),
:meth:`StandIn.fail` (answer 500 at once: an API server failing fast),
:meth:`StandIn.cut_logs` (break the pod log streams). Pod logs honour timestamps,
sinceSeconds and sinceTime (whole seconds) as the API does.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from .deployments import ROUTES as DEPLOYMENT_ROUTES
from .deployments import DeploymentRoutes, DeploymentStore
from .podlogs import log_lines, log_since
from .pods import PodStore, Watcher
from .portforward import PROTOCOL, ForwardSession, accept_key
from .runtime import DockerBackend, ProcessBackend, docker_available
from .services import ServiceStore
from .services_api import ROUTES as SERVICE_ROUTES
from .services_api import ServiceRoutes
from .tlscerts import ClusterCerts, make_cluster_certs

TOKEN = "standin-token"
USER = "system:serviceaccount:default:plugbay-host"

_ROUTES = [
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$"), "log"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/portforward$"), "portforward"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$"), "pod"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods$"), "pods"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/events$"), "events"),
    (re.compile(r"^/api/v1/pods$"), "allpods"),
    *SERVICE_ROUTES,
    *DEPLOYMENT_ROUTES,
]
_GROUPS = {"endpointslices": "discovery.k8s.io", "deployments": "apps"}  # the rest is core ("")


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details or {}, "code": code}


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, standin: StandIn) -> None:
        self.standin = standin
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                             name="plugbay-standin-conn")
        with self.standin.lock:
            self.standin.conns.add(request)
            self.standin.threads = [x for x in self.standin.threads if x.is_alive()]
            self.standin.threads.append(t)
        t.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):  # TLS mode: the handshake here, not in the accept loop
            try:
                request.settimeout(10)
                request.do_handshake()
                request.settimeout(None)
            except OSError:
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.standin.lock:
            self.standin.conns.discard(request)
        super().shutdown_request(request)


class _Handler(ServiceRoutes, DeploymentRoutes, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        if os.environ.get("PLUGBAY_STANDIN_DEBUG"):
            super().log_message(format, *args)

    # --- plumbing ------------------------------------------------------------

    def _json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str, **details: Any) -> None:
        self._json(code, status_body(code, reason, message, details))

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw else {}

    def _allowed(self, verb: str, resource: str, ns: str | None, name: str | None = None) -> bool:
        standin = self.server.standin
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._status(401, "Unauthorized", "Unauthorized")
            return False
        with standin.lock:
            standin.calls[(verb, resource)] = standin.calls.get((verb, resource), 0) + 1
        if (verb, resource) in standin.held:  # slow: answered normally once released (bounded)
            standin.holding.set()
            standin.released.wait(120)
        if (verb, resource) in standin.stalled:  # hung: no answer until unstalled or stopped (bounded)
            standin.unstalled.wait(120)
            self.close_connection = True
            return False
        if (verb, resource) in standin.failing:
            self._status(500, "InternalError", f"the stand-in fails {verb} {resource} (test knob)")
            return False
        if (verb, resource) in standin.denied:
            group, _, sub = resource.partition("/")
            api_group = _GROUPS.get(group, "")
            what = f'{group}{"." + api_group if api_group else ""} "{name}"' if name else group
            msg = (f'{what} is forbidden: User "{USER}" cannot {verb} resource "{group}"'
                   + (f' with subresource "{sub}"' if sub else "")
                   + f' in API group "{api_group}" in the namespace "{ns}"')
            self._status(403, "Forbidden", msg, kind=group, **({"name": name} if name else {}))
            return False
        return True

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        for pattern, route in _ROUTES:
            m = pattern.match(url.path)
            if m:
                handler = getattr(self, f"_{method}_{route}", None)
                if handler is None:
                    self._status(405, "MethodNotAllowed", f"{method} is not supported on {url.path}")
                    return
                try:
                    handler(*m.groups(), q)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                return
        self._status(404, "NotFound", f"the server could not find the requested resource ({url.path})")

    def do_GET(self) -> None:
        self._dispatch("get")

    def do_POST(self) -> None:
        self._dispatch("post")

    def do_DELETE(self) -> None:
        self._dispatch("delete")

    def do_PATCH(self) -> None:
        self._dispatch("patch")

    # --- pods ----------------------------------------------------------------

    def _post_pods(self, ns: str, q: dict[str, str]) -> None:
        obj = self._body()
        if not self._allowed("create", "pods", ns):
            return
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = ns
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + os.urandom(3).hex()[:5]
            else:
                self._status(422, "Invalid", "Pod \"\" is invalid: metadata.name: Required value")
                return
        containers = (obj.get("spec") or {}).get("containers") or []
        bad = [f"spec.containers[{i}].{f}: Required value" for i, c in enumerate(containers)
               for f in ("name", "image") if not c.get(f)]
        if not containers or bad:
            self._status(422, "Invalid", f'Pod "{meta["name"]}" is invalid: '
                         + ("; ".join(bad) or "spec.containers: Required value"))
            return
        store = self.server.standin.store
        if store.get(ns, meta["name"]) is not None:
            self._status(409, "AlreadyExists", f'pods "{meta["name"]}" already exists', kind="pods",
                         name=meta["name"])
            return
        self._json(201, store.create(obj))

    def _get_pod(self, ns: str, name: str, q: dict[str, str]) -> None:
        if not self._allowed("get", "pods", ns, name):
            return
        pod = self.server.standin.store.get(ns, name)
        if pod is None:
            self._status(404, "NotFound", f'pods "{name}" not found', kind="pods", name=name)
        else:
            self._json(200, pod)

    def _delete_pod(self, ns: str, name: str, q: dict[str, str]) -> None:
        body = self._body()
        if not self._allowed("delete", "pods", ns, name):
            return
        grace = float(q.get("gracePeriodSeconds", body.get("gracePeriodSeconds", 30)))
        uid = (body.get("preconditions") or {}).get("uid")
        found = self.server.standin.store.get(ns, name)
        if uid and found is not None and found["metadata"]["uid"] != uid:  # the API server's check
            self._status(409, "Conflict", f"Precondition failed: UID in precondition: {uid}, UID in object"
                         f" meta: {found['metadata']['uid']}", kind="pods", name=name)
            return
        pod = self.server.standin.store.delete(ns, name, grace)
        if pod is None:
            self._status(404, "NotFound", f'pods "{name}" not found', kind="pods", name=name)
        else:
            self._json(200, pod)

    def _get_allpods(self, q: dict[str, str]) -> None:
        self._get_pods(None, q)

    def _get_pods(self, ns: str | None, q: dict[str, str]) -> None:
        watch = q.get("watch") in ("true", "1")
        if not self._allowed("watch" if watch else "list", "pods", ns):
            return
        store = self.server.standin.store
        labels, fields = q.get("labelSelector", ""), q.get("fieldSelector", "")
        if not watch:
            items = store.list(ns, labels, fields)
            self._json(200, {"kind": "PodList", "apiVersion": "v1",
                             "metadata": {"resourceVersion": str(store._rv)}, "items": items})
            return
        self._stream_watch(store.watch(ns, labels, fields), store.unwatch, q)

    def _stream_watch(self, w: Watcher, unwatch: Any, q: dict[str, str]) -> None:
        """Stream a watcher's events as watch JSON lines until timeoutSeconds, its end or shutdown."""
        timeout = min(float(q.get("timeoutSeconds", 60)), 300)
        stop = self.server.standin.stopping
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.name = "plugbay-standin-watchtimer"
        timer.start()
        try:
            self._start_stream("application/json")
            import queue as _q

            while not deadline.is_set() and not stop.is_set():
                try:
                    item = w.events.get(timeout=0.2)
                except _q.Empty:
                    continue
                if item is None:
                    break
                kind, obj = item
                self._chunk(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            self._end_stream()
        except OSError:
            self.close_connection = True
        finally:
            timer.cancel()
            timer.join(timeout=5)
            unwatch(w)

    def _get_log(self, ns: str, name: str, q: dict[str, str]) -> None:
        if not self._allowed("get", "pods/log", ns, name):
            return
        store = self.server.standin.store
        pod = store.get(ns, name)
        if pod is None:
            self._status(404, "NotFound", f'pods "{name}" not found', kind="pods", name=name)
            return
        box = store.box(ns, name)
        if box is None:
            waiting = ((pod["status"].get("containerStatuses") or [{}])[0].get("state") or {}).get("waiting", {})
            cname = pod["spec"]["containers"][0]["name"]
            self._status(400, "BadRequest", f'container "{cname}" in pod "{name}" is waiting to start:'
                         f' {waiting.get("reason", "ContainerCreating")}')
            return
        follow = q.get("follow") in ("true", "1")
        tail = int(q["tailLines"]) if "tailLines" in q else None
        since = log_since(q)
        standin = self.server.standin
        with standin.lock:
            standin.log_conns.add(self.connection)
        try:
            self._start_stream("text/plain")
            for chunk in log_lines(box.logs(follow, tail), q.get("timestamps") in ("true", "1"), since):
                if standin.stopping.is_set():
                    break
                self._chunk(chunk)
            self._end_stream()
        except OSError:
            self.close_connection = True
        finally:
            with standin.lock:
                standin.log_conns.discard(self.connection)

    def _get_events(self, ns: str, q: dict[str, str]) -> None:
        if not self._allowed("list", "events", ns):
            return
        from .pods import fields_match

        store = self.server.standin.store
        with store.lock:
            items = [e for e in store.events if e["metadata"]["namespace"] == ns
                     and fields_match(q.get("fieldSelector", ""), e)]
        self._json(200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items})

    def _get_portforward(self, ns: str, name: str, q: dict[str, str]) -> None:
        if self.headers.get("Upgrade", "").lower() != "websocket":
            self._status(400, "BadRequest", "port-forward needs a WebSocket upgrade (SPDY is not supported)")
            return
        # the API server authorizes the upgrade both as get and (since 1.30) as create
        if not self._allowed("get", "pods/portforward", ns, name) \
                or not self._allowed("create", "pods/portforward", ns, name):
            return
        standin = self.server.standin
        pod = standin.store.get(ns, name)
        box = standin.store.box(ns, name)
        if pod is None or box is None or pod["status"].get("phase") != "Running":
            self._status(404 if pod is None else 400, "NotFound" if pod is None else "BadRequest",
                         f'pods "{name}" not found' if pod is None
                         else f"unable to upgrade connection: pod {name} is not running")
            return
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if PROTOCOL not in offered:
            self._status(400, "BadRequest", f"port-forward needs subprotocol {PROTOCOL}")
            return
        ports = [int(p) for p in q.get("ports", "").split(",") if p]
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept_key(self.headers["Sec-WebSocket-Key"]))
        self.send_header("Sec-WebSocket-Protocol", standin.portforward_protocol)
        self.end_headers()
        self.wfile.flush()
        session = ForwardSession(self.connection, f"{ns}/{name}", ports, dict(box.published))
        with standin.lock:
            session.drop_on_data = standin.drop_next_data > 0
            if session.drop_on_data:
                standin.drop_next_data -= 1
            standin.sessions.append(session)
        try:
            session.run(standin.stopping)
        finally:
            with standin.lock:
                standin.sessions.remove(session)
            self.close_connection = True


class StandIn:
    """Start with ``StandIn().start()``; write a kubeconfig with :meth:`write_kubeconfig`."""

    def __init__(self, runtime: str = "auto", tls: bool = False, client_certs: bool = False) -> None:
        """``tls``: serve HTTPS with a throwaway CA; ``client_certs``: also require a client certificate."""
        if runtime == "auto":
            runtime = "docker" if docker_available() else "process"
        self.runtime = runtime
        backend = DockerBackend() if runtime == "docker" else ProcessBackend()
        self.store = PodStore(backend)
        self.services = ServiceStore(self.store)
        self.deployments = DeploymentStore(self.store)
        self.calls: dict[tuple[str, str], int] = {}  # (verb, resource) -> requests seen
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        self.threads: list[threading.Thread] = []
        self.sessions: list[ForwardSession] = []
        self.denied: set[tuple[str, str]] = set()
        self.stalled: set[tuple[str, str]] = set()
        self.failing: set[tuple[str, str]] = set()
        self.log_conns: set[socket.socket] = set()  # the pod log streams being served (cut_logs)
        self.unstalled = threading.Event()  # set: the stalled requests end (unanswered)
        self.held: set[tuple[str, str]] = set()
        self.holding = threading.Event()  # set: a held request arrived
        self.released = threading.Event()  # set: the held requests go on and are answered
        self.drop_next_data = 0
        self.portforward_protocol = PROTOCOL  # what the port-forward upgrade answers (tests change it)
        self.stopping = threading.Event()
        self._server = _Server(self)
        self._thread: threading.Thread | None = None
        self.kubeconfig_path: str | None = None
        self._written: list[str] = []  # the kubeconfig and its certificate files
        self.certs: ClusterCerts | None = None
        self.client_certs = client_certs
        if tls or client_certs:
            self.certs = make_cluster_certs()
            self._server.socket = _server_context(self.certs, client_certs).wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{'https' if self.certs else 'http'}://{host}:{port}"

    def start(self) -> StandIn:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="plugbay-standin-http")
        self._thread.start()
        return self

    def write_kubeconfig(self, path: str | None = None, namespace: str = "default") -> str:
        if path is None:
            fd, path = tempfile.mkstemp(prefix="plugbay-standin-kubeconfig-", suffix=".yaml")
            os.close(fd)
        cluster: dict[str, Any] = {"server": self.url}
        user: dict[str, Any] = {"token": TOKEN}
        if self.certs is not None:  # files, not *-data: the kubeconfig loader would copy data to temp files
            cluster["certificate-authority"] = self._write(path + ".ca.pem", self.certs.ca.cert)
            if self.client_certs:
                user["client-certificate"] = self._write(path + ".client.pem", self.certs.client.cert)
                user["client-key"] = self._write(path + ".client-key.pem", self.certs.client.key)
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "standin",
               "clusters": [{"name": "standin", "cluster": cluster}],
               "users": [{"name": "standin", "user": user}],
               "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin",
                                                           "namespace": namespace}}]}
        with open(path, "w") as f:
            json.dump(cfg, f)  # JSON is YAML: kubeconfig loaders read it as is
        self.kubeconfig_path = path
        self._written.append(path)
        return path

    def _write(self, path: str, data: bytes) -> str:
        with open(path, "wb") as f:
            f.write(data)
        self._written.append(path)
        return path

    # --- fault knobs ---------------------------------------------------------

    def deny(self, verb: str, resource: str) -> None:
        """Answer (verb, resource) with 403 Forbidden, e.g. deny("create", "pods")."""
        self.denied.add((verb, resource))

    def allow_all(self) -> None:
        self.denied.clear()
        self.failing.clear()
        self.unstall()
        self.release()

    def stall(self, verb: str, resource: str) -> None:
        """Take (verb, resource) requests and never answer them, e.g. stall("delete", "pods")."""
        self.unstalled.clear()
        self.stalled.add((verb, resource))

    def fail(self, verb: str, resource: str) -> None:
        """Answer (verb, resource) with 500 InternalError at once (allow_all() ends it); failing pod
        watches also ends the open ones, as an API server going down does."""
        self.failing.add((verb, resource))
        if (verb, resource) == ("watch", "pods"):
            with self.store.lock:
                for w in self.store.watchers:
                    w.events.put(None)

    def hold(self, verb: str, resource: str) -> None:
        """Take (verb, resource) requests and answer them only at release(): a slow API server."""
        self.released.clear()
        self.holding.clear()
        self.held.add((verb, resource))

    def release(self) -> None:
        self.held.clear()
        self.released.set()

    def unstall(self) -> None:
        """Answer again; the requests held so far end with their connection closed, unanswered."""
        self.stalled.clear()
        self.unstalled.set()

    def cut_logs(self) -> int:
        """Break every pod log stream being served, as a dropped connection would."""
        with self.lock:
            conns = list(self.log_conns)
        _shut_down(conns)
        return len(conns)

    def expire_watches(self) -> int:
        """End every EndpointSlice watch; resuming from an old resourceVersion then gets 410 Gone."""
        return self.services.expire_watches()

    def drop_portforwards(self, on_next_data: bool = False) -> int:
        """Cut every open port-forward stream now, or (on_next_data) the next stream on its next bytes."""
        with self.lock:
            if on_next_data:
                for s in self.sessions:
                    s.drop_on_data = True
                self.drop_next_data += 1
                return len(self.sessions)
            for s in self.sessions:
                s.drop()
            return len(self.sessions)

    def delete_pod(self, namespace: str, name: str, grace: float = 0) -> bool:
        """Delete a pod behind the host's back (as an operator or eviction would)."""
        return self.store.delete(namespace, name, grace) is not None

    def container_start_seconds(self) -> list[float]:
        return list(getattr(self.store, "start_durations", []))

    def stop(self) -> None:
        self.stopping.set()
        self.unstall()
        self.release()
        with self.lock:
            for s in self.sessions:
                s.drop()
        self.deployments.close()
        self.store.close()
        self._server.shutdown()
        with self.lock:
            conns = list(self.conns)
        _shut_down(conns)
        for t in list(self.threads):
            t.join(timeout=15)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server.server_close()
        self.store.backend.close()
        for path in self._written:
            if os.path.exists(path):
                os.unlink(path)

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _server_context(certs: ClusterCerts, client_certs: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="plugbay-standin-tls-") as folder:  # load_cert_chain reads files
        cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        for path, data in ((cert, certs.server.cert), (key, certs.server.key)):
            with open(path, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert, key)
    if client_certs:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=certs.ca.cert.decode())
    return ctx


def _shut_down(conns: list[socket.socket]) -> None:
    """Break each connection (both ways), as a dropped network link would; one already gone is skipped."""
    for conn in conns:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
