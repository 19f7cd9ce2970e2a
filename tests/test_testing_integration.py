"""plugbay.testing: PluginContainer (testcontainers) and the pytest plugin's fixtures.

The fixture tests run a real inner pytest in a subprocess (the installed
``plugbay`` pytest11 entry point provides the fixtures there), including a
test that fails on purpose, and check that everything it started is gone.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from plugbay.errors import (ClientStateError, ConfigError, HandshakeTimeoutError, MalformedHandshakeError,
                            PluginExitedError)
from plugbay.testing import PluginContainer
from plugbay.runners.docker.madehere import forget_made
from tests.engine_relay import EngineRelay, relay  # noqa: F401  (relay is a fixture)

pytestmark = [pytest.mark.docker]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

PLUGINS = {PLUGIN_NAME: KVPlugin(None)}  # type: ignore[arg-type]


def _session_containers(client: Any, session: str) -> list[Any]:
    found: list[Any] = client.containers.list(all=True, filters={"label": f"plugbay.session={session}"})
    return found


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_plugin_container_lifecycle(plugbay_image: Any, plugbay_docker: Any, transport: str) -> None:
    with PluginContainer(plugbay_image("kv"), HANDSHAKE, PLUGINS, transport=transport) as plugin:
        kv = plugin.dispense(PLUGIN_NAME)
        kv.put("tc", b"testcontainers")
        assert plugin.get_client().dispense(PLUGIN_NAME).get("tc") == b"testcontainers"
        assert plugin.handshake is not None and plugin.handshake.network == transport
        container_id = plugin.get_container_id()
        if transport == "tcp":
            attrs = plugbay_docker.api.inspect_container(container_id)
            assert attrs["HostConfig"]["PortBindings"]["4000/tcp"][0]["HostIp"] == "127.0.0.1"
    assert plugbay_docker.containers.list(all=True, filters={"id": container_id}) == []


def test_connecting_after_stop_is_a_client_state_error(plugbay_image: Any, plugbay_docker: Any) -> None:
    # stop() kept the handshake: get_client() then reattached to the removed container (docker's NotFound)
    plugin = PluginContainer(plugbay_image("kv"), HANDSHAKE, PLUGINS, name="plugbay-tc-after-stop")
    try:
        plugin.start()
        plugin.dispense(PLUGIN_NAME).put("k", b"v")
    finally:
        plugin.stop()
    for call, args in (("get_client", ()), ("dispense", (PLUGIN_NAME,)), ("reattach_config", ())):
        with pytest.raises(ClientStateError, match=rf"PluginContainer.{call}\(\) needs the plugin started"):
            getattr(plugin, call)(*args)
    assert plugin.handshake is None


def test_the_callers_labels_join_plugbays(plugbay_image: Any, plugbay_docker: Any) -> None:
    # labels= replaced plugbay's labels: get_client() was a ReattachError and sweep could not find it
    from plugbay.runners.session import HOST_SESSION_ID

    with PluginContainer(plugbay_image("kv"), HANDSHAKE, PLUGINS, transport="unix", name="plugbay-tc-labels",
                         labels={"team": "a"}) as plugin:
        kv = plugin.dispense(PLUGIN_NAME)
        kv.put("k", b"labelled")
        assert kv.get("k") == b"labelled"
        labels = plugin.get_wrapped_container().labels
        assert labels["team"] == "a" and labels["plugbay.managed"] == "true"
        assert labels["plugbay.socket-dir"] == plugin.reattach_config().runner["host_socket_dir"]
        assert [c.id for c in _session_containers(plugbay_docker, HOST_SESSION_ID)] == [plugin.get_container_id()]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_a_plugin_container_starts_again_after_stop(plugbay_image: Any, plugbay_docker: Any, transport: str) -> None:
    # the unix transport's second start mapped both starts' socket folders at /plugbay/sock: the engine's
    # raw APIError "Duplicate mount point", and the first start's labels named the first (removed) folder
    plugin = PluginContainer(plugbay_image("kv"), HANDSHAKE, PLUGINS, transport=transport,
                             name=f"plugbay-tc-restart-{transport}", labels={"team": "a"})
    try:
        plugin.start()
        plugin.dispense(PLUGIN_NAME).put("first", b"1")
        first = plugin.reattach_config().runner
        plugin.stop()
        plugin.start()
        kv = plugin.dispense(PLUGIN_NAME)
        kv.put("second", b"2")
        assert kv.get("second") == b"2"
        second = plugin.reattach_config().runner
        assert second["id"] != first["id"]
        labels = plugin.get_wrapped_container().labels
        assert labels["team"] == "a" and labels["plugbay.managed"] == "true"
        assert labels.get("plugbay.socket-dir") == second["host_socket_dir"]
        if transport == "unix":
            assert second["host_socket_dir"] != first["host_socket_dir"]
            assert not os.path.exists(first["host_socket_dir"])
            binds = plugbay_docker.api.inspect_container(second["id"])["HostConfig"]["Binds"]
            assert binds == [f"{second['host_socket_dir']}:/plugbay/sock:rw"]
    finally:
        plugin.stop()
    assert plugbay_docker.containers.list(all=True, filters={"name": f"plugbay-tc-restart-{transport}"}) == []


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_a_second_start_without_stop_is_refused_and_the_first_container_kept(plugbay_docker: Any,
                                                                            transport: str) -> None:
    # a second start() made a second container and forgot the first (tcp: left running for good), or (unix) failed
    # with the engine's "Duplicate mount point" and its clean-up removed the first, running container
    from plugbay.runners.session import HOST_SESSION_ID

    address = "/plugbay/sock/p.sock" if transport == "unix" else "127.0.0.1:4000"
    plugin = PluginContainer("plugbay-base:bookworm", HANDSHAKE, PLUGINS, transport=transport, auto_mtls=False,
                             entrypoint=["sh", "-c", f"echo '1|1|{transport}|{address}|grpc'; exec sleep 60"])
    try:
        plugin.start()
        first = plugin.get_container_id()
        folder = plugin.reattach_config().runner["host_socket_dir"]
        with pytest.raises(ClientStateError, match=r"PluginContainer is already started; call stop\(\) first"):
            plugin.start()
        assert plugin.get_container_id() == first and plugin.reattach_config().runner["host_socket_dir"] == folder
        assert plugbay_docker.api.inspect_container(first)["State"]["Running"]
        assert [c.id for c in _session_containers(plugbay_docker, HOST_SESSION_ID)] == [first]
    finally:
        plugin.stop()
    assert _session_containers(plugbay_docker, HOST_SESSION_ID) == []
    assert folder is None or not os.path.exists(folder)
    plugin.start()  # after stop(), a start is a new one
    plugin.stop()
    assert _session_containers(plugbay_docker, HOST_SESSION_ID) == []


def test_tcp_plugin_container_serves_only_the_host_with_automtls(plugbay_image: Any, plugbay_docker: Any) -> None:
    # the tcp transport served plaintext on its published port: any local process could call the plugin
    import grpc
    from kvproto import kv_pb2, kv_pb2_grpc

    with PluginContainer(plugbay_image("kv"), HANDSHAKE, PLUGINS) as plugin:
        plugin.dispense(PLUGIN_NAME).put("owner", b"host")
        assert plugin.handshake is not None and plugin.handshake.server_cert is not None
        reattach = plugin.reattach_config()
        assert reattach.client_cert is not None  # what get_client() reattaches with
        with grpc.insecure_channel(f"127.0.0.1:{reattach.runner['host_port']}") as channel:
            with pytest.raises(grpc.RpcError):  # another local process, with no certificate
                kv_pb2_grpc.KVStub(channel).Put(kv_pb2.PutRequest(key="owner", value=b"intruder"), timeout=5)
        assert plugin.dispense(PLUGIN_NAME).get("owner") == b"host"


def test_tcp_plugin_container_without_automtls(plugbay_image: Any, plugbay_docker: Any) -> None:
    from plugbay.errors import TLSRequiredError
    from plugbay.runners.session import HOST_SESSION_ID

    # a plugin that ignores PLUGIN_CLIENT_CERT would serve plaintext: refused unless asked for
    plaintext = PluginContainer(plugbay_image("kv"), HANDSHAKE, PLUGINS)
    plaintext.with_kwargs(entrypoint=["sh", "-c", "unset PLUGIN_CLIENT_CERT; exec /usr/local/bin/plugbay-entrypoint"])
    try:
        with pytest.raises(TLSRequiredError, match=r"pass PluginContainer\(auto_mtls=False\) to accept plaintext"):
            plaintext.start()
    finally:
        plaintext.stop()  # a no-op after the refusal (start() removed it); a start that went on must not leak
    assert _session_containers(plugbay_docker, HOST_SESSION_ID) == []
    with PluginContainer(plugbay_image("kv"), HANDSHAKE, PLUGINS, auto_mtls=False) as plugin:  # the opt-out
        assert plugin.handshake is not None and plugin.handshake.server_cert is None
        assert plugin.reattach_config().client_cert is None
        plugin.dispense(PLUGIN_NAME).put("k", b"plaintext")
        assert plugin.dispense(PLUGIN_NAME).get("k") == b"plaintext"


def test_a_failed_client_kill_still_removes_the_container(plugbay_image: Any, plugbay_docker: Any) -> None:
    # stop() skipped the container's own removal when the plugin's Client failed to kill it
    from plugbay.errors import RunnerError

    plugin = PluginContainer(plugbay_image("kv"), HANDSHAKE, PLUGINS, transport="unix").start()
    container_id = plugin.get_container_id()
    client = plugin.get_client()

    def broken_kill() -> None:
        raise RunnerError("the engine did not answer the kill")

    client.kill = broken_kill  # type: ignore[method-assign]
    try:
        with pytest.raises(RunnerError, match="did not answer"):
            plugin.stop()
        assert plugbay_docker.containers.list(all=True, filters={"id": container_id}) == []
    finally:
        del client.kill  # the Client's own kill frees what it holds on this side
        client.kill()


def test_plugin_container_with_go_plugin(plugbay_image: Any) -> None:
    from tests.gobuild import go_missing_reason

    if go_missing_reason():
        pytest.skip(f"cannot build the Go plugin: {go_missing_reason()}")
    with PluginContainer(plugbay_image("kv-go"), HANDSHAKE, PLUGINS, transport="unix") as plugin:
        kv = plugin.dispense(PLUGIN_NAME)
        kv.put("go", b"in a testcontainer")
        assert kv.get("go") == b"in a testcontainer"


def test_plugin_container_that_exits_is_reported_and_removed(plugbay_image: Any, plugbay_docker: Any) -> None:
    plugin = PluginContainer(plugbay_image("kv"), HANDSHAKE, PLUGINS)
    plugin.with_kwargs(entrypoint=["sh", "-c", "echo 'cannot start: bad config' >&2; exit 5"])
    with pytest.raises(PluginExitedError, match="cannot start: bad config") as info:
        plugin.start()
    assert info.value.exit_code == 5
    from plugbay.runners.session import HOST_SESSION_ID

    assert _session_containers(plugbay_docker, HOST_SESSION_ID) == []


def test_a_plugin_container_removed_as_it_exits_is_reported_as_exited(plugbay_docker: Any) -> None:
    # with auto_remove the container was gone before the log was read: docker's bare NotFound, or a
    # RunnerError that asked for a logging driver
    from plugbay.runners.attached import UNKNOWN_EXIT_CODE
    from plugbay.runners.session import HOST_SESSION_ID

    for _ in range(3):  # the removal races the log request: each try may meet it at another point
        plugin = PluginContainer("plugbay-base:bookworm", HANDSHAKE, PLUGINS, transport="unix", auto_remove=True,
                                 entrypoint=["sh", "-c", "echo 'bad config' >&2; exit 3"], start_timeout=20)
        with pytest.raises(PluginExitedError) as info:
            plugin.start()
        if info.value.exit_code != 3:  # the rare try that read its exit before the removal
            assert info.value.exit_code == UNKNOWN_EXIT_CODE
            assert "was removed before plugbay could read its exit code" in str(info.value)
            assert "without auto_remove" in str(info.value)
    assert _session_containers(plugbay_docker, HOST_SESSION_ID) == []


def test_plugin_container_misuse_and_a_silent_plugin(plugbay_image: Any, plugbay_docker: Any) -> None:
    from plugbay.runners.session import HOST_SESSION_ID

    with pytest.raises(ConfigError, match="transport must be 'tcp' or 'unix', got 'udp'"):
        PluginContainer(plugbay_image("kv"), HANDSHAKE, PLUGINS, transport="udp")
    idle = PluginContainer(plugbay_image("kv"), HANDSHAKE, PLUGINS)
    try:
        with pytest.raises(ClientStateError, match=r"PluginContainer.reattach_config\(\) needs the plugin started"):
            idle.reattach_config()
    finally:
        idle.get_docker_client().client.close()
    silent = PluginContainer(plugbay_image("kv"), HANDSHAKE, PLUGINS, start_timeout=1.0)
    silent.with_kwargs(entrypoint=["sleep", "60"])
    with pytest.raises(HandshakeTimeoutError, match="printed no handshake line within 1s") as info:
        silent.start()
    assert "check that its entrypoint serves the plugin" in str(info.value)
    assert "raise PluginContainer(start_timeout=...)" in str(info.value)  # as a Client's says to raise its own
    assert _session_containers(plugbay_docker, HOST_SESSION_ID) == []


def test_a_first_line_without_end_is_refused_at_once_and_bounded(plugbay_docker: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the handshake wait asked for the container's whole stdout every 0.1 s: 30 MB written with no
    # newline grew the host by over 100 MiB, and only the start timeout ended the wait
    import time

    import plugbay.testing.handshake_log as handshake_log
    from plugbay.core.transport.lines import MAX_LINE, LineSplitter
    from plugbay.runners.session import HOST_SESSION_ID

    splitters: list[LineSplitter] = []

    class Recorded(LineSplitter):
        def __init__(self, limit: int = MAX_LINE, *, handshake_first: bool = False) -> None:
            super().__init__(limit, handshake_first=handshake_first)
            splitters.append(self)

    monkeypatch.setattr(handshake_log, "LineSplitter", Recorded)
    flood = "import sys, time; sys.stdout.write('x' * 30_000_000); sys.stdout.flush(); time.sleep(120)"
    plugin = PluginContainer("plugbay-base:bookworm", HANDSHAKE, PLUGINS, start_timeout=45, name="plugbay-tc-flood",
                             command=["python3", "-c", flood])
    began = time.monotonic()
    try:
        with pytest.raises(MalformedHandshakeError, match=f"first stdout line is longer than {MAX_LINE} bytes"):
            plugin.start()
    finally:
        plugin.stop()
    assert time.monotonic() - began < 30  # not the start timeout
    assert splitters and max(s.peak_buffered for s in splitters) <= MAX_LINE
    assert _session_containers(plugbay_docker, HOST_SESSION_ID) == []


@pytest.mark.timeout(120)
def test_ctrl_c_while_the_create_is_answered_leaves_no_container(relay: EngineRelay,  # noqa: F811
                                                                 plugbay_docker: Any) -> None:
    # the engine made the container, but testcontainers never heard its id: stop() removed nothing
    from tests.test_slow_runner_start import _interrupt_when_held

    tag = uuid.uuid4().hex
    plugin = PluginContainer("plugbay-base:bookworm", HANDSHAKE, PLUGINS, transport="unix",
                             labels={"test.plugbay-tc": tag}, entrypoint=["sleep", "60"])
    relay.hold("POST", "/containers/create", answer=True)
    interrupter = _interrupt_when_held(relay)
    try:
        with pytest.raises(KeyboardInterrupt):
            plugin.start()
        assert relay.holding.is_set()
        assert plugbay_docker.containers.list(all=True, filters={"label": f"test.plugbay-tc={tag}"}) == []
    finally:
        relay.release()
        interrupter.join(30)
        for found in plugbay_docker.containers.list(all=True, filters={"label": f"test.plugbay-tc={tag}"}):
            found.remove(force=True, v=True)


@pytest.mark.timeout(120)
def test_the_engine_going_away_during_the_handshake_wait(relay: EngineRelay, plugbay_docker: Any,  # noqa: F811
                                                         caplog: pytest.LogCaptureFixture) -> None:
    # the follow of the log ended, and the inspect after it was a bare requests ConnectionError; stop()'s
    # removal then raised a second one in its place
    import logging

    from plugbay.errors import EngineUnavailableError

    tag = uuid.uuid4().hex
    # the failed requests' sockets (the follow's, the removal's) stayed open in their exceptions'
    # tracebacks until the garbage collector ran: with it off, they must be closed all the same
    sockets = _open_sockets()
    gc.disable()
    plugin = PluginContainer("plugbay-base:bookworm", HANDSHAKE, PLUGINS, transport="unix", start_timeout=30,
                             labels={"test.plugbay-tc": tag}, entrypoint=["sleep", "60"])
    relay.hold("GET", "/containers/[0-9a-f]{64}/logs", answer=True)  # the follow: it opens, then the engine goes
    closer = threading.Thread(target=lambda: relay.holding.wait(30) and relay.close())
    closer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="plugbay.testing"):
            with pytest.raises(EngineUnavailableError, match="cannot reach the Docker engine"):
                plugin.start()
        closer.join(30)
        assert _open_sockets() <= sockets
        gc.enable()
        left = plugbay_docker.containers.list(all=True, filters={"label": f"test.plugbay-tc={tag}"})
        assert len(left) == 1 and any(f"docker rm -f {left[0].short_id}" in r.getMessage() for r in caplog.records)
    finally:
        gc.enable()
        closer.join(30)
        for found in plugbay_docker.containers.list(all=True, filters={"label": f"test.plugbay-tc={tag}"}):
            found.remove(force=True, v=True)
            forget_made(found.id)  # kept by stop() while the container it could not remove may exist


def _open_sockets() -> set[str]:
    """This process's open sockets (their inodes)."""
    found = set()
    for entry in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:  # the listing's own descriptor
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


