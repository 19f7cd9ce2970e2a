"""Live process plugins cost the host no thread of their own: one shared plugbay-io thread reads every
plugin's pipes and hears every exit (pidfd), the broker stream opens on first use, and a host with no
stdio sink lets a plugbay plugin discard its output instead of keeping a reader.

Real plugins throughout: tests/plugins/probe.py and trap_kv.py (plugbay serve()) as child processes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig, PluginDiedError, ProcessRunner, ReattachConfig, RunnerError  # noqa: E402
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from plugbay.core.transport import ioloop  # noqa: E402
from plugbay.core.transport.lines import MAX_LINE, was_cut  # noqa: E402
from tests.resilience_util import wait_until  # noqa: E402
from tests.thread_util import plugbay_threads, wait_for  # noqa: E402
from tests.trap_kv_util import PY, TRAP, _in_tmp, config  # noqa: E402, F401  (_in_tmp: an autouse fixture)

PROBE = [PY, str(REPO / "tests" / "plugins" / "probe.py")]


def test_live_plugins_share_one_io_thread_that_ends_with_the_last() -> None:
    assert plugbay_threads() == []
    clients = [Client(config(PROBE, name=f"live{i}")) for i in range(3)]
    try:
        for client in clients:
            kv = client.dispense(PLUGIN_NAME)
            kv.put("k", b"v")
            assert kv.get("k") == b"v"
        # the short stdio call of each (the plugin discards: no sink) ends by itself
        wait_for(lambda: plugbay_threads() == ["plugbay-io"], "only the shared I/O thread")
        assert ioloop.shared().registrations == 3 * 3  # stdout, stderr and the pidfd of each
        clients[0].kill()
        assert plugbay_threads() == ["plugbay-io"]  # the others still need it
        assert clients[1].dispense(PLUGIN_NAME).get("k") == b"v"
    finally:
        for client in clients:
            client.kill()
    # kill() of the last one joined it: nothing to wait for
    assert plugbay_threads() == []
    assert not ioloop.shared().running
    # and a new plugin starts it again
    with Client(config(PROBE)) as client:
        assert client.dispense(PLUGIN_NAME).get("nothing") == b""
        assert "plugbay-io" in plugbay_threads()
    assert plugbay_threads() == []


def test_kill9_is_heard_at_once_and_fails_only_that_plugins_call() -> None:
    with Client(config(TRAP, call_timeout=60)) as victim, Client(config(TRAP, call_timeout=60)) as other:
        kv, other_kv = victim.dispense(PLUGIN_NAME), other.dispense(PLUGIN_NAME)
        pid = int(victim.runner.id)
        timer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))
        timer.start()
        try:
            # failed by the exit (a pidfd on the shared thread), not by the 60 s call timeout
            with pytest.raises(PluginDiedError, match="SIGKILL|code -9") as died:
                kv.get("__hang__")
        finally:
            timer.join()
        # a gone peer: UNAVAILABLE (a retry policy may retry), though plugbay cancelled the call
        assert died.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert victim.exited and victim.exit_code == -signal.SIGKILL
        other_kv.put("still", b"here")
        assert other_kv.get("still") == b"here" and not other.exited
        assert "plugbay-watch" not in " ".join(plugbay_threads())


def test_stderr_logs_of_each_plugin_reach_its_own_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plugbay.plugin")
    with Client(config(PROBE, name="alpha")) as a, Client(config(PROBE, name="beta")) as b:
        a.dispense(PLUGIN_NAME).put("log", b"from alpha")
        b.dispense(PLUGIN_NAME).put("log", b"from beta")

        def seen(name: str, text: str) -> bool:
            return any(r.name == f"plugbay.plugin.{name}" and text in r.getMessage() for r in caplog.records)

        wait_for(lambda: seen("alpha", "from alpha") and seen("beta", "from beta"), "both log records")
        assert not seen("alpha", "from beta") and not seen("beta", "from alpha")
        assert any("from alpha" in line for line in a.stderr_tail())


def test_exit_before_the_handshake_still_reports_the_stderr_tail() -> None:
    from plugbay import PluginExitedError

    script = "import sys; print('no handshake for you', file=sys.stderr); sys.exit(3)"
    with pytest.raises(PluginExitedError, match="(?s)code 3.*no handshake for you"):
        with Client(config([PY, "-c", script])):
            pass
    assert plugbay_threads() == []


def test_a_sinkless_host_lets_a_chatty_plugin_discard_instead_of_buffering(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="plugbay.plugin")
    # a 64 KiB buffer: if nobody read and nobody discarded, it would overflow and say so
    with Client(config(PROBE, env={"PROBE_STDIO_MAX": "65536"})) as client:
        kv = client.dispense(PLUGIN_NAME)
        # the ask travels on the host's own short GRPCStdio call, beside the calls: answered once it ended
        wait_for(lambda: "plugbay-stdio" not in " ".join(plugbay_threads()), "the discard ask to be answered")
        for _ in range(8):
            kv.put("fd1", b"x" * 100_000)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"
        wait_for(lambda: plugbay_threads() == ["plugbay-io"], "the stdio reader to end")
    assert not [r for r in caplog.records if "stdio buffer full" in r.getMessage()]


def test_a_reattached_host_with_a_sink_gets_output_again() -> None:
    got: list[bytes] = []
    first = Client(config(PROBE))
    try:
        first.start()
        # the first host's ask to discard has been answered once its short stdio call is over
        wait_for(lambda: "plugbay-stdio" not in " ".join(plugbay_threads()), "the first host's stdio call")
        first.dispense(PLUGIN_NAME).put("out", b"dropped\n")  # nobody reads: discarded
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                     reattach=ReattachConfig.from_json(first.reattach_config().to_json()),
                                     stdout_sink=got.append))
        with second:
            wait_for(lambda: "plugbay-stdio" in " ".join(plugbay_threads()), "the reattached host's reader")
            kv = second.dispense(PLUGIN_NAME)
            # output reaches the sink once the plugin has taken the new stream, a round trip after
            # the reader started: write until it arrives (bounded) rather than guess that moment
            for _ in range(100):
                kv.put("out", b"kept\n")
                if wait_until(lambda: b"kept\n" in b"".join(got), 0.1):
                    break
            wait_for(lambda: b"kept\n" in b"".join(got), "the reattached host's output")
        assert b"dropped" not in b"".join(got)
    finally:
        first.kill()


@pytest.mark.parametrize("multiplex", [False, True], ids=["per-connection", "multiplexed"])
def test_broker_stream_opens_on_first_use_and_serves_what_the_plugin_announced_before(multiplex: bool) -> None:
    with Client(config(PROBE, multiplex_broker=multiplex)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("announce", b"")  # the plugin serves a brokered server while the host has no stream
        service_id = int(kv.get("announced"))
        assert client.broker.call is None
        assert "plugbay-broker-recv" not in plugbay_threads()
        channel = client.broker.dial(service_id)  # opens the stream; the queued announcement arrives
        assert client.broker.call is not None
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_follow_output_caps_lines_and_ends_when_a_grandchild_keeps_the_pipes(tmp_path: Path) -> None:
    from plugbay.runners.base import LaunchSpec

    long_line = "y" * (MAX_LINE + 1000)
    script = (f"import subprocess, sys; print('{long_line}', flush=True); print('err line', file=sys.stderr,"
              " flush=True); subprocess.Popen(['sleep', '30'], start_new_session=True)")
    runner = ProcessRunner([PY, "-c", script])
    runner.start(LaunchSpec(env={}))
    lines: list[tuple[str, str]] = []
    ended: list[str] = []
    follow = runner.follow_output(lambda stream, line: lines.append((stream, line)), ended.append)
    try:
        with pytest.raises(RunnerError, match="one reader only"):
            runner.stdout_lines()
        assert runner.wait(20) == 0
        wait_for(lambda: len(lines) == 2, "both lines")
        # the grandchild holds both pipes open: the streams end only because kill() ends them
        assert not follow.join(0.3)
    finally:
        runner.kill(0)
    assert follow.join(10) and sorted(ended) == ["stderr", "stdout"]
    out = [line for stream, line in lines if stream == "stdout"]
    # the first stdout line, the handshake's, is handed on as soon as it passes the cap: its marker counts
    # what was dropped until then (1000 bytes when the reads split it right at the cap)
    assert out == [out[0]] and out[0].startswith("y" * MAX_LINE) and was_cut(out[0])
    assert ("stderr", "err line") in lines and runner.stderr_tail() == ["err line"]
    assert max(s.peak_buffered for s in runner.splitters) <= MAX_LINE


def test_follow_output_refuses_an_unstarted_runner_and_a_second_reader() -> None:
    runner = ProcessRunner([PY, "-c", "print('hi')"])
    with pytest.raises(RunnerError, match="start\\(\\) must run before"):
        runner.follow_output(lambda s, l: None, lambda s: None)
    from plugbay.runners.base import LaunchSpec

    runner.start(LaunchSpec(env={}))
    try:
        follow = runner.follow_output(lambda s, l: None, lambda s: None)
        with pytest.raises(RunnerError, match="one reader only"):
            runner.follow_output(lambda s, l: None, lambda s: None)
    finally:
        runner.kill(0)
    assert follow.join(10)


def test_a_reattached_client_hears_the_exit_through_a_pidfd() -> None:
    first = Client(config(PROBE))
    try:
        first.start()
        reattach = ReattachConfig.from_json(first.reattach_config().to_json())
        with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                 reattach=reattach)) as second:
            second.dispense(PLUGIN_NAME).put("k", b"v")
            assert "plugbay-watch" not in " ".join(plugbay_threads())
            os.kill(int(second.runner.id), signal.SIGKILL)
            wait_for(lambda: second.exited, "the reattached client to notice the exit")
            with pytest.raises(PluginDiedError, match="is gone"):
                second.dispense(PLUGIN_NAME).get("k")
    finally:
        first.kill()


def test_the_loop_survives_a_failing_callback(caplog: pytest.LogCaptureFixture) -> None:
    loop = ioloop.IOLoop("plugbay-io-test")
    bad_r, bad_w = os.pipe()
    good_r, good_w = os.pipe()
    got: list[bytes] = []
    cancelled: list[str] = []

    def bad() -> None:
        raise ValueError("callback bug")

    def good() -> bool:
        got.append(os.read(good_r, 100))
        return True

    try:
        loop.add(bad_r, bad, lambda: cancelled.append("bad"))
        reg = loop.add(good_r, good, lambda: cancelled.append("good"))
        os.write(bad_w, b"!")
        wait_for(lambda: cancelled == ["bad"], "the failing registration to be dropped")
        assert any("callback bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)
        os.write(good_w, b"still served")
        wait_for(lambda: got == [b"still served"], "the other registration's data")
        reg.cancel()
        wait_for(lambda: not loop.running, "the idle loop to end")
        assert loop.join_idle(5) and cancelled == ["bad", "good"]
    finally:
        for fd in (bad_r, bad_w, good_r, good_w):
            os.close(fd)
    assert "plugbay-io-test" not in plugbay_threads()


class _Upper(ProcessRunner):
    """A subclass that rewrites its stdout lines: follow_output must honour the override."""

    def stdout_lines(self):  # type: ignore[no-untyped-def]
        return (line.upper() for line in super().stdout_lines())


def test_a_subclass_overriding_its_line_streams_is_read_through_them() -> None:
    from plugbay.runners.base import LaunchSpec

    runner = _Upper([PY, "-c", "print('quiet')"])
    runner.start(LaunchSpec(env={}))
    lines: list[tuple[str, str]] = []
    follow = runner.follow_output(lambda stream, line: lines.append((stream, line)), lambda stream: None)
    try:
        assert runner.wait(20) == 0
        assert follow.join(10)
    finally:
        runner.kill(0)
    assert lines == [("stdout", "QUIET")]


def test_a_sinkless_reattached_host_does_not_take_the_output_from_a_reading_one() -> None:
    got: list[bytes] = []
    first = Client(config(PROBE, stdout_sink=got.append))
    try:
        first.start()
        reattach = ReattachConfig.from_json(first.reattach_config().to_json())
        with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                 reattach=reattach, name="sinkless")) as second:
            wait_for(lambda: "plugbay-stdio-sinkless" not in " ".join(plugbay_threads()),
                     "the sinkless host's ask to discard to be answered")
            second.dispense(PLUGIN_NAME).put("out", b"still read\n")
            wait_for(lambda: b"still read\n" in b"".join(got), "the reading host to keep its output")
            second.close()
    finally:
        first.kill()


def test_the_broker_of_a_plugin_that_died_raises_a_typed_error_instead_of_crashing(tmp_path: Path) -> None:
    """The lazily opened broker stream on a channel the exit watcher closed: a typed error, no SIGSEGV.

    In a child interpreter: grpcio crashes the whole process when a stub is built on a closed
    channel, which would take pytest down with it.
    """
    import subprocess

    script = tmp_path / "dead_broker.py"
    script.write_text(f"""
