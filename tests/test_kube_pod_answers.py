"""The pod runner takes the Kubernetes API's answers as input: odd pods, early-ended watches, foreign pods.

A loopback pod API (tests/pod_api.py) answers what each test sets. Pods whose exit code or container
statuses are not shaped as the schema says must read as "no exit code" (-1) or "no status", not as a bare
ValueError out of wait() or start(); a watch the server ends right after an event must not be re-opened
(with a read of the pod each round) as fast as the server answers; and sweep() deletes only the pods
whose own labels say plugbay made them, whatever the list answered.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from plugbay.runners.kubernetes import pods, sweep  # noqa: E402
from plugbay.runners.kubernetes.watch import PodWatch  # noqa: E402
from tests.pod_api import PodAPI, pod  # noqa: E402
from tests.thread_util import until  # noqa: E402

pytestmark = pytest.mark.kubernetes


@pytest.fixture()
def api() -> Iterator[PodAPI]:
    server = PodAPI()
    try:
        yield server
    finally:
        server.close()


def _watch(api: PodAPI) -> tuple[PodWatch, Any]:
    from kubernetes import client

    api_client = api.client()
    core = client.CoreV1Api(api_client)

    def read() -> dict[str, Any] | None:
        found = api.pods.get("p1")
        return None if found is None else dict(found)

    watch = PodWatch(core, "ns", read, api_timeout=5)
    watch.uid = "uid-1"
    watch.start("p1")
    return watch, api_client


def _ended(code: Any) -> dict[str, Any]:
    ended = pod("p1", phase="Failed")
    ended["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": code, "reason": "Error"}}
    return ended


@pytest.mark.parametrize("code", ["x", None, True, 1.5, {"n": 1}])
def test_an_exit_code_that_is_no_int_reads_as_minus_one(api: PodAPI, code: Any) -> None:
    api.pods["p1"] = pod("p1")
    api.watch_events = lambda name: [{"type": "MODIFIED", "object": _ended(code)}]
    watch, api_client = _watch(api)
    try:
        assert until(lambda: watch.pod is not None and pods.phase(watch.pod) == "Failed", 10)
        assert watch.wait_exit(2) == -1  # was int("x"): a ValueError out of the runner's wait()
    finally:
        watch.close()
        api_client.close()


def test_an_exit_code_reads_as_the_int_it_is() -> None:
    assert pods.exit_code(_ended(3)) == 3
    crash = pod("p1")
    crash["status"]["containerStatuses"][0].update(state={"waiting": {"reason": "CrashLoopBackOff"}},
                                                   lastState={"terminated": {"exitCode": "7"}})
    assert pods.exit_code(crash) == -1
    failure = pods.start_failure(crash, "ns/p1", [], [])
    assert failure is not None and "CrashLoopBackOff" in str(failure)


@pytest.mark.parametrize("statuses", [["x"], [None, 3], "plugin", {"name": "plugin"}, [{"state": "running"}]])
def test_container_statuses_that_are_no_objects_are_skipped(statuses: Any) -> None:
    odd = {"metadata": {"uid": "uid-1"}, "spec": {"containers": ["x"]},
           "status": {"phase": "Pending", "containerStatuses": statuses, "conditions": ["y"]}}
    assert pods.plugin_status(odd) in ({}, {"state": "running"})
    assert pods.is_running(odd) is False
    assert pods.exit_code(odd) is None
    assert pods.start_failure(odd, "ns/p1", [], []) is None
    assert "phase Pending" in pods.describe(odd, False, [], [])


@pytest.mark.parametrize("obj", [["x"], "pod", {"metadata": ["uid-1"]}, {"metadata": {"uid": "uid-1"}, "status": "x"},
                                 {"metadata": {"uid": 5}}])
def test_a_watched_object_that_is_no_pod_is_not_kept(obj: Any) -> None:
    watch = PodWatch(None, "ns", lambda: None)
    watch.uid = "uid-1"
    assert watch.update(obj, False) is False
    assert watch.pod is None and not watch.gone


@pytest.mark.timeout(30)
def test_a_watch_ended_right_after_an_unchanged_event_is_paced(api: PodAPI) -> None:
    # each watch: the pod as it was, then the server hangs up, long before timeoutSeconds (10 s)
    api.pods["p1"] = pod("p1")
    api.watch_events = lambda name: [{"type": "MODIFIED", "object": api.pods["p1"]}]
    watch, api_client = _watch(api)
    try:
        time.sleep(3)
        watches = api.counts["watch"]
    finally:
        watch.close()
        api_client.close()
    assert watches < 20, f"{watches} watches in 3 s: re-opened as fast as the server hung up"
    assert watch.failures > 0 and "no change" in watch.last_failure
    assert not watch.gone


@pytest.mark.timeout(30)
def test_a_watch_ended_right_after_each_change_is_paced_too(api: PodAPI) -> None:
    api.pods["p1"] = pod("p1")
    version = [0]

    def changed(name: str) -> list[dict[str, Any]]:
        version[0] += 1
        fresh = pod("p1")
        fresh["metadata"]["resourceVersion"] = str(version[0])
        return [{"type": "MODIFIED", "object": fresh}]

    api.watch_events = changed
    watch, api_client = _watch(api)
    try:
        time.sleep(3)
        watches = api.counts["watch"]
    finally:
        watch.close()
        api_client.close()
    assert watches < 20, f"{watches} watches in 3 s"


def test_sweep_deletes_only_pods_labelled_as_plugbays(api: PodAPI) -> None:
    # a server (or proxy) that ignores the label selector lists every pod of the namespace
    api.pods["someone-elses-db"] = pod("someone-elses-db", uid="u-db", labels={"app": "postgres"})
    api.pods["no-session"] = pod("no-session", uid="u-2", labels={"plugbay.managed": "true"})
    api.pods["managed-false"] = pod("managed-false", uid="u-3",
                                    labels={"plugbay.managed": "false", "plugbay.session": "gone-1"})
    api.pods["other-namespace"] = pod("other-namespace", uid="u-4", namespace="prod",
                                      labels={"plugbay.managed": "true", "plugbay.session": "gone-1"})
    api.pods["plugbays"] = pod("plugbays", uid="u-5", labels={"plugbay.managed": "true", "plugbay.session": "gone-1"})
    api_client = api.client()
    try:
        removed = sweep("ns", live_sessions=[], api_client=api_client, api_timeout=5)
    finally:
        api_client.close()
    assert removed == ["plugbays"] and api.deletes == ["plugbays"]
