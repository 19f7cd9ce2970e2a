"""HealthWatcher against real plugins: transitions, unreachable, unknown service, clean stop."""

from __future__ import annotations

import math
import os
import threading
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.resilience_util import PLUGIN_NAME, faulty_config

from plugbay import CircuitBreaker, Client, ConfigError, HealthWatcher  # noqa: E402
from plugbay.core.resilience.circuit import CLOSED, OPEN  # noqa: E402
from plugbay.core.resilience.healthwatch import (  # noqa: E402
    NOT_SERVING,
    SERVICE_UNKNOWN,
    SERVING,
    UNKNOWN,
    UNREACHABLE,
)

MODES = ["watch", "check"]


@pytest.mark.parametrize("mode", MODES)
def test_reports_not_serving_then_serving_and_steers_the_breaker(tmp_path: Path, mode: str) -> None:
    changes: list[tuple[str, str]] = []
    b = CircuitBreaker(failure_threshold=100, open_for=600, name="kv")
    with Client(faulty_config(tmp_path)) as client:
        kv = client.dispense(PLUGIN_NAME)
        with HealthWatcher(client.channel, interval=0.2, timeout=2.0, mode=mode, breaker=b,
                           on_change=lambda old, new, why: changes.append((old, new))) as w:
            assert w.wait_for(SERVING, 10)
            assert b.state == CLOSED
            kv.put("__health__", b"NOT_SERVING")
            assert w.wait_for(NOT_SERVING, 10)
            assert b.state == OPEN
            assert "health watcher: NOT_SERVING" in b.last_failure
            kv.put("__health__", b"SERVING")
            assert w.wait_for(SERVING, 10)
            assert b.state == CLOSED
    assert changes == [(UNKNOWN, SERVING), (SERVING, NOT_SERVING), (NOT_SERVING, SERVING)]
    assert [h[1:3] for h in w.history] == changes


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_plugin_is_unreachable(tmp_path: Path, mode: str) -> None:
    with Client(faulty_config(tmp_path)) as client:
        with HealthWatcher(client.channel, interval=0.2, timeout=1.0, mode=mode) as w:
            assert w.wait_for(SERVING, 10)
            pid = int(client.dispense(PLUGIN_NAME).get("__pid__"))
            os.kill(pid, signal.SIGKILL)
            assert w.wait_for(UNREACHABLE, 15), w.history
            assert w.detail  # says why: the gRPC status or the closed channel


@pytest.mark.parametrize("mode", MODES)
def test_unknown_service(tmp_path: Path, mode: str) -> None:
    with Client(faulty_config(tmp_path)) as client:
        with HealthWatcher(client.channel, service="nosuch", interval=0.2, mode=mode) as w:
            assert w.wait_for(SERVICE_UNKNOWN, 10), w.history


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_client_is_reported_with_the_reason(tmp_path: Path, mode: str) -> None:
    client = Client(faulty_config(tmp_path))
    client.start()
    channel = client.channel
    with HealthWatcher(channel, interval=0.2, timeout=1.0, mode=mode) as w:
        assert w.wait_for(SERVING, 10)
        client.kill()
        assert w.wait_for(UNREACHABLE, 15), w.history
        assert "was killed" in w.detail or "closed" in w.detail


def test_follows_a_channel_source_and_stops_cleanly(tmp_path: Path) -> None:
    with Client(faulty_config(tmp_path)) as client:
        w = HealthWatcher(lambda: client.channel, interval=0.2).start()
        assert w.wait_for({SERVING}, 10)
        assert any(t.name == "plugbay-health-plugin" and t.is_alive() for t in threading.enumerate())
        w.stop()
        w.stop()  # idempotent
        assert not any(t.name == "plugbay-health-plugin" and t.is_alive() for t in threading.enumerate())


def _health_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"plugbay-health-{name}" and t.is_alive()]


def test_stop_in_check_mode_cancels_a_check_the_plugin_does_not_answer(tmp_path: Path) -> None:
    import time

    with Client(faulty_config(tmp_path)) as client:
        pid = int(client.dispense(PLUGIN_NAME).get("__pid__"))
        w = HealthWatcher(client.channel, interval=0.2, timeout=60.0, mode="check", name="hung").start()
        try:
            assert w.wait_for(SERVING, 10)
            os.kill(pid, signal.SIGSTOP)  # the plugin stops answering: the next Check hangs up to its timeout
            time.sleep(1.0)  # several intervals: a Check is now in flight
            w.stop(timeout=30.0)
            # stop() joined the thread: it cancelled the Check rather than waiting out its 60 s
            assert not _health_threads("hung")
        finally:
            os.kill(pid, signal.SIGCONT)
            w.stop()


