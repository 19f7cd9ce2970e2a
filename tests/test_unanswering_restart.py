"""A Supervisor restarting a plugin that stopped answering ends it outright, so calls sent to it never run.

The restart of a plugin whose health checks went unanswered (SIGSTOPped here) asked it to Shutdown and
waited that out, then sent SIGTERM with SIGCONT and gave it a grace: continued, the plugin finished the
calls already sent to it. A put whose caller was told the plugin was restarted took effect, or (the
Python KV plugin, which ends gracefully on SIGTERM) even answered its caller after the restart. Now such
a restart kills the plugin at once (the runner's forced stop: SIGKILL for a process), and the caller in
flight is told the call may have run (it may have, before the plugin stopped answering).

Real parts: the KV example's Python plugin as a child process, frozen with SIGSTOP, and in a Docker
container, paused.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.procs import children, gone, stopped
from tests.resilience_util import HANDSHAKE, KV_EXAMPLE, PLUGIN_NAME, PLUGINS, PY, faulty_config, wait_until

from plugbay import Client, ClientConfig, PluginDiedError, ReattachConfig, RestartPolicy, Supervisor  # noqa: E402

SLOW_HEALTH = str(Path(__file__).resolve().parent / "plugins" / "slow_health_kv.py")
FAST = RestartPolicy(max_restarts=3, window=120, initial_backoff=0.05, max_backoff=0.2)


def _supervised(tmp_path: Path, reattach: ReattachConfig | None = None, **config: Any) -> Supervisor:
    """A Supervisor whose health checks tell an unanswering plugin within about a second."""
    return Supervisor(lambda: faulty_config(tmp_path, **config), reattach=reattach, restart=FAST,
                      health_interval=0.3, health_timeout=0.3, unhealthy_grace=0.6)


def _first_plugin(sup: Supervisor) -> tuple[Any, Client, int]:
    """The KV stub (with "a" put), the first Client and its plugin's pid."""
    kv = sup.dispense(PLUGIN_NAME)
    kv.put("a", b"1")
    old = sup.current_client
    assert old is not None and old.runner.pid is not None
    return kv, old, old.runner.pid


def test_a_put_sent_to_a_plugin_that_stopped_answering_never_runs(tmp_path: Path) -> None:
    with _supervised(tmp_path, cmd=[PY, KV_EXAMPLE], call_timeout=60.0) as sup:
        kv, old, pid = _first_plugin(sup)
        os.kill(pid, signal.SIGSTOP)
        assert wait_until(lambda: stopped(pid), 10)
        with pytest.raises(PluginDiedError) as info:
            kv.put("b", b"2")  # sent to the frozen plugin; its health checks go unanswered: restarted
        error = info.value
        assert getattr(error, "sent", None) is True and "may have run" in str(error), error
        assert wait_until(lambda: gone(pid), 10)
        # killed outright (a bound, not a timing: the Supervisor's thread may not have reaped it yet)
        assert old.runner.wait(10) == -signal.SIGKILL  # never continued to finish the put
        assert sup.wait_running(30) and sup.restarts == 1
        assert kv.get("a") == b"1"
        with pytest.raises(grpc.RpcError) as missing:
            kv.get("b")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND, missing.value
    assert not (tmp_path / "kv_b").exists()


def test_a_put_sent_to_a_frozen_reattached_plugin_never_runs(tmp_path: Path) -> None:
    """The runner of a reattached plugin (runners.attached) could not tell it was frozen: the restart sent it
    SIGTERM with SIGCONT, and the continued plugin finished the put. Now it too is killed outright."""
    first = Client(faulty_config(tmp_path, cmd=[PY, KV_EXAMPLE]))
    first.start()
    try:
        pid = first.runner.pid
        assert pid is not None
        with _supervised(tmp_path, first.reattach_config(), cmd=[PY, KV_EXAMPLE], call_timeout=60.0) as sup:
            kv = sup.dispense(PLUGIN_NAME)
            kv.put("a", b"1")
            assert sup.current_client is not None and sup.current_client.runner.pid == pid  # reattached
            os.kill(pid, signal.SIGSTOP)
            assert wait_until(lambda: stopped(pid), 10)
            with pytest.raises(PluginDiedError) as info:
                kv.put("b", b"2")
            assert "may have run" in str(info.value), info.value
            # the first Client, in this process, started it and reads how it ended
            assert first.runner.wait(10) == -signal.SIGKILL  # never continued to finish the put
            assert sup.wait_running(30) and sup.restarts == 1
            assert kv.get("a") == b"1"
    finally:
        first.kill()
    assert not (tmp_path / "kv_b").exists()


