"""DockerRunner against the real engine, below the Client: transports, options, errors, sweep.

The plugins here are tiny Python scripts run by the base image's python3, so
each test checks the runner alone: what the container gets (docker inspect
and what the process itself sees), how addresses map, and every error path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from docker.errors import NotFound

from plugbay.errors import (ChecksumMismatchError, ConfigError, EngineUnavailableError, ImageNotFoundError,
                                 MalformedHandshakeError, RunnerError)
from plugbay.core.host.secure import SecureConfig
from plugbay.runners.base import LaunchSpec, reattach_runner
from plugbay.runners.session import HOST_SESSION_ID
from plugbay.runners.docker import CONTAINER_SOCKET_DIR, DockerRunner, sweep
from plugbay.runners.session import managed_labels
from plugbay.runners.docker.madehere import engine_identity, forget_made, record_made
from tests.procs import first_line_then_sigkill

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

BASE = "plugbay-base:bookworm"
REPO = Path(__file__).resolve().parent.parent

# A stand-in plugin: prints a go-plugin handshake line for a socket (unix, in
# PLUGIN_UNIX_SOCKET_DIR, group from PLUGIN_UNIX_SOCKET_GROUP) or a TCP port
# (PLUGBAY_LISTEN), then answers each connection with what it sees as JSON.
ECHO = textwrap.dedent("""
    import json, os, socket, sys
    listen = os.environ.get("PLUGBAY_LISTEN", "")
    if listen.startswith("tcp:"):
        host, port = listen[4:].rsplit(":", 1)
        srv = socket.socket(); srv.bind((host, int(port))); addr = ("tcp", f"{host}:{port}")
    else:
        path = os.path.join(os.environ["PLUGIN_UNIX_SOCKET_DIR"], "plugin.sock")
        srv = socket.socket(socket.AF_UNIX); srv.bind(path)
        os.chown(path, -1, int(os.environ["PLUGIN_UNIX_SOCKET_GROUP"])); os.chmod(path, 0o660)
        addr = ("unix", path)
    srv.listen()
    print("1|1|%s|%s|grpc" % addr, flush=True)
    print("echo: serving", file=sys.stderr, flush=True)
    for _ in range(3):
        conn, _ = srv.accept()
        facts = {"uid": os.getuid(), "groups": os.getgroups(),
                 "env": {k: v for k, v in os.environ.items() if k.startswith(("PLUGIN_", "TMPDIR", "FOO"))}}
        conn.sendall(json.dumps(facts).encode()); conn.close()
