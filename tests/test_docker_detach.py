"""A Docker container's exit watch: a host that lets go of it frees it, and an engine blip is no exit.

A reattached Client's close() detaches its runner: the blocking wait request's thread
and the engine clients go (the container keeps running). A wait request that breaks
because the engine connection dropped (tests/engine_relay.py cuts it) is not the
container's exit: the runner asks again, and reports an exit only once the container ended.
"""

from __future__ import annotations

import collections
import shutil
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from plugbay.core.host.client import Client, ClientConfig
from plugbay.core.host.reattach import ReattachConfig
from plugbay.runners.base import LaunchSpec, reattach_runner
from plugbay.runners.docker import DockerRunner
from tests.engine_relay import EngineRelay, relay  # noqa: F401  (relay is a fixture)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]
BASE = "plugbay-base:bookworm"


def _waiters(container_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"plugbay-docker-wait-{container_id[:12]}"]


def test_close_of_a_reattached_client_frees_its_exit_watch(plugbay_image: Any) -> None:
    plugins = {PLUGIN_NAME: KVPlugin()}
    runner = DockerRunner(plugbay_image("kv"), transport="tcp", writable_dirs=("/tmp", "/data"))
    first = Client(ClientConfig(handshake=HANDSHAKE, plugins=plugins, runner=runner))
    first.start()
    try:
        saved = ReattachConfig.from_json(first.reattach_config().to_json())
        for _ in range(3):
            other = Client(ClientConfig(handshake=HANDSHAKE, plugins=plugins, reattach=saved))
            other.start()
            other.dispense(PLUGIN_NAME).put("k", b"v")
            attached = other.runner
            other.close()
            assert attached.wait(0) is None  # let go of, not exited
        assert len(_waiters(runner.id)) == 1, "each closed reattach left its wait request's thread"
        assert runner.wait(0) is None
        assert first.dispense(PLUGIN_NAME).get("k") == b"v"  # the container still runs
    finally:
        first.kill()
    assert not _waiters(runner.id)


def test_a_dropped_engine_connection_is_not_the_containers_exit(relay: EngineRelay,  # noqa: F811
                                                               plugbay_docker: Any) -> None:
    tag = uuid.uuid4().hex
    runner = DockerRunner(BASE, entrypoint=["python3", "-c", "import time; time.sleep(60)"], transport="tcp")
    runner.start(LaunchSpec(env={}, labels={"plugbay.test-detach": tag}))
    try:
        assert runner.wait(0.5) is None
        relay.drop_connections()
        time.sleep(1.5)  # the broken wait request has been dealt with
        assert plugbay_docker.containers.get(runner.id).status == "running"
        assert runner.wait(1) is None, "the runner reported an exit of a container that still runs"
        plugbay_docker.api.kill(runner.id)  # now it really ends: the renewed wait says so
        assert runner.wait(15) == 137
    finally:
        runner.kill(0)
        for found in plugbay_docker.containers.list(all=True, filters={"label": f"plugbay.test-detach={tag}"}):
            found.remove(force=True, v=True)


def test_a_dropped_engine_connection_does_not_end_the_containers_output(relay: EngineRelay,  # noqa: F811
                                                                       plugbay_docker: Any) -> None:
    tag = uuid.uuid4().hex
    counter = "import itertools, time\nfor i in itertools.count():\n    print(i, flush=True)\n    time.sleep(0.1)"
    runner = DockerRunner(BASE, entrypoint=["python3", "-c", counter], transport="tcp")
    runner.start(LaunchSpec(env={}, labels={"plugbay.test-detach": tag}))
    try:
        lines = runner.stdout_lines()
        assert int(next(lines)) >= 0
        relay.drop_connections()
        time.sleep(0.5)
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.extend(int(line) for line, _ in zip(lines, range(40))),
                                  daemon=True)
        reader.start()
        reader.join(30)
        assert len(got) == 40, f"the output ended when the engine connection dropped (got {got})"
    finally:
        runner.kill(0)
        for found in plugbay_docker.containers.list(all=True, filters={"label": f"plugbay.test-detach={tag}"}):
            found.remove(force=True, v=True)


