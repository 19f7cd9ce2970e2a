"""The Client with plugins in containers: KV round trips (Python and Go plugins, both
transports), reattach from another process, and faults (exit, timeout, docker kill/pause).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from plugbay import images
from plugbay.core.host.client import Client, ClientConfig
from plugbay.errors import (CallTimeoutError, ChecksumMismatchError, HandshakeTimeoutError, MalformedHandshakeError,
                            PluginDiedError, PluginExitedError, RunnerError)
from plugbay.core.host.secure import SecureConfig
from plugbay.runners.session import HOST_SESSION_ID
from plugbay.runners.docker import DockerRunner
from plugbay.runners.docker.madehere import forget_made

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

PLUGINS = {PLUGIN_NAME: KVPlugin(None)}  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trap_image(plugbay_docker: Any) -> str:
    """tests/plugins/trap_kv.py (KV with __hang__/__die__ keys) in a plugin image."""
    folder = images.CACHE / "trap-kv-src"
    shutil.rmtree(folder, ignore_errors=True)
    # the repo's layout, as trap_kv.py finds the KV example relative to itself
    shutil.copytree(REPO / "examples" / "kv", folder / "examples" / "kv", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "tests" / "plugins").mkdir(parents=True)
    shutil.copy2(REPO / "tests" / "plugins" / "trap_kv.py", folder / "tests" / "plugins" / "trap_kv.py")
    images.build_plugin_image("plugbay-trap-kv:test", folder, ["python", "/plugin/tests/plugins/trap_kv.py"],
                              client=plugbay_docker)
    return "plugbay-trap-kv:test"


def _config(runner: DockerRunner, **kwargs: Any) -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=runner, **kwargs)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_kv_round_trip_in_a_container(plugbay_image: Any, plugbay_docker: Any, transport: str) -> None:
    tag = plugbay_image("kv")
    with Client(_config(DockerRunner(tag, transport=transport, writable_dirs=("/tmp", "/data")))) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("greeting", b"hello " + transport.encode())
        assert kv.get("greeting") == b"hello " + transport.encode()
        container = plugbay_docker.containers.get(client.runner.id)
        # the image's non-root user wrote the key file in its working directory
        code, out = container.exec_run(["sh", "-c", "id -u; cat /data/kv_greeting"])
        assert code == 0 and out.decode().split("\n", 1) == ["10001", f"hello {transport}"]
        assert client.handshake.network == transport
        if transport == "tcp":
            assert client.handshake.address.startswith("127.0.0.1:")
        container_id = client.runner.id
    with pytest.raises(Exception, match="No such container"):
        plugbay_docker.containers.get(container_id)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_kv_with_automtls_in_a_container(plugbay_image: Any, transport: str) -> None:
    runner = DockerRunner(plugbay_image("kv"), transport=transport, writable_dirs=("/tmp", "/data"))
    with Client(_config(runner, auto_mtls=True)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("secret", b"over TLS")
        assert kv.get("secret") == b"over TLS"
        assert client.handshake.server_cert is not None  # the plugin answered with its own certificate


def test_go_plugin_in_a_container(plugbay_image: Any) -> None:
    """go-plugin 1.0.1's KV plugin (Go), containerised, from the Python host."""
    from tests.gobuild import go_missing_reason

    if go_missing_reason():
        pytest.skip(f"cannot build the Go plugin: {go_missing_reason()}")
    tag = plugbay_image("kv-go")
    with Client(_config(DockerRunner(tag, writable_dirs=("/tmp", "/data")))) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("lang", b"go")
        assert kv.get("lang") == b"go"
        assert client.handshake.network == "unix"


def test_secure_config_checks_the_image(plugbay_image: Any, plugbay_docker: Any) -> None:
    tag = plugbay_image("kv")
    image_id = plugbay_docker.images.get(tag).id
    ok = SecureConfig(bytes.fromhex(image_id.split(":", 1)[1]))
    with Client(_config(DockerRunner(tag, writable_dirs=("/tmp", "/data")), secure_config=ok)) as client:
        client.dispense(PLUGIN_NAME).put("k", b"v")
    with pytest.raises(ChecksumMismatchError, match="update the pin"):
        with Client(_config(DockerRunner(tag, writable_dirs=("/tmp", "/data")), secure_config=SecureConfig(bytes(32)))):
            pass


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_container_exiting_before_handshake(plugbay_image: Any, transport: str) -> None:
    # tcp: the engine unpublishes the port of a container that exited at once; its exit is what to report
    runner = DockerRunner(plugbay_image("kv"), entrypoint=["sh", "-c", "echo 'fatal: no database' >&2; exit 3"],
                          transport=transport)
    for _ in range(3 if transport == "tcp" else 1):  # the exit may come before or after the port lookup
        with pytest.raises(PluginExitedError) as info:
            with Client(_config(runner)):
                pass
        runner = DockerRunner(runner.image, entrypoint=runner.entrypoint, transport=transport)
    assert info.value.exit_code == 3
    text = str(info.value)
    assert "fatal: no database" in text and "exit code 3" in text