""")


def _runner(**kwargs: Any) -> DockerRunner:
    kwargs.setdefault("entrypoint", ["python3", "-c", ECHO])
    return DockerRunner(BASE, **kwargs)


def _ask(network: str, address: str) -> dict[str, Any]:
    family = socket.AF_UNIX if network == "unix" else socket.AF_INET
    target: Any = address
    if network == "tcp":
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1"  # never a container or bridge address
        target = (host, int(port))
    with socket.socket(family) as conn:
        conn.settimeout(10)
        conn.connect(target)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    result: dict[str, Any] = json.loads(data)
    return result


def _handshake(runner: DockerRunner) -> tuple[str, str]:
    line = next(iter(runner.stdout_lines()))
    network, address = line.split("|")[2:4]
    return network, address


def _inspect(plugbay_docker: Any, runner: DockerRunner) -> dict[str, Any]:
    attrs: dict[str, Any] = plugbay_docker.api.inspect_container(runner.id)
    return attrs


def test_unix_transport_non_root_user(plugbay_docker: Any) -> None:
    runner = _runner(user="10001:10001", env={"FOO": "bar"})
    runner.start(LaunchSpec(env={"PLUGIN_UNIX_SOCKET_DIR": "/host/path/ignored", "BASIC_PLUGIN": "hello"}))
    try:
        network, address = _handshake(runner)
        assert (network, address) == ("unix", f"{CONTAINER_SOCKET_DIR}/plugin.sock")
        host_net, host_addr = runner.plugin_to_host(network, address)
        host_dir = runner.reattach_data()["host_socket_dir"]
        # dialled through the runner's handle on the socket it checked (the folder is the container's)
        assert host_net == "unix" and host_addr.startswith("/proc/self/fd/")
        assert os.path.samefile(host_addr, os.path.join(host_dir, "plugin.sock"))
        seen = _ask(host_net, host_addr)
        assert seen["uid"] == 10001
        gid = int(seen["env"]["PLUGIN_UNIX_SOCKET_GROUP"])
        assert gid in seen["groups"] and os.stat(host_addr).st_gid == gid
        assert seen["env"]["PLUGIN_UNIX_SOCKET_DIR"] == CONTAINER_SOCKET_DIR == seen["env"]["TMPDIR"]
        assert seen["env"]["FOO"] == "bar"
        attrs = _inspect(plugbay_docker, runner)
        assert attrs["HostConfig"]["NetworkMode"] == "none"
        assert attrs["Config"]["Labels"]["plugbay.session"] == HOST_SESSION_ID
        assert attrs["Config"]["Labels"]["plugbay.managed"] == "true"
        assert next(iter(runner.stderr_lines())) == "echo: serving"
        assert runner.wait(0) is None
    finally:
        runner.kill()
    assert runner.wait(5) is not None
    assert not os.path.exists(host_dir)  # the runner made this folder, so it removed it
    with pytest.raises(Exception, match="No such container"):
        plugbay_docker.api.inspect_container(runner.id)
    runner.kill()  # idempotent


def test_tcp_transport_publishes_on_loopback_only(plugbay_docker: Any) -> None:
    runner = _runner(transport="tcp", container_port=4100)
    runner.start(LaunchSpec(env={}))
    try:
        network, address = _handshake(runner)
        assert (network, address) == ("tcp", "0.0.0.0:4100")
        host_net, host_addr = runner.plugin_to_host(network, address)
        assert host_addr == f"127.0.0.1:{runner.host_port}"
        assert _ask(host_net, host_addr)["env"].get("PLUGIN_UNIX_SOCKET_DIR") is None
        bindings = _inspect(plugbay_docker, runner)["HostConfig"]["PortBindings"]["4100/tcp"]
        assert bindings == [{"HostIp": "127.0.0.1", "HostPort": ""}]
        with pytest.raises(RunnerError, match="only container port 4100 is published"):
            runner.plugin_to_host("tcp", "0.0.0.0:9999")
        with pytest.raises(RunnerError, match="stdout can be read by one reader only; keep the first"):
            runner.stdout_lines()
    finally:
        runner.kill()


def test_unix_transport_refuses_addresses_outside_the_socket_folder() -> None:
    runner = _runner()
    runner.start(LaunchSpec(env={}))
    try:
        with pytest.raises(MalformedHandshakeError, match="'/tmp/elsewhere.sock'.*PLUGIN_UNIX_SOCKET_DIR"):
            runner.plugin_to_host("unix", "/tmp/elsewhere.sock")
        with pytest.raises(RunnerError, match="transport='tcp'"):
            runner.plugin_to_host("tcp", "127.0.0.1:1234")
        with pytest.raises(MalformedHandshakeError, match="'/plugbay/sock/broker.sock', but it does not exist"):
            runner.plugin_to_host("unix", f"{CONTAINER_SOCKET_DIR}/broker.sock")  # announced before it listens
        host_side = os.path.join(runner.reattach_data()["host_socket_dir"], "broker.sock")  # a host listener's
        assert runner.host_to_plugin("unix", host_side) == ("unix", f"{CONTAINER_SOCKET_DIR}/broker.sock")
    finally:
        runner.kill()


def test_every_option_is_applied(plugbay_docker: Any, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("mounted")
    os.chmod(tmp_path, 0o755)  # readable by the container's uid 4242
    report = textwrap.dedent("""
        import json, os, sys
        try:
            open("/rootfs-write", "w"); ro = False
        except OSError:
            ro = True
        caps = [l for l in open("/proc/self/status") if l.startswith(("CapEff", "NoNewPrivs"))]
        print(json.dumps({"argv": sys.argv[1:], "uid": os.getuid(), "ro": ro, "caps": caps,
                          "mount": open("/mnt/in/in.txt").read(), "foo": os.environ.get("FOO"),
                          "tmpfs": os.access("/scratch", os.W_OK)}), flush=True)
    """)
    runner = DockerRunner(BASE, user="4242:4242", runtime="runc", mem_limit="96m", nano_cpus=500_000_000,
                          read_only=True, cap_drop=["ALL"], no_new_privileges=True, env={"FOO": "x"},
                          mounts=[f"{tmp_path}:/mnt/in:ro"], tmpfs={"/scratch": "size=1m"},
                          labels={"team": "plugins"}, entrypoint=["python3", "-c", report],
                          command=["one", "two"], name=f"plugbay-opts-{os.getpid()}")
    runner.start(LaunchSpec(env={}))
    try:
        lines = list(runner.stdout_lines())
        assert runner.wait(30) == 0, runner.diagnose()
        facts = json.loads(lines[0])
        attrs = _inspect(plugbay_docker, runner)
    finally:
        runner.kill()
    host = attrs["HostConfig"]
    assert attrs["Config"]["User"] == "4242:4242" and facts["uid"] == 4242
    assert host["Runtime"] == "runc"
    assert host["Memory"] == 96 * 1024 * 1024 and host["MemorySwap"] == 96 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
    assert host["ReadonlyRootfs"] is True and facts["ro"] is True
    assert host["CapDrop"] == ["ALL"] and "CapEff:\t0000000000000000\n" in facts["caps"]
    assert "no-new-privileges:true" in host["SecurityOpt"] and "NoNewPrivs:\t1\n" in facts["caps"]
    assert facts["foo"] == "x" and facts["mount"] == "mounted" and facts["tmpfs"] is True
    assert attrs["Config"]["Labels"]["team"] == "plugins"
    assert attrs["Config"]["Entrypoint"][:2] == ["python3", "-c"] and facts["argv"] == ["one", "two"]
    assert attrs["Name"] == f"/plugbay-opts-{os.getpid()}"


def test_stop_timeout_is_the_containers_and_the_kill_default(plugbay_docker: Any) -> None:
    runner = DockerRunner(BASE, entrypoint=["sleep", "60"], stop_timeout=4.5)  # pid 1: SIGTERM does not end it
    runner.start(LaunchSpec(env={}))
    try:
        assert _inspect(plugbay_docker, runner)["Config"]["StopTimeout"] == 5  # whole seconds, rounded up
    finally:
        started = time.monotonic()
        runner.kill()
    assert time.monotonic() - started >= 4.4  # not kill()'s own default of 2 s
    for bad in (-1, "5", float("nan")):
        with pytest.raises(ConfigError, match="stop_timeout"):
            DockerRunner(BASE, stop_timeout=bad)  # type: ignore[arg-type]


def test_digest_pin_and_secure_config(plugbay_docker: Any) -> None:
    image_id = plugbay_docker.images.get(BASE).id
    for runner in (_runner(digest=image_id), DockerRunner(f"{BASE}@{image_id}", entrypoint=["python3", "-c", ECHO])):
        runner.start(LaunchSpec(env={}))
        try:
            assert _handshake(runner)[0] == "unix"
        finally:
            runner.kill()
    wrong = "sha256:" + "0" * 64
    runner = _runner(digest=wrong)
    with pytest.raises(ChecksumMismatchError, match="not the pinned sha256:0000") as info:
        runner.start(LaunchSpec(env={}))
    assert "rebuild the trusted one or update the pin" in str(info.value)
    assert runner.id == ""  # refused before any container was made
    _runner().check_secure_config(SecureConfig(bytes.fromhex(image_id.split(":")[1])))
    with pytest.raises(ChecksumMismatchError):
        _runner().check_secure_config(SecureConfig(bytes(32)))
    with pytest.raises(ConfigError, match="sha256:<hex>"):
        DockerRunner(BASE, digest="abc")


def test_missing_image_says_how_to_build_it() -> None:
    runner = DockerRunner("plugbay-no-such-image:never")
    with pytest.raises(ImageNotFoundError, match="python -m plugbay.images") as info:
        runner.start(LaunchSpec(env={}))
    assert "plugbay never pulls" in str(info.value)
    # a command that builds a plugin of one's own; a bare `docker build -f Dockerfile.plugin` cannot (its
    # context is the wheels, plugin folder and entrypoint plugbay.images assembles)
    assert "plugbay images build --plugin-dir" in str(info.value) and "docker build" not in str(info.value)


@pytest.mark.parametrize("image", ["fx-MyPlugin:latest", "fx-kv:1.0 "])
def test_a_malformed_image_reference_is_a_config_error(image: str) -> None:
    with pytest.raises(ConfigError, match="malformed.*lowercase.*no spaces"):
        DockerRunner(image).start(LaunchSpec(env={}))
    with pytest.raises(ConfigError, match="malformed"):
        DockerRunner(image).check_secure_config(SecureConfig(bytes(32)))


def test_unknown_runtime_is_reported_clearly() -> None:
    runner = _runner(runtime="runsc")
    with pytest.raises(RunnerError, match="no runtime 'runsc'") as info:
        runner.start(LaunchSpec(env={}))
    assert "daemon.json" in str(info.value) and "runc" in str(info.value)


def test_engine_not_reachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-dockerd.sock")
    with pytest.raises(EngineUnavailableError, match="dockerd") as info:
        _runner().start(LaunchSpec(env={}))
    assert "DOCKER_HOST" in str(info.value) and "no-dockerd.sock" in str(info.value)
    with pytest.raises(EngineUnavailableError):
        sweep()


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="transport"):
        DockerRunner(BASE, transport="udp")
    with pytest.raises(ConfigError, match="SOURCE:TARGET"):
        DockerRunner(BASE, mounts=["only-one-part"])
    with pytest.raises(ConfigError, match="image name"):
        DockerRunner("")
    with pytest.raises(RunnerError, match="start\\(\\) must run"):
        DockerRunner(BASE).stdout_lines()
    with pytest.raises(ConfigError, match="pinned to sha256:aa but digest= says sha256:bb; give one of them"):
        DockerRunner(f"{BASE}@sha256:aa", digest="sha256:bb")
    with pytest.raises(ConfigError, match="SecureConfig uses 'sha512'. Pass SecureConfig") as info:
        _runner().check_secure_config(SecureConfig(bytes(64), hash="sha512"))
    assert "hash='sha256'" in str(info.value)
    with pytest.raises(ConfigError, match="needs the container 'id'.*reattach_config"):
        reattach_runner({"kind": "DockerRunner", "image": BASE})


def test_exit_before_handshake_keeps_exit_code_and_logs() -> None:
    runner = DockerRunner(BASE, entrypoint=["sh", "-c", "echo 'fatal: no config' >&2; exit 3"])
    runner.start(LaunchSpec(env={}))
    try:
        assert list(runner.stdout_lines()) == []  # the stream ends with the container
        assert runner.wait(30) == 3
        assert list(runner.stderr_lines()) == ["fatal: no config"]
        text = runner.diagnose()
        assert "exit code 3" in text and "fatal: no config" in text and "OOMKilled=False" in text
    finally:
        runner.kill()
    assert "exit code 3" in runner.diagnose()  # still known once the container is gone


def test_oom_kill_is_diagnosed() -> None:
    hog = "import sys; print('allocating', file=sys.stderr, flush=True); x = bytearray(512 * 1024 * 1024)"
    runner = DockerRunner(BASE, entrypoint=["python3", "-c", hog], mem_limit="48m")
    runner.start(LaunchSpec(env={}))
    try:
        assert runner.wait(60) == 137
        text = runner.diagnose()
        assert "OOMKilled=True" in text and "allocating" in text
    finally:
        runner.kill()
    # removed: only the State kill() kept is left, which holds no limit; it said "the container had no
    # mem_limit set" of this one, started with 48m
    said = runner.exit_reason(137)
    assert said == "killed for memory (OOMKilled: the kernel's OOM killer; its mem_limit is unknown)", said


def test_sweep_with_explicit_live_sessions(plugbay_docker: Any) -> None:
    labels = {**managed_labels(), "plugbay.session": "1-gonesession"}
    stray = plugbay_docker.containers.create(BASE, ["sleep", "60"], labels=labels, network_mode="none")
    record_made(stray.id, engine_identity(plugbay_docker))  # as a runner records its containers
    mine = _runner()
    mine.start(LaunchSpec(env={}))
    try:
        # Every other session on this (shared) engine counts as live: only the stray one is gone.
        others = {c.labels.get("plugbay.session") for c in plugbay_docker.containers.list(
            all=True, filters={"label": "plugbay.managed=true"})} - {"1-gonesession"}
        removed = sweep(live_sessions=[HOST_SESSION_ID, *(s for s in others if s)],
                        sessions=["1-gonesession", HOST_SESSION_ID])  # one started meanwhile is no test's
        assert stray.id in removed and mine.id not in removed
        assert plugbay_docker.containers.get(mine.id).status == "running"
    finally:
        mine.kill()
        forget_made(stray.id)
        try:
            stray.remove(force=True)
        except NotFound:  # already swept, as expected; any other failure is a leak to report
            pass


def test_sweep_clears_only_a_socket_folder_proven_to_be_plugbays(plugbay_docker: Any, tmp_path: Path) -> None:
    # A container's labels are untrusted: one naming another program's folder made sweep() delete the
    # live sockets there. Only a folder holding the marker plugbay wrote for that container is cleared.
    from plugbay.runners.docker.engine import SOCKET_DIR, SOCKET_MARKER, SOCKET_TOKEN

    folders = {name: tmp_path / name for name in ("theirs", "ours")}
    listeners = []
    for name, folder in folders.items():
        folder.mkdir()
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(folder / "service.sock"))
        listeners.append(listener)
    (folders["ours"] / SOCKET_MARKER).write_text("token-ours")
    strays = []
    try:
        for name, token in (("theirs", "forged"), ("ours", "token-ours")):
            labels = {**managed_labels(), "plugbay.session": f"1-gone{name}", "plugbay.host": socket.gethostname(),
                      SOCKET_DIR: str(folders[name]), SOCKET_TOKEN: token}
            strays.append(plugbay_docker.containers.create(BASE, ["true"], labels=labels, network_mode="none"))
            record_made(strays[-1].id, engine_identity(plugbay_docker))  # as a runner records its own
        others = {c.labels.get("plugbay.session") for c in plugbay_docker.containers.list(
            all=True, filters={"label": "plugbay.managed=true"})} - {"1-gonetheirs", "1-goneours"}
        removed = sweep(live_sessions=[HOST_SESSION_ID, *(s for s in others if s)],
                        sessions=["1-gonetheirs", "1-goneours"])
        assert {c.id for c in strays} <= set(removed)
        assert os.listdir(folders["theirs"]) == ["service.sock"], "sweep deleted another program's socket"
        assert not folders["ours"].exists()  # plugbay's own folder: its sockets, marker and the folder go
    finally:
        for listener in listeners:
            listener.close()
        for stray in strays:
            forget_made(stray.id)
            try:
                stray.remove(force=True)
            except NotFound:  # swept, as expected
                pass


CRASHING_HOST = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from plugbay.runners.base import LaunchSpec
    from plugbay.runners.session import HOST_SESSION_ID
    from plugbay.runners.docker import DockerRunner
    runner = DockerRunner("plugbay-base:bookworm", entrypoint=["sleep", "120"])
    runner.start(LaunchSpec(env={}))
    print(json.dumps({"session": HOST_SESSION_ID, "id": runner.id, "reattach": runner.reattach_data()}), flush=True)
    time.sleep(120)
""")


