"""The pod runner's watch on its pod when the API server fails: it must keep (or get back) sight of the pod.

The pods are local processes on the Kubernetes stand-in (no engine needed); its fault knobs make
the API fail watches, and the watch's backoff is shortened (its stop event) to keep outages short.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from plugbay.errors import PodStartTimeoutError, RunnerError  # noqa: E402
from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.process_fixtures import process_kubeconfig, process_standin  # noqa: E402,F401 - fixtures
from tests.thread_util import until  # noqa: E402
from tests.kube_standin.server import StandIn  # noqa: E402

pytestmark = pytest.mark.kubernetes


class _QuickEvent(threading.Event):
    """A stop event whose timed waits (the backoff between failed watches) last 10 ms at most."""

    def wait(self, timeout: float | None = None) -> bool:
        return super().wait(None if timeout is None else min(timeout, 0.01))


def _runner(kubeconfig: str, program: str, **kwargs: object) -> KubernetesRunner:
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=[sys.executable, "-c", program],
                              start_timeout=20, **kwargs)  # type: ignore[arg-type]
    runner.start(LaunchSpec(env={}))
    return runner


def _until_flag(kubeconfig: str, tmp_path: Path, **kwargs: object) -> tuple[KubernetesRunner, Path]:
    """A started runner whose plugin exits 0 once the returned flag file exists."""
    flag = tmp_path / "exit-now"
    program = f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.05)\n"
    return _runner(kubeconfig, program, **kwargs), flag


@pytest.mark.timeout(90)
def test_the_exit_is_seen_after_an_api_outage_of_many_failed_watches(server: StandIn, kubeconfig: str,
                                                                     tmp_path: Path) -> None:
    """The watch gave up for good after 30 failed watches in a row: wait() then never saw the exit."""
    runner, flag = _until_flag(kubeconfig, tmp_path, api_timeout=2)
    try:
        watch = runner._podwatch
        watch.stop = _QuickEvent()
        server.fail("watch", "pods")
        assert until(lambda: watch.failures >= 40, 10), f"only {watch.failures} failed watches"
        server.allow_all()
        flag.touch()
        assert runner.wait(15) == 0
    finally:
        runner.kill(0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("failure, said", [
    # a 500 answer to every watch: retried without a read, wait() never saw the exit
    ("http-500", "500 "),
    # ERROR events (a Status): a KeyError('raw_object') in the client, the server's message lost
    ("error-event", "500 InternalError: Internal error occurred: etcdserver: request timed out"),
])
def test_the_exit_is_seen_while_every_watch_fails_but_reads_work(server: StandIn, kubeconfig: str,
                                                               tmp_path: Path, failure: str, said: str) -> None:
    runner, flag = _until_flag(kubeconfig, tmp_path, api_timeout=2)
    try:
        if failure == "http-500":
            server.fail("watch", "pods")
        else:
            server.error_pod_watches(500)
        assert until(lambda: runner._podwatch.failures >= 1, 10)
        assert runner._podwatch.last_failure.startswith(said), runner._podwatch.last_failure
        flag.touch()
        assert runner.wait(10) == 0
        assert runner._podwatch.failures >= 3  # seen by a read: the watch still failed
    finally:
        server.allow_all()
        runner.kill(0)


@pytest.mark.timeout(60)
def test_a_start_sees_running_while_every_watch_fails(server: StandIn, kubeconfig: str) -> None:
    """Every watch failing from the start: start() timed out in phase Unknown with the pod running."""
    server.fail("watch", "pods")
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig,
                              command=[sys.executable, "-c", "import time; time.sleep(60)"], start_timeout=10,
                              api_timeout=2)
    try:
        runner.start(LaunchSpec(env={}))
        assert runner._podwatch.failures >= 3 and runner.wait(0) is None
    finally:
        server.allow_all()
        runner.kill(0)


@pytest.mark.timeout(90)
def test_start_fails_typed_when_the_api_server_stops_answering_reads(server: StandIn, kubeconfig: str) -> None:
    """The pod is made, then every watch and read of it hangs: start_timeout ends start, and its kill()
    sees the pod gone by reading once reads are answered again. (Watches alone hanging no longer fail a
    start: the failing watch reads the pod.)"""
    server.stall("watch", "pods")
    server.stall("get", "pods")
    deletes = server.calls.get(("delete", "pods"), 0)
    answered = threading.Thread(target=lambda: until(lambda: server.calls.get(("delete", "pods"), 0) > deletes, 60)
                                and server.unstall(), name="test-unstall-at-delete")
    answered.start()
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, start_timeout=4, api_timeout=1,
                              command=[sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(PodStartTimeoutError, match=f"pod default/{runner.pod_name or 'plugbay-'}.* did not"
                                                       " reach Running within 4s.*The pod watch is failing \\(.*"
                                                       "[Tt]imed? ?out"):
            runner.start(LaunchSpec(env={}))
        assert server.calls[("watch", "pods")] >= 1 and server.calls[("delete", "pods")] == deletes + 1
        assert server.store.get("default", runner.pod_name) is None  # kill() saw it gone by reading
    finally:
        server.unstall()
        answered.join(70)
        if runner.pod_name:
            server.delete_pod("default", runner.pod_name)


@pytest.mark.timeout(60)
def test_an_expired_watch_starts_over_at_once(server: StandIn, kubeconfig: str) -> None:
    """A 410 Expired ERROR event counted as a failed watch (a KeyError), with its backoff: it starts over."""
    runner = _runner(kubeconfig, "import time; time.sleep(60)", api_timeout=2)
    try:
        watch = runner._podwatch
        assert until(watch.watching, 10)
        before = server.calls[("watch", "pods")]
        server.error_pod_watches(410, again=False)
        assert until(lambda: server.calls[("watch", "pods")] > before, 5)
        assert until(watch.watching, 5)
        assert watch.last_failure == "" and watch.failures == 0 and runner.wait(0) is None
    finally:
        runner.kill(0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("restored", [False, True], ids=["still-forbidden", "rbac-restored"])
def test_a_watch_forbidden_after_the_start_falls_back_to_reading_the_pod(server: StandIn, kubeconfig: str,
                                                                         tmp_path: Path, restored: bool,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A 403 ended the watch thread: wait() then returned at once (None, or -1 with no timeout), so an
    exit watcher polling it spun and never saw the plugin end. Reads replace the watch, which is tried
    again later (here after 1 s, not 60)."""
    from plugbay.runners.kubernetes import watch as watch_module

    monkeypatch.setattr(watch_module, "WATCH_AGAIN_AFTER", 1.0)
    runner, flag = _until_flag(kubeconfig, tmp_path)
    try:
        watch = runner._podwatch
        server.deny("watch", "pods")  # RBAC changed under a running plugin
        server.expire_watches()
        assert until(lambda: watch.error is not None, 15), "the next watch met no 403"
        assert runner.wait(0.3) is None
        assert watch._thread is not None and watch._thread.is_alive() and not watch.watching()
        if restored:
            server.allow_all()
            assert until(watch.watching, 15), "the watch was not tried again"
        flag.touch()
        assert runner.wait(15) == 0
    finally:
        runner.kill(0)