class _Graces(DockerRunner):
    """A DockerRunner that notes the grace of each kill() (the real one then runs against the engine)."""

    def kill(self, grace: float | None = None) -> None:
        self.__dict__.setdefault("graces", []).append(grace)
        super().kill(grace)


def test_a_failed_start_ends_its_container_without_a_grace(plugbay_image: Any, plugbay_docker: Any) -> None:
    # A banner line before serve(): the start fails on it, and its teardown stopped the container with
    # kill_grace (docker stop -t 5), which a PID 1 that ignores SIGTERM (sh here) waited out in full:
    # 5.84 s for a malformed first line. The plugin never completed its handshake: nothing to drain.
    runner = _Graces(plugbay_image("kv"), entrypoint=["sh", "-c", "echo 'my plugin v1.2 starting'; sleep 60"])
    with pytest.raises(MalformedHandshakeError, match="my plugin v1.2 starting"):
        with Client(_config(runner, kill_grace=5.0)):
            pass
    assert runner.__dict__["graces"][0] == 0
    assert plugbay_docker.containers.list(all=True, filters={"id": runner.id}) == []


def test_a_kill_while_the_start_waits_for_the_handshake_gives_no_grace(plugbay_image: Any,
                                                                        plugbay_docker: Any) -> None:
    # kill() from another thread (a fixture's teardown, Supervisor.stop, a cancelled AsyncClient.start)
    # while start() waited for the handshake stopped the container with kill_grace, which its PID 1
    # (sh, ignoring SIGTERM) waited out in full: 5.14 s with kill_grace 5. Nothing was accepted: no grace.
    runner = _Graces(plugbay_image("kv"), entrypoint=["sh", "-c", "sleep 60"])
    client = Client(_config(runner, kill_grace=5.0, start_timeout=60))
    failed: list[BaseException] = []

    def start() -> None:
        try:
            client.start()
        except BaseException as exc:  # noqa: BLE001 - the killed start's error, checked below
            failed.append(exc)

    starting = threading.Thread(target=start)
    starting.start()
    try:
        while runner.id is None and starting.is_alive():  # the container exists: start() waits on its line
            starting.join(0.05)
    finally:
        client.kill()
        starting.join(60)
    assert not starting.is_alive() and len(failed) == 1
    assert runner.__dict__["graces"][0] == 0
    assert plugbay_docker.containers.list(all=True, filters={"id": runner.id}) == []


@pytest.mark.parametrize("line", ["1|1|unix|/etc/passwd|grpc", "1|1|tcp|10.1.2.3:4000|grpc"],
                         ids=["out-of-the-socket-folder", "tcp-on-unix"])
def test_a_refused_address_ends_its_container_without_a_grace(plugbay_image: Any, plugbay_docker: Any,
                                                              line: str) -> None:
    # The line parses, but what it announces is refused (a path out of the mounted folder, an address the
    # unix transport cannot reach): the host never dialed it, yet its teardown stopped the container with
    # kill_grace, which sh as PID 1 (ignoring SIGTERM) waited out in full
    runner = _Graces(plugbay_image("kv"), entrypoint=["sh", "-c", f"echo '{line}'; sleep 60"])
    with pytest.raises((MalformedHandshakeError, RunnerError), match=line.split("|")[3]):
        with Client(_config(runner, kill_grace=5.0)):
            pass
    assert runner.__dict__["graces"][0] == 0
    assert plugbay_docker.containers.list(all=True, filters={"id": runner.id}) == []


