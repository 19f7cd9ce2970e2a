"""A Docker reattach takes the container over (its name records the new owner for sweeps) only once it held.

A reattach that fails (here: the JSON's app version is not the host's) must leave the container its
live owner's: were it renamed to the failing host's session, a sweep after that host ended would
remove a container whose starting host still runs. The failing host is another process, which
then exits, as the real case; sweep runs with dry_run only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from plugbay.core.host.client import Client, ClientConfig
from plugbay.core.host.reattach import ReattachConfig
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner, sweep
from plugbay.runners.docker.madehere import engine_identity, forget_made, record_made
from plugbay.runners.session import host_session_id

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

SLEEP = ["python3", "-c", "import time; time.sleep(60)"]

FAILING_HOST = textwrap.dedent("""
    import sys
    sys.path[:0] = [sys.argv[1] + "/src"]
    from plugbay import Client, ClientConfig, HandshakeConfig
    from plugbay.core.host.reattach import ReattachConfig
    from plugbay.errors import VersionMismatchError
    client = Client(ClientConfig(handshake=HandshakeConfig(1, "K", "V"), plugins={}, start_timeout=10,
                                 reattach=ReattachConfig.from_json(sys.stdin.read())))
    try:
        client.start()
    except VersionMismatchError:
        print("failed as expected")
""")


def test_a_failed_reattach_leaves_the_container_its_live_owners(plugbay_docker: Any) -> None:
    runner = DockerRunner("plugbay-base:bookworm", entrypoint=SLEEP, transport="tcp")
    runner.start(LaunchSpec(env={}))
    try:
        name = plugbay_docker.containers.get(runner.id).name
        text = json.dumps({"handshake": {"core_version": 1, "app_version": 99, "network": "tcp",
                                         "address": "127.0.0.1:4000", "protocol": "grpc"},
                           "runner": runner.reattach_data()})
        other = subprocess.run([sys.executable, "-c", FAILING_HOST, str(REPO)], input=text, capture_output=True,
                               text=True, timeout=120)
        assert other.stdout.strip() == "failed as expected", other.stderr
        assert plugbay_docker.containers.get(runner.id).name == name, "the failed reattach took the container"
        assert runner.id not in sweep(dry_run=True), "a sweep would remove the container of a live host"
    finally:
        runner.kill(0)


def test_a_reattach_that_held_makes_this_host_the_owner(plugbay_docker: Any, plugbay_image: Any) -> None:
    plugins = {PLUGIN_NAME: KVPlugin()}
    first = Client(ClientConfig(handshake=HANDSHAKE, plugins=plugins,
                                runner=DockerRunner(plugbay_image("kv"), transport="tcp",
                                                    writable_dirs=("/tmp", "/data"))))
    first.start()
    try:
        saved = ReattachConfig.from_json(first.reattach_config().to_json())
        before = plugbay_docker.containers.get(first.runner.id).name
        other = Client(ClientConfig(handshake=HANDSHAKE, plugins=plugins, reattach=saved))
        other.start()
        name = plugbay_docker.containers.get(first.runner.id).name
        assert f"_owner_{host_session_id()}." in name, name
        other.close()  # leaves the plugin running: the claim goes back to the host that had it before
        assert plugbay_docker.containers.get(first.runner.id).name == before
    finally:
        first.kill()


REATTACHING_HOST = textwrap.dedent("""
    import os, sys
    sys.path[:0] = [sys.argv[1] + "/src", sys.argv[1] + "/examples/kv"]
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
    from plugbay import Client, ClientConfig
    from plugbay.core.host.reattach import ReattachConfig
    import plugbay.runners.docker.runner
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(None)},
                                 reattach=ReattachConfig.from_json(sys.stdin.read())))
    print("got", client.dispense(PLUGIN_NAME).get("a").decode(), flush=True)
    if sys.argv[2] == "close":
        client.close()  # the plugin runs on
    else:
        os._exit(0)  # a host that crashed: no close(), its claim stays
