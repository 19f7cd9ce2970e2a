"""A plugin's start on the host: the handshake line read on the starting thread, the process group,
the held streams begun by one kick, the handler gate wrapping each registered handler.

Real processes throughout (sh, tests/plugins/trap_kv.py, go-plugin's Go KV plugin).
"""

from __future__ import annotations

import os
import shlex
import threading
import time
from pathlib import Path

import pytest

from plugbay import Client, ClientConfig, ProcessRunner
from plugbay.errors import ClientStateError, MalformedHandshakeError, PluginExitedError, RunnerError
from plugbay.runners.base import LaunchSpec
from tests.thread_util import wait_for
from tests.trap_kv_util import HANDSHAKE, PLUGIN_NAME, PY, TRAP, KVPlugin, _in_tmp, config  # noqa: F401  (_in_tmp: an autouse fixture)


def test_the_first_stdout_line_is_read_on_the_starting_thread_and_the_rest_on_the_loop() -> None:
    script = "echo e1 >&2; echo e2 >&2; printf 'first\\nsecond\\n'; sleep 0.2; echo third; echo e3 >&2"
    runner = ProcessRunner(["sh", "-c", script])
    runner.start(LaunchSpec(env={}))
    seen: list[tuple[str, str, str]] = []
    ended: list[str] = []
    try:
        follow = runner.follow_output(lambda stream, line: seen.append((stream, line, threading.current_thread().name)),
                                      ended.append, first_line_by=time.monotonic() + 10)
        # it returned once stdout's first line came, handed on here; nothing else ran on this thread
        assert seen[0] == ("stdout", "first", threading.current_thread().name)
        assert follow.join(10)
    finally:
        runner.kill(0)
    assert [(s, line) for s, line, _ in seen if s == "stdout"] == [("stdout", "first"), ("stdout", "second"),
                                                                ("stdout", "third")]
    assert [line for s, line, _ in seen if s == "stderr"] == ["e1", "e2", "e3"]
    # read with the first line but held: a log handler never runs inside start() (it may kill the Client)
    assert {thread for _, _, thread in seen[1:]} == {"plugbay-io"}
    assert sorted(ended) == ["stderr", "stdout"]
    assert runner.stderr_tail() == ["e1", "e2", "e3"]


