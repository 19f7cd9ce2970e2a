"""The sweep of the networks plugbay made that no container is on.

DockerRunner(network=NAME) makes NAME on first use (the tcp transport's isolated bridge) and keeps it, a
misspelled NAME too, which no sweep removed (it swept containers and images only). A network goes only when
plugbay can prove it made it (its labels, driver and options as plugbay creates them) and no container,
running, stopped or only created, is on it: a network labelled plugbay.managed=true for plugbay to join, or
one given plugbay's labels under another name, stays. The real engine; every network and container a test
makes is removed on the way out, whatever happened.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from docker.errors import NotFound

from plugbay.errors import NetworkSweptError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner, sweep, sweep_networks
from plugbay.runners.docker.hardening import ICC_OPTION
from plugbay.runners.docker.madehere import forget_made
from tests.cli_util import plugbay
from tests.docker_util import BASE, named_networks, remove_networks, start_on, starts_racing_sweeps
from tests.engine_relay import EngineRelay, relay  # noqa: F401  (relay is a fixture)
from tests.procs import first_line_then_sigkill
from tests.race_util import Starting

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]


@contextmanager
def _made(docker: Any) -> Iterator[tuple[list[str], list[str]]]:
    """(network names, container ids) a test fills in as it makes them; all removed on the way out, with the
    record a runner (a crashed host's too) kept of each container: no sweep is left to drop it."""
    names: list[str] = []
    containers: list[str] = []
    try:
        yield names, containers
    finally:
        for cid in containers:
            try:
                docker.api.remove_container(cid, force=True)
            except NotFound:
                pass
            forget_made(cid)
        remove_networks(docker, names)


def test_a_network_a_misspelled_name_made_goes_with_the_sweep_once_no_container_is_on_it(plugbay_docker: Any) -> None:
    stem = f"plugbay-test-netsweep-{os.getpid()}-{time.time_ns()}"
    typo = f"{stem}-isolatd"
    with _made(plugbay_docker) as (names, containers):
        # plugbay joins a network someone made with its label and ICC off, but did not make it; nor did it make
        # one given its labels under another name, or one with none
        joinable, copied, plain = f"{stem}-joinable", f"{stem}-copied", f"{stem}-plain"
        names.extend([typo, joinable, copied, plain])
        plugbay_docker.networks.create(joinable, driver="bridge", labels={"plugbay.managed": "true"},
                                       options={ICC_OPTION: "false"})
        plugbay_docker.networks.create(copied, driver="bridge", options={ICC_OPTION: "false"},
                                       labels={"plugbay.managed": "true", "plugbay.network": typo})
        plugbay_docker.networks.create(plain, driver="bridge")
        runner = start_on(typo)
        try:
            (made,) = named_networks(plugbay_docker, typo)
            assert made.attrs["Labels"] == {"plugbay.managed": "true", "plugbay.network": typo}
            assert made.id not in sweep_networks(client=plugbay_docker, names=names, grace=0)  # its container runs
        finally:
            runner.kill()
        # a container only created on it (not started) keeps it too
        containers.append(plugbay_docker.api.create_container(
            BASE, ["true"], networking_config=plugbay_docker.api.create_networking_config({typo: {}}),
            host_config=plugbay_docker.api.create_host_config(network_mode=typo))["Id"])
        assert made.id not in sweep_networks(client=plugbay_docker, names=names, grace=0)
        plugbay_docker.api.remove_container(containers.pop(), force=True)
        # a host's sweep of its containers (gone hosts' only: live ones' are spared) leaves the engine's
        # networks alone unless asked (networks=True), which other hosts may be about to join; grace 0, so
        # it is not its age that keeps this one
        sweep(client=plugbay_docker, images=False, grace=0)
        assert named_networks(plugbay_docker, typo), "the library's sweep() removed a network it was not asked to"

        # grace 0: it was made moments ago (test_docker_sweep_grace)
        listed = plugbay("sweep", "--docker", "--dry-run", "--json", "--grace", "0")
        assert listed.returncode == 0, listed.stderr
        assert made.id in json.loads(listed.stdout)["docker_networks"], listed.stdout
        assert made.id in sweep_networks(client=plugbay_docker, dry_run=True, names=names, grace=0)
        assert named_networks(plugbay_docker, typo), "a dry run removed it"

        # names=: only this test's networks (the whole engine's are other tests' and users'); the CLI sweeps all
        assert made.id in sweep_networks(client=plugbay_docker, names=names, grace=0)
        assert not named_networks(plugbay_docker, typo)
        for kept in (joinable, copied, plain):
            assert named_networks(plugbay_docker, kept), f"the sweep removed {kept}, which plugbay did not make"
        # a start after the sweep makes the network again (the id this process verified is gone)
        again = start_on(typo)
        try:
            (remade,) = named_networks(plugbay_docker, typo)
            assert remade.id != made.id
        finally:
            again.kill()


# a host that starts a container on its own network, then dies by SIGKILL: container and network stay
CRASHING_HOST = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from plugbay.runners.base import LaunchSpec
    from plugbay.runners.docker import DockerRunner
    runner = DockerRunner("plugbay-base:bookworm", transport="tcp", network=sys.argv[2], entrypoint=["sleep", "120"])
    runner.start(LaunchSpec(env={}))
    print(json.dumps({"id": runner.id}), flush=True)
    time.sleep(120)
""")


@pytest.mark.timeout(120)
def test_a_dry_run_lists_the_network_only_a_dead_hosts_container_is_on(plugbay_docker: Any) -> None:
    # A dry run removes no container, so the network a dead host's container kept was not listed, though a
    # real sweep removes that container and then the network. The containers it lists now count as gone.
    name = f"plugbay-test-netsweep-{os.getpid()}-{time.time_ns()}-dead"
    with _made(plugbay_docker) as (names, containers):
        names.append(name)
        facts = first_line_then_sigkill([sys.executable, "-c", CRASHING_HOST,
                                         str(Path(__file__).resolve().parent.parent / "src"), name])
        containers.append(facts["id"])
        (net,) = named_networks(plugbay_docker, name)
        listed = plugbay("sweep", "--docker", "--dry-run", "--json", "--grace", "0")  # made moments ago
        assert listed.returncode == 0, listed.stderr
        found = json.loads(listed.stdout)
        assert facts["id"] in found["docker"], listed.stdout
        assert net.id in found["docker_networks"], listed.stdout
        assert named_networks(plugbay_docker, name) and plugbay_docker.containers.get(facts["id"]), "a dry run removed"
        # the library's: only with the containers named as leaving
        assert net.id not in sweep_networks(client=plugbay_docker, dry_run=True, names=names, grace=0)
        assert net.id in sweep_networks(client=plugbay_docker, dry_run=True, names=names, leaving=[facts["id"]],
                                        grace=0)
        # a grace the sweep cannot use is refused before anything is removed: it swept the containers first
        refused = plugbay("sweep", "--docker", "--grace", "nan")
        assert refused.returncode == 2 and "grace" in refused.stderr, (refused.stdout, refused.stderr)
        assert plugbay_docker.containers.get(facts["id"]) and named_networks(plugbay_docker, name)


def _its_network_removed_while_held(relay: EngineRelay, docker: Any, suffix: str, held: tuple[str, str],
                                    unreached: str) -> None:
    """A start on a network of its own whose request ``held`` (method, path) the relay holds while the test
    removes that network: the start succeeds, its container on the network it made again."""
    name = f"plugbay-test-netsweep-{os.getpid()}-{time.time_ns()}-{suffix}"
    with _made(docker) as (names, _):
        names.append(name)
        runner = DockerRunner(BASE, transport="tcp", network=name, entrypoint=["sleep", "60"])
        relay.hold(*held)
        starting = Starting(lambda: runner.start(LaunchSpec(env={})))
        try:
            try:
                assert relay.holding.wait(30), unreached
                (gone,) = named_networks(docker, name)
                gone.remove()
            finally:
                relay.release()
            assert starting.outcome(60) is None
            (remade,) = named_networks(docker, name)
            assert remade.id != gone.id
            on = docker.api.inspect_container(runner.id)["NetworkSettings"]["Networks"]
            assert list(on) == [name] and on[name]["NetworkID"] == remade.id, on
        finally:
            runner.kill()


@pytest.mark.timeout(120)
def test_a_start_whose_network_went_between_create_and_start_makes_it_again(relay: EngineRelay,
                                                                             plugbay_docker: Any) -> None:
    # A sweep's look at a network and its removal are two requests: a host's create between them leaves a
    # created container whose start the engine refuses, naming the network by its name (not the verified id,
    # as a create after the removal does). The start failed ("the Docker engine refused to run ...: network
    # NAME not found"); it makes the network again, as it does when the removal came before the create.
    # (The engine lets a network go that only created containers name.)
    _its_network_removed_while_held(relay, plugbay_docker, "between", ("POST", "/containers/[0-9a-f]{64}/start"),
                                    "the start never reached the engine")


@pytest.mark.timeout(120)
def test_a_start_whose_network_went_between_its_create_and_the_look_at_it_makes_it_again(
        relay: EngineRelay, plugbay_docker: Any) -> None:
    # client.networks.create() creates, then looks the network up by its id: a sweep between the two made the
    # look up's NotFound read as the engine refusing the network ("refused to create or look up the plugin
    # network ...: network <id> not found. Free what it names (out of address pools ...)"), and the start failed
    # held: the look up by id, right after the create
    _its_network_removed_while_held(relay, plugbay_docker, "made", ("GET", "/networks/[0-9a-f]{64}"),
                                    "the start never looked up the network it made")


@pytest.mark.timeout(300)
def test_starts_racing_a_sweep_loop_succeed_or_say_a_sweep_raced_them(plugbay_docker: Any) -> None:
    # A sweep between a network's create and the look at it, or between that and its container's create, made
    # a start fail as the engine refusing the network (out of address pools, it said). Each start, on a
    # network name of its own, runs against sweeps of this test's networks one after another: it starts,
    # or it says a sweep removed its network each time it made it (NetworkSweptError), nothing else. Grace 0:
    # sweeps that remove even the networks made moments ago (the default grace leaves those: test_docker_sweep_grace)
    stem = f"plugbay-test-netsweep-{os.getpid()}-{time.time_ns()}-race"
    starts = 8
    with _made(plugbay_docker) as (names, _):
        names.extend(f"{stem}-{i}" for i in range(starts))
        errors, swept = starts_racing_sweeps(plugbay_docker, names, grace=0)
        outcomes: list[str] = []
        for name, exc in zip(names, errors):
            if isinstance(exc, NetworkSweptError):
                assert "a sweep" in str(exc) and name in str(exc), exc
            outcomes.append("started" if exc is None else "swept" if isinstance(exc, NetworkSweptError)
                            else f"{type(exc).__name__}: {exc}")
        assert set(outcomes) <= {"started", "swept"}, outcomes
