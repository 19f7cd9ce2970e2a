"""A DockerRunner started on a named network, for the tests of plugbay's own networks (hardening, sweep), and
starts racing a loop of sweeps."""

from __future__ import annotations

import threading
import time
from typing import Any

from docker.errors import NotFound

from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner, sweep_networks

BASE = "plugbay-base:bookworm"


def start_on(name: str, seconds: int = 60) -> DockerRunner:
    """A runner whose container sleeps ``seconds`` on network ``name`` (made if missing); killed if its start fails."""
    runner = DockerRunner(BASE, transport="tcp", network=name, entrypoint=["sleep", str(seconds)])
    try:
        runner.start(LaunchSpec(env={}))
    except BaseException:
        runner.kill()
        raise
    return runner


def starts_racing_sweeps(client: Any, names: list[str], grace: float) -> tuple[list[BaseException | None], list[str]]:
    """Start (and kill) a runner on each network name in turn while a thread sweeps those names' networks one
    sweep after another with ``grace``: each start's error (None: it started) and the ids the sweeps removed."""
    stop = threading.Event()
    swept: list[str] = []

    def sweeping() -> None:
        deadline = time.monotonic() + 240  # a bound, should the starts hang
        while not stop.is_set() and time.monotonic() < deadline:
            swept.extend(sweep_networks(client=client, names=names, grace=grace))

    sweeper = threading.Thread(target=sweeping, name="plugbay-test-sweep-loop")
    sweeper.start()
    outcomes: list[BaseException | None] = []
    try:
        for name in names:
            runner = DockerRunner(BASE, transport="tcp", network=name, entrypoint=["sleep", "60"])
            try:
                runner.start(LaunchSpec(env={}))
                outcomes.append(None)
            except Exception as exc:  # noqa: BLE001  (the outcome the caller judges)
                outcomes.append(exc)
            finally:
                runner.kill()
    finally:
        stop.set()
        sweeper.join(60)
    assert not sweeper.is_alive()
    return outcomes, swept


def named_networks(docker: Any, name: str) -> list[Any]:
    """The engine's networks called exactly ``name`` (its name filter matches parts of names too)."""
    return [net for net in docker.networks.list(names=[name]) if net.name == name]


def remove_networks(docker: Any, names: list[str]) -> None:
    """Remove the networks a test made, by name, those already gone too."""
    for name in names:
        for net in named_networks(docker, name):
            try:
                net.remove()
            except NotFound:
                pass
