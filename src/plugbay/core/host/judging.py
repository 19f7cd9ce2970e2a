"""What a failed call through a ManagedChannel means: the typed error it raises instead.

A failure's meaning hangs on the plugin: an UNAVAILABLE from a plugin that
exited is its death (PluginDied), from one that runs is an Unavailable; a
failure the owner's kill() caused is that kill's. The exit of a plugin whose
connection just broke may take its runner a moment to learn (an engine's
answer, an API server's), so judging an UNAVAILABLE may wait for the exit to
show, but never past the call's own deadline, and not at all once the plugin
answered a health check after the failure: a plugin that answers is alive, and
the UNAVAILABLE was its own answer (or a blip of the connection, now gone).
grpcio's status itself cannot tell: a status the plugin sent and one grpcio
made for a broken connection look the same (code, details, no metadata).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

from plugbay._proto.grpc.health.v1 import health_pb2
from plugbay.core.host.callerrors import NEW_CLIENT, BrokerTLSRefused, CallTimeout, ClientClosed, PluginDied, \
    Unavailable, closed_under_call
from plugbay.core.protocol.handlerstatus import handler_status
from plugbay.core.transport.handlenames import named_handles
from plugbay.errors import NoEndpointsError, PlugbayError

# How the channel learns whether the plugin is gone: exit_probe(wait) says why it ended (None: it runs),
# waiting up to ``wait`` seconds (0: none) and no longer than its runner takes to learn of an exit.
ExitProbe = Callable[[float], "str | None"]
# How long a live plugin has to answer the health check that spares a failed call the exit wait: a
# plugin on a sound connection answers in milliseconds; one that does not gets the exit wait
ANSWER_WITHIN = 0.25
_CHECK = "/grpc.health.v1.Health/Check"
_ONE_OF_OURS = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)  # may mean the plugin exited
# What grpcio's core answers the calls on a server being stopped (Server.stop: cancel_all_calls), here a
# plugin's callback into this host's brokered server as the host ends the plugin
SERVER_STOP_WORDS = "Cancelling all calls"


class ExitCheck(NamedTuple):
    """What the exit probe and the health check found after a call's connection failed."""

    why: str | None  # why the plugin ended; None: no exit showed
    answered_at: float | None  # time.monotonic() when the plugin answered a health check (it runs); None: no answer