def _crashed_host() -> dict[str, Any]:
    """A real host process that starts a container and then dies by SIGKILL."""
    return first_line_then_sigkill([sys.executable, "-c", CRASHING_HOST, str(REPO / "src")])


def test_sweep_removes_containers_of_a_crashed_host(plugbay_docker: Any) -> None:
    mine = _runner()
    mine.start(LaunchSpec(env={}))
    facts = _crashed_host()
    try:
        orphan = plugbay_docker.containers.get(facts["id"])
        assert orphan.status == "running" and orphan.labels["plugbay.session"] == facts["session"]
        folder = Path(facts["reattach"]["host_socket_dir"])
        (folder / "cache.tmp").write_text("a file the plugin left in its TMPDIR")
        # scoped to the sessions this test made: another session's container may be between hosts (its starting
        # host gone, its reattaching one not yet its claimant), and a sweep of all would remove it
        ours = [facts["session"], HOST_SESSION_ID]
        removed = sweep(sessions=ours)
        assert facts["id"] in removed and mine.id not in removed
        assert not folder.exists(), "the socket folder the crashed host's runner made was left behind"
        left = plugbay_docker.containers.list(all=True, filters={"label": f"plugbay.session={facts['session']}"})
        assert left == []
        assert sweep(sessions=ours) == []  # nothing more to do; live sessions are left alone
    finally:
        mine.kill()
        for c in plugbay_docker.containers.list(all=True, filters={"label": f"plugbay.session={facts['session']}"}):
            c.remove(force=True)
            forget_made(c.id)  # the crashed host's record (the test failed before the sweep or kill dropped it)


