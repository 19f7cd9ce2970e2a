"""The stand-in's HTTP API: the threaded server, and its request handler's routing, auth and routes.

Speaks the subset of the core/v1 API plugbay's pod runner uses, over plain HTTP
(or HTTPS, when the stand-in wraps the socket) on 127.0.0.1 with bearer-token
auth: pods create/get/list/watch/delete, pods/log (with follow), events list,
and pods/portforward over WebSocket (podstreams_api.py, with pods/log); and for network mode Services
(create/get/list/delete) with the EndpointSlices (discovery.k8s.io/v1
get/list/watch) kept for them (services_api.py), and minimal apps/v1
Deployments (create/get/list/scale/delete, deployments.py). Pod logs honour
timestamps, sinceSeconds and sinceTime (whole seconds) as the API does. Each
request counts in ``StandIn.calls`` (its path, routed or not, in ``StandIn.paths``) and meets the stand-in's fault knobs
(server.py) before its route runs.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

from .deployments import ROUTES as DEPLOYMENT_ROUTES
from .deployments import DeploymentRoutes
from .pods import Watcher
from .podstreams_api import PodStreamRoutes
from .services_api import ROUTES as SERVICE_ROUTES
from .services_api import ServiceRoutes

if TYPE_CHECKING:
    from .server import StandIn

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


class ApiServer(ThreadingHTTPServer):
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


class _Handler(PodStreamRoutes, ServiceRoutes, DeploymentRoutes, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        if os.environ.get("PLUGBAY_STANDIN_DEBUG"):
            super().log_message(format, *args)

    # --- plumbing ------------------------------------------------------------

    def _json(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
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
        if standin.answer_scripted(self, verb, resource):
            return False
        if (wait := standin.throttled.get((verb, resource))) is not None:  # API Priority and Fairness's 429
            self._json(429, status_body(429, "TooManyRequests", "Too many requests, please try again later.",
                                        {"retryAfterSeconds": wait}), {"Retry-After": str(wait)})
            return False
        if (verb, resource) in standin.paged:
            page = b"404 page not found\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
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
        if (verb, resource) in standin.refused:
            self._status(403, "Forbidden", standin.refused[(verb, resource)], kind=resource.partition("/")[0])
            return False
        return True

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self.server.standin.lock:
            self.server.standin.paths.append(self.path)
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
        created = store.create(obj)
        lost = self.server.standin.lost.get(("create", "pods"))
        if lost == 504:  # the apiserver's timeout filter: the write went on, its answer is this
            self._status(504, "Timeout", "Timeout: request did not complete within requested timeout"
                         " - context deadline exceeded")
        elif lost is not None:
            self._status(lost, "InternalError", "Internal error occurred: the answer to the create was lost"
                         " after it was stored (test knob)")
        else:
            self._json(201, created)

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
        failed = self.server.standin.watch_error
        if failed is not None:  # the error_pod_watches knob: this watch fails at once, its answer still a 200
            self._start_stream("application/json")
            self._chunk(json.dumps({"type": "ERROR", "object": failed}).encode() + b"\n")
            self._end_stream()
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

    def _get_events(self, ns: str, q: dict[str, str]) -> None:
        if not self._allowed("list", "events", ns):
            return
        from .apimachinery import fields_match

        store = self.server.standin.store
        with store.lock:
            items = [e for e in store.events if e["metadata"]["namespace"] == ns
                     and fields_match(q.get("fieldSelector", ""), e)]
        self._json(200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items})