import os, signal, sys, time
sys.path.insert(0, {str(REPO / "examples" / "kv")!r})
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import BrokerClosedError, Client, ClientConfig
cfg = ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}}, cmd={PROBE!r})
with Client(cfg) as client:
    client.dispense(PLUGIN_NAME).put("k", b"v")
    assert client.broker.call is None  # a plugbay plugin: the stream waits for first use
    os.kill(int(client.runner.id), signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not client.exited and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.exited
    for _ in range(2):
        try:
            client.broker.next_id()
            client.broker.dial(1, timeout=1)
        except BrokerClosedError as exc:
            assert "new Client" in str(exc), exc
        else:
            raise SystemExit("no error from a dead plugin's broker")
print("typed")
""")
    done = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert done.stdout.strip().endswith("typed")


def test_a_go_plugin_gets_its_broker_stream_when_dispensed() -> None:
    """go-plugin's Send blocks until the host opened the stream: a Go plugin's is opened at dispense."""
    from tests import gobuild

    reason = gobuild.go_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    kv_plugin = str(gobuild.build_go("kv_plugin"))
    with Client(config([kv_plugin])) as client:
        client.start()
        assert client.broker.call is None  # nothing can call plugin code before a dispense
        kv = client.dispense(PLUGIN_NAME)  # starts opening it on the shared loop; not waited for
        kv.put("k", b"v")
        wait_for(lambda: client.broker.call is not None, "the broker stream opened at dispense")
        assert kv.get("k") == b"v"
    with Client(config([kv_plugin])) as client:  # no call at all: it opens by itself, shortly
        client.dispense(PLUGIN_NAME)
        wait_for(lambda: client.broker.call is not None, "the deferred broker stream to open uncalled")
        assert client.broker.next_id() == 1  # and brokers
    with Client(config(PROBE)) as client:  # a plugbay plugin said it queues: still lazy
        client.dispense(PLUGIN_NAME).put("k", b"v")
        assert client.broker.call is None


def test_watching_a_reaped_plugin_reports_its_exit_without_a_pidfd_on_a_reused_pid() -> None:
    from plugbay.runners.base import LaunchSpec

    runner = ProcessRunner([PY, "-c", "raise SystemExit(3)"])
    runner.start(LaunchSpec(env={}))
    try:
        assert runner.wait(20) == 3  # reaped: its pid is free for another process now
        codes: list[int] = []
        watch = runner.watch_exit(codes.append)
        wait_for(lambda: codes == [3], "the exit of a reaped plugin")
        watch.cancel()
    finally:
        runner.kill(0)


def test_deferred_work_runs_once_on_the_loop_late_or_sooner_and_not_after_cancel() -> None:
    import time as _time

    from plugbay.core.transport import aioloop

    loop = aioloop.AioLoop("plugbay-io-deferred")
    ran: list[tuple[str, str]] = []
    t0 = _time.monotonic()  # before: the constructor may arm it at once
    late = aioloop.Deferred(lambda: ran.append(("late", threading.current_thread().name)), 0.05, loop)
    wait_for(lambda: ran != [], "the deferred work to run by itself")
    assert ran == [("late", "plugbay-io-deferred")] and _time.monotonic() - t0 >= 0.04
    soon = aioloop.Deferred(lambda: ran.append(("soon", "")), 30.0, loop)
    soon.now()
    soon.now()
    wait_for(lambda: len(ran) == 2, "now() to run it")
    # 0.3 s: a test thread stalled by a loaded machine still cancels it before it runs
    dropped = aioloop.Deferred(lambda: ran.append(("dropped", "")), 0.3, loop)
    dropped.cancel()
    late.cancel()  # after it ran: a no-op
    _time.sleep(0.5)
    assert [name for name, _ in ran] == ["late", "soon"]
    wait_for(lambda: not loop.running, "every lease to be given back")
    assert loop.join_idle()