def test_a_stopped_watcher_cannot_be_started_again(tmp_path: Path) -> None:
    from plugbay import ClientStateError

    with Client(faulty_config(tmp_path)) as client:
        w = HealthWatcher(client.channel, interval=0.2, name="again").start()
        assert w.wait_for(SERVING, 10)
        w.stop()
        # its thread ended for good: started again it would have watched nothing, saying nothing
        with pytest.raises(ClientStateError, match="a stopped HealthWatcher cannot be started again; make a new one"):
            w.start()
        assert not _health_threads("again")


@pytest.mark.parametrize("kw, message", [
    ({"interval": 0}, "interval must be > 0 (got 0)"),
    ({"timeout": -1}, "timeout must be > 0 (got -1)"),
    ({"interval": "2"}, "interval must be a number (got '2')"),
    ({"mode": "poll"}, "mode must be 'watch' or 'check' (got 'poll')"),
    # as a Supervisor's: accepted, the check thread died on its wait (OverflowError), or every
    # Check's deadline overflowed to one already past (UNREACHABLE at once)
    ({"interval": math.inf}, "interval must be at most 3.1536e+07 s (a year; got inf)"),
    ({"interval": 1e300}, "interval must be at most"),
    ({"timeout": math.inf}, "timeout must be at most"),
    ({"timeout": 1e300}, "timeout must be at most"),
    ({"interval": 10**400}, "interval is too large"),
    ({"timeout": math.nan}, "timeout must be a number (got nan)"),
    # these were accepted: the thread died (service) or reported UNREACHABLE forever (channel)
    ({"channel": None}, "channel must be a Client's channel (client.channel) or a function returning one"),
    ({"channel": "localhost:1234"}, "channel must be a Client's channel"),
    ({"service": 3}, "service must be a str such as 'plugin' (got 3)"),
    ({"on_change": 3}, "on_change must be a function (old, new, detail) or None, got int"),
    ({"breaker": "x"}, "breaker must be a CircuitBreaker or None, got str"),
])
def test_bad_settings_are_refused(kw: dict[str, object], message: str) -> None:
    kw = {"channel": lambda: None, **kw}
    with pytest.raises(ConfigError) as err:
        HealthWatcher(**kw)  # type: ignore[arg-type]
    assert message in str(err.value)
    assert not any(t.name.startswith("plugbay-health") for t in threading.enumerate())


@pytest.mark.parametrize("mode", MODES)
def test_the_longest_interval_and_timeout_still_watch(tmp_path: Path, mode: str) -> None:
    year = 365 * 86400.0
    with Client(faulty_config(tmp_path)) as client:
        w = HealthWatcher(client.channel, interval=year, timeout=year, mode=mode, name="year").start()
        try:
            assert w.wait_for(SERVING, 10), w.history
            time.sleep(0.3)
            assert w.state == SERVING and _health_threads("year")
        finally:
            w.stop()
        assert not _health_threads("year")


def test_wait_for_a_state_that_does_not_exist_is_refused_at_once(tmp_path: Path) -> None:
    with Client(faulty_config(tmp_path)) as client:
        with HealthWatcher(client.channel, interval=0.2) as w:
            assert w.wait_for(SERVING, 10)
            # refused, not waited out: such a state never matched, and wait_for returned False after 5 s
            with pytest.raises(ConfigError, match="'serving' is no health state; use one of SERVING, NOT_SERVING"):
                w.wait_for("serving", 5)  # lower case: it never matched, and waited the whole timeout
            with pytest.raises(ConfigError, match="'OK' is no health state"):
                w.wait_for({SERVING, "OK"}, 5)


def test_falls_back_to_check_when_watch_is_unimplemented(tmp_path: Path) -> None:
    with Client(faulty_config(tmp_path, env={"RESILIENCE_NO_WATCH": "1"})) as client:
        kv = client.dispense(PLUGIN_NAME)
        with HealthWatcher(client.channel, interval=0.2, timeout=2.0) as w:
            assert w.wait_for(SERVING, 10)
            assert w.mode == "check"
            kv.put("__health__", b"NOT_SERVING")
            assert w.wait_for(NOT_SERVING, 10)
    assert [h[2] for h in w.history] == [SERVING, NOT_SERVING]


