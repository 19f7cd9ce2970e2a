"""Where a Supervisor's Clients come from (a ClientConfig, a ClientMaker, or a factory of either),
the checks of its settings, and when a running one counts as failed.

A factory is called again for every restart, so it may return a different
config each time (failover). The first Client may instead reattach to a plugin
a previous host left running; when that fails, a fresh plugin is started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeAlias

from plugbay.core.host.client import Client, ClientConfig
from plugbay.core.host.reattach import ReattachConfig
from plugbay.core.resilience.calls import layer_problem, number_problem, seconds_problem
from plugbay.core.resilience.circuit import CircuitBreaker
from plugbay.core.resilience.healthwatch import SERVING, UNKNOWN, HealthWatcher
from plugbay.core.resilience.readygate import was_stopped
from plugbay.core.resilience.restart import EventKind, RestartPolicy
from plugbay.errors import ClientStateError, ConfigError, UnknownPluginError


class ClientMaker(Protocol):
    """A config that makes its own Client (a network RemoteConfig makes a RemoteClient)."""

    name: str | None

    def make_client(self) -> Client: ...


ConfigSource: TypeAlias = "ClientConfig | ClientMaker | Callable[[], ClientConfig | ClientMaker]"


def check_source(config: object, reattach: object = None) -> None:
    """Refuse, with what to pass instead, a config a Supervisor could not restart from. With ``reattach``
    a ClientConfig may lack cmd=: the first start attaches, and only a fresh start is refused (new_client)."""
    if not isinstance(config, ClientConfig) and not callable(config) and not hasattr(config, "make_client"):
        raise ConfigError(f"Supervisor takes a ClientConfig, a RemoteConfig or a factory returning one, got"
                          f" {type(config).__name__}: Supervisor(ClientConfig(...)) or"
                          " Supervisor(lambda: ClientConfig(...))")
    if isinstance(config, ClientConfig) and config.runner is not None:
        raise ConfigError("a Runner instance runs its plugin only once, so a Supervisor cannot restart"
                          " it; pass a factory instead: Supervisor(lambda: ClientConfig(...,"
                          " runner=DockerRunner(...)))")
    if isinstance(config, ClientConfig) and config.reattach is not None:
        raise ConfigError("pass the ReattachConfig as Supervisor(reattach=...), not in the ClientConfig:"
                          " a restart needs cmd= or runner= to start a fresh plugin")
    if isinstance(config, ClientConfig) and config.cmd is None and reattach is None:  # no runner nor reattach
        # the Client each start makes refused it, so the Supervisor was made and only its start() failed
        raise ConfigError("a Supervisor starts (and restarts) its plugin from the ClientConfig's cmd=, and this one"
                          " has none: pass ClientConfig(..., cmd=[...]), or a factory for another runner:"
                          " Supervisor(lambda: ClientConfig(..., runner=DockerRunner(...)))")


def check_settings(owner: str, health_interval: object, health_timeout: object, unhealthy_grace: object,
                   on_event: object) -> tuple[Any, Any, Any]:
    """Refuse up front what would fail only once the plugin runs (the health watcher's settings) or
    at every event (an on_event that cannot be called); returns the three settings as floats (a Fraction
    or numpy scalar as given fails the watcher's waits)."""
    health_interval, health_timeout, unhealthy_grace = (
        _as_float(health_interval), _as_float(health_timeout), _as_float(unhealthy_grace))
    problems = [p for p in (
        None if health_interval is None else seconds_problem(health_interval, "health_interval (or None)"),
        seconds_problem(health_timeout, "health_timeout"),
        number_problem(unhealthy_grace, "unhealthy_grace", 0),
        None if on_event is None or callable(on_event) else
        f"on_event must be a function taking a SupervisorEvent, or None (got {type(on_event).__name__})",
    ) if p is not None]
    if problems:
        raise ConfigError(f"invalid {owner}: {'; '.join(problems)}")
    values: list[Any] = [health_interval, health_timeout, unhealthy_grace]
    interval, timeout, grace = (None if v is None else float(v) for v in values)
    return interval, timeout, grace


def _as_float(value: object) -> object:
    """A real number other than an int or a float (a Fraction, a numpy scalar) as a float; anything
    else as it is, for the checks to name as given."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
        with contextlib.suppress(OverflowError, TypeError, ValueError):  # too large: refused as no number
            return float(value)
    return value


def check_policies(restart: object, retry: object, breaker: object, wanted: str, owner: str) -> None:
    """Refuse what is not a policy where a (Async)Supervisor takes one: it would be accepted and fail
    at every call, or leave a dead plugin unrestarted. ``wanted`` is the call layers' method."""
    if restart is not None and not isinstance(restart, RestartPolicy):
        raise ConfigError(f"{owner}(restart=...) takes a RestartPolicy, got {type(restart).__name__}: pass"
                          f" restart=RestartPolicy(max_restarts=5, window=60), or leave it out for the default")
    problem = None if retry is None else layer_problem(retry, wanted)
    if problem is not None:
        raise ConfigError(f"{owner}(retry=...): {problem}, such as RetryPolicy(methods=[...])")
    if breaker is not None and not isinstance(breaker, CircuitBreaker):
        raise ConfigError(f"{owner}(breaker=...) takes a CircuitBreaker, got {type(breaker).__name__}: pass"
                          " breaker=CircuitBreaker(failure_threshold=5), or leave it out")


def not_running(name: str, state: str, last_failure: str | None, kind: str = "Supervisor") -> ClientStateError:
    """The error for asking a Supervisor in ``state`` for its Client when it has none."""
    if state == "restarting":
        return ClientStateError(f"the {kind} of {name!r} is restarting the plugin; wait_running() first")
    if state == "stopped":
        return was_stopped(name, kind)
    if state == "failed":
        return ClientStateError(f"the {kind} of {name!r} failed to start its plugin ({last_failure});"
                                " fix that and call start() again")
    return ClientStateError(f"{kind} of {name!r} is not running; call start() first")


def plugin_named(client: Client, name: str) -> Any:
    """The plugin definition ``name`` of the protocol version ``client`` negotiated."""
    plugins = client.config.versions()[client.negotiated_version]
    if name not in plugins:
        raise UnknownPluginError(name, list(plugins))
    return plugins[name]


def stopped_while_starting(name: str, kind: str = "Supervisor") -> ClientStateError:
    return ClientStateError(f"the {kind} of plugin {name!r} was stopped while it started the plugin;"
                            " make a new one")


def stderr_note(client: Client) -> str:
    """The plugin's last stderr lines, as a note for a failure's reason ("" when it wrote none)."""
    tail = "; ".join(client.stderr_tail()[-3:])
    return f" (last stderr: {tail})" if tail else ""


class FailureCheck:
    """Whether a running plugin has failed: it exited, or its health stayed bad for a grace period
    (a short blip, back to SERVING within it, is reported as ``recovered`` and restarts nothing)."""

    def __init__(self, event: Callable[[EventKind, str], None]) -> None:
        self._event = event
        self._unhealthy_since: float | None = None

    def failure(self, client: Client, watcher: HealthWatcher | None, grace: float) -> str | None:
        """Why ``client``'s plugin counts as failed now, or None."""
        reason = None
        code = client.runner.wait(0)
        if code is None and client.exited:
            code = client.exit_code
        if code is not None or client.exited:
            how = client.runner.exit_words(code) if code is not None else "exited"
            reason = f"the plugin {how}" + stderr_note(client)
        elif watcher is not None and watcher.state not in (SERVING, UNKNOWN):
            now = time.monotonic()
            since = self._unhealthy_since = self._unhealthy_since if self._unhealthy_since is not None else now
            if now - since >= grace:
                reason = f"health {watcher.state} for {now - since:.1f}s ({watcher.detail})"
        elif self._unhealthy_since is not None:
            self._unhealthy_since = None
            self._event("recovered", "health is SERVING again; no restart needed")
        if reason is not None:
            self._unhealthy_since = None
        return reason


def resolve_config(source: ConfigSource) -> ClientConfig | ClientMaker:
    """The config to start from now (a factory is called each time)."""
    cfg = source if isinstance(source, ClientConfig) or hasattr(source, "make_client") else source()
    if not isinstance(cfg, ClientConfig) and not hasattr(cfg, "make_client"):
        raise ConfigError(f"the Supervisor's config factory returned {type(cfg).__name__}, not a ClientConfig")
    return cfg  # type: ignore[return-value]


def reattach_only(config: object, reattach: ReattachConfig | None) -> bool:
    """Whether ``config`` with the Supervisor's ``reattach`` can only attach, never start a plugin: a
    ClientConfig with no cmd=, runner= nor reattach= of its own. A factory is not one (it is asked again
    at each restart, and may return cmd= then)."""
    return (reattach is not None and isinstance(config, ClientConfig)
            and config.cmd is None and config.runner is None and config.reattach is None)


def new_client(source: ConfigSource, reattach: ReattachConfig | None = None, kind: str = "Supervisor") -> Client:
    """A Client (not yet started) for a fresh plugin. ``reattach``: the Supervisor's own, which let its
    ClientConfig come without cmd= (Client() would say only 'exactly one of runner=, cmd= or reattach=')."""
    cfg = resolve_config(source)
    if reattach_only(cfg, reattach):
        raise ConfigError(f"this {kind} was given reattach= and no cmd=, so it cannot start a new plugin (as a"
                          " restart, or a reattach that failed, needs): pass cmd= too,"
                          f" {kind}(ClientConfig(..., cmd=[...]), reattach=...)")
    return Client(cfg) if isinstance(cfg, ClientConfig) else cfg.make_client()


def first_client(source: ConfigSource, reattach: ReattachConfig | None, event: Callable[[EventKind, str], None],
                 starting: Callable[[Client | None], None] = lambda client: None,
                 stopped: Callable[[], bool] = lambda: False, kind: str = "Supervisor") -> Client:
    """The Supervisor's first, started Client: reattached if ``reattach`` works, else a fresh plugin.

    ``event(kind, detail)`` records what happened; errors of the fresh start are raised as they are.
    ``starting(client)`` is told of each Client before its start (and ``None`` after), so that a stop
    meanwhile can end it; it may raise to refuse the start. Once ``stopped()``, a failed reattach
    is raised as it is: no fresh plugin follows it. ``kind``: what errors call the Supervisor.
    """
    if reattach is not None:
        base = resolve_config(source)
        if not isinstance(base, ClientConfig):
            raise ConfigError("reattach= needs a ClientConfig (a launched plugin); a remote plugin is"
                              " simply connected to again, so drop reattach=")
        cfg = dataclasses.replace(base, cmd=None, runner=None, reattach=reattach)
        client = Client(cfg)
        try:
            _start(client, starting)
            event("reattached", f"to {reattach.handshake.address}")
            return client
        except Exception as exc:
            client.close()  # the plugin stays: it was not proven to answer this host, another may use it
            if stopped():
                raise
            event("reattach_failed", f"{type(exc).__name__}: {exc}")
            fresh = resolve_config(source)  # the one start that follows: a factory is asked once, as new_client would
            if reattach_only(fresh, reattach):  # it would say only "pass cmd=", and leave out why the reattach failed
                raise ConfigError(f"this {kind} could not reattach ({type(exc).__name__}: {exc}) and cannot start a"
                                  " new plugin instead: it was given no cmd=; pass cmd= too,"
                                  f" {kind}(ClientConfig(..., cmd=[...]), reattach=...)") from exc
            source = fresh
    client = new_client(source, reattach, kind)
    try:
        _start(client, starting)
    except BaseException:
        client.kill()
        raise
    event("started", f"{client.handshake.network}:{client.handshake.address}")
    return client


def _start(client: Client, starting: Callable[[Client | None], None]) -> None:
    starting(client)
    try:
        client.start()
    finally:
        starting(None)