def test_a_plugin_flooding_stderr_before_its_handshake_still_starts() -> None:
    # 3 MB of 1000-byte lines before the line: more than the pipe (64 KiB) and than is held (1 MiB)
    flood = f"{shlex.quote(PY)} -c \"import sys; [sys.stderr.write('x' * 999 + '\\n') for _ in range(3000)]\""
    cmd = ["sh", "-c", f"{flood}; exec {shlex.join(TRAP)}"]
    with Client(config(cmd)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"
        assert "x" * 999 in client.runner.stderr_tail()


def test_the_plugin_leads_a_process_group_in_the_hosts_session() -> None:
    # a group, so kill() reaches what it started; not a new session (a new scheduler autogroup)
    runner = ProcessRunner(["sleep", "30"])
    runner.start(LaunchSpec(env={}))
    try:
        assert runner.pid is not None
        assert os.getpgid(runner.pid) == runner.pid != os.getpgid(0)
        assert os.getsid(runner.pid) == os.getsid(0)
    finally:
        runner.kill(0)
    assert runner.wait(5) is not None


def test_a_go_plugin_slower_than_the_kick_gets_its_streams_at_once() -> None:
    """The kick (DEFER after the spawn) fires before a slow plugin's handshake: its streams begin as made."""
    from tests import gobuild

    kv_plugin = str(gobuild.go_program_or_skip("kv_plugin"))
    with Client(config(["sh", "-c", f"sleep 0.3; exec {shlex.quote(kv_plugin)}"])) as client:
        assert client._stdio is not None
        wait_for(lambda: client._stdio is not None and client._stdio.supported is False,
                 "the stdio reader begun at start (go-plugin 1.0.1 answers UNIMPLEMENTED)")
        client.dispense(PLUGIN_NAME)  # no call: the broker stream begins at once, the kick is past
        wait_for(lambda: client.broker.call is not None, "the broker stream opened at dispense")
        assert client.broker.next_id() == 1


def test_the_handler_gate_wraps_what_a_plugin_registers_and_lets_health_pass() -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from kvproto import kv_pb2, kv_pb2_grpc

    from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
    from plugbay.core.plugin.gate import HandlerGate
    from plugbay.core.plugin.gatedserver import GatedServer
    from plugbay.core.plugin.health import HealthServicer
    from plugbay.core.plugin.health import add_to_server as add_health

    entered = threading.Event()
    release = threading.Event()

    class SlowKV(kv_pb2_grpc.KVServicer):
        def Get(self, request: kv_pb2.GetRequest, context: grpc.ServicerContext) -> kv_pb2.GetResponse:
            entered.set()
            release.wait(10)
            return kv_pb2.GetResponse(value=b"slow")

    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    kv_pb2_grpc.add_KVServicer_to_server(SlowKV(), GatedServer(server, HandlerGate(1)))
    add_health(HealthServicer(), server)
    path = Path("gate.sock").resolve()
    server.add_insecure_port(f"unix:{path}")
    server.start()
    channel = grpc.insecure_channel(f"unix:{path}")
    try:
        stub = kv_pb2_grpc.KVStub(channel)
        first = stub.Get.future(kv_pb2.GetRequest(key="a"), timeout=10)
        assert entered.wait(10)
        with pytest.raises(grpc.RpcError) as refused:  # the one slot is taken: refused at once
            stub.Get(kv_pb2.GetRequest(key="b"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ServeConfig.max_workers" in str(refused.value.details())
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="plugin"),
                                                            timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # plugbay's services pass
        release.set()
        assert first.result(10).value == b"slow"
        assert stub.Get(kv_pb2.GetRequest(key="c"), timeout=10).value == b"slow"  # the slot is back
    finally:
        release.set()
        channel.close()
        server.stop(0).wait(5)


def test_a_plugin_that_exits_while_a_grandchild_keeps_logging_is_reported_as_exited() -> None:
    # the grandchild holds stdout open and writes stderr every 50 ms (bounded: 20 s at most); the
    # exit must be noticed while stderr keeps the pipes busy, not only after start_timeout
    cmd = ["sh", "-c", "(for i in $(seq 400); do echo still here >&2; sleep 0.05; done) & exit 3"]
    client = Client(config(cmd, start_timeout=15.0))
    try:
        with pytest.raises(PluginExitedError) as info:
            client.start()
    finally:
        client.kill()
    assert info.value.exit_code == 3


def test_a_slow_starts_stderr_lines_reach_the_handlers_before_its_handshake_line() -> None:
    # a plugin that logs, then takes seconds to print its line: its log lines are handed on
    # while it starts (log handlers may act on them), not held until the line comes
    runner = ProcessRunner(["sh", "-c", "echo loading >&2; sleep 4; echo first"])
    runner.start(LaunchSpec(env={}))
    seen: list[tuple[str, str]] = []
    try:
        follow = runner.follow_output(lambda stream, line: seen.append((stream, line)), lambda _: None,
                                      first_line_by=time.monotonic() + 30)
        assert follow.join(10)
    finally:
        runner.kill(0)
    assert seen == [("stderr", "loading"), ("stdout", "first")]


def test_a_runner_another_client_started_is_refused_and_left_alone() -> None:
    # the same runner handed to a second Client: its start is refused before it touches the runner,
    # and its failure must not kill the first Client's plugin
    runner = ProcessRunner(TRAP)
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner)) as first:
        kv = first.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner))
        with pytest.raises(RunnerError, match="make a new runner"):
            second.start()
        second.kill()  # nor does a kill() of the Client that never started it
        assert runner.wait(0.5) is None and not first.exited
        assert kv.get("k") == b"v"


def test_a_runner_started_by_hand_is_refused_and_left_alone() -> None:
    runner = ProcessRunner(["sleep", "30"])
    runner.start(LaunchSpec(env={}))
    try:
        client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner))
        with pytest.raises(RunnerError, match="already started.*make a new runner"):
            client.start()
        assert runner.wait(0.3) is None
    finally:
        runner.kill(0)


def test_a_second_start_after_a_failed_one_says_the_start_failed() -> None:
    client = Client(config(["sh", "-c", "echo hello world; sleep 30"], start_timeout=10))
    with pytest.raises(MalformedHandshakeError):
        client.start()
    with pytest.raises(ClientStateError, match=r"failed \(MalformedHandshakeError\).*make a new Client") as err:
        client.start()
    assert "killed" not in str(err.value)  # nobody killed it