@pytest.mark.timeout(60)
def test_a_kill_during_an_outage_ends_the_watch_promptly(server: StandIn, kubeconfig: str) -> None:
    runner = _runner(kubeconfig, "import time; time.sleep(60)", api_timeout=2)
    watch = runner._podwatch
    server.fail("watch", "pods")
    assert until(lambda: watch.failures >= 3, 20)
    started = time.monotonic()
    runner.kill(0)
    assert time.monotonic() - started < 10
    assert watch._thread is not None and not watch._thread.is_alive()


@pytest.mark.timeout(60)
def test_a_pod_that_took_the_plugin_pods_name_is_not_taken_for_it(server: StandIn, kubeconfig: str) -> None:
    """Deleted while the watch failed, the plugin's pod was replaced by a stranger of the same name: the
    watch and the read after it took the stranger (another UID) for the plugin, running, with its address."""
    from kubernetes import client, config

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    runner = _runner(kubeconfig, "import time; time.sleep(60)", api_timeout=2)
    api = client.CoreV1Api(config.new_client_from_config(kubeconfig))
    try:
        mine = runner._pod.uid
        server.fail("watch", "pods")
        assert until(lambda: runner._podwatch.failures >= 1, 10)
        server.delete_pod("default", runner.pod_name, 0)
        assert until(lambda: server.store.get("default", runner.pod_name) is None, 10)
        other = api.create_namespaced_pod("default", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": runner.pod_name, "labels": {"app": "other"}},
            "spec": {"containers": [{"name": "plugin", "image": "other/app:1", "command": sleeper}]}})
        assert until(lambda: (server.store.get("default", runner.pod_name) or {}).get("status", {})
                      .get("podIP"), 10)
        server.allow_all()
        assert runner.wait(10) == -1  # the plugin's pod is gone
        held = runner._podwatch.pod or {}
        assert held.get("metadata", {}).get("uid") == mine
        assert runner._read_pod() is None
        with pytest.raises(RunnerError, match="gone"):  # neither the stranger's address nor a stale one
            runner._pod_address(4000)
        runner.kill(0)
        assert api.read_namespaced_pod(runner.pod_name, "default").metadata.uid == other.metadata.uid
    finally:
        try:
            runner.kill(0)
        except RunnerError:
            pass  # the current code's kill finds the stranger (409); the check above has failed already
        try:
            api.delete_namespaced_pod(runner.pod_name, "default", grace_period_seconds=0)
        except client.ApiException:
            pass


