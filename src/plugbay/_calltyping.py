"""For type checkers only: what the call errors of plugbay.errors answer (imported there under TYPE_CHECKING).

Every instance plugbay raises of a class taking one of these on is a call's error that is also a grpc.RpcError
(core.host.callerrors, network.poolcalls, core.resilience.circuit), so it has these. At run time the errors'
bases are ``object`` (their MROs unchanged) and nothing imports this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # also the classes: their methods have no bodies, as in a stub
    import grpc

    class CallFailure:
        def code(self) -> grpc.StatusCode: ...
        def details(self) -> str: ...

    class SentCallFailure(CallFailure):
        sent: bool  # False: refused before anything reached the plugin (safe to send again)

    class CircuitRefusal(CallFailure):
        """Set by the one class raised, core.resilience.circuit.CircuitOpen."""

        name: str
        retry_in: float  # seconds until the breaker lets a probe through
        last_failure: str