def test_a_sweep_of_named_sessions_leaves_every_other_sessions_container(plugbay_docker: Any) -> None:
    # before: sweep() had no scope: a test's sweep removed any gone session's container this user made, another
    # session's among them while it was between hosts (its starting host gone, the reattaching one not yet its
    # claimant), and its `sweep() == []` failed on another session's leftover
    first, second = _crashed_host(), _crashed_host()
    try:
        assert sweep(dry_run=True, sessions=[second["session"]]) == [second["id"]]
        assert sweep(sessions=[first["session"]]) == [first["id"]]
        assert plugbay_docker.containers.get(second["id"]).status == "running"  # gone too, but not named
        with pytest.raises(ConfigError, match=r"not one str: pass \['x'\]"):
            sweep(sessions="x")  # its characters would have been the sessions
        with pytest.raises(ConfigError, match="non-empty str"):
            sweep(sessions=[""])
        assert sweep(sessions=[second["session"]]) == [second["id"]]
    finally:  # what a sweep left (the test failed before it): each container, its record and its socket folder
        for facts in (first, second):
            for c in plugbay_docker.containers.list(all=True, filters={"id": facts["id"]}):
                c.remove(force=True)
            forget_made(facts["id"])
            shutil.rmtree(facts["reattach"]["host_socket_dir"], ignore_errors=True)


