"""A reattach proves itself by the container's or pod's reattach secret, not by an id anyone can list.

A container id or pod name is no secret and every plugin carries ``plugbay.managed=true``, so reattach
JSON naming another host's live container was accepted and its kill() removed that container (found by
review). Real Docker engine; the pod runner against the Kubernetes API stand-in. The victim is always a
plugin another runner started and still runs: it must keep running after every forged reattach.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from plugbay.errors import ReattachError
from plugbay.runners.base import LaunchSpec, reattach_runner
from plugbay.runners.reattachkey import DIGEST, SECRET, digest, new_secret
from tests.kube_standin.fixtures import kubeconfig, standin, testapp  # noqa: F401  (fixtures)

BASE = "plugbay-base:bookworm"
SLEEP = ["python3", "-c", "import time; time.sleep(120)"]
REFUSED = "is not the one plugbay wrote for"


def _without_secret(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != SECRET}


def _forgeries(real: Mapping[str, Any], minimal: Mapping[str, Any], other_secret: str) -> list[dict[str, Any]]:
    """What someone who can list the plugins (but never read the reattach JSON) can write."""
    return [dict(minimal), _without_secret(real), {**real, SECRET: new_secret()},
            {**real, SECRET: other_secret},  # a genuine secret, of another plugin
            {**real, SECRET: digest(str(real.get(SECRET)))},  # what its label shows
            {**real, SECRET: ""}, {**real, SECRET: 5}]


def _started(make: Callable[..., Any], env: dict[str, str]) -> Iterator[Callable[..., Any]]:
    """A fixture's start(*args): ``make(*args)``'s runner, started with ``env``; each one killed at the end."""
    made: list[Any] = []

    def start(*args: Any, **options: Any) -> Any:
        runner = make(*args, **options)
        made.append(runner)
        runner.start(LaunchSpec(env=env))
        return runner
    try:
        yield start
    finally:
        for runner in made:
            runner.kill(0)


def _attach_and_kill(data: Mapping[str, Any]) -> str | None:
    """The refusal of a reattach to ``data``; None when it was accepted (its runner then killed what it names,
    as the reattaching host's kill would)."""
    try:
        attached = reattach_runner(json.loads(json.dumps(data)))
    except ReattachError as exc:
        return str(exc)
    attached.kill(0)
    return None


# --- Docker -----------------------------------------------------------------------------------------------

@pytest.fixture
def victims(plugbay_docker: Any) -> Iterator[Any]:
    from plugbay.runners.docker import DockerRunner

    yield from _started(lambda transport, **options: DockerRunner(BASE, entrypoint=SLEEP, transport=transport,
                                                                 **options), {})


def _running(docker: Any, container_id: str) -> bool:
    found = docker.containers.list(all=True, filters={"id": container_id})
    return bool(found) and found[0].status == "running"


@pytest.mark.docker
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_a_forged_container_reattach_is_refused_and_the_container_keeps_running(plugbay_docker: Any, victims: Any,
                                                                                 transport: str) -> None:
    victim, other = victims(transport), victims(transport)
    real = victim.reattach_data()
    minimal = {"kind": "DockerRunner", "id": victim.id[:12], "transport": transport}  # the review's forgery
    for forged in _forgeries(real, minimal, other.reattach_data().get(SECRET, new_secret())):
        refused = _attach_and_kill(forged)
        assert _running(plugbay_docker, victim.id), f"a reattach to {forged} ended another host's container"
        assert refused is not None and REFUSED in refused and f"container {victim.id[:12]}" in refused, refused
        assert "Client.reattach_config().to_json()" in refused and "plugbay sweep" in refused
        assert str(real.get(SECRET)) not in refused
    assert _running(plugbay_docker, other.id)


@pytest.mark.docker
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_a_genuine_container_reattach_works_and_its_kill_removes_the_container(plugbay_docker: Any, victims: Any,
                                                                              transport: str) -> None:
    runner = victims(transport)
    real = json.loads(json.dumps(runner.reattach_data()))
    attached = reattach_runner(real)
    assert attached.id == runner.id
    again = attached.reattach_data()  # a reattached host's own reattach_config() proves itself as well
    assert real.get(SECRET) and again.get(SECRET) == real[SECRET], "the reattach data carries no secret"
    reattach_runner(again).detach()
    attached.kill(0)
    assert not plugbay_docker.containers.list(all=True, filters={"id": runner.id})


@pytest.mark.docker
def test_the_containers_labels_hold_the_secrets_digest_never_the_secret(plugbay_docker: Any, victims: Any) -> None:
    runner = victims("unix")
    secret = runner.reattach_data()[SECRET]
    inspect = plugbay_docker.api.inspect_container(runner.id)
    assert inspect["Config"]["Labels"][DIGEST] == digest(secret)
    assert secret not in json.dumps(inspect), "reading the container (labels, environment) reveals the secret"


@pytest.mark.docker
@pytest.mark.parametrize("transport, edit, says", [
    ("tcp", {"transport": "unix"}, "says transport 'unix', but plugbay started it with transport 'tcp'"),
    ("unix", {"transport": "tcp"}, "says transport 'tcp' on container port 4000, but plugbay started it with"
                                   " transport 'unix'"),
    ("tcp", {"container_port": 4001}, "on container port 4001, but plugbay started it with transport 'tcp' on"
                                      " container port 4000"),
])
def test_a_reattach_whose_transport_is_not_the_containers_is_a_reattach_error(
        plugbay_docker: Any, victims: Any, transport: str, edit: dict[str, Any], says: str) -> None:
    """The JSON's transport was trusted: a tcp one for a unix container failed as 'port 4000 was not
    published' (a RunnerError), a unix one for a tcp container was accepted and failed at the dial."""
    runner = victims(transport)
    with pytest.raises(ReattachError, match=says) as info:
        reattach_runner({**runner.reattach_data(), **edit})
    assert "not published" not in str(info.value)
    assert _running(plugbay_docker, runner.id)


# --- Kubernetes (the API stand-in) ----------------------------------------------------------------------

@pytest.fixture
def pods(kubeconfig: str, testapp: str) -> Iterator[Any]:  # noqa: F811
    from plugbay.runners.kubernetes import KubernetesRunner

    yield from _started(lambda: KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60),
                        {"BASIC_PLUGIN": "hello"})


