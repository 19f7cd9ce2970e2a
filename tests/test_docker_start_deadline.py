"""A DockerRunner start within the Client's start_timeout (LaunchSpec.deadline).

engine_timeout bounds one engine request; a start makes several. Against a stand-in engine
(tests/docker_standin.py) that stalls one of them, a Client start ends at its start_timeout with a
HandshakeTimeoutError naming the request (SecureConfig's image check before start() too), though
engine_timeout is far longer, and leaves no container; the real engine still starts a plugin, and
refuses nothing for a deadline it meets.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from plugbay import SecureConfig
from plugbay.core.host.client import Client, ClientConfig
from plugbay.errors import EngineUnavailableError, HandshakeTimeoutError
from plugbay.runners.base import LaunchSpec, starting_until
from plugbay.runners.docker import DockerRunner, unanswered
from tests.docker_standin import SILENT, Answer, Reply, StandinEngine, standin  # noqa: F401
from tests.leakcheck import _pipes_and_sockets
from tests.thread_util import until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

Standin = Callable[[Answer], StandinEngine]
CID = "d" * 64
IMAGE = {"Id": "sha256:" + "1" * 64, "Config": {}, "RepoDigests": []}
CREATED = {"Id": CID, "State": {"Status": "created", "Running": False, "ExitCode": 0}}
# far longer than START: the stalled request must end at the Client's start_timeout, not at this
ENGINE_TIMEOUT = 20.0
START = 1.0


def _config(runner: DockerRunner, **kwargs: Any) -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(None)},  # type: ignore[arg-type]
                        runner=runner, **kwargs)


def _stalling(stalled: str) -> Answer:
    """An engine that answers a start's requests (the image, the create, the start, an inspect, a
    removal) at once, but the ``stalled`` one never (until the stand-in closes)."""
    def answer(method: str, path: str) -> Reply:
        if path.startswith("/images/"):
            return SILENT if stalled == "image" else (200, IMAGE)
        if path == "/containers/create":
            return SILENT if stalled == "create" else (201, {"Id": CID, "Warnings": []})
        if path == f"/containers/{CID}/start":
            return SILENT
        if method == "DELETE":
            return 204, None
        if path == f"/containers/{CID}/json":
            return 200, CREATED
        return 404, {"message": "No such container"}  # the lookup by name after a create with no answer
    return answer


@pytest.mark.parametrize(("stalled", "what"), [("image", "look up the image"), ("create", "create the container"),
                                               ("start", "start the container")])
def test_a_stalled_engine_request_ends_at_the_clients_start_timeout(standin: Standin, stalled: str,
                                                                    what: str) -> None:
    engine_ = standin(_stalling(stalled))
    client = Client(_config(DockerRunner("plugbay-kv:latest", engine_timeout=ENGINE_TIMEOUT), start_timeout=START))
    try:
        with pytest.raises(HandshakeTimeoutError, match=f"start_timeout ran out while it asked .* to {what}") as info:
            client.start()
    finally:
        client.kill()
    assert isinstance(info.value, TimeoutError)
    assert not engine_._closing.is_set()  # the runner gave up, not the stand-in (its silence lasts 60 s)
    assert "raise ClientConfig.start_timeout" in str(info.value)
    if stalled == "start":  # the container made before the deadline is removed
        assert engine_.requests[-1] == ("DELETE", f"/containers/{CID}"), engine_.requests
    else:
        assert ("DELETE", f"/containers/{CID}") not in engine_.requests  # nothing was made, so nothing removed
    if stalled == "create":  # a create with no answer: what it may have made is looked up by name
        assert any(method == "GET" and path.startswith("/containers/plugbay-") for method, path in engine_.requests)


def test_a_stalled_secure_config_image_check_ends_at_the_clients_start_timeout(standin: Standin) -> None:
    """SecureConfig's image lookup (check_secure_config(), before start()) is a request of the start too."""
    engine_ = standin(_stalling("image"))
    sockets = _pipes_and_sockets()
    client = Client(_config(DockerRunner("plugbay-kv:latest", engine_timeout=ENGINE_TIMEOUT), start_timeout=START,
                            secure_config=SecureConfig(bytes(32))))
    began = time.monotonic()
    try:
        with pytest.raises(HandshakeTimeoutError, match="start_timeout ran out while it asked the Docker engine at"
                                                        " .* to look up the image, so DockerRunner for"
                                                        " 'plugbay-kv:latest' gave up starting the plugin; it"
                                                        " made no container") as info:
            client.start()
        took = time.monotonic() - began
    finally:
        client.kill()
    assert took < START + 3, took  # the old bound was the engine's default timeout (10 s), not start_timeout
    assert isinstance(info.value, TimeoutError) and "raise ClientConfig.start_timeout" in str(info.value)
    assert not engine_._closing.is_set()  # the runner gave up, not the stand-in (its silence lasts 60 s)
    assert engine_.requests == [("GET", "/images/plugbay-kv:latest/json")], engine_.requests  # no container made
    engine_.close()  # the stand-in lets go of the request it held: no socket of the start is left then
    assert until(lambda: _pipes_and_sockets().items() <= sockets.items(), 10), \
        set(_pipes_and_sockets().items()) - set(sockets.items())