def test_reattached_container_is_owned_by_the_new_host(plugbay_docker: Any) -> None:
    facts = _crashed_host()
    try:
        attached = reattach_runner(facts["reattach"])
        assert attached.id == facts["id"] and attached.wait(0) is None
        # still the first host's until the reattach is known to hold (a Client calls adopted() then)
        assert facts["id"] in sweep(dry_run=True, sessions=[facts["session"]])
        attached.adopted()
        # the dead first host's container now belongs to this live session
        assert sweep(sessions=[facts["session"], HOST_SESSION_ID]) == []
        attached.kill()
        assert attached.wait(5) is not None
        with pytest.raises(RunnerError, match="no longer exists"):
            reattach_runner(facts["reattach"])
    finally:
        for c in plugbay_docker.containers.list(all=True, filters={"label": f"plugbay.session={facts['session']}"}):
            c.remove(force=True)
            forget_made(c.id)  # the crashed host's record (the test failed before the sweep or kill dropped it)


def test_runner_socket_dir_is_removed_even_when_start_fails() -> None:
    before = set(os.listdir(tempfile.gettempdir()))
    runner = DockerRunner(BASE, entrypoint=["/no/such/binary"])
    with pytest.raises(RunnerError, match="refused to run") as info:
        runner.start(LaunchSpec(env={}))
    assert "no such file" in str(info.value).lower()
    assert set(os.listdir(tempfile.gettempdir())) == before