def _pod(path: str, name: str) -> Any:
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(config_file=path))
    try:
        found = api.list_namespaced_pod("default", field_selector=f"metadata.name={name}").items
        return found[0] if found and not found[0].metadata.deletion_timestamp else None
    finally:
        api.api_client.close()


@pytest.mark.kubernetes
def test_a_forged_pod_reattach_is_refused_and_the_pod_keeps_running(kubeconfig: str, pods: Any) -> None:  # noqa: F811
    victim, other = pods(), pods()
    real = victim.reattach_data()
    minimal = {"kind": "KubernetesRunner", "namespace": victim.namespace, "pod": victim.pod_name}
    for forged in _forgeries(real, minimal, other.reattach_data().get(SECRET, new_secret())):
        refused = _attach_and_kill(forged)
        assert _pod(kubeconfig, victim.pod_name) is not None, f"a reattach to {forged} deleted another host's pod"
        assert refused is not None and REFUSED in refused and f"pod default/{victim.pod_name}" in refused, refused
        assert "Client.reattach_config().to_json()" in refused and "plugbay sweep" in refused
    pod = _pod(kubeconfig, victim.pod_name)
    assert pod.metadata.annotations[DIGEST] == digest(real[SECRET])
    assert real[SECRET] not in json.dumps(pod.to_dict(), default=str), "reading the pod reveals the secret"


@pytest.mark.kubernetes
def test_a_genuine_pod_reattach_works_and_its_kill_deletes_the_pod(kubeconfig: str, pods: Any) -> None:  # noqa: F811
    runner = pods()
    attached = reattach_runner(json.loads(json.dumps(runner.reattach_data())))
    assert attached.id == runner.id
    secret = runner.reattach_data().get(SECRET)
    assert secret and attached.reattach_data().get(SECRET) == secret, "the reattach data carries no secret"
    attached.kill(0)
    assert runner.wait(30) is not None
    assert _pod(kubeconfig, runner.pod_name) is None


# --- a plugin started by a plugbay before reattach secrets -----------------------------------------------

OLD_SAYS = "carries no plugbay.reattach-digest"


@pytest.mark.docker
def test_a_container_without_the_digest_label_is_refused_with_how_to_end_it(plugbay_docker: Any) -> None:
    """Its own JSON (from a plugbay before reattach secrets) was told to 'pass the JSON reattach_config()
    produced, unedited', which is what the user did (review): no JSON can prove such a container, so the
    message says to stop or remove it and start again; a container named by its name is shown whole."""
    old = plugbay_docker.containers.run(BASE, SLEEP, detach=True, labels={"plugbay.managed": "true"})
    try:
        for named in (old.id, old.name):
            data = {"kind": "DockerRunner", "id": named, "transport": "tcp", SECRET: new_secret()}
            with pytest.raises(ReattachError, match=OLD_SAYS) as info:
                reattach_runner(data)
            said = str(info.value)
            assert f"docker rm -f {old.short_id}" in said and "start the plugin again" in said, said
            assert "unedited" not in said and f"container {old.short_id if named == old.id else old.name}:" in said
            assert _running(plugbay_docker, old.id)
    finally:
        old.remove(force=True)


@pytest.mark.kubernetes
def test_a_pod_without_the_digest_annotation_is_refused_with_how_to_end_it(kubeconfig: str, testapp: str) -> None:  # noqa: F811
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    name = "plugbay-old-" + new_secret()[:8]
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"plugbay.managed": "true"}},
            "spec": {"containers": [{"name": "plugin", "image": testapp}]}}
    api.create_namespaced_pod("default", body)
    try:
        data = {"kind": "KubernetesRunner", "namespace": "default", "pod": name, SECRET: new_secret()}
        with pytest.raises(ReattachError, match=OLD_SAYS) as info:
            reattach_runner(data)
        assert f"kubectl delete pod -n default {name}" in str(info.value)
        assert _pod(kubeconfig, name) is not None
    finally:
        api.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        api.api_client.close()
