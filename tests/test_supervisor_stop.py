"""Supervisor.stop() at awkward moments, and a host that exits without it, against real plugin processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from tests.procs import gone, live_with_env
from tests.resilience_util import FAULTY, HANDSHAKE, PLUGIN_NAME, PLUGINS, PY, faulty_config, wait_until

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402, I001

from plugbay import ClientConfig, ClientStateError, ProcessRunner, RestartPolicy, RunnerError, Supervisor  # noqa: E402
from plugbay.core.resilience.restart import SupervisorEvent  # noqa: E402
from plugbay.core.resilience.supervisor import FAILED, RESTARTING, RUNNING, STOPPED  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FAST = RestartPolicy(max_restarts=3, window=120, initial_backoff=0.05, max_backoff=0.2)


def _launched_pid(runner: ProcessRunner) -> int:
    """The plugin's pid once the runner launched it (the start now waits for its handshake)."""
    assert wait_until(lambda: runner.pid is not None, 20)
    pid = runner.pid
    assert pid is not None
    return pid


def _start_in_thread(sup: Supervisor) -> tuple[threading.Thread, list[BaseException]]:
    """sup.start() on a thread of its own (the test stops it meanwhile); what it raised lands in the list."""
    failed: list[BaseException] = []

    def start() -> None:
        try:
            sup.start()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    return thread, failed


def test_current_client_is_none_while_restarting_and_after_stop(tmp_path: Path) -> None:
    configs = iter(["good"])

    def factory() -> ClientConfig:
        if next(configs, "slow") == "good":
            return faulty_config(tmp_path)
        # never prints a handshake: the Supervisor stays restarting until stop()
        return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=120,
                            runner=ProcessRunner([PY, "-c", "import time; time.sleep(120)"]))

    with Supervisor(factory, restart=FAST, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        old = sup.current_client
        assert old is not None
        os.kill(int(kv.get("__pid__")), signal.SIGKILL)
        assert wait_until(lambda: sup.state == RESTARTING, 20)
        assert sup.current_client is None
        with pytest.raises(ClientStateError, match="is restarting the plugin; wait_running"):
            sup.client  # noqa: B018
    assert sup.current_client is None
    assert old.exited


def test_stop_while_start_starts_the_first_plugin_ends_it_and_start_says_so(tmp_path: Path) -> None:
    # sleeps before serving, so that stop() comes while start() waits for the handshake
    runner = ProcessRunner([PY, "-c", f"import runpy, time; time.sleep(1.0); runpy.run_path({FAULTY!r},"
                                      " run_name='__main__')"], cwd=tmp_path)
    sup = Supervisor(lambda: ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=runner, start_timeout=30),
                     restart=FAST, health_interval=None)
    thread, failed = _start_in_thread(sup)
    try:
        pid = _launched_pid(runner)
        sup.stop()
        thread.join(40)
        assert not thread.is_alive()
        assert len(failed) == 1 and isinstance(failed[0], ClientStateError), failed
        assert "was stopped while it started the plugin" in str(failed[0])
        assert sup.state == STOPPED
        assert sup.current_client is None
        assert wait_until(lambda: gone(pid), 10), "the plugin started for a stopped Supervisor still runs"
    finally:
        sup.stop()
        thread.join(40)


def test_stop_from_the_failure_event_leaves_it_stopped(tmp_path: Path) -> None:
    box: list[Supervisor] = []

    def on_event(event: SupervisorEvent) -> None:
        if event.kind == "failure":
            box[0].stop()

    sup = Supervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None, on_event=on_event)
    box.append(sup)
    with sup:
        kv = sup.dispense(PLUGIN_NAME)
        os.kill(int(kv.get("__pid__")), signal.SIGKILL)
        assert wait_until(lambda: any(e.kind == "stopped" for e in sup.events), 20)
        assert wait_until(lambda: sup._thread is not None and not sup._thread.is_alive(), 10)
        assert sup.state == STOPPED, [e.kind for e in sup.events]
        assert "restarting" not in [e.kind for e in sup.events]
        with pytest.raises(ClientStateError, match="was stopped; make a new one"):
            kv_pb2_grpc.KVStub(sup.channel).Get(kv_pb2.GetRequest(key="k"), timeout=10)
        assert sup.wait_running(5) is False


