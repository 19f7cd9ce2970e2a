"""A DockerRunner's labels and extra_create_args cannot take away what plugbay sets on its containers.

plugbay finds its containers by their labels: a caller's ``labels`` in extra_create_args once
replaced them all, and the container was invisible to sweep() and refused by a reattach.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from plugbay.errors import ConfigError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner
from plugbay.runners.session import MANAGED, SESSION, host_session_id

BASE = "plugbay-base:bookworm"


@pytest.mark.parametrize(("extra", "option"), [
    ({"name": "mine"}, "name="),
    ({"environment": {"A": "1"}}, "env="),
    ({"mounts": []}, "mounts="),
    ({"volumes": {"/srv": {"bind": "/srv"}}}, "mounts="),
    ({"ports": {"4000/tcp": 4000}}, "container_port="),
    ({"image": "other"}, "image="),
    ({"user": "0"}, "user="),
    ({"tmpfs": {"/run": ""}}, "writable_dirs="),
])
def test_extra_create_args_that_replace_plugbays_own_are_refused(extra: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError, match=rf"extra_create_args\['{next(iter(extra))}'\].*{option}"):
        DockerRunner(BASE, extra_create_args=extra)


@pytest.mark.parametrize("where", ["labels", "extra_create_args"])
def test_label_keys_in_plugbays_namespace_are_refused(where: str) -> None:
    labels = {"team": "a", "plugbay.managed": "false"}
    kwargs: dict[str, Any] = {"labels": labels} if where == "labels" else {"extra_create_args": {"labels": labels}}
    with pytest.raises(ConfigError, match=r"\['plugbay.managed'\].*plugbay's own"):
        DockerRunner(BASE, **kwargs)


def test_merged_lists_must_be_lists() -> None:
    with pytest.raises(ConfigError, match=r"extra_create_args\['group_add'\] must be a list"):
        DockerRunner(BASE, extra_create_args={"group_add": "100"})


@pytest.mark.docker
def test_a_callers_labels_and_groups_are_added_to_plugbays(plugbay_docker: Any) -> None:
    runner = DockerRunner(BASE, entrypoint=["sleep", "60"], name=f"plugbay-test-createargs-{time.time_ns()}",
                          extra_create_args={"labels": {"team": "a"}, "group_add": ["12345"]})
    try:
        runner.start(LaunchSpec(env={}))
        created = plugbay_docker.api.inspect_container(runner.id)
        labels = created["Config"]["Labels"]
        assert labels["team"] == "a"
        assert labels[MANAGED] == "true" and labels[SESSION] == host_session_id(), "plugbay's labels were replaced"
        groups = created["HostConfig"]["GroupAdd"]
        assert "12345" in groups and len(groups) == 2, "the socket folder's group was replaced"
        other = DockerRunner.attach(runner.reattach_data(), take_ownership=False)  # proven plugbay's
        other.detach()
    finally:
        runner.kill(0)
        for found in plugbay_docker.containers.list(all=True, filters={"name": runner.container_name}):
            found.remove(force=True, v=True)


# --- the network of a tcp plugin: extra_create_args' network_mode is honoured or refused, never dropped ---

@pytest.mark.parametrize("mode", ["host", "none", "container:0123456789ab"])
def test_a_network_mode_no_published_port_reaches_is_refused_for_tcp(mode: str) -> None:
    with pytest.raises(ConfigError, match=rf"network_mode'\] = '{mode}' cannot serve transport='tcp'.*127\.0\.0\.1"
                                          r".*network="):
        DockerRunner(BASE, transport="tcp", extra_create_args={"network_mode": mode})


def test_network_mode_and_a_different_network_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"network_mode='bridge' and network='other'.*give one"):
        DockerRunner(BASE, transport="tcp", extra_create_args={"network_mode": "bridge", "network": "other"})


def test_a_network_mode_that_is_no_str_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"network_mode'\] must be a network mode"):
        DockerRunner(BASE, transport="tcp", extra_create_args={"network_mode": 5})


@pytest.mark.docker
@pytest.mark.parametrize("mode", ["bridge", "named"])
def test_a_tcp_plugin_runs_on_the_network_mode_its_caller_gave(plugbay_docker: Any, plugbay_image: Any,
                                                               mode: str) -> None:
    """The isolated network plugbay joins by default replaced the caller's network_mode without a word."""
    import sys
    from pathlib import Path

    from plugbay.core.host.client import Client, ClientConfig

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "kv"))
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    net = plugbay_docker.networks.create(f"plugbay-test-mode-{time.time_ns()}", driver="bridge") \
        if mode == "named" else None
    wanted = "bridge" if net is None else net.name
    try:
        runner = DockerRunner(plugbay_image("kv"), transport="tcp", writable_dirs=("/tmp", "/data"),
                              extra_create_args={"network_mode": wanted})
        with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(None)},  # type: ignore[arg-type]
                                 runner=runner)) as client:
            kv = client.dispense(PLUGIN_NAME)
            kv.put("net", wanted.encode())
            assert kv.get("net") == wanted.encode()  # reached through its port published on 127.0.0.1
            created = plugbay_docker.api.inspect_container(runner.id)
            assert created["HostConfig"]["NetworkMode"] == wanted
            assert list(created["NetworkSettings"]["Networks"]) == [wanted]
    finally:
        if net is not None:
            net.remove()