def test_a_start_without_a_deadline_keeps_engine_timeout(standin: Standin) -> None:
    """A start() by hand (no Client, no deadline): its requests have the runner's engine_timeout alone."""
    engine_ = standin(_stalling("create"))
    runner = DockerRunner("plugbay-kv:latest", engine_timeout=0.5)
    with pytest.raises(EngineUnavailableError, match="did not answer within 0.5 s when asked to create the container"):
        runner.start(LaunchSpec(env={}))
    assert ("POST", "/containers/create") in engine_.requests


def _late_create_watches() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("plugbay-late-create-")]


def test_a_cut_create_whose_look_up_a_hung_engine_never_answers_starts_no_watch(
        standin: Standin, caplog: pytest.LogCaptureFixture) -> None:
    """The create cut at start_timeout, the engine (hung) answers neither it nor the look-up by name that
    follows: that look-up took engine_timeout, so the create's answer was due when it gave up. No watch
    thread starts then (it would ask a hung engine once more, and a kill() would wait for it); the failure
    is warned of by the time start() has failed."""
    lookup = 2.0  # engine_timeout: the look-up's bound, longer than START (the create is cut before it)

    def answer(method: str, path: str) -> Reply:
        if method == "GET" and path.startswith("/containers/plugbay-"):
            return SILENT  # the look-up by name
        return _stalling("create")(method, path)

    engine_ = standin(answer)
    client = Client(_config(DockerRunner("plugbay-kv:latest", engine_timeout=lookup), start_timeout=START))
    try:
        with caplog.at_level(logging.WARNING, logger="plugbay.runners.docker"), \
                pytest.raises(HandshakeTimeoutError, match="start_timeout ran out while it asked .* to create"):
            client.start()
        looked = [path for method, path in engine_.requests if method == "GET" and path.startswith("/containers/p")]
        assert len(looked) == 1, engine_.requests  # the look-up was asked, once
        assert _late_create_watches() == [] and unanswered._watches == {}
        said = [r.getMessage() for r in caplog.records if "could not be checked or removed" in r.getMessage()]
        assert len(said) == 1 and "docker rm -f plugbay-" in said[0], said
    finally:
        client.kill()
    assert not engine_._closing.is_set()  # the runner gave up, not the stand-in (its silence lasts 60 s)
    assert ("DELETE", f"/containers/{CID}") not in engine_.requests


# --- the real engine ----------------------------------------------------------------------------

@pytest.mark.docker
def test_a_client_start_with_its_deadline_still_starts_a_container(plugbay_image: Any, plugbay_docker: Any) -> None:
    tag = plugbay_image("kv")
    with Client(_config(DockerRunner(tag, writable_dirs=("/tmp", "/data")), start_timeout=60)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("deadline", b"met")
        assert kv.get("deadline") == b"met"
        container_id = client.runner.id
        assert plugbay_docker.containers.get(container_id).status == "running"
    assert not plugbay_docker.containers.list(all=True, filters={"id": container_id})


@pytest.mark.docker
def test_a_deadline_already_passed_makes_no_container(plugbay_docker: Any) -> None:
    tag = f"deadline-{uuid.uuid4().hex[:8]}"
    runner = DockerRunner("plugbay-base:bookworm", entrypoint=["sleep", "60"], labels={"test.plugbay-deadline": tag})
    with pytest.raises(HandshakeTimeoutError, match="ran out before it could ask"):
        runner.start(LaunchSpec(env={}, deadline=time.monotonic()))
    runner.kill(0)
    assert not plugbay_docker.containers.list(all=True, filters={"label": f"test.plugbay-deadline={tag}"})


@pytest.mark.docker
def test_a_client_start_checks_its_secure_config_within_its_deadline(plugbay_image: Any,
                                                                     plugbay_docker: Any) -> None:
    tag = plugbay_image("kv")
    image_id = plugbay_docker.images.get(tag).id
    pinned = SecureConfig(bytes.fromhex(image_id.split(":", 1)[1]))
    with Client(_config(DockerRunner(tag, writable_dirs=("/tmp", "/data")), start_timeout=60,
                        secure_config=pinned)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("pinned", b"checked")
        assert kv.get("pinned") == b"checked"
        container_id = client.runner.id
    assert not plugbay_docker.containers.list(all=True, filters={"id": container_id})
    with starting_until(time.monotonic()), pytest.raises(HandshakeTimeoutError, match="ran out before it could ask"
                                                         " the Docker engine at .* to tell its API version, so"
                                                         " DockerRunner for .* it made no container"):
        DockerRunner(tag).check_secure_config(pinned)
