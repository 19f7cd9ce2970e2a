"""A Client's own grpcio channel (``Client.channel.current``) refuses stubs once closed, instead of crashing.

grpcio (1.85) registers a registered method (every generated stub's, ``_registered_method=True``)
on its C channel as the stub is built, without looking whether that channel was closed: a sync
channel's is NULL then, and the process dies (SIGSEGV). ManagedChannel never builds one on a closed
connection, but code may build stubs on the grpcio channel itself, which ``current`` hands out as it
is (its type, and that it is the very channel the Client dialed, stay what they were): held since
before the plugin died or its Client was killed, or read afterwards (a dead plugin's channel stays
current, closed).

So the channel's own two steps that matter get an instance attribute each: its close marks it
closed, and a registration after that raises the owner's typed error; one of a method registered
while it was open is only looked up (grpcio keeps it) and goes on as before (its calls then raise
grpcio's ValueError, typed only for calls through the ManagedChannel, which translates it). A lock
makes a registration and the marking exclusive (grpcio's own registration is not thread-safe
either); grpcio's close itself runs after it is released, as it waits for callbacks that may build
stubs. Nothing runs per call: a stub's multicallables hold their registration already.
A grpcio whose channel lacks either step is left as it is.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from plugbay.errors import ClientStateError

_REGISTER = "_get_registered_call_handle"
_CLOSE = "_close"  # close() and the with-block's exit both end in it


def refuse_stubs_once_closed(channel: Any, name: str) -> None:
    """From its close on, building a method not registered before on ``channel``, plugin ``name``'s, raises
    ClientStateError. Given the name, not its ManagedChannel: the channel must not keep that alive."""
    kind = type(channel)
    register, close = getattr(kind, _REGISTER, None), getattr(kind, _CLOSE, None)
    if not callable(register) or not callable(close) or _CLOSE in getattr(channel, "__dict__", {_CLOSE: 0}):
        return  # not grpcio's channel as this grpcio has it, or guarded already
    lock = threading.Lock()
    closed = [False]
    registered: set[str] = set()
    own = weakref.ref(channel)  # the attributes must not keep the channel alive (a cycle waits for the gc)

    def _get_registered_call_handle(method: str) -> int:
        with lock:
            if closed[0] and method not in registered:
                raise _refusal(method, name)
            handle = int(register(own(), method))
            registered.add(method)
            return handle

    def _close() -> None:
        with lock:  # waits for a registration under way; any after it is refused
            closed[0] = True
        # not under the lock: grpcio's close waits for its channel thread, which runs the done-callbacks of
        # the calls it cancels, and one building a stub here would wait for the lock (a kill() that hangs)
        close(own())

    setattr(channel, _REGISTER, _get_registered_call_handle)
    setattr(channel, _CLOSE, _close)


def _refusal(method: str, name: str) -> ClientStateError:
    return ClientStateError(
        f"cannot build {method} on the gRPC channel of plugin {name!r} (Client.channel.current): it was closed"
        " (the plugin ended, its Client was killed or closed, or your code closed it), and gRPC would crash the"
        " process. Build stubs on Client.channel or use dispense(): their calls say why they fail; to call the"
        " plugin again, start a new Client")