def test_a_failed_start_kills_the_plugin_without_asking_it_to_stop(tmp_path: Path) -> None:
    # its teardown sent SIGTERM and gave the plugin kill_grace to go; one that never completed its
    # handshake has nothing to finish (a container's PID 1, which ignores SIGTERM, held it all of that)
    misbehave = str(Path(TRAP[1]).parent / "misbehave.py")
    marker = tmp_path / "sigterm"
    with pytest.raises(MalformedHandshakeError, match="my plugin v1.2 starting"):
        with Client(config([PY, misbehave, "line-trap", "my plugin v1.2 starting", str(marker)], start_timeout=30)):
            pass
    assert not marker.exists()  # SIGKILL at once: its SIGTERM handler never ran


def test_a_plugin_exiting_right_after_its_handshake_is_told_so_once() -> None:
    misbehave = str(Path(TRAP[1]).parent / "misbehave.py")
    with pytest.raises(PluginExitedError) as info:
        with Client(config([PY, misbehave, "line-exit", "1|1|unix|/nonexistent/plugin.sock|grpc"], start_timeout=30)):
            pass
    said = str(info.value)
    assert "exited with code 6 after printing its handshake line" in said
    assert "before completing the handshake" not in said


def test_a_huge_handshake_line_makes_a_short_message() -> None:
    script = ("import sys, time; sys.stdout.write('1|1|unix|' + 'a' * 10_000_000 + '|grpc\\n');"
              " sys.stdout.flush(); time.sleep(30)")
    with pytest.raises(MalformedHandshakeError) as info:
        with Client(config([PY, "-c", script], start_timeout=30)):
            pass
    said = str(info.value)
    assert len(said) < 1500, len(said)
    # cut at the line cap as soon as it passed it (go-plugin's host gives up there too), not read to its end
    assert said.startswith("malformed handshake line '1|1|unix|aaa") and "before its first newline" in said


def test_a_plugin_exiting_after_huge_stderr_lines_makes_a_short_message_and_keeps_the_lines() -> None:
    script = ("import sys; [sys.stderr.write(str(i) + 'x' * 60_000 + 'end\\n') for i in range(30)];"
              " sys.stderr.flush(); sys.exit(1)")
    with pytest.raises(PluginExitedError) as info:
        with Client(config([PY, "-c", script], start_timeout=30)):
            pass
    said, tail = str(info.value), info.value.stderr_tail
    assert tail and all(len(line) > 60_000 and line.endswith("xend") for line in tail), [len(x) for x in tail]
    assert len(said) < 1000 * (len(tail) + 2), len(said)  # both ends of each line, its middle cut
    assert said.count("characters cut)...") == len(tail) and said.count("xend") == len(tail), said[:2000]


def test_a_short_first_line_ending_in_the_cut_marker_is_not_taken_for_a_cut_one() -> None:
    # only the line splitter says a line was cut; text the plugin printed is parsed as it is
    script = "import time; print('starting…[truncated 9 bytes]', flush=True); time.sleep(30)"
    with pytest.raises(MalformedHandshakeError) as info:
        with Client(config([PY, "-c", script], start_timeout=30)):
            pass
    said = str(info.value)
    assert "expected at least 4 '|'-separated fields" in said and "before its first newline" not in said, said


@pytest.mark.parametrize("line", ["1|1|tcp|10.1.2.3:4000|grpc", "1|1|unix|/etc/passwd|grpc"],
                         ids=["another-host", "not-a-socket"])
def test_a_refused_address_kills_the_plugin_without_asking_it_to_stop(tmp_path: Path, line: str) -> None:
    # a line the host refuses for what it announces (an address off this machine, a path that is no socket)
    # is refused as a malformed one is: the host never connected, so there is nothing to finish, yet its
    # teardown sent SIGTERM and gave the plugin kill_grace (a container's PID 1, ignoring it, held it all of that)
    misbehave = str(Path(TRAP[1]).parent / "misbehave.py")
    marker = tmp_path / "sigterm"
    with pytest.raises(MalformedHandshakeError, match=line.split("|")[3]):
        with Client(config([PY, misbehave, "line-trap", line, str(marker)], start_timeout=30, kill_grace=5.0)):
            pass
    assert not marker.exists()  # SIGKILL at once: its SIGTERM handler never ran