def test_socket_group_follows_the_client_setting() -> None:
    """ClientConfig.unix_socket_group reaches the runner as PLUGIN_UNIX_SOCKET_GROUP (name or gid)."""
    import grp

    group = grp.getgrgid(os.getgid()).gr_name if os.getgid() else "daemon"
    runner = _runner(user="10001:10001")
    runner.start(LaunchSpec(env={"PLUGIN_UNIX_SOCKET_GROUP": group}))
    try:
        host_addr = runner.plugin_to_host(*_handshake(runner))[1]
        seen = _ask("unix", host_addr)
        gid = grp.getgrnam(group).gr_gid
        assert seen["env"]["PLUGIN_UNIX_SOCKET_GROUP"] == str(gid) and gid in seen["groups"]
        assert os.stat(runner.reattach_data()["host_socket_dir"]).st_gid == gid
    finally:
        runner.kill()
    with pytest.raises(ConfigError, match="not a group on this host"):
        _runner().start(LaunchSpec(env={"PLUGIN_UNIX_SOCKET_GROUP": "no-such-group-xyz"}))


def test_reattach_refuses_a_container_plugbay_did_not_start(plugbay_docker: Any, tmp_path: Path) -> None:
    from plugbay import Client, ClientConfig, HandshakeConfig, ReattachConfig
    from plugbay.core.protocol.handshake import HandshakeInfo
    from plugbay.errors import ReattachError

    foreign = plugbay_docker.containers.run(BASE, ["sleep", "60"], detach=True, network_mode="none")
    try:
        data = {"kind": "DockerRunner", "id": foreign.id, "image": BASE, "transport": "unix",
                "host_socket_dir": str(tmp_path), "owns_socket_dir": True}
        with pytest.raises(ReattachError, match=rf"container {foreign.id[:12]}: it lacks plugbay's label"
                           r" plugbay.managed=true.*leaves them alone"):
            reattach_runner(data)
        info = HandshakeInfo(1, 1, "unix", str(tmp_path / "no.sock"))
        client = Client(ClientConfig(handshake=HandshakeConfig(1, "K", "V"), plugins={},
                                     reattach=ReattachConfig(handshake=info, runner=data)))
        with pytest.raises(ReattachError):
            client.start()
        client.kill()
        foreign.reload()
        assert foreign.status == "running" and tmp_path.is_dir()
    finally:
        foreign.remove(force=True)


def test_reattach_never_deletes_a_folder_the_data_names(tmp_path: Path) -> None:
    from plugbay import Client, ClientConfig, HandshakeConfig, ReattachConfig
    from plugbay.core.protocol.handshake import HandshakeInfo
    from plugbay.errors import ReattachError
    from plugbay.runners.docker.engine import SOCKET_MARKER

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    runner = _runner(entrypoint=["sleep", "60"])
    runner.start(LaunchSpec(env={}))
    try:
        real = runner.reattach_data()
        forged = {**real, "host_socket_dir": str(victim), "owns_socket_dir": True}
        with pytest.raises(ReattachError, match=rf"the container.s label plugbay.socket-dir does not name {victim}"):
            reattach_runner(forged)
        info = HandshakeInfo(1, 1, "unix", str(victim / "no.sock"))
        client = Client(ClientConfig(handshake=HandshakeConfig(1, "K", "V"), plugins={},
                                     reattach=ReattachConfig(handshake=info, runner=forged)))
        with pytest.raises(ReattachError):
            client.start()
        client.kill()
        assert (victim / "precious.txt").read_text() == "keep me"
        assert runner.wait(0) is None  # the container was not touched either
        # the labelled folder without plugbay's marker file is not proven either
        marker = Path(real["host_socket_dir"]) / SOCKET_MARKER
        token = marker.read_text()
        marker.unlink()
        with pytest.raises(ReattachError, match="holds no marker file plugbay wrote"):
            reattach_runner(real)
        marker.write_text("forged")
        with pytest.raises(ReattachError, match="is not the one plugbay wrote"):
            reattach_runner(real)
        marker.write_text(token)
    finally:
        runner.kill(0)
    assert not os.path.exists(real["host_socket_dir"])


