"""HTTP routes of the stand-in for Services (core/v1) and EndpointSlices (discovery.k8s.io/v1).

A mixin of the server's request handler: it uses the handler's ``_json``,
``_status``, ``_body``, ``_allowed`` and ``_stream_watch``.
"""

from __future__ import annotations

import re
from typing import Any

ROUTES = [
    (re.compile(r"^/api/v1/namespaces/([^/]+)/services/([^/]+)$"), "service"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/services$"), "services"),
    (re.compile(r"^/apis/discovery\.k8s\.io/v1/namespaces/([^/]+)/endpointslices/([^/]+)$"), "slice"),
    (re.compile(r"^/apis/discovery\.k8s\.io/v1/namespaces/([^/]+)/endpointslices$"), "slices"),
]


class ServiceRoutes:
    server: Any

    def _post_services(self: Any, ns: str, q: dict[str, str]) -> None:
        obj = self._body()
        if not self._allowed("create", "services", ns):
            return
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = ns
        ports = (obj.get("spec") or {}).get("ports") or []
        bad = [f"spec.ports[{i}].port: Required value" for i, p in enumerate(ports) if not p.get("port")]
        if len(ports) > 1:
            bad += [f"spec.ports[{i}].name: Required value" for i, p in enumerate(ports) if not p.get("name")]
        if not meta.get("name") or not ports or bad:
            self._status(422, "Invalid", f'Service "{meta.get("name", "")}" is invalid: '
                         + ("; ".join(bad) or ("spec.ports: Required value" if meta.get("name")
                                               else "metadata.name: Required value")))
            return
        created = self.server.standin.services.create_service(obj)
        if created is None:
            self._status(409, "AlreadyExists", f'services "{meta["name"]}" already exists', kind="services",
                         name=meta["name"])
        else:
            self._json(201, created)

    def _get_services(self: Any, ns: str, q: dict[str, str]) -> None:
        if not self._allowed("list", "services", ns):
            return
        store = self.server.standin.services
        items = store.list_services(ns, q.get("labelSelector", ""))
        self._json(200, {"kind": "ServiceList", "apiVersion": "v1",
                         "metadata": {"resourceVersion": str(store.pods._rv)}, "items": items})

    def _get_service(self: Any, ns: str, name: str, q: dict[str, str]) -> None:
        if not self._allowed("get", "services", ns, name):
            return
        svc = self.server.standin.services.get_service(ns, name)
        if svc is None:
            self._status(404, "NotFound", f'services "{name}" not found', kind="services", name=name)
        else:
            self._json(200, svc)

    def _delete_service(self: Any, ns: str, name: str, q: dict[str, str]) -> None:
        self._body()
        if not self._allowed("delete", "services", ns, name):
            return
        svc = self.server.standin.services.delete_service(ns, name)
        if svc is None:
            self._status(404, "NotFound", f'services "{name}" not found', kind="services", name=name)
        else:
            self._json(200, svc)  # like the API server: the deleted Service

    def _get_slices(self: Any, ns: str, q: dict[str, str]) -> None:
        watch = q.get("watch") in ("true", "1")
        if not self._allowed("watch" if watch else "list", "endpointslices", ns):
            return
        store = self.server.standin.services
        labels = q.get("labelSelector", "")
        if not watch:
            items, rv = store.list_slices(ns, labels)
            self._json(200, {"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                             "metadata": {"resourceVersion": rv}, "items": items})
            return
        self._stream_watch(store.watch_slices(ns, labels, q.get("resourceVersion")), store.unwatch, q)

    def _get_slice(self: Any, ns: str, name: str, q: dict[str, str]) -> None:
        if not self._allowed("get", "endpointslices", ns, name):
            return
        found = self.server.standin.services.get_slice(ns, name)
        if found is None:
            self._status(404, "NotFound", f'endpointslices.discovery.k8s.io "{name}" not found',
                         kind="endpointslices", group="discovery.k8s.io", name=name)
        else:
            self._json(200, found)