INNER_TESTS = textwrap.dedent("""
    import json, os, sys
    sys.path[:0] = [{repo!r} + "/src", {repo!r} + "/examples/kv"]
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
    from plugbay.runners.session import HOST_SESSION_ID

    PLUGINS = {{PLUGIN_NAME: KVPlugin(None)}}
    REPORT = {report!r}

    def record(**facts):
        with open(REPORT, "a") as f:
            f.write(json.dumps({{"session": HOST_SESSION_ID, **facts}}) + "\\n")

    def test_container_fixture(plugin_container, plugbay_image):
        client = plugin_container(plugbay_image("kv"), HANDSHAKE, PLUGINS, runner={{"transport": "tcp", "writable_dirs": ("/tmp", "/data")}})
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"
        record(test="container", id=client.runner.id)

    def test_container_fixture_cleans_up_after_failure(plugin_container, plugbay_image):
        client = plugin_container(plugbay_image("kv"), HANDSHAKE, PLUGINS)
        record(test="failing", id=client.runner.id)
        assert False, "this test fails on purpose"

    def test_process_fixture(plugin_process):
        client = plugin_process([sys.executable, {repo!r} + "/examples/kv/plugin.py"], HANDSHAKE, PLUGINS)
        client.dispense(PLUGIN_NAME).put("p", b"q")
        record(test="process", id=client.runner.id)
        assert False, "process fixture fails on purpose too"
""")


