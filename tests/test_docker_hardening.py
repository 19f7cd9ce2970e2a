"""DockerRunner's confinement defaults, checked with docker inspect on the real engine.

Read-only root with a tmpfs /tmp, a pids limit, the isolated network for the
tcp transport (inter-container traffic off), limits as options, and the root
host's socket-folder group refused when it is a real host group.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from plugbay.errors import ConfigError, RunnerError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner
from plugbay.runners.docker.hardening import ICC_OPTION, ISOLATED_NETWORK
from tests.docker_util import BASE, start_on

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

REPO = Path(__file__).resolve().parent.parent
# Reports what the process can write, then (tcp) listens so the runner can publish its port.
REPORT = textwrap.dedent("""
    import json, os, socket
    def writable(path):
        try:
            open(os.path.join(path, "probe"), "w").close(); return True
        except OSError:
            return False
    listen = os.environ.get("PLUGBAY_LISTEN", "")
    print(json.dumps({"root": writable("/"), "tmp": writable("/tmp"), "uid": os.getuid()}), flush=True)
""")


def _run(plugbay_docker: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    runner = DockerRunner(BASE, user="4242:4242", entrypoint=["python3", "-c", REPORT], **kwargs)
    runner.start(LaunchSpec(env={}))
    try:
        lines = list(runner.stdout_lines())
        assert runner.wait(30) == 0, runner.diagnose()
        attrs = plugbay_docker.api.inspect_container(runner.id)
    finally:
        runner.kill()
    return json.loads(lines[0]), attrs


def test_defaults_read_only_root_tmpfs_tmp_and_pids_limit(plugbay_docker: Any) -> None:
    facts, attrs = _run(plugbay_docker)
    host = attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True and facts["root"] is False
    assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=64m,mode=1777,uid=4242,gid=4242"}
    assert facts["tmp"] is True
    assert host["PidsLimit"] == 256
    assert host["NetworkMode"] == "none"  # unix transport: no network at all
    assert host["Memory"] == 0 and host["NanoCpus"] == 0  # limits are opt-in (below)


def test_limits_and_writable_dirs_are_options(plugbay_docker: Any) -> None:
    facts, attrs = _run(plugbay_docker, cpus=0.5, mem_limit="64m", pids_limit=32,
                        writable_dirs=("/tmp", "/work"), tmpfs_size="8m", tmpfs={"/cache": "size=1m"})
    host = attrs["HostConfig"]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 64 * 1024 * 1024 and host["PidsLimit"] == 32
    assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=8m,mode=1777,uid=4242,gid=4242",
                             "/work": "rw,nosuid,nodev,size=8m,mode=1777,uid=4242,gid=4242", "/cache": "size=1m"}
    facts, attrs = _run(plugbay_docker, read_only=False, writable_dirs=(), pids_limit=None)
    assert facts["root"] is False  # uid 4242 still cannot write /, but the engine no longer forbids it
    assert attrs["HostConfig"]["ReadonlyRootfs"] is False and not attrs["HostConfig"].get("Tmpfs")
    assert attrs["HostConfig"]["PidsLimit"] in (None, 0, -1)


def test_tcp_transport_runs_on_the_isolated_network(plugbay_docker: Any) -> None:
    listen = REPORT + textwrap.dedent("""
        host, port = listen[4:].rsplit(":", 1)
        srv = socket.socket(); srv.bind((host, int(port))); srv.listen()
        print("1|1|tcp|%s:%s|grpc" % (host, port), flush=True)
        srv.accept()
    """)
    ids = []
    runners = [DockerRunner(BASE, transport="tcp", entrypoint=["python3", "-c", listen]) for _ in range(2)]
    try:
        for runner in runners:
            runner.start(LaunchSpec(env={}))
            ids.append(runner.id)
            lines = runner.stdout_lines()
            assert json.loads(next(lines))["tmp"] is True
            assert next(lines).startswith("1|1|tcp|0.0.0.0:")
        for cid in ids:  # both on the same reused network, published on loopback only
            attrs = plugbay_docker.api.inspect_container(cid)
            assert list(attrs["NetworkSettings"]["Networks"]) == [ISOLATED_NETWORK]
            assert {b["HostIp"] for b in attrs["NetworkSettings"]["Ports"]["4000/tcp"]} == {"127.0.0.1"}
    finally:
        for runner in runners:
            runner.kill()
    net = plugbay_docker.networks.get(ISOLATED_NETWORK).attrs
    assert net["Options"][ICC_OPTION] == "false" and net["Labels"]["plugbay.managed"] == "true"
    assert net["Driver"] == "bridge"


def test_a_foreign_network_of_that_name_is_refused(plugbay_docker: Any) -> None:
    name = f"plugbay-test-foreign-{os.getpid()}"
    net = plugbay_docker.networks.create(name, driver="bridge")  # icc on, no plugbay label
    try:
        runner = DockerRunner(BASE, transport="tcp", network=name, entrypoint=["true"])
        with pytest.raises(RunnerError, match=rf"network '{name}' exists but was not created by plugbay"
                                              r".*enable_icc=false.*docker network rm"):
            runner.start(LaunchSpec(env={}))
        runner.kill()
    finally:
        net.remove()


def test_a_network_removed_since_it_was_verified_is_made_again(plugbay_docker: Any) -> None:
    # The network's id is verified once per process; a start after its removal must not fail on the stale id.
    name = f"plugbay-test-again-{os.getpid()}"
    try:
        first = start_on(name, 30)
        first.kill()
        gone = plugbay_docker.networks.get(name)
        gone.remove()
        second = start_on(name, 30)
        try:
            attrs = plugbay_docker.api.inspect_container(second.id)["NetworkSettings"]["Networks"]
            assert list(attrs) == [name] and attrs[name]["NetworkID"] != gone.id
            net = plugbay_docker.networks.get(name).attrs
            assert net["Options"][ICC_OPTION] == "false" and net["Labels"]["plugbay.managed"] == "true"
        finally:
            second.kill()
    finally:
        for net in plugbay_docker.networks.list(names=[name]):
            net.remove()


def test_a_foreign_network_swapped_in_after_verification_is_refused(plugbay_docker: Any) -> None:
    name = f"plugbay-test-swap-{os.getpid()}"
    try:
        start_on(name, 30).kill()
        plugbay_docker.networks.get(name).remove()
        plugbay_docker.networks.create(name, driver="bridge")  # same name, icc on, no plugbay label
        with pytest.raises(RunnerError, match=rf"network '{name}' exists but was not created by plugbay"):
            start_on(name, 30)
        assert not plugbay_docker.containers.list(all=True, filters={"network": name})
    finally:
        for net in plugbay_docker.networks.list(names=[name]):
            net.remove()


@pytest.mark.parametrize(("transport", "network"), [("tcp", ISOLATED_NETWORK), ("unix", None)])
def test_a_missing_network_of_extra_create_args_is_refused_not_swapped(plugbay_docker: Any, transport: str,
                                                                       network: str | None) -> None:
    # Only the isolated network's own (stale) id is verified anew: the caller's choice is not replaced
    # (it was: the container ran on the isolated network, or with network=None on a new one called "None").
    missing = f"plugbay-test-missing-{os.getpid()}"
    # the networks this runner could make in the caller's stead (one called "None", the isolated one, the
    # missing one): not every network on the engine, nor every one plugbay made, where another user of it (another
    # plugbay test run) may add one meanwhile, which this test would then remove as made here
    could_make = {str(network), ISOLATED_NETWORK, missing}

    def present() -> set[str]:
        return {n.name for n in plugbay_docker.networks.list() if n.name in could_make}

    before = present() | {ISOLATED_NETWORK}  # tcp makes it if it is not there: its own, not the caller's
    runner = DockerRunner(BASE, transport=transport, network=network, entrypoint=["sleep", "30"],
                          extra_create_args={"network": missing})
    try:
        with pytest.raises(RunnerError, match=rf"network {missing} not found"):
            runner.start(LaunchSpec(env={}))
    finally:
        runner.kill()
        made = present() - before
        for name in made:  # (networks.list(names=[]) would list them all)
            plugbay_docker.networks.get(name).remove()
    assert not made


def test_a_network_of_the_unix_transport_is_refused_not_dropped() -> None:
    # network= is the tcp transport's; with unix it was dropped without a word and the plugin ran with no
    # network (PluginContainer refuses the same). The default and None stay accepted for either transport.
    # Its advice is PluginContainer's: it recommended extra_create_args={'network': ...}, which PluginContainer
    # refuses for the unix transport (one advice for the same mistake)
    with pytest.raises(ConfigError, match=r"^DockerRunner\(transport='unix'\) runs the plugin with no network, but"
                       r" network='my-plugins' asks for one; use transport='tcp' for a plugin that needs a network$"):
        DockerRunner(BASE, network="my-plugins")
    assert DockerRunner(BASE, transport="tcp", network="my-plugins").network == "my-plugins"
    for network in (ISOLATED_NETWORK, None):
        assert DockerRunner(BASE, network=network).network == network


def test_bad_limit_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="give cpus= or nano_cpus=, not both"):
        DockerRunner(BASE, cpus=1, nano_cpus=10)
    with pytest.raises(ConfigError, match="positive number of CPUs"):
        DockerRunner(BASE, cpus=0)
    with pytest.raises(ConfigError, match="absolute container paths, got 'tmp'"):
        DockerRunner(BASE, writable_dirs=("tmp",))


@pytest.mark.parametrize("kwargs", [{"writable_dirs": ("/tmp", "/plugbay/sock")},
                                    {"tmpfs": {"/plugbay/sock/": "size=1m"}},
                                    {"writable_dirs": ("/plugbay/sock/cache",)}, {"tmpfs": {"//plugbay/./sock": ""}}])
def test_a_tmpfs_over_the_unix_socket_folder_is_refused(kwargs: dict[str, Any]) -> None:
    # a tmpfs at /plugbay/sock hid the bind-mounted socket folder: the start failed with a MalformedHandshakeError
    # naming a socket the host could not see (one inside it made a root-owned folder in the host's)
    with pytest.raises(ConfigError, match="would cover the unix transport's socket folder, bind-mounted at"
                                          " /plugbay/sock .*choose a path outside it, or use transport='tcp'"):
        DockerRunner(BASE, **kwargs)
    DockerRunner(BASE, transport="tcp", **kwargs)  # no socket folder to cover


def test_a_tmpfs_above_the_unix_socket_folder_leaves_it_reachable(plugbay_docker: Any) -> None:
    # the engine mounts the deeper bind mount over a tmpfs at /plugbay: not refused, and the plugin is reached
    serve = ("import os, socket, time; p = os.environ['PLUGIN_UNIX_SOCKET_DIR'] + '/p.sock'; s = socket.socket("
             "socket.AF_UNIX); s.bind(p); s.listen(); print('1|1|unix|%s|grpc' % p, flush=True); s.accept()[0].close()")
    runner = DockerRunner(BASE, writable_dirs=("/tmp", "/plugbay"), entrypoint=["python3", "-c", serve])
    runner.start(LaunchSpec(env={}))
    try:
        network, address = next(iter(runner.stdout_lines())).split("|")[2:4]
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(10)
            conn.connect(runner.plugin_to_host(network, address)[1])
        assert runner.wait(30) == 0, runner.diagnose()
    finally:
        runner.kill()


def test_root_socket_group_that_is_a_host_group_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0 or not Path("/usr/bin/unshare").exists():
        pytest.skip("needs root and unshare to give a private mount namespace its own /etc/group")
    group = tmp_path / "group"
    group.write_text(Path("/etc/group").read_text() + "plugins-team:x:10001:alice\n")
    code = ("from plugbay.runners.docker.engine import root_socket_gid\n"
            "try:\n    root_socket_gid()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run(["unshare", "-m", "sh", "-c", f'mount --bind "{group}" /etc/group && exec'
                          f' "{sys.executable}" -c "$0"', code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert out.stdout.startswith("ConfigError"), out.stderr
    assert "host group 'plugins-team'" in out.stdout and "socket_gid=" in out.stdout
    from plugbay.runners.docker.engine import root_socket_gid

    assert root_socket_gid() == 10001  # this machine has no such group