def test_handshake_timeout_removes_the_container(plugbay_image: Any, plugbay_docker: Any) -> None:
    runner = DockerRunner(plugbay_image("kv"), entrypoint=["sleep", "60"])
    # "handshake line within", or "too little ... for its handshake line" when a slow engine took 90% of the 3 s
    with pytest.raises(HandshakeTimeoutError, match="handshake line"):
        with Client(_config(runner, start_timeout=3)):
            pass
    assert plugbay_docker.containers.list(all=True, filters={"id": runner.id}) == []


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_docker_kill_during_a_call_fails_fast(trap_image: str, plugbay_docker: Any, transport: str) -> None:
    runner = DockerRunner(trap_image, transport=transport, writable_dirs=("/tmp", "/data"))
    with Client(_config(runner, call_timeout=60)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("a", b"1")
        errors: list[BaseException] = []

        def call() -> None:
            try:
                kv.get("__hang__")
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        caller = threading.Thread(target=call, name="plugbay-test-caller")
        caller.start()
        try:
            # the call is in flight once the plugin logs nothing more; give it a moment to arrive
            caller.join(1.0)
            plugbay_docker.api.kill(client.runner.id)
            caller.join(20)  # far below the 60 s deadline: the death is noticed, not timed out
            assert not caller.is_alive()
        finally:
            caller.join(60)
        assert len(errors) == 1 and isinstance(errors[0], PluginDiedError), errors
        assert "137" in str(errors[0]) and "memory" not in str(errors[0])  # a docker kill is no OOM kill


@pytest.mark.parametrize("by", ["runner", "PluginContainer"])
def test_an_oom_kill_during_a_call_says_so(trap_image: str, by: str) -> None:
    # It read exactly like a `docker kill` ("exited with code 137"); the engine knows (State.OOMKilled).
    # Through PluginContainer (a reattached Client, which reads no output) it said "(the plugin's stderr
    # tail is above)" when there was none.
    from plugbay.testing import PluginContainer

    container = None
    if by == "runner":
        client = Client(_config(DockerRunner(trap_image, mem_limit="64m", writable_dirs=("/tmp", "/data"))))
    else:
        container = PluginContainer(trap_image, HANDSHAKE, PLUGINS, transport="unix", mem_limit="64m").start()
        client = container.get_client()
    try:
        with pytest.raises(PluginDiedError) as info:
            client.dispense(PLUGIN_NAME).get("__oom__")
    finally:
        client.kill()
        if container is not None:
            container.stop()
    said = str(info.value)
    assert "exited with code 137, killed for memory (OOMKilled: mem_limit 64m)" in said, said
    assert "above" not in said, said


class _Frozen(_Graces):
    """A recording DockerRunner: what frozen() answered, and the grace of each kill(), in order."""

    def frozen(self) -> bool:
        said = super().frozen()
        self.__dict__.setdefault("asked", []).append(f"frozen {said}")
        return said

    def kill(self, grace: float | None = None) -> None:
        self.__dict__.setdefault("asked", []).append(f"kill {grace}")
        super().kill(grace)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_docker_pause_during_a_call_hits_the_deadline(trap_image: str, plugbay_docker: Any, transport: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    runner = _Frozen(trap_image, transport=transport, writable_dirs=("/tmp", "/data"))
    with Client(_config(runner, call_timeout=3, kill_grace=4.0)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("b", b"2")
        plugbay_docker.api.pause(client.runner.id)
        with pytest.raises(CallTimeoutError):
            kv.get("b")
        container_id = client.runner.id
        caplog.set_level(logging.DEBUG, logger="plugbay.client")
    # kill() copes with the frozen container
    assert plugbay_docker.containers.list(all=True, filters={"id": container_id}) == []
    # without asking it to stop first: a frozen plugin answers nothing, and Shutdown waited out its 2 s
    # (DEADLINE_EXCEEDED) before the runner thawed and stopped the container. The Client asked the runner
    # whether it was frozen, heard yes, and went straight to the runner's kill with the grace (the runner
    # thaws it and stops it)
    assert runner.__dict__["asked"] == ["frozen True", "kill 4.0"]
    assert not [r for r in caplog.records if r.getMessage().startswith("Shutdown of plugin")], caplog.text


FIRST_HOST = textwrap.dedent("""
    import sys
    sys.path[:0] = [sys.argv[1] + "/src", sys.argv[1] + "/examples/kv"]
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
    from plugbay.core.host.client import Client, ClientConfig
    from plugbay.runners.docker import DockerRunner
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(None)},
                                 runner=DockerRunner(sys.argv[2], writable_dirs=("/tmp", "/data"))))
    client.start()
    client.dispense(PLUGIN_NAME).put("left", b"by the first host")
    print(client.reattach_config().to_json(), flush=True)
    # leaves without kill() (os._exit skips the at-exit cleanup), as a host that hands its plugin over
    import os
    os._exit(0)
""")

SECOND_HOST = textwrap.dedent("""
    import json, sys
    sys.path[:0] = [sys.argv[1] + "/src", sys.argv[1] + "/examples/kv"]
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
    from plugbay.core.host.client import Client, ClientConfig
    from plugbay.core.host.reattach import ReattachConfig
    import plugbay.runners.docker.runner  # registers the DockerRunner reattacher
    config = ReattachConfig.from_json(sys.stdin.read())
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(None)},
                             reattach=config)) as client:
        print(json.dumps({"value": client.dispense(PLUGIN_NAME).get("left").decode(), "id": client.runner.id}))
""")


def test_reattach_from_another_process(plugbay_image: Any, plugbay_docker: Any) -> None:
    tag = plugbay_image("kv")
    first = subprocess.run([sys.executable, "-c", FIRST_HOST, str(REPO), tag], capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stderr
    reattach = json.loads(first.stdout)
    container_id = reattach["runner"]["id"]
    try:
        assert reattach["runner"]["kind"] == "DockerRunner"
        assert plugbay_docker.containers.get(container_id).status == "running"
        second = subprocess.run([sys.executable, "-c", SECOND_HOST, str(REPO)], input=first.stdout,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout) == {"value": "by the first host", "id": container_id}
        # the second host's kill() removed the container and the first host's socket
        assert plugbay_docker.containers.list(all=True, filters={"id": container_id}) == []
        assert not Path(reattach["runner"]["host_socket_dir"]).exists()
    finally:
        for c in plugbay_docker.containers.list(all=True, filters={"id": container_id}):
            c.remove(force=True)
            forget_made(c.id)  # the first host's record (the test failed before the second host's kill dropped it)
        shutil.rmtree(reattach["runner"]["host_socket_dir"], ignore_errors=True)


def test_plugin_containers_carry_the_session_label(plugbay_image: Any, plugbay_docker: Any) -> None:
    with Client(_config(DockerRunner(plugbay_image("kv"), writable_dirs=("/tmp", "/data")))) as client:
        labels = plugbay_docker.containers.get(client.runner.id).labels
        assert labels["plugbay.session"] == HOST_SESSION_ID and labels["plugbay.plugin"] == client.name


NON_ROOT_HOST = textwrap.dedent("""
    import json, os, sys
    sys.path[:0] = [sys.argv[1] + "/src", sys.argv[1] + "/examples/kv"]
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
    from plugbay.core.host.client import Client, ClientConfig
    from plugbay.runners.docker import DockerRunner
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(None)},
                             runner=DockerRunner(sys.argv[2], writable_dirs=("/tmp", "/data")))) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("who", b"non-root host")
        sock = client.handshake.address
        st = os.stat(sock)
        print(json.dumps({"uid": os.getuid(), "value": kv.get("who").decode(), "sock_gid": st.st_gid,
                          "sock_mode": oct(st.st_mode & 0o777)}))
""")


def test_non_root_host_with_non_root_container(plugbay_image: Any) -> None:
    """A host without root (only the docker group) reaches a non-root container's socket."""
    import os
    import site
    import tempfile

    system_python = Path("/usr/bin/python3")
    setpriv = shutil.which("setpriv")
    if os.getuid() != 0 or setpriv is None or not system_python.exists():
        pytest.skip("needs root, setpriv and /usr/bin/python3 to run a host as another user")
    version = subprocess.run([str(system_python), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    if version != str(sys.version_info[:2]):
        pytest.skip(f"/usr/bin/python3 is {version}, the venv's packages are for {sys.version_info[:2]}")
    tag = plugbay_image("kv")
    uid = 4321
    docker_gid = os.stat("/var/run/docker.sock").st_gid
    home = tempfile.mkdtemp(prefix="plugbay-nonroot-", dir="/tmp")
    try:
        os.chown(home, uid, uid)
        run = subprocess.run(
            [setpriv, "--reuid", str(uid), "--regid", str(uid), "--groups", str(docker_gid),
             "env", f"HOME={home}", f"TMPDIR={home}", "PYTHONDONTWRITEBYTECODE=1",
             f"PYTHONPATH={site.getsitepackages()[0]}", str(system_python), "-c", NON_ROOT_HOST, str(REPO), tag],
            capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        facts = json.loads(run.stdout)
        # the plugin (uid 10001 in the container) handed its socket to the host's group
        assert facts == {"uid": uid, "value": "non-root host", "sock_gid": uid, "sock_mode": "0o660"}
        assert os.listdir(home) == []  # the Client removed its socket folder
    finally:
        shutil.rmtree(home, ignore_errors=True)