class FailureJudge:
    """The state a call's failure is judged by, and the judging (ManagedChannel's base)."""

    def __init__(self, exit_probe: ExitProbe | None, name: str) -> None:
        self._closing = False  # the owner began kill()/close(): failures are its doing
        self._died_first = False  # ... unless the plugin had died before that
        self._brokered_open = False  # ... when it began, this host served brokered servers (stopped by it)
        self._exit_probe = exit_probe
        self._name = name
        # An owner's error for the calls its kill() ends or refuses (a Supervisor's restart is no kill of the user's)
        self.killed_error: Callable[[grpc.RpcError | None], BaseException] | None = None
        # what a PluginDiedError says to do (an owner's), given whether the call was sent (it may have run then)
        self.died_advice: Callable[[bool], str] = lambda sent: NEW_CLIENT

    def new_call(self, kind: str, method: str, ser: Any, de: Any) -> tuple[int, Any]:
        raise NotImplementedError  # the channel's: a call object built where closing cannot race it

    def translate(self, exc: grpc.RpcError, past_deadline: bool = False) -> BaseException:
        """The typed error of a failure whose call's deadline is not known here (waits up to the runner's
        own time to learn of an exit)."""
        return self.translate_within(exc, past_deadline, None)

    def translate_within(self, exc: grpc.RpcError, past_deadline: bool, left: float | None) -> BaseException:
        """The typed error of a call's failure; ``left``: what is left of the call's deadline (None: it has
        none), the most judging it may wait for the plugin's exit to show."""
        wait = self.exit_wait(exc, left)
        found = self.check_exit(wait) if wait > 0 else None
        return self._translate(exc, past_deadline, found)

    def translate_waited(self, exc: grpc.RpcError, past_deadline: bool, answered: bool) -> BaseException:
        """translate() once check_exit() was done elsewhere (``answered``: the plugin answered after the
        failure); the probe is asked again, without waiting, for why the plugin ended."""
        return self._translate(exc, past_deadline, ExitCheck(None, 0.0 if answered else None))

    def exit_wait(self, exc: BaseException, left: float | None) -> float:
        """How long judging ``exc`` may wait for the plugin's exit to show (0: none; inf: the runner's own time):
        the asyncio side does that once for all the calls broken together (check_exit), not a thread each."""
        code = exc.code() if hasattr(exc, "code") and not isinstance(exc, PlugbayError) else None
        ending = self._closing and not self._died_first  # the owner's kill broke it: no probe
        if code != grpc.StatusCode.UNAVAILABLE or self._exit_probe is None or ending or handler_status(exc):
            return 0.0
        return math.inf if left is None else max(left, 0.0)

    def check_exit(self, wait: float) -> ExitCheck:
        """After a call's connection failed: whether the plugin exited, waiting up to ``wait`` for the exit to
        show, unless it answers a health check first (then it runs: no wait)."""
        begun = time.monotonic()
        why = self.probe_exit(0.0)
        if why is not None or wait <= 0:
            return ExitCheck(why, None)
        answered = self._answers(min(wait, ANSWER_WITHIN))
        if answered is not None:
            return ExitCheck(None, answered)
        return ExitCheck(self.probe_exit(max(0.0, wait - (time.monotonic() - begun))), None)

    def probe_exit(self, wait: float) -> str | None:
        return None if self._exit_probe is None else self._exit_probe(wait)

    def _answers(self, within: float) -> float | None:
        """When the plugin answered a health check sent now (time.monotonic()); None: no answer within ``within``.
        Any answer counts (NOT_SERVING too): only a live plugin sends one; a failure may be grpcio's own."""
        try:
            check = self.new_call("unary_unary", _CHECK, health_pb2.HealthCheckRequest.SerializeToString,
                                  health_pb2.HealthCheckResponse.FromString)[1]
            check(health_pb2.HealthCheckRequest(service="plugin"), timeout=within)
        except (grpc.RpcError, ValueError):  # no answer, or the connection was closed meanwhile
            return None
        return time.monotonic()

    def _translate(self, exc: grpc.RpcError, past_deadline: bool, found: ExitCheck | None) -> BaseException:
        if isinstance(exc, PlugbayError):
            if isinstance(exc, NoEndpointsError) and self._closing and not self._died_first:
                # it waited for an endpoint when the owner's close closed the pool under it: never sent, as a
                # call made after the close
                return self._killed(None)
            return exc  # already typed below us (e.g. a network pool's NoEndpointsError)
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else ""
        details = named_handles(details) if isinstance(details, str) else details  # the path, not the host's handle
        if code in _ONE_OF_OURS and self._closing and not self._died_first and (
                not handler_status(exc) or self._our_server_stop(str(details))):
            return self._killed(exc)
        if handler_status(exc):  # the plugin's handler answered so (a call of its own failed): its answer
            return exc  # type: ignore[no-any-return]
        # A Go server may answer UNKNOWN "context deadline exceeded" a moment before the
        # client's own deadline fires: that is a timeout. Any other answer that came late
        # (NOT_FOUND, an exit) is still what the plugin said.
        if code == grpc.StatusCode.DEADLINE_EXCEEDED or (
                past_deadline and code == grpc.StatusCode.UNKNOWN and "deadline" in str(details).lower()):
            what, check = f"call to plugin {self._name!r} exceeded its deadline ({details})", \
                "check the plugin's logs if it is stuck"
            return CallTimeout(f"{what}. Pass a larger timeout= to the call or raise ClientConfig.call_timeout;"
                               f" {check}", exc, what=what, check=check)
        if code in _ONE_OF_OURS and self._exit_probe:
            why = found.why if found is not None and found.why is not None else self.probe_exit(0.0)
            if why is not None:
                return PluginDied.during_call(self._name, why, self.died_advice(True), exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            if BrokerTLSRefused.matches(str(details)):  # the plugin's own answer, the same on every try
                return BrokerTLSRefused.of(self._name, str(details), exc)
            if found is not None and found.answered_at is not None:
                return Unavailable(
                    f"plugin {self._name!r} answered UNAVAILABLE ({details}); it runs (it answered a health check"
                    " right after). Retry calls that are safe to repeat (RetryPolicy), and check the plugin's logs"
                    " and load", exc)
            return Unavailable(
                f"the call to plugin {self._name!r} failed with UNAVAILABLE ({details}) and no exit of the plugin"
                " showed: the plugin may not have received the call. Retry calls that are safe to repeat"
                " (RetryPolicy), and check the network between host and plugin and the plugin's load", exc)
        return exc  # type: ignore[no-any-return]

    def _our_server_stop(self, details: str) -> bool:
        """Whether a handler's marked answer is the owner's kill: closing stopped this host's brokered servers,
        so a plugin's callback into one failed with grpcio's server-stop words and the plugin passed that on.
        Any other marked answer (its own call to another service failed) is the plugin's, kill or not."""
        return self._brokered_open and SERVER_STOP_WORDS in details

    def _killed(self, original: grpc.RpcError | None) -> BaseException:
        made = self.killed_error
        return made(original) if made is not None else ClientClosed.by_kill(self._name, original)

    def translate_closed(self) -> BaseException:
        """A call made after the channel was closed: a typed error that is also a grpc.RpcError, as
        every call failure is (CANCELLED: the Client was killed; UNAVAILABLE: the plugin is gone)."""
        killed = self._closing and not self._died_first
        why = None if killed else self.probe_exit(0.0)
        if why is not None:
            return PluginDied.gone(self._name, why, self.died_advice(False))
        return self._killed(None)

    def translate_value_error(self, exc: ValueError) -> BaseException:
        """grpcio's ValueError for a call on a closed channel, as a typed error."""
        if closed_under_call(exc):
            return self.translate_closed()
        return exc
