"""What a DockerRunner runs and removes is what it proved: the checked image, the proven container.

Real engine: an image name retagged between SecureConfig's check and the start, a
reattach naming the container by its name (which claim() renames), and malformed
reattach data.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from plugbay.core.host.secure import SecureConfig
from plugbay.errors import ReattachError
from plugbay.runners.base import LaunchSpec, reattach_runner
from plugbay.runners.docker import DockerRunner
from tests.docker_standin import standin  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]
BASE = "plugbay-base:bookworm"
SLEEP = ["python3", "-c", "import time; time.sleep(60)"]


def test_the_image_secure_config_checked_is_the_one_that_runs(plugbay_docker: Any, plugbay_image: Any) -> None:
    name = f"plugbay-test-checked:{uuid.uuid4().hex[:12]}"
    trusted = plugbay_docker.images.get(BASE)
    other = plugbay_docker.images.get(plugbay_image("kv"))
    assert trusted.id != other.id
    trusted.tag(name)
    runner = DockerRunner(name, entrypoint=SLEEP, transport="tcp")
    try:
        runner.check_secure_config(SecureConfig(bytes.fromhex(trusted.id.split(":", 1)[1])))
        other.tag(name)  # the name moves to another image after the check
        runner.start(LaunchSpec(env={}))
        assert plugbay_docker.api.inspect_container(runner.id)["Image"] == trusted.id
    finally:
        runner.kill(0)
        plugbay_docker.images.remove(name)


def test_a_container_reattached_by_name_is_still_removed_by_kill(plugbay_docker: Any) -> None:
    runner = DockerRunner(BASE, entrypoint=SLEEP, transport="tcp")
    runner.start(LaunchSpec(env={}))
    try:
        data = {**runner.reattach_data(), "id": runner.container_name}
        attached = reattach_runner(data)  # claims it: the container is renamed
        assert attached.id == runner.id
        attached.kill(0)
        assert not plugbay_docker.containers.list(all=True, filters={"id": runner.id}), \
            "the container outlived the kill of the runner that attached to it by name"
    finally:
        runner.kill(0)


@pytest.mark.parametrize("extra", [{"container_port": "abc"}, {"container_port": 1.5},
                                   {"container_port": 70000}, {"transport": "udp"}])
def test_malformed_container_reattach_data_is_a_reattach_error(extra: dict[str, object]) -> None:
    with pytest.raises(ReattachError, match="'container_port' a TCP port"):
        reattach_runner({"kind": "DockerRunner", "id": "x", "transport": "tcp", **extra})


@pytest.fixture
def labelled_image(plugbay_docker: Any) -> Any:
    """An image (no container) carrying plugbay's label, as anyone may build one."""
    import io

    name = f"plugbay-test-labelled:{uuid.uuid4().hex[:12]}"
    dockerfile = io.BytesIO(f"FROM {BASE}\nLABEL plugbay.managed=true\n".encode())
    plugbay_docker.images.build(fileobj=dockerfile, tag=name, rm=True, pull=False)
    yield name
    plugbay_docker.images.remove(name, force=True)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_a_reattach_id_that_walks_to_another_engine_endpoint_is_refused(labelled_image: str, transport: str) -> None:
    """The id goes into the engine request's path: '../' must not inspect an image instead of a container."""
    for bad in (f"x/../../images/{labelled_image}", "x/../../networks/bridge", "-x", "a b", "x?all=1"):
        with pytest.raises(ReattachError, match="neither a container id .* nor a container name"):
            DockerRunner.attach({"id": bad, "transport": transport}, take_ownership=False)


def test_an_engine_answer_that_is_no_container_is_a_reattach_error(standin: Any) -> None:
    # a container's inspect lacking the container's State
    standin(lambda method, path: (200, {"Id": "f" * 64, "Config": {"Labels": {"plugbay.managed": "true"}}}))
    with pytest.raises(ReattachError, match="the engine's answer for it is not a container's"):
        DockerRunner.attach({"id": "f" * 64, "transport": "tcp"}, take_ownership=False)


@pytest.mark.parametrize("image", ["evil@notadigest", "a@sha256:1@sha256:2", 5, "", "a b", "../x"])
def test_a_malformed_image_in_reattach_data_is_a_reattach_error(image: object) -> None:
    # it went to DockerRunner(): a ConfigError ('x@y' is a digest pin there), or into every message
    with pytest.raises(ReattachError, match="no image name"):
        DockerRunner.attach({"kind": "DockerRunner", "id": "0123456789ab", "image": image, "transport": "tcp"})