def test_pytest_plugin_fixtures_clean_up_even_when_tests_fail(plugbay_docker: Any, tmp_path: Path) -> None:
    report = tmp_path / "report.jsonl"
    (tmp_path / "test_inner.py").write_text(INNER_TESTS.format(repo=str(REPO), report=str(report)))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "2 failed, 1 passed" in run.stdout, run.stdout + run.stderr
    assert "this test fails on purpose" in run.stdout
    facts = [json.loads(line) for line in report.read_text().splitlines()]
    assert sorted(f["test"] for f in facts) == ["container", "failing", "process"]
    session = facts[0]["session"]
    assert _session_containers(plugbay_docker, session) == []
    for fact in facts:
        if fact["test"] != "process":
            assert plugbay_docker.containers.list(all=True, filters={"id": fact["id"]}) == []
        else:
            assert not Path(f"/proc/{fact['id']}").exists()


def test_docker_fixtures_skip_with_the_reason_when_no_engine_answers(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text("def test_needs_docker(plugbay_docker):\n    raise AssertionError\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "DOCKER_HOST": f"unix://{tmp_path}/no-dockerd.sock"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_inner.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "1 skipped" in run.stdout, run.stdout + run.stderr
    assert "no Docker engine: cannot reach the Docker engine" in run.stdout and "no-dockerd.sock" in run.stdout


def test_process_fixture_passes_a_command_line_string_on_for_clientconfig_to_refuse(tmp_path: Path) -> None:
    # list("python plugin.py") would make one argument per character and fail later, in the runner,
    # with an error that says nothing about the real mistake
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "examples" / "kv")!r})
        import pytest
        from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
        from plugbay.errors import ConfigError

        def test_str_cmd(plugin_process):
            with pytest.raises(ConfigError, match="ClientConfig.cmd must be a non-empty list of strings") as err:
                plugin_process(sys.executable + " plugin.py", HANDSHAKE, {{PLUGIN_NAME: KVPlugin(None)}})
            assert "(not one command line), got '" in str(err.value)

        def test_tuple_cmd_still_works(plugin_process):
            cmd = (sys.executable, {str(REPO / "examples" / "kv" / "plugin.py")!r})
            client = plugin_process(cmd, HANDSHAKE, {{PLUGIN_NAME: KVPlugin(None)}})
            assert client.dispense(PLUGIN_NAME) is not None
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "2 passed" in run.stdout, run.stdout + run.stderr
