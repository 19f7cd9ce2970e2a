"""Answers of a stand-in engine (tests/docker_standin.py) for what PluginContainer asks.

It knows the images in ``images`` (any other is the engine's 404 "No such image"), refuses a
pull (no registry here), accepts a container create and refuses the start, so a PluginContainer's
start() ends right after the create the test looks at. No real container is made.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.docker_standin import Answer, Reply, StandinEngine

CONTAINER_ID = "c" * 64


def container_answers(images: Iterable[str] = (), *, running_in: str | None = None) -> Answer:
    """``running_in``: the network of container "deadbeef" (the tests' own, when a test pretends to
    run inside a container)."""
    known = set(images)

    def answer(method: str, path: str) -> Reply:
        if method == "GET" and path == "/info":  # a stand-in tells no engine ID: its records name no engine
            return 404, {"message": "stand-in engine: no /info"}
        if method == "GET" and path == "/containers/json":
            return 200, [{"Id": "deadbeef", "HostConfig": {"NetworkMode": running_in or "default"}}]
        if method == "GET" and path.startswith("/images/"):
            name = path[len("/images/"):].rsplit("/json", 1)[0]
            if name in known:
                return 200, {"Id": "sha256:" + "1" * 64, "RepoTags": [name], "Config": {}}
            return 404, {"message": f"No such image: {name}"}
        if method == "GET" and path.startswith("/containers/"):
            return 200, {"Id": CONTAINER_ID, "Name": "/standin", "State": {"Status": "created"},
                         "Config": {"Labels": {}}}
        if method == "POST" and path == "/containers/create":
            return 201, {"Id": CONTAINER_ID, "Warnings": []}
        if method == "POST" and path == "/images/create":
            return 404, {"message": "pull access denied (stand-in engine: no registry)"}
        if method == "DELETE":
            return 204, None
        return 500, {"message": "stand-in engine: refusing to start"}

    return answer


def creates(engine: StandinEngine) -> list[dict[str, Any]]:
    """The bodies of the container creates the engine got."""
    return [json.loads(body) for method, path, body in engine.bodies if path == "/containers/create"]


def pulls(engine: StandinEngine) -> list[str]:
    return [path for method, path in engine.requests if method == "POST" and path == "/images/create"]


def container_engine(path: str, images: Iterable[str] = (), *, running_in: str | None = None) -> StandinEngine:
    return StandinEngine(Path(path), container_answers(images, running_in=running_in))