def test_a_put_sent_to_a_wrapped_plugin_whose_server_stopped_answering_never_runs(tmp_path: Path) -> None:
    """A plugin launched through a wrapper that does not exec it (``sh -c '...; exit $?'``) is served by the
    wrapper's child. That child stopped while the wrapper waits for it, the runner read the wrapper alone
    (running) and said the plugin was not frozen: the restart sent SIGTERM with SIGCONT, and the continued
    server finished the put. Now the whole tree the runner started is read."""
    wrapped = ["/bin/sh", "-c", '"$0" "$1"; exit $?', PY, KV_EXAMPLE]
    server = 0
    try:
        with _supervised(tmp_path, cmd=wrapped, call_timeout=60.0) as sup:
            kv, old, pid = _first_plugin(sup)
            kids = children(pid, zombies=False)
            assert len(kids) == 1, kids  # the wrapper waits for the server it started
            server = kids[0]
            assert not old.runner.frozen()
            os.kill(server, signal.SIGSTOP)
            assert wait_until(lambda: stopped(server), 10)
            assert old.runner.frozen()
            with pytest.raises(PluginDiedError) as info:
                kv.put("b", b"2")  # sent to the stopped server; its health checks go unanswered: restarted
            assert "may have run" in str(info.value), info.value
            assert wait_until(lambda: gone(server), 10)
            assert old.runner.wait(10) == -signal.SIGKILL  # the wrapper's group SIGKILLed, never continued
            assert sup.wait_running(30) and sup.restarts == 1
            assert kv.get("a") == b"1"
    finally:
        if server:  # ended by the test's failure, not the restart: continued, then killed
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(server, sig)
                except ProcessLookupError:
                    pass
    assert not (tmp_path / "kv_b").exists()


def _slowed_then_restarted_by_sigterm(tmp_path: Path, sup: Supervisor, kv: Any, old: Client, pid: int) -> None:
    """Stalls the SLOW_HEALTH plugin's health service: restarted, it ends by SIGTERM after its own cleanup ran,
    and the new one serves what the old one held."""
    (tmp_path / "slow").write_text("1")  # its health checks go unanswered: restarted
    try:
        assert wait_until(lambda: gone(pid), 60), "the unanswering plugin was not restarted"
    finally:
        (tmp_path / "slow").unlink()
    assert old.runner.wait(10) != -signal.SIGKILL
    assert (tmp_path / "cleaned").exists(), "the plugin's own cleanup did not run (SIGKILLed?)"
    assert sup.wait_running(30) and sup.restarts == 1
    assert kv.get("a") == b"1"


def test_a_slow_plugin_that_is_not_frozen_is_ended_with_sigterm_and_runs_its_cleanup(tmp_path: Path) -> None:
    """A plugin whose health checks time out while it runs (here its health service stalls, as under load)
    was SIGKILLed at once by the restart, as a frozen one is: its own cleanup (after serve() returns on
    SIGTERM) never ran. Now only a frozen plugin is killed outright; a running one gets SIGTERM and the grace."""
    with _supervised(tmp_path, cmd=[PY, SLOW_HEALTH], kill_grace=30.0) as sup:
        kv, old, pid = _first_plugin(sup)
        _slowed_then_restarted_by_sigterm(tmp_path, sup, kv, old, pid)


# the slow plugin, started by a wrapper (no exec) that first starts a helper of its own and stops it
STOPS_A_HELPER = ("import os,runpy,signal,subprocess,sys\n"
                  "helper = subprocess.Popen(['sleep', '60']); os.kill(helper.pid, signal.SIGSTOP)\n"
                  "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')\n")


def test_a_slow_plugin_with_a_stopped_helper_is_not_frozen_and_is_ended_with_sigterm(tmp_path: Path) -> None:
    """A stopped process of the plugin's own that serves nothing (here a helper it stopped) made the runner
    say the plugin was frozen though it answered: kill() skipped its Shutdown, and a restart SIGKILLed it
    at once, its cleanup never run. Only the processes holding the plugin's listener are read now.

    It guards the listener-based frozen(), not a bug of the code before it: it passes there too, by design.
    It keeps a later change from judging the plugin by a process that serves nothing."""
    helper = 0
    try:
        with _supervised(tmp_path, cmd=[PY, "-c", STOPS_A_HELPER, SLOW_HEALTH], kill_grace=30.0) as sup:
            kv, old, pid = _first_plugin(sup)
            kids = children(pid, zombies=False)
            assert len(kids) == 1, kids
            helper = kids[0]
            assert wait_until(lambda: stopped(helper), 10)
            assert not old.runner.frozen()  # it answers
            _slowed_then_restarted_by_sigterm(tmp_path, sup, kv, old, pid)
    finally:
        if helper and not gone(helper):  # the plugin's group is ended with it; this is for a failure before that
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(helper, sig)
                except ProcessLookupError:
                    pass


@pytest.mark.docker
def test_a_put_sent_to_a_paused_container_fails_restarted_not_served_by_the_thaw(
        plugbay_docker: Any, plugbay_image: Callable[[str], str]) -> None:
    """The Docker runner's stop without grace thawed a paused container before it stopped it: in that
    moment the plugin finished the put and answered it, after its Supervisor had judged it gone. Now a
    paused container is SIGKILLed while still frozen."""
    from plugbay.runners.docker import DockerRunner

    def config() -> ClientConfig:
        return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, call_timeout=60.0,
                            runner=DockerRunner(plugbay_image("kv"), writable_dirs=("/tmp", "/data")))

    with Supervisor(config, restart=FAST, health_interval=0.3, health_timeout=0.5, unhealthy_grace=0.6) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        kv.put("a", b"1")
        old = sup.current_client
        assert old is not None
        plugbay_docker.api.pause(old.runner.id)  # type: ignore[attr-defined]
        with pytest.raises(PluginDiedError) as info:
            kv.put("b", b"2")
        assert "may have run" in str(info.value), info.value
        assert sup.wait_running(60) and sup.restarts == 1
        kv.put("c", b"3")  # the restarted container serves