ESCAPE = "print('1|1|unix|/plugbay/sock/../../tmp/host-only.sock|grpc', flush=True); import time; time.sleep(60)"


def test_announced_socket_paths_cannot_leave_the_socket_folder(tmp_path: Path) -> None:
    from plugbay import Client, ClientConfig, HandshakeConfig

    outside = tmp_path / "host-only.sock"
    with socket.socket(socket.AF_UNIX) as host_only:
        host_only.bind(str(outside))
        runner = _runner()
        runner.start(LaunchSpec(env={}))
        try:
            host_side = runner.plugin_to_host(*_handshake(runner))[1]
            folder = runner.reattach_data()["host_socket_dir"]
            # normalised, and inside: fine
            assert runner.plugin_to_host("unix", f"{CONTAINER_SOCKET_DIR}/x/../plugin.sock")[1] == host_side
            bad = [f"{CONTAINER_SOCKET_DIR}/../../{outside}", f"{CONTAINER_SOCKET_DIR}/..",
                   f"{CONTAINER_SOCKET_DIR}/sub/plugin.sock", CONTAINER_SOCKET_DIR, "plugin.sock"]
            for address in bad:
                with pytest.raises(MalformedHandshakeError, match=rf"announced socket path '{re.escape(address)}',"
                                   r" but it is not a file directly in the mapped socket folder"):
                    runner.plugin_to_host("unix", address)
            os.symlink(outside, os.path.join(folder, "link.sock"))  # as a container could
            with pytest.raises(MalformedHandshakeError, match="'/plugbay/sock/link.sock', but it is not a socket"):
                runner.plugin_to_host("unix", f"{CONTAINER_SOCKET_DIR}/link.sock")
        finally:
            runner.kill(0)
        client = Client(ClientConfig(handshake=HandshakeConfig(1, "K", "V"), plugins={}, start_timeout=30,
                                     runner=_runner(entrypoint=["python3", "-c", ESCAPE])))
        with pytest.raises(MalformedHandshakeError, match="/plugbay/sock/../../tmp/host-only.sock"):
            client.start()
        client.kill()


LATE_LINK = ("print('1|1|unix|/plugbay/sock/late.sock|grpc', flush=True); import os, time; time.sleep(1);"
             " os.symlink(os.environ['DECOY'], '/plugbay/sock/late.sock'); time.sleep(60)")


class _Decoy:
    """A host socket plugbay did not make (say, the Docker engine's), counting who connects to it."""

    def __init__(self, path: Path) -> None:
        self.path, self.hits = path, 0
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self._listener.setblocking(False)

    def count(self) -> int:
        for _ in range(64):  # bounded: drains what is queued
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                break
            conn.close()
            self.hits += 1
        return self.hits

    def close(self) -> None:
        self._listener.close()


def test_the_host_dials_the_socket_it_checked_whatever_the_container_puts_there_later(tmp_path: Path) -> None:
    # The socket folder is the container's to write in: a path checked when announced could be a
    # symlink to any host socket by the time the host dialled it (or redialled it), and a path that
    # did not exist yet was let through unchecked.
    from plugbay import Client, ClientConfig, HandshakeConfig

    decoy = _Decoy(tmp_path / "decoy.sock")
    try:
        runner = _runner()
        runner.start(LaunchSpec(env={}))
        try:
            dial = runner.plugin_to_host(*_handshake(runner))[1]
            folder = runner.reattach_data()["host_socket_dir"]
            # what a container can do once its socket was checked: move it away, leave a symlink
            os.rename(os.path.join(folder, "plugin.sock"), os.path.join(folder, "moved.sock"))
            os.symlink(decoy.path, os.path.join(folder, "plugin.sock"))
            assert _ask("unix", dial)["uid"] == 0  # still the plugin's own socket
            assert decoy.count() == 0
            with pytest.raises(MalformedHandshakeError, match="'/plugbay/sock/plugin.sock', but it is not a socket"):
                runner.plugin_to_host("unix", f"{CONTAINER_SOCKET_DIR}/plugin.sock")
        finally:
            runner.kill(0)
        late = _runner(entrypoint=["python3", "-c", LATE_LINK], env={"DECOY": str(decoy.path)})
        client = Client(ClientConfig(handshake=HandshakeConfig(1, "K", "V"), plugins={}, start_timeout=30,
                                     runner=late))
        with pytest.raises(MalformedHandshakeError, match="'/plugbay/sock/late.sock', but it does not exist"):
            client.start()
        client.kill()
        time.sleep(1.5)  # past the container's symlink: nothing may dial it now either
        assert decoy.count() == 0, "the host dialled a socket the container pointed it at"
    finally:
        decoy.close()