def test_a_reattached_runner_names_the_image_its_container_runs(plugbay_docker: Any) -> None:
    runner = DockerRunner(BASE, entrypoint=SLEEP, transport="tcp")
    runner.start(LaunchSpec(env={}))
    try:
        attached = DockerRunner.attach({**runner.reattach_data(), "image": "trusted/vault:1.0"},
                                       take_ownership=False)
        try:
            assert attached.name == attached.image == BASE, "the reattach data's image was taken as the runner's"
            assert attached.reattach_data()["image"] == BASE
        finally:
            attached.detach()
    finally:
        runner.kill(0)


def test_an_attach_whose_exit_watch_finds_no_engine_closes_its_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from plugbay.errors import EngineUnavailableError
    from plugbay.runners.docker import waiter

    runner_module = importlib.import_module("plugbay.runners.docker.runner")
    runner = DockerRunner(BASE, entrypoint=SLEEP, transport="tcp")
    runner.start(LaunchSpec(env={}))
    try:
        made: list[Any] = []
        closed: list[Any] = []
        real_engine = runner_module.engine

        def tracked() -> Any:
            client = real_engine()
            close = client.close
            client.close = lambda: (closed.append(client), close())
            made.append(client)
            return client

        def no_engine(timeout: float = 0.0) -> Any:  # the watch's client has the runner's engine_timeout
            raise EngineUnavailableError("the engine went away")

        monkeypatch.setattr(runner_module, "engine", tracked)
        monkeypatch.setattr(waiter, "engine", no_engine)  # the exit watch's own client
        with pytest.raises(EngineUnavailableError):
            DockerRunner.attach(runner.reattach_data(), take_ownership=False)
        assert len(made) == 1 and closed == made, "the attach left its engine client open"
    finally:
        monkeypatch.undo()
        runner.kill(0)


@pytest.mark.parametrize("host_ip", ["", "0.0.0.0", "::"])
def test_a_reattach_to_a_port_published_on_all_interfaces_is_refused(standin: Any, host_ip: str) -> None:
    """Some engines report an all-interfaces binding with HostIp "" (docker 20.10 says 127.0.0.1 for plugbay's
    own publication, 0.0.0.0 and :: for all interfaces): a container made elsewhere, published so, is reachable
    from other machines and is not the 127.0.0.1-only publication plugbay dials."""
    from plugbay.errors import RunnerError

    from plugbay.runners.docker.adopt import reattach_labels
    from plugbay.runners.reattachkey import SECRET, new_secret

    cid, key = "e" * 64, new_secret()
    inspect = {"Id": cid, "Name": "/plugbay-elsewhere",
               "State": {"Status": "running", "Running": True, "ExitCode": 0},
               "Config": {"Labels": {"plugbay.managed": "true", **reattach_labels(key, "tcp", 4000)}, "Image": BASE},
               "NetworkSettings": {"Ports": {"4000/tcp": [{"HostIp": host_ip, "HostPort": "32768"}]}}}
    standin(lambda method, path: (200, inspect) if path == f"/containers/{cid}/json" else (404, {"message": "no"}))
    with pytest.raises(RunnerError, match="published on all interfaces") as info:
        DockerRunner.attach({"id": cid, "transport": "tcp", "container_port": 4000, SECRET: key}, take_ownership=False)
    assert "127.0.0.1" in str(info.value)


def test_a_reattach_to_a_paused_container_says_to_unpause_it(plugbay_docker: Any) -> None:
    from plugbay.errors import RunnerError

    runner = DockerRunner(BASE, entrypoint=SLEEP, transport="tcp")
    runner.start(LaunchSpec(env={}))
    container = plugbay_docker.containers.get(runner.id)
    try:
        container.pause()
        with pytest.raises(RunnerError, match="is paused") as info:
            DockerRunner.attach(runner.reattach_data(), take_ownership=False)
        text = str(info.value)
        assert f"docker unpause {runner.id[:12]}" in text and "exit code" not in text, text
    finally:
        container.reload()
        if container.status == "paused":
            container.unpause()
        runner.kill(0)
