"""pytest fixtures for tests that run plugins as pods on the stand-in (import them into a test module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .runtime import docker_available
from .server import StandIn


def need_docker() -> None:
    if not docker_available():
        pytest.skip("no Docker engine is running: the pod images cannot run (start dockerd)")


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    need_docker()
    server = StandIn(runtime="docker").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[StandIn]:
    """A stand-in of the test's own, running pods as processes, its kubeconfig in tmp_path/kubeconfig.yaml.
    Stopping it also ends what it was told to stall or delay: allow_all() first answers stalled requests."""
    standin = StandIn(runtime="process").start()
    standin.write_kubeconfig(str(tmp_path / "kubeconfig.yaml"))
    try:
        yield standin
    finally:
        standin.allow_all()
        standin.stop()


@pytest.fixture()
def kubeconfig(standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real kubeconfig file for the stand-in, also $KUBECONFIG (a reattach uses the host's own
    configuration, never the one its data names); knobs are reset after each test."""
    path = standin.write_kubeconfig(str(tmp_path / "kubeconfig.yaml"))
    monkeypatch.setenv("KUBECONFIG", path)
    yield path
    standin.allow_all()
    standin.store.start_delay = 0.0
    standin.drop_next_data = 0


@pytest.fixture(scope="module")
def testapp() -> str:
    need_docker()
    from .images import testapp_image

    return testapp_image()


@pytest.fixture(scope="module")
def kvtrap() -> str:
    need_docker()
    from .images import kvtrap_image

    return kvtrap_image()