@pytest.mark.timeout(30)
def test_pod_watches_that_end_at_once_with_no_event_are_backed_off() -> None:
    """Such a watch counted as a good one: a hot loop of watch and read requests, never a failure."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kubernetes import client

    from plugbay.runners.kubernetes.watch import PodWatch

    counts = {"watch": 0, "read": 0}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "uid": "u"},
           "status": {"phase": "Running"}}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            watch = "watch=true" in self.path
            counts["watch" if watch else "read"] += 1
            body = b"" if watch else json.dumps(pod).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    serving = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, name="test-podwatch-api")
    serving.start()
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{srv.server_address[1]}"
    api_client = client.ApiClient(cfg)
    api = client.CoreV1Api(api_client)
    watch = PodWatch(api, "default", lambda: api_client.sanitize_for_serialization(
        api.read_namespaced_pod("p", "default")), api_timeout=5)
    try:
        watch.start("p")
        time.sleep(1.5)
        assert counts["watch"] <= 10, counts  # backoff 0.2, 0.4, 0.6 s...
        assert watch.failures > 0 and "no event" in watch.last_failure
    finally:
        watch.close()
        srv.shutdown()
        srv.server_close()
        serving.join(10)
        api_client.close()


@pytest.mark.timeout(60)
def test_a_watch_event_without_the_pods_uid_is_not_taken_for_the_pod(server: StandIn, kubeconfig: str) -> None:
    """A BOOKMARK (its object a Pod with only a resourceVersion) or any object without a UID says nothing
    about the plugin's pod: it was taken for another pod of its name, so the running plugin counted as gone."""
    runner = _runner(kubeconfig, "import time; time.sleep(60)", api_timeout=2)
    try:
        mine = runner._pod.uid
        assert until(lambda: runner._podwatch.watching(), 10)
        assert server.bookmark_pod_watches() >= 1
        with server.store.lock:  # a MODIFIED event whose object lacks its UID
            obj = server.store.get("default", runner.pod_name) or {}
            del obj["metadata"]["uid"]
            obj["status"] = {"phase": "Failed", "containerStatuses": [
                {"name": "plugin", "state": {"terminated": {"exitCode": 7}}}]}
            for w in server.store.watchers:
                w.events.put(("MODIFIED", obj))
        assert runner.wait(2) is None  # still running: neither event was the pod's
        assert not runner._podwatch.gone
        assert (runner._podwatch.pod or {}).get("metadata", {}).get("uid") == mine
        server.delete_pod("default", runner.pod_name, 0)
        assert runner.wait(10) == -1  # its real deletion is still seen
    finally:
        runner.kill(0)


def _stranger_takes_the_name(server: StandIn, api: Any, runner: KubernetesRunner) -> None:
    """The runner's pod is deleted and another pod, printing "stranger", is made under its name."""
    server.delete_pod("default", runner.pod_name, 0)
    assert until(lambda: server.store.get("default", runner.pod_name) is None, 10)
    api.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": runner.pod_name, "labels": {"app": "other"}},
        "spec": {"containers": [{"name": "plugin", "image": "other/app:1", "command": [
            sys.executable, "-c", "import time\nwhile True: print('stranger', flush=True); time.sleep(0.1)"]}]}})


