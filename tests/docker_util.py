"""A DockerRunner started on a named network, for the tests of plugbay's own networks (hardening, sweep)."""

from __future__ import annotations

from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner

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
