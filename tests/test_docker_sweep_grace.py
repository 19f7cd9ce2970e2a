"""The sweep's grace: a network or image plugbay made moments ago stays, whoever is about to use it.

A runner makes its network a moment before its container's create puts the first container on it: a sweep
in that moment removed it, and sweeps one after another (a cron loop, several operators) removed the network
each start made again, which failed the start after three tries (NetworkSweptError). An image a build just
made is untagged until its tag is set, and looked left over the same way. Only what the engine says was
made at least the grace ago goes; its Created field is untrusted (one that is no timestamp: it stays).
The real engine; every sweep here is scoped to this test's networks (names=) and images (ids=), or a dry
run, and every network, container and image a test makes is removed on the way out.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from plugbay.errors import ConfigError
from plugbay.runners.docker import sweep, sweep_networks
from plugbay.runners.docker.grace import engine_time
from tests.cli_util import plugbay
from tests.docker_util import named_networks, remove_networks, start_on, starts_racing_sweeps


@contextmanager
def _networks(docker: Any) -> Iterator[list[str]]:
    """The names of the networks a test makes; all removed on the way out."""
    names: list[str] = []
    try:
        yield names
    finally:
        remove_networks(docker, names)


def _made_and_left(name: str) -> None:
    """The network ``name`` as plugbay makes it for a start, its container gone: nothing is on it."""
    start_on(name).kill()


@pytest.mark.docker
def test_a_network_made_moments_ago_stays_and_the_dry_run_says_why(plugbay_docker: Any) -> None:
    name = f"plugbay-test-grace-{os.getpid()}-{time.time_ns()}"
    with _networks(plugbay_docker) as names:
        names.append(name)
        _made_and_left(name)
        (made,) = named_networks(plugbay_docker, name)
        # no container is on it, and plugbay made it: the sweep listed and removed it, though a start may have
        # made it a moment ago for the container it is about to create
        assert made.id not in sweep_networks(client=plugbay_docker, dry_run=True, names=names)
        spared: dict[str, str] = {}
        assert made.id not in sweep_networks(client=plugbay_docker, names=names, spared=spared)
        assert named_networks(plugbay_docker, name), "the sweep removed a network made within its grace"
        assert "within the 60 s grace" in spared[made.id] and name in spared[made.id], spared
        # the command says what it left and why, by the id `docker network ls` shows (3600 s: far beyond this
        # test's length)
        said = plugbay("sweep", "--docker", "--dry-run", "--grace", "3600")
        assert said.returncode == 0, said.stderr
        assert f"left {made.id[:12]}: network {name}: made " in said.stdout, said.stdout
        listed = json.loads(plugbay("sweep", "--docker", "--dry-run", "--json", "--grace", "3600").stdout)
        assert made.id not in listed["docker_networks"] and "grace" in listed["left"][made.id], listed
        everything = json.loads(plugbay("sweep", "--docker", "--dry-run", "--json", "--grace", "0").stdout)
        assert made.id in everything["docker_networks"] and made.id not in everything["left"], everything
        # once the grace has passed it goes (by the engine's clock: waited for, bounded)
        deadline = time.monotonic() + 30
        while made.id not in sweep_networks(client=plugbay_docker, dry_run=True, names=names, grace=1):
            assert time.monotonic() < deadline, "a network made over a second ago was still within a 1 s grace"
            time.sleep(0.2)
        assert made.id in sweep_networks(client=plugbay_docker, names=names, grace=1)
        assert not named_networks(plugbay_docker, name)


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_starts_racing_sweeps_one_after_another_all_start_on_the_network_they_made(plugbay_docker: Any) -> None:
    # The sweep removed each network a start made before its container was on it, and the one made again,
    # and again: starts failed with NetworkSweptError, and every network a start left was swept at once
    stem = f"plugbay-test-grace-{os.getpid()}-{time.time_ns()}-race"
    with _networks(plugbay_docker) as names:
        names.extend(f"{stem}-{i}" for i in range(8))
        # 3600 s: far beyond the starts' length, whatever the machine's load
        outcomes, swept = starts_racing_sweeps(plugbay_docker, names, grace=3600)
        assert outcomes == [None] * len(names), outcomes
        assert swept == [], "the sweeps removed networks made moments ago"
        assert all(named_networks(plugbay_docker, name) for name in names)


@pytest.mark.docker
def test_the_library_sweep_leaves_the_engines_images_unless_asked(plugbay_docker: Any) -> None:
    # A host's sweep() of its gone hosts' containers removed every untagged image plugbay built on the whole
    # engine, one another host's build was about to tag among them; like networks, images are opt-in there
    # (a real sweep() here would sweep other users' containers: its defaults are what this looks at)
    assert sweep.__kwdefaults__ is not None
    assert sweep.__kwdefaults__["images"] is False and sweep.__kwdefaults__["networks"] is False
    with pytest.raises(ConfigError, match="grace"):
        sweep(client=plugbay_docker, dry_run=True, grace=float("nan"))
    with pytest.raises(ConfigError, match="grace"):
        sweep_networks(client=plugbay_docker, dry_run=True, names=[], grace=-1)


def test_the_engines_timestamps_are_read_strictly() -> None:
    # an age from a garbled Created field would let the sweep remove what it cannot prove is old
    utc = timezone.utc
    assert engine_time("2026-12-06T12:00:01.123456789Z") == datetime(2026, 12, 6, 12, 0, 1, 123456, tzinfo=utc)
    assert engine_time("2026-12-06T13:00:01+01:00") == datetime(2026, 12, 6, 12, 0, 1, tzinfo=utc)
    assert engine_time("2026-12-06T11:30:00.5-00:30") == datetime(2026, 12, 6, 12, 0, 0, 500000, tzinfo=utc)
    for garbled in (None, 1733486400, "", "yesterday", "2026-12-06", "2026-12-06 12:00:01Z",
                    "2026-12-06T12:00:01", "2026-13-06T12:00:01Z", "2026-12-06T12:00:61Z",
                    "2026-12-06T12:00:01.1234567891Z", "2026-12-06T12:00:01+24:00", " 2026-12-06T12:00:01Z",
                    "2026-12-06T12:00:01Z\n", "٢٠٢٦-12-06T12:00:01Z", "0001-01-01T00:00:00Z"):
        assert engine_time(garbled) is None, garbled
    later, earlier = engine_time("2026-12-06T12:00:01Z"), engine_time("2026-12-06T12:00:00.5Z")
    assert later is not None and earlier is not None and later - earlier == timedelta(seconds=0.5)


def test_only_an_inspect_that_says_untagged_lets_an_image_go() -> None:
    # the look just before removal: an image whose inspect is garbled might be tagged again, so it stays
    from plugbay.runners.docker.sweep import _tagged
    for untagged in ({}, {"RepoTags": None}, {"RepoTags": []}, {"RepoTags": ["<none>:<none>"]}):
        assert not _tagged(untagged), untagged
    for kept in (None, [], "x", {"RepoTags": ""}, {"RepoTags": 0}, {"RepoTags": {}}, {"RepoTags": False},
                 {"RepoTags": "a:b"}, {"RepoTags": [None]}, {"RepoTags": ["plugbay-x:1"]}):
        assert _tagged(kept), kept