def _end_with_the_stranger(api: Any, runner: KubernetesRunner) -> None:
    from kubernetes import client

    try:
        runner.kill(0)
    except RunnerError:
        pass  # the stranger has the name: the UID precondition refuses it (409), the runner closes up
    try:
        api.delete_namespaced_pod(runner.pod_name, "default", grace_period_seconds=0)
    except client.ApiException:
        pass


@pytest.mark.timeout(60)
def test_the_log_of_a_pod_that_took_the_plugin_pods_name_is_not_followed(server: StandIn, kubeconfig: str) -> None:
    """The plugin's log ends with its pod; the log API reads by name, so a reopen while the API could not
    say the pod was gone followed the stranger that took the name: its lines were the plugin's."""
    from kubernetes import client, config

    runner = _runner(kubeconfig, "import time\nwhile True: print('mine', flush=True); time.sleep(0.1)",
                     api_timeout=2)
    api = client.CoreV1Api(config.new_client_from_config(kubeconfig))
    lines = runner.stderr_lines()
    try:
        assert next(lines) == "mine"
        server.fail("watch", "pods")  # the watch and the reads cannot tell the pod went
        server.fail("get", "pods")
        _stranger_takes_the_name(server, api, runner)
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.extend(lines), daemon=True)
        reader.start()
        time.sleep(5)  # the log's reopens (backed off) have come and gone by then
        assert "stranger" not in seen
    finally:
        server.allow_all()
        _end_with_the_stranger(api, runner)


@pytest.mark.timeout(60)
def test_a_log_opened_on_a_stranger_holding_the_pods_name_is_refused_by_its_uid(server: StandIn,
                                                                                kubeconfig: str) -> None:
    """Reads work and find a pod under the name, but another one (its UID): the (re)opened stream is the
    stranger's and is closed, on a reopen and on a first open alike."""
    from kubernetes import client, config

    runner = _runner(kubeconfig, "import time\nwhile True: print('mine', flush=True); time.sleep(0.1)",
                     api_timeout=2)
    api = client.CoreV1Api(config.new_client_from_config(kubeconfig))
    try:
        _stranger_takes_the_name(server, api, runner)

        def stranger_logs() -> bool:  # its log opens: only the UID comparison can refuse it
            try:
                return "stranger" in api.read_namespaced_pod_log(runner.pod_name, "default", container="plugin")
            except client.ApiException:
                return False
        assert until(stranger_logs, 10)
        for first in (False, True):
            with pytest.raises(RunnerError, match="its log is not followed"):
                runner._pod.open_log(5, first=first)
    finally:
        _end_with_the_stranger(api, runner)


@pytest.mark.timeout(120)
def test_close_ends_a_watch_whose_answer_comes_after_it(server: StandIn, kubeconfig: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """close() before the watch's first response: the client's Watch.stop() found no response to shut, and the
    answer that came next was read until the server ended the watch (WATCH_SECONDS, here long: close() gave
    up on the thread). Now close() ends the head still awaited, and an answer that comes after it is shut."""
    from kubernetes import client

    from plugbay.runners.kubernetes import watch as watch_mod
    from plugbay.runners.kubernetes.api import close_client, load_api_client

    monkeypatch.setattr(watch_mod, "WATCH_SECONDS", 300)
    api_client, _ = load_api_client(kubeconfig)
    watch = watch_mod.PodWatch(client.CoreV1Api(api_client), "default", lambda: None, api_timeout=30)
    server.hold("watch", "pods")  # the watch's request is taken, its answer held back
    try:
        watch.start("plugbay-not-created")  # no such pod: its watch sends no event, only ends at its timeout
        assert server.holding.wait(30)
        closing = threading.Thread(target=watch.close)
        closing.start()
        assert until(watch.stop.is_set, 10)
        time.sleep(0.2)  # close() is past its stop (no timing asserted: the answer is to come after it)
        server.release()  # the held answer goes out now
        closing.join(90)
        assert watch._thread is not None and not watch._thread.is_alive()  # the watch ended, not given up on
    finally:
        server.release()
        close_client(api_client)
