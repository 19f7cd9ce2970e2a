"""Ending a plugin: asking it to shut down (GRPCController.Shutdown), saying how it exited, and what a Client
that ended (or may not end so) refuses."""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc

from plugbay._proto.plugin import grpc_controller_pb2
from plugbay.core.host.callerrors import after_close
from plugbay.errors import ClientStateError

_log = logging.getLogger("plugbay.client")
SHUTDOWN_TIMEOUT = 2.0


def ask_shutdown(controller: Any, name: str) -> bool:
    """Ask the plugin to exit by itself; True when it took the request."""
    try:
        controller.Shutdown(grpc_controller_pb2.Empty(), timeout=SHUTDOWN_TIMEOUT)
        return True
    except grpc.RpcError as exc:
        # The plugin may close the connection before answering.
        _log.debug("Shutdown of plugin %s: %s", name, exc)
        return bool(exc.code() == grpc.StatusCode.UNAVAILABLE)
    except ValueError:
        return False  # channel already closed by the exit watcher


def describe_exit(how: str, tail: list[str], reason: str = "") -> str:
    """How a plugin exited (``how``: its runner's exit_words()), for the error of a call it left: what its
    runner knows of why (``reason``: AttachedRunner.exit_reason), its last stderr lines."""
    how = f"it {how}" + (f", {reason}" if reason else "")
    joined = "; ".join(tail)
    return how + (f" (last stderr: {joined})" if joined else "")


def killed_while_starting(name: str, user_class: str = "Client") -> ClientStateError:
    """What start() raises when a kill() from another thread ended its plugin meanwhile."""
    return ClientStateError(f"the client of plugin {name!r} was killed while it started the plugin; plugbay"
                            f" stopped the plugin. Make a new {user_class} to start it again")


def ended_refusal(name: str, user_class: str, *, closed: bool, exit_words: str | None) -> ClientStateError:
    """What start() and dispense() of an ended Client raise: ``closed``, a reattached one close() let go of
    (``exit_words``: how its plugin exited since, None: it runs on as far as the Client knows); else a killed one."""
    if not closed:
        return ClientStateError(f"the client of plugin {name!r} was killed; make a new {user_class}")
    if exit_words is None:
        return ClientStateError(after_close(name, user_class, None, "use it again"))
    return ClientStateError(f"the {user_class} of plugin {name!r} was closed, and the plugin has {exit_words}:"
                            f" nothing is left to reattach to; make a new {user_class} to run it again")


def not_closable(name: str, starting: bool) -> ClientStateError:
    """What close() of a Client that started (or is starting) its plugin raises: only a reattached one may leave
    its plugin running."""
    return ClientStateError(
        f"close() leaves a plugin running, which only a reattached Client may do; this"
        f" Client {'is starting' if starting else 'started'} plugin {name!r}, so stop it with kill()")


class ExitGate:
    """Lets a Client act on its plugin's exit once, and only once start() connected.

    The exit watch is taken at spawn; an exit before the connection is start()'s to report
    (with the plugin's output), so until open() tell() says no; open() is followed by a look
    at the exit code, so an exit in between is acted on exactly once either way.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = False
        self._told = False

    def open(self) -> None:
        with self._lock:
            self._open = True

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open

    def tell(self) -> bool:
        """True for the one caller that acts on the exit; False before open() and after that one."""
        with self._lock:
            if not self._open or self._told:
                return False
            self._told = True
            return True
