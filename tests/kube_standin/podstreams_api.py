"""HTTP routes of the stand-in for a pod's streams: pods/log (with follow) and pods/portforward over WebSocket.

A mixin of the server's request handler: it uses the handler's ``_status``,
``_allowed``, ``_start_stream``, ``_chunk`` and ``_end_stream``.
"""

from __future__ import annotations

from typing import Any

from .podlogs import log_lines, log_since
from .portforward import PROTOCOL, ForwardSession, accept_key


class PodStreamRoutes:
    server: Any

    def _get_log(self: Any, ns: str, name: str, q: dict[str, str]) -> None:
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
        chunks = box.logs(follow, tail)
        try:
            self._start_stream("text/plain")
            for chunk in log_lines(chunks, q.get("timestamps") in ("true", "1"), since):
                if standin.stopping.is_set():
                    break
                self._chunk(chunk)
            self._end_stream()
        except OSError:
            self.close_connection = True
        finally:
            chunks.close()  # a client gone mid-stream: the box's log stream is closed now, not by the collector
            with standin.lock:
                standin.log_conns.discard(self.connection)

    def _get_portforward(self: Any, ns: str, name: str, q: dict[str, str]) -> None:
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
            session.error_text = standin.portforward_error
            if session.drop_on_data:
                standin.drop_next_data -= 1
            standin.sessions.append(session)
        try:
            session.run(standin.stopping)
        finally:
            with standin.lock:
                standin.sessions.remove(session)
            self.close_connection = True
