"""What PluginContainer asks the engine: never a pull, and no network for the unix transport.

A stand-in engine (tests/docker_standin.py, answering as tests/plugincontainer_answers.py says)
records the requests; it accepts the container create and refuses the start, so no real
container is made.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE  # noqa: E402

from plugbay.errors import ConfigError, ImageNotFoundError, RunnerError  # noqa: E402
from tests.docker_standin import StandinEngine  # noqa: E402
from tests.plugincontainer_answers import container_engine, creates, pulls  # noqa: E402

pytest.importorskip("testcontainers")
from plugbay.testing import PluginContainer  # noqa: E402


@pytest.fixture(autouse=True)
def _no_ryuk(monkeypatch: pytest.MonkeyPatch) -> None:
    from testcontainers.core.config import testcontainers_config

    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)  # Ryuk's image would be pulled


def test_a_missing_image_is_never_pulled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # testcontainers' create() pulled an image the engine lacked, and its failure was a docker SDK error
    engine = container_engine(str(tmp_path / "engine.sock"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{engine.path}")
    try:
        container = PluginContainer("plugbay-missing:latest", HANDSHAKE)
        with pytest.raises(ImageNotFoundError, match="'plugbay-missing:latest' is not on the Docker engine") as info:
            container.start()
        assert "python -m plugbay.images" in str(info.value) and "plugbay never pulls" in str(info.value)
        assert pulls(engine) == []
        assert creates(engine) == []
    finally:
        engine.close()


def _in_a_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[StandinEngine, dict[str, Any]]:
    """The engine, and the client arguments that reach it, with the tests seemingly run inside a
    container on network "ci-net" (docker-out-of-docker CI: DOCKER_HOST unset)."""
    import testcontainers.core.docker_client as tc_client
    from testcontainers.core import utils

    import plugbay.testing.container as module

    engine = container_engine(str(tmp_path / "engine.sock"), ["plugbay-kv:latest"], running_in="ci-net")
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(tc_client, "get_docker_host", lambda: None)
    monkeypatch.setattr(module, "get_docker_host", lambda: None, raising=False)  # unused before the fix
    monkeypatch.setattr(utils, "get_running_in_container_id", lambda: "deadbeef")
    return engine, {"version": "1.41", "environment": {"DOCKER_HOST": f"unix://{engine.path}"}}


def test_an_engine_refusal_is_a_runner_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the engine's refusal (the stand-in refuses every start) was docker's raw APIError
    engine = container_engine(str(tmp_path / "engine.sock"), ["plugbay-kv:latest"])
    monkeypatch.setenv("DOCKER_HOST", f"unix://{engine.path}")
    try:
        container = PluginContainer("plugbay-kv:latest", HANDSHAKE, transport="unix")
        for _ in range(2):  # and again: each start maps its own socket folder only
            with pytest.raises(RunnerError, match="the Docker engine refused to run '.+': stand-in engine: refusing"):
                container.start()
        binds = [body["HostConfig"]["Binds"] for body in creates(engine)]
        assert len(binds) == 2 and all(len(one) == 1 and one[0].endswith(":/plugbay/sock:rw") for one in binds)
        assert binds[0] != binds[1] and container.volumes == {}
    finally:
        engine.close()


def test_the_engine_keeps_a_bounded_log_as_dockerrunners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # PluginContainer set no log_config: the engine kept all a plugin wrote, on the host's disk
    engine = container_engine(str(tmp_path / "engine.sock"), ["plugbay-kv:latest"])
    monkeypatch.setenv("DOCKER_HOST", f"unix://{engine.path}")
    try:
        with pytest.raises(RunnerError, match="refusing to start"):
            PluginContainer("plugbay-kv:latest", HANDSHAKE).start()
        assert creates(engine)[0]["HostConfig"]["LogConfig"] == {"Type": "json-file",
                                                                  "Config": {"max-size": "10m", "max-file": "3"}}
    finally:
        engine.close()


def test_the_unix_transport_stays_off_the_network_inside_a_container(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # testcontainers added network=<the CI container's network>, which overrides network_mode="none"
    engine, client_kw = _in_a_container(tmp_path, monkeypatch)
    try:
        container = PluginContainer("plugbay-kv:latest", HANDSHAKE, transport="unix", docker_client_kw=client_kw)
        with pytest.raises(Exception, match="refusing to start"):  # the stand-in's answer to the start
            container.start()
        assert len(creates(engine)) == 1
        assert creates(engine)[0]["HostConfig"]["NetworkMode"] == "none"
        assert not creates(engine)[0].get("NetworkingConfig")
    finally:
        engine.close()


@pytest.mark.parametrize("asks", [{"network": "ci-net"}, {"network_mode": "bridge"}, {"networking_config": {"n": {}}},
                                  "with_network"])
def test_the_unix_transport_refuses_a_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asks: Any) -> None:
    engine, client_kw = _in_a_container(tmp_path, monkeypatch)
    try:
        container = PluginContainer("plugbay-kv:latest", HANDSHAKE, transport="unix", docker_client_kw=client_kw)
        if asks == "with_network":
            from testcontainers.core.network import Network

            container.with_network(Network())  # never created: the refusal comes first
        else:
            container.with_kwargs(**asks)
        with pytest.raises(ConfigError, match=r"transport='unix'\) runs the plugin with no network"):
            container.start()
        assert creates(engine) == []
    finally:
        engine.close()


def test_the_unix_transport_takes_a_network_mode_that_asks_for_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, client_kw = _in_a_container(tmp_path, monkeypatch)
    try:
        container = PluginContainer("plugbay-kv:latest", HANDSHAKE, transport="unix", docker_client_kw=client_kw)
        container.with_kwargs(network_mode=None, network=None)  # None is docker-py's "not given", not a network
        with pytest.raises(Exception, match="refusing to start"):
            container.start()
        assert creates(engine)[0]["HostConfig"]["NetworkMode"] == "none"
    finally:
        engine.close()


def test_stop_waits_for_the_container_a_cut_create_made_late(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine drops the create's connection and makes the container all the same, a moment later than
    the look-up by name that follows: the late-create watch removes it. start() stops the container it
    failed to start; that stop() returned before the watch removed it (the watch lasts up to the client's
    timeout, 60 s by default), as DockerRunner's kill() waits for it."""
    from tests.docker_standin import DROP, Reply
    from tests.plugincontainer_answers import container_answers

    late, made_id = 1.0, "e" * 64  # the container shows up this long after the create
    usual = container_answers(["plugbay-kv:latest"])
    created: list[float] = []
    engine: StandinEngine | None = None

    def answer(method: str, path: str) -> Reply:
        assert engine is not None
        if method == "POST" and path == "/containers/create":
            created.append(time.monotonic())
            return DROP
        if method == "GET" and path.startswith("/containers/plugbay-tc-"):
            if time.monotonic() - created[0] < late:
                return 404, {"message": "No such container"}
            labels = creates(engine)[0]["Labels"]
            return 200, {"Id": made_id, "Name": path.split("/")[2], "Config": {"Labels": labels}}
        return usual(method, path)

    engine = StandinEngine(tmp_path / "engine.sock", answer)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{engine.path}")
    try:
        container = PluginContainer("plugbay-kv:latest", HANDSHAKE, transport="unix",
                                    docker_client_kw={"version": "auto", "timeout": 10})
        with pytest.raises(RunnerError, match="Docker engine"):
            container.start()
        assert ("DELETE", f"/containers/{made_id}") in engine.requests, engine.requests
        assert not [t.name for t in threading.enumerate() if t.name.startswith("plugbay-late-create-")]
    finally:
        engine.close()
