"""The gateway's child: one go-plugin plugin started through plugbay's host side, restarted when it dies.

The child runs under a plain plugbay Client (process runner, AutoMTLS). A
plugbay-gateway-keeper thread polls it; when it has exited the keeper reports
"down" (health NOT_SERVING, calls UNAVAILABLE), kills what is left, waits the
RestartPolicy's backoff and starts a new Client. When the policy's budget is
spent (more than max_restarts within window) the keeper gives up and sets
``failed``: the gateway's process exits non-zero so its own supervisor
(Kubernetes, systemd, Docker's restart policy) takes over. The same thread
health-checks a running child (plugbay.network.gateway.probe): one that stops
answering is reported "down" until it answers again ("up"), never restarted.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

import grpc

from plugbay.core.host.client import Client, ClientConfig
from plugbay.core.host.live import RESTARTERS
from plugbay.core.protocol.exits import exit_said
from plugbay.core.resilience.restart import FailureRun, RestartPolicy
from plugbay.core.transport.keepalive import DEFAULT as DEFAULT_KEEPALIVE, Keepalive
from plugbay.errors import GatewayError, PlugbayError
from plugbay.network.gateway.config import CHILD_WORDS, gateway_said
from plugbay.network.gateway.probe import ChildProbe

log = logging.getLogger("plugbay.gateway")
_POLL = 0.2


class ChildKeeper:
    """Owns the current child Client; ``channel()`` is its raw gRPC channel while it runs."""

    def __init__(self, make_config: Callable[[], ClientConfig], restart: RestartPolicy,
                 on_up: Callable[[Client], None], on_down: Callable[[str], None], *,
                 keepalive: Sequence[float] = DEFAULT_KEEPALIVE) -> None:
        self._make_config = make_config
        self._restart = restart
        self._on_up = on_up
        self._on_down = on_down
        self._lock = threading.Lock()
        self._client: Client | None = None
        # the last channel channel() handed out and the child behind it: a forwarded call that failed on it
        # asks that child, not a restarted one, whether it exited (exit_of)
        self._served: tuple[grpc.Channel, Client] | None = None
        self._starting: Client | None = None  # the child being started: close() kills it, not waits it out
        self._why = "starting"
        self._stop = threading.Event()
        self.failed = threading.Event()
        self.failure = ""
        self.restarts = 0
        self._times: collections.deque[float] = collections.deque()
        self._thread: threading.Thread | None = None
        # the health checks: every keepalive interval, each given its timeout; only the keeper's thread
        # ticks and resets it
        alive = Keepalive.of(keepalive, "GatewayConfig keepalive")
        self._probe = ChildProbe(alive.interval, alive.timeout, on_change=self._answering)

    def start(self) -> Client:
        """Start the first child (errors are raised here, typed), then keep it running."""
        client = self._start_client()
        self._probe.reset(time.monotonic())
        self._thread = threading.Thread(target=self._keep, name="plugbay-gateway-keeper", daemon=True)
        RESTARTERS.add(self)  # at interpreter exit: halted before the child is killed, so it is not restarted
        self._thread.start()
        return client

    def halt(self) -> None:
        """Stop restarting (a running child stays as it is); close() does more."""
        self.abort_start()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def abort_start(self) -> None:
        """Stop restarting, and end a child still being started (no lock of the gateway's is taken)."""
        self._stop.set()
        with self._lock:
            starting = self._starting
        if starting is not None:
            # its start() would hold the keeper (and so halt()'s join, the gateway's start() and an
            # exiting interpreter) until start_timeout; kill() ends that start() at once
            starting.kill()

    def channel(self) -> tuple[grpc.Channel | None, str]:
        with self._lock:
            client, why = self._client, self._why
        if client is None or client.exited:
            return None, why if client is None else "it exited; restarting it"
        try:
            channel = client.channel.current
        except PlugbayError as exc:
            return None, str(exc)
        with self._lock:
            served = self._served
            if served is None or served[0] is not channel:
                self._served = (channel, client)
        return channel, ""

    def exit_of(self, channel: grpc.Channel, wait: float) -> str | None:
        """How the child behind ``channel`` ended ("exited with code 2"), once a call on it failed as a broken
        connection does; None while it runs (it answered a health check: the failure was its own answer, or a
        blip) or when the channel is no longer known. Waits up to ``wait`` for an exit to show (a child's
        connection breaks a moment before its process is reaped)."""
        with self._lock:
            served = self._served
        if served is None or served[0] is not channel:
            return None
        client = served[1]
        if client.exit_code is None:
            try:
                if client.channel.check_exit(wait).why is None:
                    return None
            except PlugbayError:  # killed meanwhile (the gateway stopping): no verdict of the child's own
                return None
        return exit_said(client.exit_code)

    def answering(self) -> bool:
        """False while the running child misses its health checks (new calls are not sent to it)."""
        return self._probe.answering

    @property
    def client(self) -> Client | None:
        return self._client

    def _start_client(self) -> Client:
        client = Client(self._make_config())
        stopped = GatewayError("the gateway was stopped while its plugin started")
        with self._lock:
            if self._stop.is_set():
                raise stopped
            self._starting = client
        try:
            client.start()  # a failed start kills what it made
        except PlugbayError as exc:
            if self._stop.is_set():  # close() killed it: that is the stop, not a plugin failure
                raise stopped from exc
            raise
        finally:
            with self._lock:
                self._starting = None
        with self._lock:
            if self._stop.is_set():
                client.kill()
                raise stopped
            self._client, self._why = client, ""
        self._on_up(client)
        return client

    def _give_up(self, failure: str) -> None:
        """The gateway stops restarting its plugin: ``failure`` says why, and ``failed`` ends the gateway."""
        self.failure = failure
        with self._lock:
            self._why = "the gateway gave up restarting it"
        log.error("gateway: %s", failure)
        self.failed.set()

    def _keep(self) -> None:
        # the failures in a row: a child that starts and soon dies again waits longer each time (it was
        # reset whenever the child was seen running, so a crash loop restarted every initial_backoff)
        run = FailureRun()
        run.running()
        while not self._stop.wait(_POLL):
            client = self._client
            if client is not None and not client.exited:
                self._probe.tick(self.channel()[0], time.monotonic())
                continue
            run.failed(self._restart)
            self._probe.reset(math.inf)
            what = (f"the plugin {exit_said(client.exit_code)}" if client is not None
                    else "the plugin did not start")
            with self._lock:
                self._client, self._why = None, f"{what}; restarting it"
            self._on_down(what)
            if client is not None:
                log.warning("gateway: %s; restarting it", what)
                client.kill()
            now = time.monotonic()
            self._times.append(now)
            while self._times and self._times[0] < now - self._restart.window:
                self._times.popleft()
            if len(self._times) > self._restart.max_restarts:
                self._give_up(f"{what}, and it was restarted {self._restart.max_restarts} time(s) within"
                              f" {self._restart.window:.0f}s (the restart budget); fix the plugin ({CHILD_WORDS})"
                              " and start the gateway again")
                return
            try:
                backoff = run.next_backoff(self._restart)
            except Exception as exc:  # a RestartPolicy subclass's backoff() raised or gave no seconds (ConfigError):
                # the keeper thread would end without a word, and the gateway serve on with no plugin
                self._give_up(f"{what}, and its restart policy gave no wait to restart it after: {exc}")
                return
            if self._stop.wait(backoff):
                return
            try:
                self._start_client()
                run.running()
                self._probe.reset(time.monotonic())
                self.restarts += 1
                log.info("gateway: plugin restarted (%d restart(s) so far)", self.restarts)
            except PlugbayError as exc:
                if self._stop.is_set():
                    return
                log.warning("gateway: restarting the plugin failed: %s", gateway_said(exc))

    def _answering(self, answering: bool) -> None:
        """The probe's report on the running child: no exit, so the same client stays."""
        with self._lock:
            client = self._client
        if client is None:
            return
        if answering:
            self._on_up(client)
        else:
            self._on_down("the plugin does not answer its health checks")

    def close(self) -> None:
        self.halt()
        RESTARTERS.discard(self)
        with self._lock:
            client, self._client, self._why = self._client, None, "the gateway is stopping"
        if client is not None:
            client.kill()
