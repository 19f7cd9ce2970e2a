"""The typed errors a call through a ManagedChannel (plugbay.core.host.channel) raises.

Each is also a ``grpc.RpcError`` answering ``code()`` and ``details()``, so code
that catches gRPC errors keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from plugbay.errors import (BrokerClosedError, BrokerTLSError, CallTimeoutError, ClientStateError, PluginDiedError,
                            PluginUnavailableError)


class _TranslatedRpcError(grpc.RpcError):  # type: ignore[misc]
    """A typed call error that still answers code() and details() like the grpc.RpcError it replaces.

    ``original`` is None for a failure plugbay decided itself (a call that waited out its
    deadline for a restart); then ``code`` is what the call would have seen.
    """

    def __init__(self, message: str, original: grpc.RpcError | None,
                 code: grpc.StatusCode = grpc.StatusCode.UNKNOWN, sent: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.original = original
        self._code = code
        self.sent = sent  # False: refused before anything reached the plugin (safe to send again)

    def __str__(self) -> str:  # TimeoutError (an OSError) would format two args as errno
        return self.message

    def reword(self, message: str) -> None:
        """Say ``message`` instead, everywhere the error is shown: str(), repr() and ``args`` (a log's
        repr, pickling) too, not only ``message``."""
        self.message = message
        self.args = (message,)

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled (a worker process's error sent back, a cached result): BaseException's default calls the class
        # with ``args`` alone, which __init__ refuses. The original gRPC call is not kept (it holds its channel);
        # its code and details are, so the copy answers code() and details() as this one does.
        state = {key: value for key, value in self.__dict__.items() if key != "original"}
        if self.original is not None:  # the stale _code (a default, or by_kill's) would overwrite the original's
            state["_code"], state["_details"] = self.code(), self.details()
        return type(self), (self.message, None, self.code(), self.sent), state

    def code(self) -> grpc.StatusCode:
        return self.original.code() if self.original is not None else self._code

    def details(self) -> str:
        if self.original is not None:
            return str(self.original.details())
        return str(self.__dict__.get("_details", self.message))


# What a caller can do once the plugin died: a Client's own, start another Client. A Supervisor sets
# its own advice on the Clients it runs (ManagedChannel.died_advice), whose plugin it restarts.
NEW_CLIENT = "start a new Client"


class PluginDied(_TranslatedRpcError, PluginDiedError):
    """The plugin ended while the call was in flight (or before it started)."""

    @classmethod
    def during_call(cls, name: str, why: str, advice: str, original: grpc.RpcError) -> PluginDied:
        # the stderr tail, when this host read any, is in ``why`` (a reattached Client reads no output)
        # sent and unanswered: the plugin may have applied it before it died (a Put written, a callback run), so
        # nothing here may call it "not completed" or bid the caller repeat it unless that is harmless
        return cls(f"plugin {name!r} died during the call: {why}. The call got no answer: the plugin may have run"
                   f" it, in part or whole, before it died; {advice}", original)

    @classmethod
    def gone(cls, name: str, why: str, advice: str) -> PluginDied:
        """A call refused, unsent, once the plugin had died."""
        return cls(f"plugin {name!r} is gone: {why}; {advice}", None, sent=False)

    def code(self) -> grpc.StatusCode:
        # UNAVAILABLE, as for any peer that is gone: the call may also have been CANCELLED by
        # plugbay itself on hearing the exit (close_current), which retry policies must not
        # mistake for a caller's cancel.
        return grpc.StatusCode.UNAVAILABLE


class CallTimeout(_TranslatedRpcError, CallTimeoutError):
    """The call ran past its deadline.

    ``what`` (what happened, with no advice) and ``check`` (what to look at), with ``deadline`` (the seconds
    the try had; None: not known), let a RetryPolicy that gave up after several tries, each bounded on its
    own, say so instead of the one try's advice to pass a larger timeout=.
    """

    def __init__(self, message: str, original: grpc.RpcError | None,
                 code: grpc.StatusCode = grpc.StatusCode.UNKNOWN, sent: bool = True, *, what: str = "",
                 check: str = "", deadline: float | None = None) -> None:
        super().__init__(message, original, code, sent)
        self.what = what
        self.check = check
        self.deadline = deadline
        # a deadline shared beyond this try (a Supervisor's deadline()) ran out: its words; another try of
        # the call would get no time, so a RetryPolicy gives up at once
        self.shared_spent = ""

    def code(self) -> grpc.StatusCode:
        # DEADLINE_EXCEEDED even when a Go server's own deadline answered first (UNKNOWN "context
        # deadline exceeded"): retry policies and breakers count timeouts by this code
        return grpc.StatusCode.DEADLINE_EXCEEDED


class WrongLoop(_TranslatedRpcError, ClientStateError):
    """A call from another event loop than the one that started the AsyncClient (or AsyncSupervisor)."""


class Unavailable(_TranslatedRpcError, PluginUnavailableError):
    """The call failed UNAVAILABLE and the plugin was not seen to exit: its own answer (it answered a health
    check after), or a connection that failed (then the plugin may not have received the call)."""


class BrokerTLSRefused(_TranslatedRpcError, BrokerTLSError):
    """The plugin answered that its dial back to this host's brokered server failed go-plugin 1.0.1's
    AutoMTLS check ("x509: certificate is valid for localhost, not unused"): no retry can pass it."""

    @staticmethod
    def matches(details: str) -> bool:
        return "x509: certificate is valid for" in details and "not unused" in details

    @classmethod
    def of(cls, name: str, details: str, original: grpc.RpcError) -> BrokerTLSRefused:
        return cls(f"plugin {name!r} could not dial this host's brokered server back: its TLS check failed"
                   f" ({details}). That is go-plugin 1.0.1's known limitation (its bug #109): as a plugin it"
                   " checks the host's AutoMTLS certificate against the name 'unused', so every brokered call"
                   " fails the same way and a retry cannot help. Build the plugin with a newer go-plugin (its"
                   " current releases fixed it), or turn AutoMTLS off for it (ClientConfig(auto_mtls=False));"
                   " see docs/broker.md, AutoMTLS", original)


class ClientClosed(_TranslatedRpcError, ClientStateError):
    """The call failed because its Client was being killed or closed."""

    @classmethod
    def by_kill(cls, name: str, original: grpc.RpcError | None) -> ClientClosed:
        """A call the user's kill() ended (``original``: the call's failure) or refused (None: never sent)."""
        if original is None:
            return cls(f"the connection to plugin {name!r} was closed (the Client was killed); the call was not"
                       " sent; start a new Client to call it again", None, grpc.StatusCode.CANCELLED, sent=False)
        return cls(f"the connection to plugin {name!r} was closed (the Client was killed) while the call was in"
                   " flight; the plugin may have run the call; start a new Client to call it again", original,
                   grpc.StatusCode.CANCELLED)

    @classmethod
    def by_close(cls, name: str, kind: str) -> Callable[[grpc.RpcError | None], ClientClosed]:
        """The calls a reattached ``kind``'s close() ended or refused (a channel's killed_error)."""
        def error(original: grpc.RpcError | None) -> ClientClosed:
            fate = "the call was not sent" if original is None else "the call was in flight; the plugin may have run it"
            return cls(after_close(name, kind, fate, "call it again"), original, grpc.StatusCode.CANCELLED,
                       sent=original is not None)
        return error


def after_close(name: str, kind: str, fate: str | None, again: str) -> str:
    """What a use of a reattached ``kind`` after its close() is told, while the plugin runs on (its calls, its
    broker, dispense()), said in this one place: the advice is another reattach, not a new Client (which would
    start a second plugin). ``fate``: what became of the use; ``again``: what the new reattach is for."""
    return (f"the {kind} of plugin {name!r} was closed (close() of a reattached {kind}; the plugin runs on)"
            + (f"; {fate}" if fate else "") + f"; reattach a new {kind} (ReattachConfig) to {again}")


class BrokerClientClosed(ClientClosed, BrokerClosedError):
    """The broker of a Client closed or killed, used after that (a brokered stub's callback served, a broker
    id dialed): a ClientClosed, as that Client's calls then raise, and the BrokerClosedError a broker's users
    catch. The kill may be a Supervisor's (restarting or stopping its plugin), not its user's."""

    @classmethod
    def of(cls, name: str, kind: str, runs_on: bool = False) -> Callable[[str], BrokerClientClosed]:
        """The broker's closed_error (core.broker.wire) for the Client of plugin ``name``, a ``kind`` (its class);
        ``runs_on``: a reattached Client's close() ended it, and the plugin runs on (another reattach brokers)."""
        if runs_on:
            return lambda said: cls(after_close(name, kind, f"its broker closed with it ({said}); nothing was sent",
                                                "broker connections again"), None, grpc.StatusCode.CANCELLED,
                                    sent=False)
        # a Supervisor's restart or stop kills its Client too: the broker the Client handed out ends with it
        # (the Supervisor's own broker, which its stubs use, follows the restarted Client)
        return lambda said: cls(f"the {kind} of plugin {name!r} was closed (close() or kill(), its user's or a"
                                f" Supervisor's restart or stop), and its broker with it ({said}); nothing was"
                                f" sent; make a new {kind} (under a Supervisor: use its broker, which follows its"
                                " restarts) to broker connections again", None, grpc.StatusCode.CANCELLED, sent=False)


class PluginRestarted(PluginDied):
    """A Supervisor ended the plugin to restart it (its health stayed bad) while the call was under way."""


def closed_under_call(exc: ValueError) -> bool:
    """Whether grpcio refused a call because its channel was closed (the call was not sent)."""
    text = str(exc).lower()
    return "closed channel" in text or "channel closed" in text