def test_checks_pass_none_of_the_call_layers_so_serving_again_closes_the_breaker_at_once(tmp_path: Path) -> None:
    # A Check through the breaker it trips would be refused while the circuit is open: the watcher
    # would report UNREACHABLE until open_for ends (and take the half-open probe from user calls).
    from kvproto import kv_pb2, kv_pb2_grpc

    from plugbay import install

    b = CircuitBreaker(failure_threshold=100, open_for=600, name="kv")
    with Client(faulty_config(tmp_path, env={"RESILIENCE_NO_WATCH": "1"})) as client:
        install(client, breaker=b)
        raw = kv_pb2_grpc.KVStub(client.channel.current)  # flips the plugin's health past the open circuit
        with HealthWatcher(client.channel, interval=0.2, timeout=2.0, breaker=b) as w:
            assert w.wait_for(SERVING, 10)
            assert w.mode == "check"
            raw.Put(kv_pb2.PutRequest(key="__health__", value=b"NOT_SERVING"), timeout=10)
            assert w.wait_for(NOT_SERVING, 10)
            assert b.state == OPEN
            raw.Put(kv_pb2.PutRequest(key="__health__", value=b"SERVING"), timeout=10)
            assert w.wait_for(SERVING, 10), w.history  # far below open_for
            assert b.state == CLOSED
    assert [h[2] for h in w.history] == [SERVING, NOT_SERVING, SERVING]


def test_several_watchers_of_one_plugin_never_see_it_unreachable(tmp_path: Path) -> None:
    """The plugin caps its health Watch streams; watchers reopening at each interval must still fit, and
    one past the cap polls Check instead of reporting a healthy plugin unreachable."""
    import time

    events: list[tuple[int, str, str]] = []
    lock = threading.Lock()
    with Client(faulty_config(tmp_path)) as client:
        client.dispense(PLUGIN_NAME)
        watchers = []
        for i in range(6):  # more than the plugin's cap (4)
            def changed(old: str, new: str, why: str, i: int = i) -> None:
                with lock:
                    events.append((i, new, why))
            watchers.append(HealthWatcher(client.channel, interval=0.3, timeout=0.3, on_change=changed,
                                          name=f"w{i}").start())
        try:
            time.sleep(4.0)  # a dozen reopenings each
        finally:
            for watcher in watchers:
                watcher.stop()
        states = [w.state for w in watchers]
    assert not [e for e in events if e[1] != "SERVING"], events
    assert states == ["SERVING"] * 6


def test_a_watch_frees_its_place_when_its_call_ends(tmp_path: Path) -> None:
    """Three watchers reopening at each interval stay on Watch: an ended stream's place is free at
    once (it was held until the plugin's next poll, so reopenings overlapped and hit the cap)."""
    import time

    with Client(faulty_config(tmp_path)) as client:
        client.dispense(PLUGIN_NAME)
        watchers = [HealthWatcher(client.channel, interval=0.2, timeout=0.2, name=f"w{i}").start() for i in range(3)]
        try:
            time.sleep(4.0)
        finally:
            for watcher in watchers:
                watcher.stop()
    assert [w.mode for w in watchers] == ["watch"] * 3
    assert [w.state for w in watchers] == ["SERVING"] * 3


def test_a_stop_while_a_watch_stream_is_being_opened_cancels_that_stream(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # stop() finds no call to cancel while Watch is being made; the watcher must cancel it once made,
    # or it stays open on the plugin (one of its capped Watch slots) until interval + timeout
    from plugbay.core.resilience import healthwatch

    made: list[object] = []
    real = healthwatch.health_pb2_grpc.HealthStub

    class StopsAsItOpens:
        def __init__(self, channel: object) -> None:
            self._stub = real(channel)  # type: ignore[no-untyped-call]

        def Watch(self, *args: object, **kwargs: object) -> object:  # noqa: N802 - gRPC's name
            call = self._stub.Watch(*args, **kwargs)
            made.append(call)
            watcher.stop()  # on the watcher's own thread: it sets the stop and cancels nothing yet
            return call

        def __getattr__(self, name: str) -> object:
            return getattr(self._stub, name)

    with Client(faulty_config(tmp_path)) as client:
        monkeypatch.setattr(healthwatch.health_pb2_grpc, "HealthStub", StopsAsItOpens)  # the module's: after start
        watcher = HealthWatcher(client.channel, interval=30.0, timeout=5.0, mode="watch")
        watcher.start()
        thread = watcher._thread
        assert thread is not None
        thread.join(10)
        assert not thread.is_alive() and len(made) == 1
        call: Any = made[0]
        deadline = time.monotonic() + 5
        while not call.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert call.done() and call.code() == grpc.StatusCode.CANCELLED, "the Watch stream was left open"
