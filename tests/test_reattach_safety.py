"""Reattach data is untrusted: a failed reattach signals or deletes nothing plugbay cannot prove it made."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.race_util import pid_alive
from tests.resilience_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, faulty_config

from plugbay import (Client, ClientConfig, ConfigError, ReattachConfig, ReattachError, RunnerError,  # noqa: I001
                     Supervisor, UnprovenAddressError)
from plugbay.core.protocol.handshake import HandshakeInfo
from plugbay.runners.base import LaunchSpec, reattach_runner
from plugbay.runners.attached import _start_time
from plugbay.runners.process import AttachedProcess, ProcessRunner


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not a plugin (a reattach JSON might name it)."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def _reattach(pid: int, tmp_path: Path, **runner: object) -> ReattachConfig:
    info = HandshakeInfo(1, 1, "unix", str(tmp_path / "no-such.sock"))
    return ReattachConfig(handshake=info, runner={"kind": "ProcessRunner", "pid": pid, **runner})


@pytest.mark.parametrize("extra", [{}, {"start_time": "real"}, {"start_time": "real", "plugin_id": "f00"}])
def test_a_failed_reattach_leaves_a_process_that_is_not_the_plugin_alone(
        bystander: subprocess.Popen[bytes], tmp_path: Path, extra: dict[str, object]) -> None:
    if extra.get("start_time") == "real":
        extra = {**extra, "start_time": _start_time(bystander.pid)}
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS,
                                 reattach=_reattach(bystander.pid, tmp_path, **extra)))
    with pytest.raises(ReattachError, match=rf"cannot reattach to process {bystander.pid}: .*"
                       r"cannot prove it started it .*leaves it alone.*reattach_config\(\)\.to_json\(\)"):
        client.start()
    client.kill()
    assert bystander.poll() is None, "the bystander was killed"


def test_a_live_pid_started_at_another_time_is_a_reattach_error_and_still_a_runner_error(
        bystander: subprocess.Popen[bytes], tmp_path: Path) -> None:
    # the plugin's pid now another process's (its start time differs): a bare RunnerError, where the
    # README's table and host-side.md promise ReattachError for a process plugbay cannot prove is the plugin
    reattach = _reattach(bystander.pid, tmp_path, start_time=_start_time(bystander.pid) - 1, plugin_id="f00")
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=reattach))
    with pytest.raises(ReattachError, match=rf"plugin process {bystander.pid} is no longer running .*pid was"
                       " reused") as info:
        client.start()
    assert isinstance(info.value, RunnerError)  # as before: the command line's 'unreachable' (exit 3)
    client.kill()
    assert bystander.poll() is None, "the bystander was killed"


def test_supervisor_reattach_fallback_leaves_the_named_process_alone(
        bystander: subprocess.Popen[bytes], tmp_path: Path) -> None:
    reattach = _reattach(bystander.pid, tmp_path, start_time=_start_time(bystander.pid))
    with Supervisor(lambda: faulty_config(tmp_path), reattach=reattach, health_interval=None) as sup:
        assert [e.kind for e in sup.events][:2] == ["reattach_failed", "started"]
        assert "ReattachError" in sup.events[0].detail
        sup.dispense(PLUGIN_NAME).put("a", b"1")
    assert bystander.poll() is None, "the bystander was killed"


@pytest.mark.parametrize("pid", [-1, 0, 1])
def test_reattach_refuses_pids_that_signal_groups_or_init(pid: int, tmp_path: Path) -> None:
    with pytest.raises(ReattachError, match=f"names pid {pid}, which is no plugin's"):
        reattach_runner({"kind": "ProcessRunner", "pid": pid, "start_time": 1, "plugin_id": "x"})


@pytest.mark.parametrize("as_json", ['"{pid}"', "{pid}.0", "true", "null"])
def test_a_pid_of_the_wrong_type_is_a_reattach_error(as_json: str, bystander: subprocess.Popen[bytes],
                                                   tmp_path: Path) -> None:
    text = _reattach(bystander.pid, tmp_path, start_time=_start_time(bystander.pid)).to_json()
    forged = text.replace(f'"pid": {bystander.pid}', '"pid": ' + as_json.format(pid=bystander.pid))
    assert forged != text
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=ReattachConfig.from_json(forged)))
    try:
        with pytest.raises(ReattachError, match="needs an integer 'pid'"):
            client.start()
    finally:
        client.kill()
    assert bystander.poll() is None


def test_attached_kill_checks_the_marker_again(bystander: subprocess.Popen[bytes]) -> None:
    attached = AttachedProcess(bystander.pid, _start_time(bystander.pid), "sleep", "not-its-id")
    with pytest.raises(ReattachError, match=rf"not killing process {bystander.pid}: .*does not carry"
                       r" PLUGBAY_PLUGIN_ID='not-its-id'.*stop that process yourself"):
        attached.kill(0)
    assert bystander.poll() is None


def test_a_proven_plugin_is_reattached_and_killed() -> None:
    runner = ProcessRunner(["sleep", "60"])
    runner.start(LaunchSpec(env={}))
    try:
        data = runner.reattach_data()
        assert data["plugin_id"] == runner.plugin_id and len(runner.plugin_id) == 32
        attached = reattach_runner(data)
        attached.kill(0.2)
        assert runner.wait(5) is not None
    finally:
        runner.kill(0)


@pytest.mark.parametrize("ends", ["exits", "exits-and-is-reaped", "obeys-sigterm"])
def test_a_reattached_kill_ends_the_group_the_plugin_led_once_it_is_gone(ends: str) -> None:
    # the helper runs with an environment of its own (no PLUGBAY_PLUGIN_ID) in the plugin's group, is no
    # descendant of the plugin's (its parent, a subshell, exits) and ignores SIGTERM: only the group's
    # SIGKILL reaches it, as ProcessRunner.kill() sends
    runner = ProcessRunner(["sh", "-c", "(env -i /bin/sh -c 'trap \"\" TERM; exec sleep 60' & echo $!);"
                                        " exec sleep 60"])
    runner.start(LaunchSpec(env={}))
    helper = 0
    try:
        helper, leader = int(next(runner.stdout_lines())), runner.pid
        assert leader is not None and os.getpgid(helper) == leader
        attached = reattach_runner(runner.reattach_data())
        if ends != "obeys-sigterm":  # it ended by itself, as after the Shutdown that Client.kill() asks first
            os.kill(leader, signal.SIGKILL)
            _until(lambda: not pid_alive(leader))  # a zombie of the host that started it
            if ends == "exits-and-is-reaped":
                assert runner.wait(5) is not None
        attached.kill(0.5)
        assert _until(lambda: not pid_alive(helper)), "the plugin's helper was orphaned"
    finally:
        runner.kill(0)
        if helper and pid_alive(helper):
            os.kill(helper, signal.SIGKILL)


def _until(done: Callable[[], bool], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not done() and time.monotonic() < deadline:
        time.sleep(0.02)
    return done()


@pytest.mark.parametrize("field, bad", [
    ("key_pem", "garbage"),
    ("cert_pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
    ("key_pem", "other"),  # a real key, not the certificate's
])
def test_a_client_cert_that_is_no_certificate_and_key_is_refused_at_once(tmp_path: Path, field: str,
                                                                         bad: str) -> None:
    import json

    from plugbay.core.protocol.tls import generate_cert

    first = Client(faulty_config(tmp_path, auto_mtls=True))
    first.start()
    try:
        data = json.loads(first.reattach_config().to_json())
        data["client_cert"][field] = generate_cert().key_pem.decode() if bad == "other" else bad
        with pytest.raises(ConfigError, match="client_cert is not a usable certificate and matching private"
                                              " key.*to_json\\(\\) produced"):
            # refused as it is read, before any Client or start (the old code got to start() and waited out
            # its start_timeout): no wall clock needed to tell
            ReattachConfig.from_dict(data)
        assert first.runner.wait(0) is None
    finally:
        first.kill()


def test_a_reattach_whose_address_is_not_the_proven_plugins_dials_nothing(tmp_path: Path) -> None:
    # The JSON's pid and plugin id are real, its address another server's: that server (started by hand,
    # not by plugbay) must get no call, and above all not the kill's Shutdown.
    import os
    import sys

    from tests.resilience_util import FAULTY, PY

    other_dir = tmp_path / "other"
    other_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
    env.update({"BASIC_PLUGIN": "hello", "PLUGIN_PROTOCOL_VERSIONS": "1", "PLUGIN_MIN_PORT": "10000",
                "PLUGIN_MAX_PORT": "25000", "PLUGIN_UNIX_SOCKET_DIR": str(other_dir),
                "PYTHONPATH": os.pathsep.join(sys.path)})
    other = subprocess.Popen([PY, FAULTY], env=env, cwd=other_dir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert other.stdout is not None
        line = other.stdout.readline().decode()
        _, _, network, address = line.split("|")[:4]
        with Client(faulty_config(tmp_path)) as owner:
            owner.dispense(PLUGIN_NAME).put("a", b"1")
            data = owner.reattach_config()
            forged = ReattachConfig(handshake=data.handshake.with_address(network, address), runner=data.runner)
            thief = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=forged))
            with pytest.raises(ReattachError, match=rf"names {network} address .* does not listen there") as refused:
                thief.start()
            # the way out is one that works: a new Client proves what it starts (before: a bare "start it again")
            assert "stop it and start it again from a Client of your own" in str(refused.value), refused.value
            thief.close()
            # the real address of the same JSON is the plugin's own: that reattach works
            with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=data)) as again:
                assert again.dispense(PLUGIN_NAME).get("a") == b"1"
                again.close()
        assert other.poll() is None, "the server the forged JSON named was stopped"
    finally:
        other.kill()
        other.wait(10)


def test_a_unix_server_the_reattach_data_names_gets_no_connection(tmp_path: Path) -> None:
    # the proof that the plugin holds the listening socket comes before any connect to the path: an
    # unrelated server named by reattach data was connected to (to ask its peer's pid), then refused
    import socket
    import sys

    path = str(tmp_path / "someone-elses.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)
    server.setblocking(False)
    plugin = ProcessRunner([sys.executable, "-c", "import socket, time; s = socket.socket();"
                            " s.bind(('127.0.0.1', 0)); s.listen(); print('up', flush=True); time.sleep(30)"])
    plugin.start(LaunchSpec(env={}))
    try:
        assert next(iter(plugin.stdout_lines())) == "up"
        attached = reattach_runner(plugin.reattach_data())  # a real plugin process, proven
        try:
            with pytest.raises(ReattachError):
                attached.plugin_to_host("unix", path)
        finally:
            attached.detach()
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    finally:
        plugin.kill(0)
        server.close()


def test_listeners_are_found_by_socket_inode_in_the_process_own_tables(tmp_path: Path) -> None:
    import os
    import socket

    from plugbay.runners.base import NOT_LISTENING
    from plugbay.runners.listeners import listens_on
    from plugbay.runners.ownsocket import unix_listener_why

    me = [os.getpid()]
    with socket.socket() as tcp, socket.socket(socket.AF_INET6) as tcp6, \
            socket.socket(socket.AF_UNIX) as unix, socket.socket() as idle:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        tcp6.bind(("::1", 0))
        tcp6.listen()
        unix.bind(str(tmp_path / "s.sock"))
        unix.listen()
        idle.bind(("127.0.0.1", 0))  # bound, not listening
        port, port6, idle_port = tcp.getsockname()[1], tcp6.getsockname()[1], idle.getsockname()[1]
        assert listens_on(me, "tcp", f"127.0.0.1:{port}")
        assert listens_on(me, "tcp", f"[::1]:{port6}")
        # a unix path: the runners' proof by the socket on its file (the kernel's tables name the bound path only)
        assert unix_listener_why(str(tmp_path / "s.sock"), None, os.getpid(), _start_time(os.getpid())) is None
        assert not listens_on(me, "tcp", f"127.0.0.1:{idle_port}")
        assert not listens_on(me, "tcp", f"127.0.0.2:{port}")  # bound to 127.0.0.1 only
        assert unix_listener_why(str(tmp_path / "other.sock"), None, os.getpid(),
                                 _start_time(os.getpid())) == NOT_LISTENING
        assert not listens_on(me, "tcp", "not-an-address")
        with subprocess.Popen(["sleep", "30"]) as sleeper:  # listens nowhere: holds none of these sockets
            try:
                assert not listens_on([sleeper.pid], "tcp", f"127.0.0.1:{port}")
                why = unix_listener_why(str(tmp_path / "s.sock"), None, sleeper.pid, _start_time(sleeper.pid))
                assert why is not None and f"listened on by process {os.getpid()}" in why, why
            finally:
                sleeper.kill()


def test_localhost_and_a_zoned_ipv6_address_name_their_listeners() -> None:
    # a plugin may announce "localhost:PORT" or "[::1%lo]:PORT": neither was parsed, so no listener was
    # found (its servers went unread: procstopped fell back to the leader)
    import socket

    from plugbay.runners.listeners import tcp_listeners

    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python: [::1] cannot be bound")
    with socket.socket() as tcp, socket.socket(socket.AF_INET6) as tcp6:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        try:
            tcp6.bind(("::1", 0))
        except OSError as exc:  # a host or container without IPv6 loopback
            pytest.skip(f"no IPv6 loopback here: binding [::1] failed ({exc})")
        tcp6.listen()
        port, port6 = tcp.getsockname()[1], tcp6.getsockname()[1]
        inode, inode6 = os.fstat(tcp.fileno()).st_ino, os.fstat(tcp6.fileno()).st_ino
        assert tcp_listeners(os.getpid(), f"localhost:{port}") == {inode}
        assert tcp_listeners(os.getpid(), f"LOCALHOST:{port6}") == {inode6}
        assert tcp_listeners(os.getpid(), f"[::1%lo]:{port6}") == {inode6}
        assert tcp_listeners(os.getpid(), f"[::1%lo]:{port}") == set()


_SERVER = r'''
import os, socket, sys, time
kind, where = sys.argv[1], sys.argv[2]
if kind == "unix":
    s = socket.socket(socket.AF_UNIX)
    s.bind(where)
elif kind == "tcp6only":
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::", int(where)))
else:
    s = socket.socket()
    s.bind(("127.0.0.1", int(where)))
s.listen()
print("ok", flush=True)
time.sleep(60)
'''


def _server(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    import sys

    proc = subprocess.Popen([*prefix, sys.executable, "-c", _SERVER, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ok":
        proc.kill()
        proc.wait(10)
        pytest.skip(f"could not start a listener with {prefix or args}")
    return proc


def test_a_listener_proves_only_the_address_a_dial_would_reach(tmp_path: Path) -> None:
    import os
    import socket

    from plugbay.runners.listeners import listens_on
    from plugbay.runners.ownsocket import unix_listener_why

    procs: list[subprocess.Popen[str]] = []
    try:
        # a path with a space is the plugin's whole path, not the text before the space
        spaced = tmp_path / "my plugins"
        spaced.mkdir()
        plugin = _server("unix", str(spaced / "kv.sock"))
        procs.append(plugin)
        runner = AttachedProcess(plugin.pid, _start_time(plugin.pid), name="plugin")
        runner.proven = True
        # a relative path means another file to the host than to the plugin: refused (the reattach data's, the first)
        with pytest.raises(ReattachError, match="a relative path names another file"):
            runner.plugin_to_host("unix", os.path.relpath(spaced / "kv.sock"))
        assert runner.plugin_to_host("unix", str(spaced / "kv.sock")) == ("unix", str(spaced / "kv.sock"))
        with pytest.raises(UnprovenAddressError, match="no socket listens there"):
            runner.plugin_to_host("unix", str(tmp_path / "my"))
        # a symlink to the plugin's socket is proven, and dialed as resolved then
        link = tmp_path / "link.sock"
        link.symlink_to(spaced / "kv.sock")
        assert runner.plugin_to_host("unix", str(link)) == ("unix", str(spaced / "kv.sock"))
        link.unlink()
        link.symlink_to(tmp_path / "elsewhere.sock")  # re-pointed: the proven dial does not follow it
        assert runner.plugin_to_host("unix", str(link)) == ("unix", str(spaced / "kv.sock"))
        # an IPv6-only wildcard listener does not prove 127.0.0.1:P, which another process holds
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        v6 = _server("tcp6only", port)
        procs.append(v6)
        other = _server("tcp", port)
        procs.append(other)
        assert listens_on([other.pid], "tcp", f"127.0.0.1:{port}")
        assert not listens_on([v6.pid], "tcp", f"127.0.0.1:{port}")
        with pytest.raises(ReattachError, match="does not listen there"):
            attached = AttachedProcess(v6.pid, name="plugin")
            attached.proven = True
            attached.plugin_to_host("tcp", f"127.0.0.1:{port}")
        # a wildcard listener proves this machine's addresses, never another host's
        with socket.socket() as wild:
            wild.bind(("0.0.0.0", 0))
            wild.listen()
            wild_port = wild.getsockname()[1]
            assert listens_on([os.getpid()], "tcp", f"127.0.0.1:{wild_port}")
            assert not listens_on([os.getpid()], "tcp", f"192.0.2.10:{wild_port}")  # TEST-NET-1: not ours
        # another server's socket renamed onto the plugin's path: the table still names the path, the
        # listener behind it is not the plugin's
        other_unix = _server("unix", str(tmp_path / "other.sock"))
        procs.append(other_unix)
        os.replace(tmp_path / "other.sock", spaced / "kv.sock")
        why = unix_listener_why(str(spaced / "kv.sock"), None, plugin.pid, _start_time(plugin.pid))
        assert why is not None and f"listened on by process {other_unix.pid}" in why, why
        # a listener in another network namespace: its 127.0.0.1 is not this host's
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        apart = _server("tcp", port, prefix=("unshare", "-n"))
        procs.append(apart)
        assert not listens_on([apart.pid], "tcp", f"127.0.0.1:{port}")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