_HOST = """
import atexit, sys, time
atexit.register(time.sleep, 4.0)  # other exit work of the host, run after plugbay's cleanup
sys.path[:0] = [{repo!r}, {src!r}]
from tests.resilience_util import faulty_config
from plugbay import RestartPolicy, Supervisor
from pathlib import Path
sup = Supervisor(lambda: faulty_config(Path({cwd!r}), env={{"RESILIENCE_TAG": {tag!r}}}),
                 restart=RestartPolicy(initial_backoff=0.01, max_backoff=0.01), health_interval=None,
                 on_event=lambda e: print("event", e.kind, flush=True))
sup.start()
print("pid", sup.current_client.runner.pid, flush=True)
"""


def _tagged(tag: str) -> list[int]:
    return live_with_env("RESILIENCE_TAG", tag)


def test_a_host_exiting_without_stop_leaves_no_restarted_plugin(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    script = _HOST.format(repo=str(REPO), src=str(REPO / "src"), cwd=str(tmp_path), tag=tag)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "event started" in done.stdout, done.stdout
        assert "event restarting" not in done.stdout, done.stdout
        assert wait_until(lambda: not _tagged(tag), 5), f"plugins outlived their host: {_tagged(tag)}"
    finally:
        for pid in _tagged(tag):
            os.kill(pid, signal.SIGKILL)


def test_a_failed_first_start_is_reported_and_a_stopped_one_says_it_was_stopped(tmp_path: Path) -> None:
    configs = iter(["missing"])

    def factory() -> ClientConfig:
        if next(configs, "good") == "missing":
            return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[str(tmp_path / "no-such-plugin")])
        return faulty_config(tmp_path)

    sup = Supervisor(factory, health_interval=None)
    with pytest.raises(RunnerError):
        sup.start()
    metrics = sup.metrics()
    assert sup.state == metrics["state"] == FAILED
    assert metrics["failures"] == 1 and "start failed: RunnerError" in (metrics["last_failure"] or "")
    assert [e.kind for e in sup.events] == ["start_failed"]
    with pytest.raises(ClientStateError, match=r"failed to start its plugin .*call start\(\) again"):
        sup.client  # noqa: B018
    sup.start()  # the cause is gone: a second start works
    try:
        assert sup.state == RUNNING
        sup.dispense(PLUGIN_NAME).put("k", b"v")
    finally:
        sup.stop()
    with pytest.raises(ClientStateError, match="was stopped; make a new one"):
        sup.client  # noqa: B018


def test_stop_during_a_first_start_that_waits_long_ends_that_plugin_at_once(tmp_path: Path) -> None:
    # the plugin would take a minute to serve: stop() must end it now, not once its handshake comes
    runner = ProcessRunner([PY, "-c", f"import runpy, time; time.sleep(60); runpy.run_path({FAULTY!r},"
                                      " run_name='__main__')"], cwd=tmp_path)
    events: list[str] = []
    sup = Supervisor(lambda: ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=runner, start_timeout=120),
                     restart=FAST, health_interval=None, on_event=lambda e: events.append(e.kind))
    thread, failed = _start_in_thread(sup)
    try:
        pid = _launched_pid(runner)
        sup.stop()
        thread.join(20)  # far below the minute the plugin would take
        assert not thread.is_alive(), "start() waited for the handshake of a plugin stop() should have ended"
        assert len(failed) == 1 and isinstance(failed[0], ClientStateError), failed
        assert gone(pid)
        assert sup.state == STOPPED and events == ["stopped"]
    finally:
        sup.stop()
        thread.join(120)


def test_stop_during_a_reattaching_first_start_leaves_the_other_hosts_plugin_running(tmp_path: Path) -> None:
    import time

    from plugbay import Client, ReattachConfig

    owner = Client(faulty_config(tmp_path))  # another host's plugin, not answering for now (stopped)
    owner.start()
    try:
        saved = owner.reattach_config()
        pid = saved.runner["pid"]
        os.kill(pid, signal.SIGSTOP)
        sup = Supervisor(lambda: faulty_config(tmp_path), reattach=ReattachConfig.from_json(saved.to_json()),
                         health_interval=None)
        thread, failed = _start_in_thread(sup)
        time.sleep(1.0)  # it reattaches, waiting for the stopped plugin to answer
        sup.stop()
        thread.join(30)
        assert not thread.is_alive()
        assert len(failed) == 1 and isinstance(failed[0], ClientStateError), failed
        assert [e.kind for e in sup.events] == ["stopped"]
        os.kill(pid, signal.SIGCONT)
        assert not gone(pid) and not owner.exited  # never adopted here: not this Supervisor's to end
        kv = owner.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
    finally:
        os.kill(owner.reattach_config().runner["pid"], signal.SIGCONT)
        owner.kill()
