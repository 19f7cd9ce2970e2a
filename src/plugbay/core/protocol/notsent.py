"""The mark of a call a server refused before any of it reached the plugin's code.

A host's endpoint pool (plugbay.network.poolcalls) sends every unary call with ``(NOT_SENT, token)``
request metadata, ``token`` a random value of the pool's own. A server that refuses the call before
the plugin's handler ran (plugbay's gateway while its child is down or wedged; a handler gate that is
full: plugin/gate.py) echoes that pair as a trailer, and the pool, believing only its own token, sends
the call to another endpoint. Details are free text a plugin may relay, so only the trailer counts,
and only with the pool's own token: the gateway drops the key both ways between the caller and its
child, so no plugin behind it sees the token or passes a mark on, and a plugin that relays an upstream
gateway's trailer carries another pool's token. (A plugin served on the network itself does see the
token in its calls' metadata: one that passed its callers' metadata on to a plugbay server and relayed
that server's trailers back would relay the mark too.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

NOT_SENT = "plugbay-not-sent"


if TYPE_CHECKING:  # types only: a Protocol class costs every plugin's start its creation
    from typing import Protocol

    class _Context(Protocol):
        """What the echo needs of a grpc.ServicerContext (this layer imports no gRPC)."""

        def invocation_metadata(self) -> Iterable[tuple[str, Any]] | None: ...

        def set_trailing_metadata(self, trailing_metadata: Any) -> None: ...


def echo_not_sent(context: _Context) -> None:
    """Set the call's NOT_SENT trailer to the value its request metadata carries (none when it carries
    none: a caller that is no pool). Call it just before refusing the call (context.abort keeps it)."""
    token = next((v for k, v in context.invocation_metadata() or () if k == NOT_SENT), None)
    if isinstance(token, str):
        context.set_trailing_metadata(((NOT_SENT, token),))


def with_token(kwargs: dict[str, Any], token: str) -> dict[str, Any]:
    """A call's kwargs whose metadata (a sequence of pairs, or None) also carries ``(NOT_SENT, token)``.
    The caller's pairs are kept, but for one of that key: only the pool's own value may come back."""
    caller = kwargs.get("metadata") or ()
    return {**kwargs, "metadata": (*((k, v) for k, v in caller if k != NOT_SENT), (NOT_SENT, token))}


def echoed(error: BaseException, token: str) -> bool:
    """Whether a failed call's ``error`` (a grpc.RpcError that is a call) has the NOT_SENT trailer with
    the value ``token``."""
    import secrets  # here: a plugin's gate imports this module, and secrets pulls in hmac and hashlib

    trailers = getattr(error, "trailing_metadata", None)
    try:
        pairs = trailers() if callable(trailers) else None
    except Exception:  # an error that is no call (a typed one of the pool's own) has none
        return False
    # compare_digest takes ASCII str only: a Go server or a proxy may send any bytes (a TypeError here
    # failed the call with it, and was lost in a future's grpc callback, so the future never ended)
    return any(key == NOT_SENT and isinstance(value, str) and value.isascii() and secrets.compare_digest(value, token)
               for key, value in pairs or ())