def _ours(docker: Any) -> set[str]:
    """This test process's containers (others on a shared engine come and go meanwhile)."""
    return {c["Id"] for c in docker.api.containers(all=True, filters={"label": f"plugbay.session={HOST_SESSION_ID}"})}


@pytest.mark.parametrize("end", ["kill", "detach"])
def test_start_after_kill_or_detach_is_refused(plugbay_docker: Any, end: str) -> None:
    """Reused after kill() or detach(), a runner must not create a container its kill() would never remove."""
    before = _ours(plugbay_docker)
    fresh = _runner()
    getattr(fresh, end)()
    with pytest.raises(RunnerError, match=f"DockerRunner for '{BASE}' was {end}ed?; a runner runs one container"
                                          " once: make a new runner"):
        fresh.start(LaunchSpec(env={}))
    assert _ours(plugbay_docker) == before
    used = _runner()
    used.start(LaunchSpec(env={}))
    try:
        getattr(used, end)()
        with pytest.raises(RunnerError, match=f"was {end}ed?; a runner runs one container once"):
            used.start(LaunchSpec(env={}))
    finally:
        used.kill(0)
    assert _ours(plugbay_docker) == before


@pytest.mark.parametrize("auto_mtls", [False, True])
def test_a_tcp_plugin_that_exits_after_its_handshake_is_reported_as_exited(auto_mtls: bool) -> None:
    # its stopped container publishes no port: the error told it to honour PLUGBAY_LISTEN (or, with
    # AutoMTLS, that TLS is required), while its exit code and stderr say what went wrong
    from plugbay import Client, ClientConfig
    from plugbay.core.protocol.handshake import HandshakeConfig
    from plugbay.errors import PluginExitedError

    line = "1|1|tcp|0.0.0.0:4000|grpc|"
    runner = DockerRunner(BASE, transport="tcp", network=None,
                          entrypoint=["sh", "-c", f"echo '{line}'; echo 'fatal: no config' >&2; exit 3"])
    client = Client(ClientConfig(handshake=HandshakeConfig(1, "K", "V"), runner=runner, start_timeout=20,
                                 auto_mtls=auto_mtls))
    try:
        with pytest.raises(PluginExitedError) as info:
            client.start()
        assert info.value.exit_code == 3 and "fatal: no config" in str(info.value)
    finally:
        client.kill()


def test_a_tcp_plugin_that_exits_just_after_its_handshake_is_reported_as_exited_not_as_lacking_tls() -> None:
    # the flake of the test above under load, made certain: the plugin still runs when the host reads its
    # line and checks the certificate, and exits a moment later; its exit (code, stderr) is why it failed
    from plugbay import Client, ClientConfig, PluginExitedError
    from plugbay.core.protocol.handshake import HandshakeConfig

    line = "1|1|tcp|0.0.0.0:4000|grpc|"
    runner = DockerRunner(BASE, transport="tcp", network=None,
                          entrypoint=["sh", "-c", f"echo '{line}'; sleep 0.3; echo 'fatal: no config' >&2; exit 3"])
    client = Client(ClientConfig(handshake=HandshakeConfig(1, "K", "V"), runner=runner, start_timeout=20))
    try:
        with pytest.raises(PluginExitedError) as info:  # not TLSRequiredError: it ran when its line was read
            client.start()
        assert info.value.exit_code == 3 and "fatal: no config" in str(info.value)
    finally:
        client.kill()


def test_kill_gives_a_callers_socket_folder_back_as_it_was(tmp_path: Path) -> None:
    # the runner opens a caller's folder to the container's group (2770) and writes its marker there;
    # both stayed after kill()
    given = tmp_path / "given"
    given.mkdir(mode=0o700)
    (given / "callers.txt").write_text("not plugbay's")
    before = os.stat(given)
    runner = _runner(entrypoint=["sh", "-c", "exec sleep 60"])
    runner.start(LaunchSpec(env={}, socket_dir=str(given)))
    try:
        during = os.stat(given)
        assert during.st_mode & 0o7777 == 0o2770 and (given / ".plugbay-socket-dir").exists()
    finally:
        runner.kill(0)
    after = os.stat(given)
    assert (after.st_mode, after.st_gid) == (before.st_mode, before.st_gid)
    assert sorted(p.name for p in given.iterdir()) == ["callers.txt"]
