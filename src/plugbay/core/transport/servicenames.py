"""The gRPC service names registered on one server, which both servers that take services keep: the plugin's
(core/plugin/gatedserver.py) and a brokered one, on either side (core/broker/registrar.py).

grpcio takes a second registration of a service name without a word: its registered methods' table keeps
the last one, its generic handlers answer with the first, so one servicer answers calls meant for the other.
grpc-go refuses such a registration ("found duplicate service registration"); ServiceNames refuses it with
the error its server names. Server reflection is the exception: one reflection service per server is all
gRPC can serve, and each plugin that opts into it registers it (docs/cli.md), so a second one is not
added, on a brokered server as on the plugin's: the server serves the ``reflection`` union of them all
(core/transport/reflectionunion.py) under the first one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from plugbay.core.transport.reflectionunion import ReflectionUnion
from plugbay.errors import PlugbayError

# gRPC server reflection (grpcio-reflection registers v1alpha, newer releases v1 too): exempt from the refusal
REFLECTION_SERVICES = frozenset({"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"})

WAYS = ("generic", "registered")


class ServiceNames:
    """The gRPC service names registered on one server so far, and by whom.

    Generated code registers each service twice, once as a generic handler and once as registered
    methods, so each way keeps its own table: only a second registration of a name the same way is
    a duplicate."""

    def __init__(self, *, where: str, error: type[PlugbayError], advice: str,
                 reserved: Iterable[str] = (), reserved_by: str = "") -> None:
        """A second registration raises ``error``: "gRPC service 'S' is registered twice on ``where``: ``advice``"
        (with "by A and again by B." before the advice when the claims name their owners). ``reserved``: names
        taken both ways from the start, by ``reserved_by``."""
        self._lock = threading.Lock()
        self._where = where
        self._error = error
        self._advice = advice
        self._owners = {(way, name): reserved_by for name in reserved for way in WAYS}
        self.reflection = ReflectionUnion()  # what the server serves for every registration of reflection

    def taken(self, service: str, way: str) -> bool:
        """Whether ``service`` is registered ``way`` (generic or registered) already."""
        with self._lock:
            return (way, service) in self._owners

    def claim(self, services: Sequence[str | None], way: str, owner: str = "") -> set[int]:
        """Notes ``owner``'s registration of ``services`` (``way``: generic or registered; None: a handler
        without a name, not noted), all or none: the server's error, and nothing noted, if one is taken, so a
        refused batch leaves none of its names claimed.

        Returns the positions in ``services`` of second registrations of server reflection, which its caller
        does not add: one reflection service per server is all gRPC can serve. The caller joins each
        registration to ``reflection`` instead and serves that union under the first, so it lists every
        registrant's services. A second one is not added whoever made it: another plugin, or the same
        registrant (in this batch or an earlier one)."""
        with self._lock:
            dropped: set[int] = set()
            new: set[str] = set()
            for at, service in enumerate(services):
                if service is None:
                    continue
                earlier = self._owners.get((way, service), owner if service in new else None)
                if earlier is None:
                    new.add(service)
                elif service in REFLECTION_SERVICES:
                    dropped.add(at)
                else:
                    break
            else:
                self._owners.update({(way, service): owner for service in new})
                return dropped
        by = f"by {earlier} and again by {owner}. " if owner else ""
        raise self._error(f"gRPC service {service!r} is registered twice on {self._where}: {by}{self._advice}")
