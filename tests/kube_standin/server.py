"""A Kubernetes API server stand-in that really runs pods (tests only; no cluster runs here).

:class:`StandIn` serves the API (apiserver.py) on 127.0.0.1, over HTTPS with a
throwaway CA when asked, runs each pod with Docker or as a local process, and
writes a kubeconfig naming itself. Fault knobs: :meth:`StandIn.deny` (403 with
a Kubernetes Status body), :meth:`StandIn.refuse` (an admission check's 403), :meth:`StandIn.drop_portforwards`,
:meth:`StandIn.delete_pod` (under the host), :meth:`StandIn.fail_pod_unrecorded` (Failed with no exit code:
a lost node's), :meth:`StandIn.expire_watches` (410 Gone for slice watches that resume), :meth:`StandIn.stall` (take the
request, never answer it: a hung API server), :meth:`StandIn.hold` (answer only
at release: a slow API server), :meth:`StandIn.fail` (answer 500 at once: an
API server failing fast), :meth:`StandIn.lose_answers` (carry a request out, then answer it
504/500: the write committed, its answer lost), :meth:`StandIn.error_pod_watches` (end pod watches
with an ERROR event: 410 Expired, 500), :meth:`StandIn.bookmark_pod_watches` (send pod watches a BOOKMARK
event), :meth:`StandIn.cut_logs` (break the pod log streams), :meth:`StandIn.page_404` (answer a
proxy's "404 page not found": a 404 that is no Kubernetes Status), :meth:`StandIn.throttle` (answer 429
TooManyRequests with a Retry-After header, as API Priority and Fairness does).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import tempfile
import threading
from typing import Any

from .apiserver import TOKEN, ApiServer, status_body
from .deployments import DeploymentStore
from .podpolls import poke
from .pods import PodStore
from .portforward import PROTOCOL, ForwardSession
from .process_backend import ProcessBackend
from .runtime import DockerBackend, docker_available
from .services import ServiceStore
from .tlscerts import ClusterCerts, make_cluster_certs

DROP = "drop"  # a scripted answer (StandIn.script): the connection closed with no answer


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
        self.paths: list[str] = []  # every request's path, in order
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        self.threads: list[threading.Thread] = []
        self.sessions: list[ForwardSession] = []
        self.denied: set[tuple[str, str]] = set()
        self.refused: dict[tuple[str, str], str] = {}
        self.stalled: set[tuple[str, str]] = set()
        self.failing: set[tuple[str, str]] = set()
        self.paged: set[tuple[str, str]] = set()  # (verb, resource) answered a text/plain 404 page
        self.throttled: dict[tuple[str, str], int] = {}  # (verb, resource) -> the Retry-After its 429 says
        self.lost: dict[tuple[str, str], int] = {}  # (verb, resource) -> the 5xx its committed write gets
        self.scripted: dict[tuple[str, str], list[Any]] = {}  # (verb, resource) -> its next answers (script)
        self.watch_error: dict[str, Any] | None = None  # a Status each new pod watch ends with at once
        self.log_conns: set[socket.socket] = set()  # the pod log streams being served (cut_logs)
        self.unstalled = threading.Event()  # set: the stalled requests end (unanswered)
        self.held: set[tuple[str, str]] = set()
        self.holding = threading.Event()  # set: a held request arrived
        self.released = threading.Event()  # set: the held requests go on and are answered
        self.drop_next_data = 0
        self.portforward_protocol = PROTOCOL  # what the port-forward upgrade answers (tests change it)
        self.portforward_error: str | None = None  # set: each port-forward stream's error channel says it
        self.stopping = threading.Event()
        self._server = ApiServer(self)
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

    def refuse(self, verb: str, resource: str, message: str) -> None:
        """Answer (verb, resource) with 403 Forbidden saying ``message``, as an admission check does (ResourceQuota,
        LimitRange, PodSecurity): a 403 that is not RBAC's "cannot <verb> resource" (allow_all() ends it)."""
        self.refused[(verb, resource)] = message

    def allow_all(self) -> None:
        self.denied.clear()
        self.refused.clear()
        self.store.node_lost = False
        self.store.mutate = None
        self.failing.clear()
        self.paged.clear()
        self.throttled.clear()
        self.lost.clear()
        self.scripted.clear()
        self.watch_error = None
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

    def page_404(self, verb: str, resource: str) -> None:
        """Answer (verb, resource) with a text/plain "404 page not found" (no Kubernetes Status), as Go's
        http.NotFound and many proxies and load balancers do (allow_all() ends it)."""
        self.paged.add((verb, resource))

    def throttle(self, verb: str, resource: str, retry_after: int | str = 30) -> None:
        """Answer (verb, resource) with 429 TooManyRequests and ``Retry-After: retry_after`` (a str: sent as
        it is), as API Priority and Fairness does when a flow's queue is full (allow_all() ends it)."""
        self.throttled[(verb, resource)] = retry_after

    def script(self, verb: str, resource: str, *answers: Any) -> None:
        """Answer (verb, resource)'s next requests in turn with ``answers``, then as usual (allow_all() ends
        it): a status (with a Status body), (status, retry_after) to send a Retry-After too (any int: a server
        may say 10**400), or DROP: the connection closed with no answer, as a proxy losing its upstream does."""
        with self.lock:
            self.scripted[(verb, resource)] = list(answers)

    def answer_scripted(self, handler: Any, verb: str, resource: str) -> bool:
        """Answer a request with (verb, resource)'s next scripted answer, if it has one (apiserver's knobs)."""
        with self.lock:
            answers = self.scripted.get((verb, resource))
            answer = answers.pop(0) if answers else None
        if answer is None:
            return False
        if answer == DROP:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return True
        code, wait = answer if isinstance(answer, tuple) else (answer, None)
        handler._json(code, status_body(code, "InternalError", f"the stand-in answers {code} (test knob)"),
                      {"Retry-After": str(wait)} if wait is not None else {})
        return True

    def lose_answers(self, verb: str, resource: str, status: int = 504) -> None:
        """Carry (verb, resource) out, then answer it ``status`` (504 Timeout, 500 InternalError) instead
        of the object, as an API server whose request timeout fired after etcd stored the write does
        (allow_all() ends it). Only pod creates honour it so far."""
        self.lost[(verb, resource)] = status

    def error_pod_watches(self, code: int = 500, again: bool = True) -> None:
        """End every open pod watch with an ERROR event whose object is a Status, as the API server does
        (HTTP 200, then the event): 410 Expired (its resourceVersion compacted away), else 500
        InternalError (an etcd failure). ``again``: new pod watches get it at once too, until allow_all()."""
        status = (status_body(410, "Expired", "too old resource version: 1000 (1001)") if code == 410 else
                  status_body(code, "InternalError", "Internal error occurred: etcdserver: request timed out"))
        if again:
            self.watch_error = status
        with self.store.lock:
            for w in self.store.watchers:
                w.events.put(("ERROR", status))
                w.events.put(None)

    def bookmark_pod_watches(self) -> int:
        """Send every open pod watch a BOOKMARK event, as an API server may: its object is a Pod with
        only metadata.resourceVersion (no name, no UID). Returns how many watches got one."""
        with self.store.lock:
            rv = self.store._next_rv()
            for w in self.store.watchers:
                w.events.put(("BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv}}))
            return len(self.store.watchers)

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

    def mutate_pods(self, change: Any) -> None:
        """Pass each created pod to ``change(pod)`` before it is stored, as a mutating admission webhook
        changes what it admits (e.g. sets restartPolicy: Always); allow_all() ends it."""
        self.store.mutate = change

    def lose_node(self) -> None:
        """Lose the node, as one powered off or cut off is: no kubelet confirms a pod's graceful delete, so the
        pod stays terminating until a force delete (delete_pod(..., grace=0)); allow_all() ends it."""
        self.store.node_lost = True

    def evict_pod(self, namespace: str, name: str, message: str) -> None:
        """Evict a pod as the kubelet does under node pressure: status.reason Evicted and ``message``, an
        Evicted event, its container stopped (the pod then ends in phase Failed)."""
        store = self.store
        with store.lock:
            pod = store.pods[(namespace, name)]
            pod.obj["status"].update(reason="Evicted", message=message)
            pod.evicted = True
            store.event(pod, "Evicted", message, "Warning")
        pod.box.stop(0)
        poke(pod, store.lock)

    def fail_pod_unrecorded(self, namespace: str, name: str, reason: str, message: str) -> None:
        """Mark a pod Failed with no exit code, as the pod garbage collector does a pod whose node is gone: phase
        Failed and a DisruptionTarget condition saying why, its container's status left as last reported (no
        kubelet reported its end); its container stops behind it and nothing reports the pod again."""
        store = self.store
        with store.lock:
            pod = store.pods[(namespace, name)]
            pod.unreported = True  # before the stop: the monitor must not record the container's end
            status = pod.obj["status"]
            status["phase"] = "Failed"
            status["conditions"] = [*(status.get("conditions") or []), {
                "type": "DisruptionTarget", "status": "True", "reason": reason, "message": message}]
            store._publish("MODIFIED", pod)
        if pod.box is not None:
            pod.box.stop(0)

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
        try:  # the raw socket's: SSLSocket.shutdown drops the TLS object under the handler's thread
            socket.socket.shutdown(conn, socket.SHUT_RDWR)
        except OSError:
            pass
