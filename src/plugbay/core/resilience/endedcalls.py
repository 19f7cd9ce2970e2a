"""What the calls a Supervisor's kill of its Client ends (or refuses) are told, set on that Client before the kill:
a restart's (mark_restarting: the plugin died, resent when safe to repeat; or dispense again, for a stub pinned by
the client's dispense()) and a stop()'s (mark_stopping: start a new Supervisor), not the Client's own advice for a
kill of the user's (start a new Client). Kept apart from plugbay.core.resilience.readygate, which re-exports them."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from plugbay.core.host.callerrors import ClientClosed, PluginRestarted
from plugbay.core.host.channel import ManagedChannel
from plugbay.core.host.client import Client


def mark_restarting(client: Client, name: str, reason: str, kind: str = "Supervisor",
                    stopped: Callable[[], bool] = lambda: False, can_restart: bool = True) -> None:
    """Before a Supervisor kills ``client`` to restart its plugin: the calls that kill ends fail as calls
    to a plugin that died (PluginDiedError, resent when safe to repeat), not as a kill of the user's,
    whose advice (start a new Client) is wrong for stubs that outlive the restart. Stubs pinned by the
    client's own dispense() (a RemoteClient's brokered ones: stopping_owner) do not outlive it: they are
    told to dispense again from the restarted client, until the Supervisor is ``stopped()``: then that
    it was stopped, as the stubs of the client it stopped are (no client is left to dispense from)."""
    pinned_too = getattr(client, "stopping_owner", None)
    if callable(pinned_too):
        pinned_too(lambda original: stopped_closed(name, kind, original) if stopped()
                   else pinned_restarted(name, kind, reason, original))
    channel = client.channel
    if not isinstance(channel, ManagedChannel):
        return

    def error(original: grpc.RpcError | None) -> BaseException:
        if not can_restart:  # a reattach-only Supervisor: no successor comes (it gives up)
            ran = ("" if original is None else ". The call was in flight: the plugin may have run it, in part or"
                   " whole, before it was ended. The call was not resent")
            return PluginRestarted(
                f"the {kind} ended plugin {name!r}, which it judged unhealthy ({reason}), and cannot restart it:"
                " it was given reattach= and no cmd=. Make a new one with cmd= too,"
                f" {kind}(ClientConfig(..., cmd=[...]), reattach=...){ran}", original, sent=original is not None)
        if original is None:  # refused unsent: this gate sends it to the successor
            return PluginRestarted(f"the {kind} is restarting plugin {name!r}, which it judged unhealthy"
                                   f" ({reason}); the call was not sent", None, sent=False)
        return PluginRestarted(
            f"the {kind} restarted plugin {name!r}, which it judged unhealthy ({reason}), while the call was"
            " in flight; the plugin may have run it, in part or whole, before it was ended. The call was not"
            " resent: only calls marked safe to repeat are (idempotent() or RetryPolicy(methods=...)); later"
            " calls go to the restarted plugin", original)
    channel.killed_error = error


def mark_stopping(client: Client, name: str, kind: str = "Supervisor") -> None:
    """Before a Supervisor's stop() kills ``client``: the calls that kill ends or refuses say the Supervisor
    was stopped (start a new one), not the Client's own advice (start a new Client); a RemoteClient's stubs
    pinned by its dispense() too (stopping_owner: a channel each, which this layer does not see)."""
    def error(original: grpc.RpcError | None) -> BaseException:
        return stopped_closed(name, kind, original)

    channel = client.channel
    if isinstance(channel, ManagedChannel):
        channel.killed_error = error
    pinned_too = getattr(client, "stopping_owner", None)
    if callable(pinned_too):
        pinned_too(error)


def pinned_restarted(name: str, kind: str, reason: str, original: grpc.RpcError | None) -> ClientClosed:
    """A call on a stub pinned by the dispense() of a client the Supervisor (``kind``) ended to restart its plugin
    (``original``: the call's failure; None: refused unsent). Such a stub is bound to that client's endpoint and
    broker session, which went with it: no restart reaches it, so the error says to dispense it again."""
    what = (f"the {kind} restarted plugin {name!r} ({reason}), which closed the client whose dispense() pinned"
            " this stub to one endpoint and its broker session")
    again = (f"This stub cannot reach the restarted plugin: dispense it again from the {kind}'s current client"
             " (its client.dispense(...)) once wait_running() is true")
    if original is None:
        return ClientClosed(f"{what}; the call was not sent. {again}", None, grpc.StatusCode.CANCELLED, sent=False)
    return ClientClosed(f"{what}, while the call was in flight; the plugin may have run the call. {again}", original,
                        grpc.StatusCode.CANCELLED)


def stopped_closed(name: str, kind: str, original: grpc.RpcError | None) -> ClientClosed:
    """A call a stopped Supervisor (``kind``: or AsyncSupervisor) ended (``original``: its failure) or refused."""
    if original is None:
        return ClientClosed(f"the {kind} of plugin {name!r} was stopped, which ended the plugin; the call was not"
                            f" sent. Start a new {kind} to call it again", None, grpc.StatusCode.CANCELLED, sent=False)
    return ClientClosed(f"the {kind} of plugin {name!r} was stopped while the call was in flight, which ended the"
                        f" plugin; the plugin may have run the call. Start a new {kind} to call it again", original,
                        grpc.StatusCode.CANCELLED)
