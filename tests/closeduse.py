"""A use of a closed gRPC channel or a stopped gRPC server fails its test, never the whole run.

grpcio (1.85) reaches into a freed or NULL C object, without looking, from:

- a registered method (every generated stub's) built on a closed channel, for a method not registered
  on it while it was open: grpcio registers it on the C channel. A sync channel's is NULL once closed
  (SIGSEGV); a grpc.aio channel's was freed (a use-after-free: it aborted the CI's run once, and most
  times goes unseen);
- add_insecure_port(), add_secure_port() or add_registered_method_handlers() on a server that was
  started and stopped (its C server is freed: SIGSEGV).

Either ends the pytest process, and with it every test after the one that did it, saying little of
where. Here grpcio refuses them before its C side is reached (a sync channel's ValueError, grpc.aio's
UsageError, RuntimeError for a server: what each raises for other uses once closed), and the test during
which one came fails with the stack that made it, even when the code under test swallowed the refusal.
Through grpcio's Python layer only: where that changed shape, nothing is watched (and nothing breaks).

plugbay refuses two of them itself, before grpcio is reached: a stub built on a Client's closed grpcio
channel (core/host/rawguard.py, ClientStateError) and an addition to a plugin's stopped server
(core/plugin/gatedserver.py, ServerStoppedError). Each of those refusals fails its test the same way,
so plugbay code that makes one and swallows it shows here as grpcio's would have.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Generator
from typing import Any

import pytest

_lock = threading.Lock()
_seen: list[str] = []  # what was refused since the last report, with its stack
_undo: list[Callable[[], None]] = []


def _refused(what: str, by: str = "tests/closeduse.py") -> str:
    stack = "".join(traceback.format_stack(limit=16)[:-2])
    text = (f"{what}: grpcio would have used its freed C object (the process crashes, or a use-after-free);"
            f" refused by {by}\n{stack}")
    with _lock:
        _seen.append(text)
    return what + " (tests/closeduse.py refused it: grpcio would crash)"


def _patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    original = owner.__dict__[name]
    setattr(owner, name, make(original))
    _undo.append(lambda: setattr(owner, name, original))


def _registered(channel: Any) -> set[str]:
    found: set[str] | None = channel.__dict__.get("_closeduse_methods")
    if found is None:
        found = channel.__dict__.setdefault("_closeduse_methods", set())
    return found


def _watch_sync_channels(channel_class: Any) -> None:
    def close(original: Any) -> Any:
        def _close(self: Any) -> None:
            self._closeduse_closed = True  # first: a registration racing the close is refused from here on
            original(self)
        return _close

    def register(original: Any) -> Any:
        def _get_registered_call_handle(self: Any, method: str) -> int:
            methods = _registered(self)
            # one registered while the channel was open is only looked up (grpcio caches it): safe
            if getattr(self, "_closeduse_closed", False) and method not in methods:
                raise ValueError(_refused(f"registered method {method} built on a closed grpc.Channel"))
            handle: int = original(self, method)
            methods.add(method)
            return handle
        return _get_registered_call_handle

    _patch(channel_class, "_close", close)
    _patch(channel_class, "_get_registered_call_handle", register)


def _watch_aio_channels(channel_class: Any, usage_error: type[Exception]) -> None:
    def close(original: Any) -> Any:
        async def _close(self: Any, grace: float | None) -> None:
            closing_here = not self._channel.closed()  # a close during another's grace returns at once
            await original(self, grace)
            if closing_here:
                self._closeduse_closed = True  # its C channel is destroyed by now (while closing, it was not)
        return _close

    def register(original: Any) -> Any:
        def _get_registered_call_handle(self: Any, method: str, _registered_method: bool | None) -> int:
            if not _registered_method:  # not registered: nothing reaches the C channel
                return int(original(self, method, _registered_method))
            methods = _registered(self)
            if getattr(self, "_closeduse_closed", False) and method not in methods:
                raise usage_error(_refused(f"registered method {method} built on a closed grpc.aio.Channel"))
            handle = int(original(self, method, _registered_method))
            methods.add(method)
            return handle
        return _get_registered_call_handle

    _patch(channel_class, "_close", close)
    _patch(channel_class, "_get_registered_call_handle", register)


def _watch_servers(server_module: Any) -> None:
    def stop_serving(original: Any) -> Any:
        def _stop_serving(state: Any) -> bool:
            freed: bool = original(state)
            if freed:
                state._closeduse_freed = True
            return freed
        return _stop_serving

    def refuse_once_freed(name: str) -> Callable[[Any], Any]:
        def make(original: Any) -> Any:
            def method(self: Any, *args: Any, **kwargs: Any) -> Any:
                if getattr(self._state, "_closeduse_freed", False):
                    raise RuntimeError(_refused(f"{name}() on a grpc server that was stopped"))
                return original(self, *args, **kwargs)
            return method
        return make

    _patch(server_module, "_stop_serving", stop_serving)
    for name in ("add_insecure_port", "add_secure_port", "add_registered_method_handlers"):
        _patch(server_module._Server, name, refuse_once_freed(name))


def _watch_plugbay_refusals(rawguard: Any, gatedserver: Any) -> None:
    def channel_refusal(original: Any) -> Any:
        def _refusal(method: str, name: str) -> Exception:
            _refused(f"registered method {method} built on the closed grpc.Channel of plugin {name!r}",
                     "plugbay (core/host/rawguard.py)")
            error: Exception = original(method, name)
            return error
        return _refusal

    def server_refusal(original: Any) -> Any:
        def refused(self: Any, method: str) -> Exception:
            _refused(f"{method}() on {self.what} after it stopped", "plugbay (core/plugin/gatedserver.py)")
            error: Exception = original(self, method)
            return error
        return refused

    _patch(rawguard, "_refusal", channel_refusal)
    _patch(gatedserver.AddGuard, "refused", server_refusal)


def pytest_configure(config: pytest.Config) -> None:
    try:
        import grpc.aio
        from grpc import _channel, _server
        from grpc.aio import _channel as aio_channel

        _watch_sync_channels(_channel.Channel)
        _watch_aio_channels(aio_channel.Channel, grpc.aio.UsageError)
        _watch_servers(_server)
    except (ImportError, AttributeError, KeyError):  # another grpcio layout: nothing watched
        pytest_unconfigure(config)
        return
    try:
        from plugbay.core.host import rawguard
        from plugbay.core.plugin import gatedserver

        _watch_plugbay_refusals(rawguard, gatedserver)
    except (ImportError, AttributeError, KeyError):  # a plugbay without these guards: grpcio's are watched
        pass


def pytest_unconfigure(config: pytest.Config) -> None:
    while _undo:
        _undo.pop()()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    with _lock:
        seen, _seen[:] = list(_seen), []
    if seen:  # one made by a thread between tests is told at the next test's setup
        earlier = f"{report.longreprtext}\n\n" if report.failed else ""
        report.outcome = "failed"
        report.longrepr = earlier + "\n".join(seen)
    return report