def test_a_reopened_output_repeats_no_line_and_loses_none(relay: EngineRelay,  # noqa: F811
                                                         plugbay_docker: Any) -> None:
    # A flood the engine takes in faster than the host reads it, so the connection drops with lines
    # logged but not yet sent; the container runs on, so the log is reopened
    tag, total = uuid.uuid4().hex, 20_000
    burst = ("import time\n"
             f"for i in range({total}):\n"
             "    print(i, flush=True)\n"
             "time.sleep(60)")
    runner = DockerRunner(BASE, entrypoint=["python3", "-c", burst], transport="tcp")
    runner.start(LaunchSpec(env={}, labels={"plugbay.test-detach": tag}))
    got: list[int] = []

    reader = threading.Thread(target=lambda: got.extend(int(line) for line in runner.stdout_lines()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while len(got) < total // 3 and reader.is_alive() and time.monotonic() < deadline:
            time.sleep(0.002)
        relay.drop_connections()
        while total - 1 not in got and reader.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a line repeated after the last one would have come by now
        assert total - 1 in got, f"the output stopped after {len(got)} lines (last {got[-3:]})"
        repeated = sorted(n for n, seen in collections.Counter(got).items() if seen > 1)
        lost = sorted(set(range(total)) - set(got))
        assert got == list(range(total)), f"repeated {repeated[:20]}, lost {lost[:20]} of {total}"
    finally:
        runner.kill(0)
        reader.join(10)
        for found in plugbay_docker.containers.list(all=True, filters={"label": f"plugbay.test-detach={tag}"}):
            found.remove(force=True, v=True)


def test_force_kill_removes_the_container_after_a_kill_cut_short(plugbay_docker: Any) -> None:
    # Ctrl-C inside kill()'s grace wait leaves the runner counted as killed with the container
    # still there; the Client then calls force_kill(), which must not be a no-op like a second kill()
    tag = uuid.uuid4().hex
    runner = DockerRunner(BASE, entrypoint=["python3", "-c", "import time; time.sleep(60)"], transport="tcp")
    runner.start(LaunchSpec(env={}, labels={"plugbay.test-detach": tag}))
    try:
        with runner._lock:
            runner._killed = True  # where an interrupted kill() leaves it
        runner.kill(0)
        assert plugbay_docker.containers.get(runner.id).status == "running"  # the guard: nothing done
        runner.force_kill()
        assert not plugbay_docker.containers.list(all=True, filters={"label": f"plugbay.test-detach={tag}"})
    finally:
        runner.force_kill()
        for found in plugbay_docker.containers.list(all=True, filters={"label": f"plugbay.test-detach={tag}"}):
            found.remove(force=True, v=True)


@pytest.mark.parametrize("proof", ["kept", "marker replaced"])
def test_a_reattached_kill_removes_the_socket_folder_its_runner_made(tmp_path: Path, proof: str) -> None:
    # the plugin's TMPDIR is its socket folder: any temp file it writes there is the folder's
    script = "echo data > /plugbay/sock/cache.tmp; exec sleep 60"
    runner = DockerRunner(BASE, entrypoint=["sh", "-c", script])
    runner.start(LaunchSpec(env={}))
    data = runner.reattach_data()
    folder = Path(data["host_socket_dir"])
    try:
        deadline = time.monotonic() + 10
        while not (folder / "cache.tmp").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        runner.detach()
        attached = reattach_runner(data)
        attached.adopted()
        if proof == "marker replaced":  # no longer provably plugbay's folder: it is left as it is
            (folder / ".plugbay-socket-dir").write_text("another token")
            before = sorted(p.name for p in folder.iterdir())
        attached.kill(0)
        if proof == "kept":
            assert not folder.exists(), f"left behind: {sorted(p.name for p in folder.iterdir())}"
        else:
            assert sorted(p.name for p in folder.iterdir()) == before
            assert (folder / ".plugbay-socket-dir").read_text() == "another token"
    finally:
        runner.kill(0)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("swap", ["symlink", "another folder"])
def test_a_reattached_kill_touches_no_folder_put_where_the_proven_one_was(tmp_path: Path, swap: str) -> None:
    # attach() proved the folder; by kill() the path names a symlink to, or is, a folder plugbay never
    # proved: its socket and marker-named files stay (they were unlinked, the symlink followed)
    victim = tmp_path / "victim"
    victim.mkdir()
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(victim / "service.sock"))
    (victim / ".plugbay-socket-dir").write_text("someone else's")
    runner = DockerRunner(BASE, entrypoint=["sleep", "60"])
    runner.start(LaunchSpec(env={}))
    data = runner.reattach_data()
    folder = Path(data["host_socket_dir"])
    moved = tmp_path / "moved"
    try:
        runner.detach()
        attached = reattach_runner(data)
        attached.adopted()
        shutil.move(str(folder), str(moved))
        if swap == "symlink":
            folder.symlink_to(victim)
        else:
            victim.rename(folder)  # a real folder, with the socket and a marker file not plugbay's
            victim = folder
        attached.kill(0)
        assert sorted(p.name for p in victim.iterdir()) == [".plugbay-socket-dir", "service.sock"]
    finally:
        listening.close()
        runner.kill(0)
        if folder.is_symlink():
            folder.unlink()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(moved, ignore_errors=True)


def test_a_reattached_kill_leaves_a_socket_folder_the_caller_gave(tmp_path: Path) -> None:
    given = tmp_path / "given"
    given.mkdir()
    (given / "callers.txt").write_text("not plugbay's")
    runner = DockerRunner(BASE, entrypoint=["sleep", "60"])
    runner.start(LaunchSpec(env={}, socket_dir=str(given)))
    data = runner.reattach_data()
    runner.detach()
    try:
        attached = reattach_runner(data)
        attached.adopted()
        attached.kill(0)
        assert sorted(p.name for p in given.iterdir()) == ["callers.txt"]
    finally:
        runner.kill(0)


@pytest.mark.parametrize("gone", [False, True])
def test_wait_reports_the_end_a_kill_after_detach_made(plugbay_docker: Any, gone: bool) -> None:
    # detach() stops the exit watch; the kill() that removes the container records its end, as a
    # ProcessRunner's wait() after detach() and kill() returns (wait(None) blocked for ever)
    tag = uuid.uuid4().hex
    runner = DockerRunner(BASE, entrypoint=["sleep", "60"], transport="tcp")
    runner.start(LaunchSpec(env={}, labels={"plugbay.test-detach": tag}))
    try:
        runner.detach()
        assert runner.wait(0) is None  # let go of, not exited
        if gone:  # removed by someone else first: no exit code left to read
            plugbay_docker.api.remove_container(runner.id, force=True)
        runner.kill(0)
        ended: list[int | None] = []
        waiting = threading.Thread(target=lambda: ended.append(runner.wait(None)), daemon=True)
        waiting.start()
        waiting.join(10)
        assert ended == [-1 if gone else 137], "wait() did not report the end of the removed container"
        assert runner.wait(0) == ended[0]
    finally:
        runner.kill(0)
        for found in plugbay_docker.containers.list(all=True, filters={"label": f"plugbay.test-detach={tag}"}):
            found.remove(force=True, v=True)