""")


@pytest.mark.parametrize("leaves", ["close", "crash"])
def test_a_sweep_spares_the_starting_hosts_container_after_a_reattaching_host_exits(
        plugbay_docker: Any, plugbay_image: Any, leaves: str) -> None:
    """This process starts a plugin; another reattaches (claiming it), then closes or crashes, and exits. The
    container is still this live host's: a sweep (this process's own, or any other) must leave it."""
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(None)},
                                 runner=DockerRunner(plugbay_image("kv"), writable_dirs=("/tmp", "/data"))))
    temp = tempfile.TemporaryDirectory(prefix="fx-claim-")  # what the crashing host leaves behind goes with it
    try:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("a", b"mine")
        other = subprocess.run([sys.executable, "-c", REATTACHING_HOST, str(REPO), leaves], capture_output=True,
                               input=client.reattach_config().to_json(), text=True, timeout=120,
                               env={**os.environ, "TMPDIR": temp.name})
        assert other.stdout.strip() == "got mine", other.stderr
        claimed = "_owner_" in plugbay_docker.containers.get(client.runner.id).name
        assert claimed == (leaves == "crash"), "a close() keeps the claim, or a crash lost it"
        assert client.runner.id not in sweep(dry_run=True), "a sweep would remove the container of a live host"
        assert kv.get("a") == b"mine"
    finally:
        client.kill()
        temp.cleanup()


def test_a_name_the_user_chose_is_no_ownership_claim() -> None:
    """Only the exact suffix owner_name() writes names an owner: a user's name with '_owner_' in it is not one."""
    from plugbay.errors import ConfigError
    from plugbay.runners.session import SESSION, SESSION_START, owner_name, owner_of

    labels = {SESSION: "123-0123456789ab", SESSION_START: "456"}
    for name in ("billing_owner_team", "a_owner_1-0123456789ab.77-extra", "x_owner_1-0123456789ab.7.8",
                 "x_owner_1-0123456789ab"):
        assert owner_of(name, labels) == ("123-0123456789ab", "456"), name
    claimed = owner_name("plugbay-abc", host_session_id())
    assert owner_of(claimed, labels) == (host_session_id(), claimed.rsplit(".", 1)[1])
    assert owner_name(claimed, "9-0123456789ab") == "plugbay-abc_owner_9-0123456789ab."  # the claim is replaced
    assert owner_of("x_owner_9-0123456789ab.", labels) == ("9-0123456789ab", "")
    with pytest.raises(ConfigError, match="_owner_"):
        DockerRunner("plugbay-base:bookworm", name="billing_owner_team")


def test_a_sweep_spares_a_live_hosts_container_whatever_its_name(plugbay_docker: Any) -> None:
    runner = DockerRunner("plugbay-base:bookworm", entrypoint=SLEEP, name=f"fx-billing-{uuid.uuid4().hex[:8]}")
    runner.start(LaunchSpec(env={}))
    try:  # a name the engine or an older release gave, with '_owner_' that owner_name() did not write
        plugbay_docker.containers.get(runner.id).rename(f"fx-billing_owner_team-{uuid.uuid4().hex[:8]}")
        assert runner.id not in sweep(dry_run=True), "a sweep would remove the container of a live host"
    finally:
        runner.kill(0)


def _started_by_1_claimed_by_2(plugbay_docker: Any) -> Any:
    """A container started by session 1 (its labels) and claimed by session 2 (its name), neither of them
    a host a sweep counts live."""
    from plugbay.runners.session import MANAGED, SESSION, SESSION_START, owner_name

    labels = {MANAGED: "true", SESSION: "1-0123456789ab", SESSION_START: "1"}
    container = plugbay_docker.containers.run("plugbay-base:bookworm", SLEEP, detach=True, labels=labels,
                                              name=f"fx-claim-{uuid.uuid4().hex[:8]}", network_mode="none")
    try:
        container.rename(owner_name(container.name, "2-0123456789ab"))
        record_made(container.id, engine_identity(plugbay_docker))  # as a runner records its containers
    except BaseException:
        container.remove(force=True)
        raise
    return container


def test_a_container_claimed_after_the_sweep_listed_it_is_spared(plugbay_docker: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep decides from a listing: a host that reattached (adopted() renames the container) between
    that listing and the removal owns the container, and it stays."""
    from docker.models.containers import ContainerCollection

    from plugbay.runners.docker.adopt import claim

    container = _started_by_1_claimed_by_2(plugbay_docker)
    try:
        real_list = ContainerCollection.list

        def listed_then_claimed(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
            # only this test's container: the sweep must not judge other runs' containers on the shared engine
            found = [c for c in real_list(self, *args, **kwargs) if c.id == container.id]
            claim(plugbay_docker.containers.get(container.id))  # a reattaching host's adopted(), after the listing
            return found

        monkeypatch.setattr(ContainerCollection, "list", listed_then_claimed)
        assert container.id not in sweep(live_sessions=[host_session_id()])
        monkeypatch.undo()
        assert plugbay_docker.containers.get(container.id).status == "running", "the sweep removed a claimed container"
    finally:
        container.remove(force=True)
        forget_made(container.id)


@pytest.mark.parametrize("live", [[], ["1-0123456789ab"], ["2-0123456789ab"]])
def test_a_claimed_container_goes_only_once_both_its_hosts_are(plugbay_docker: Any, live: list[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Started by session 1 (its labels), claimed by session 2 (its name): either one alive keeps it."""
    from docker.models.containers import ContainerCollection

    container = _started_by_1_claimed_by_2(plugbay_docker)
    try:
        real_list = ContainerCollection.list
        # only this test's container: the sweep must not judge other runs' containers on the shared engine
        monkeypatch.setattr(ContainerCollection, "list", lambda self, *args, **kwargs: [
            c for c in real_list(self, *args, **kwargs) if c.id == container.id])
        removed = sweep(live_sessions=live)
        monkeypatch.undo()
        assert (container.id in removed) == (not live)
    finally:
        if container.id in {c.id for c in plugbay_docker.containers.list(all=True, filters={"id": container.id})}:
            container.remove(force=True)  # a sweep that removed it left nothing
        forget_made(container.id)
