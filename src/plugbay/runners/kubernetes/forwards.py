"""The port-forwards of one KubernetesRunner: one per plugin port, for as long as an address mapped to it is used.

Each port the plugin announces (its own, and with the per-connection broker one
per brokered server) gets a PortForwarder: a 127.0.0.1 listener and its accept
thread. plugin_to_host() takes one use of it, release_address() (a brokered
channel closed) gives that use back, and the last one stops the forwarder: the
broker's ports are new for each server, so kept forwarders piled up until the
runner ended. The Client's own connection maps its address once and never
releases it, so its forwarder lives until kill() or detach() (close()).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from plugbay.errors import RunnerError
from plugbay.runners.kubernetes.portforward import PortForwarder


class PortForwards:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opening = threading.Lock()  # held while a port-forward opens (up to start_timeout)
        self._by_port: dict[int, PortForwarder] = {}
        self._uses: dict[int, int] = {}
        self._ended = False  # killed or detached: no new port-forwards

    def take(self, port: int, make: Callable[[], PortForwarder], ended: Callable[[], RunnerError]) -> str:
        """The local address forwarding to ``port``, one more use of it; ``make`` opens a forwarder,
        ``ended()`` is the error once close() came. close() never waits on ``make``."""
        with self._opening:  # one forwarder per port
            with self._lock:
                fwd = self._by_port.get(port)
                if fwd is not None:
                    self._uses[port] += 1
                    return fwd.address
            fwd = make()
            with self._lock:
                closed = self._ended
                if not closed:
                    self._by_port[port] = fwd
                    self._uses[port] = 1
        if closed:
            fwd.close()
            raise ended()
        return fwd.address

    def release(self, address: str) -> None:
        """One use of the forwarder listening at ``address`` ended; the last one stops it."""
        with self._lock:
            port = next((p for p, fwd in self._by_port.items() if fwd.address == address), None)
            if port is None:  # not a forwarder's (in-cluster), or closed already
                return
            self._uses[port] -= 1
            if self._uses[port] > 0:
                return
            fwd = self._by_port.pop(port)
            del self._uses[port]
        fwd.close()

    def error_detail(self) -> str:
        with self._lock:
            forwarders = list(self._by_port.values())
        return "; ".join(detail for fwd in forwarders if (detail := fwd.error_detail()))

    def set_timeout(self, timeout: float) -> None:
        with self._lock:
            for fwd in self._by_port.values():
                fwd.timeout = timeout

    def close(self) -> None:
        with self._lock:
            self._ended = True
            forwarders = list(self._by_port.values())
            self._by_port.clear()
            self._uses.clear()
        for fwd in forwarders:
            fwd.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_port)
