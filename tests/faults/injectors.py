"""The fault injectors: each breaks the running plugin one way and may return how to heal it.

An injector gets the Supervisor, the target and the Caller of the current
injection; it returns None (the fault heals by restart) or a function the
runner calls ``heal_after`` seconds later (SIGCONT, unpause, link up, ...).
Healing functions tolerate a plugin that the Supervisor already replaced.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

from tests.faults import targets
from tests.faults.probe import Caller
from tests.faults.targets import NET_PORT, Target, Unavailable

Heal = Callable[[], None]


@dataclass(frozen=True)
class Fault:
    name: str
    target: Callable[[Path], ContextManager[Target]]
    inject: Callable[[Any, Target, Caller], Heal | None]
    heal_after: float = 0.0
    unhealthy_grace: float = 1.5  # the Supervisor restarts a plugin unhealthy this long
    budget: float = 30.0  # fault -> first successful call must happen within this
    mark: str | None = None  # the pytest marker of the parts it needs


def _pid(sup: Any) -> int:
    client = sup.current_client
    if client is None or not isinstance(getattr(client.runner, "pid", None), int):
        raise RuntimeError("no running plugin process to fault")
    return int(client.runner.pid)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # the Supervisor already replaced it


def kill9(sup: Any, target: Target, caller: Caller) -> Heal | None:
    os.kill(_pid(sup), signal.SIGKILL)
    return None


def sigstop(sup: Any, target: Target, caller: Caller) -> Heal | None:
    pid = _pid(sup)
    os.kill(pid, signal.SIGSTOP)
    return lambda: _signal(pid, signal.SIGCONT)


def hang(sup: Any, target: Target, caller: Caller) -> Heal | None:
    """A handler that never returns (trap_kv's __hang__): the call itself must end at its deadline."""
    from plugbay import CallTimeoutError

    ok, result = caller.call("Get", "__hang__")
    if not isinstance(result, CallTimeoutError):
        caller.record.unexpected.append(f"the __hang__ call ended with {result!r}, not a CallTimeoutError")
    return None


def _container(sup: Any) -> str:
    client = sup.current_client
    if client is None:
        raise RuntimeError("no running container to fault")
    return str(client.runner.reattach_data()["id"])


def docker_kill(sup: Any, target: Target, caller: Caller) -> Heal | None:
    target.handles["docker"].api.kill(_container(sup))
    return None


def docker_pause(sup: Any, target: Target, caller: Caller) -> Heal | None:
    api = target.handles["docker"].api
    cid = _container(sup)
    api.pause(cid)

    def heal() -> None:
        from docker.errors import APIError

        try:
            api.unpause(cid)
        except APIError:
            pass  # removed by the Supervisor's restart, or already running

    return heal


def blackhole(sup: Any, target: Target, caller: Caller) -> Heal | None:
    ns = target.handles["ns"]
    ns.partition()
    return ns.heal  # type: ignore[no-any-return]


def _tc(*args: str) -> None:
    subprocess.run(["tc", "qdisc", *args], check=True, capture_output=True, timeout=10)


def latency(sup: Any, target: Target, caller: Caller) -> Heal | None:
    ns = target.handles["ns"]
    try:
        _tc("add", "dev", ns.host_if, "root", "netem", "delay", "300ms", "50ms")
    except (OSError, subprocess.CalledProcessError) as exc:
        why = getattr(exc, "stderr", b"") or str(exc).encode()
        raise Unavailable("tc netem cannot add latency here (the kernel lacks sch_netem, CONFIG_NET_SCH_NETEM):"
                          f" {why.decode(errors='replace').strip()}") from None

    def heal() -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", ns.host_if, "root"], capture_output=True, timeout=10,
                       check=False)

    return heal


def reset(sup: Any, target: Target, caller: Caller) -> Heal | None:
    ns = target.handles["ns"]
    if not ns.iptables_works():
        raise Unavailable("iptables does not work inside the test's network namespace")
    ns.reject(NET_PORT)
    return ns.accept  # type: ignore[no-any-return]


def pod_delete(sup: Any, target: Target, caller: Caller) -> Heal | None:
    client = sup.current_client
    if client is None:
        raise RuntimeError("no running pod to fault")
    target.handles["standin"].delete_pod("default", client.runner.pod_name, 0)
    # The API object goes at once, the container a moment later: the fault is in effect once the
    # host sees the plugin gone (until then the old pod still answers, and that is no outage).
    client.runner.wait(30)
    return None


FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("kill9-python", targets.process, kill9),
    Fault("kill9-go", targets.go_process, kill9, mark="go"),
    Fault("sigstop", targets.process, sigstop, heal_after=0.6),
    Fault("hang", targets.trap_process, hang),
    Fault("docker-kill", targets.docker, docker_kill, budget=60, mark="docker"),
    Fault("docker-pause", targets.docker, docker_pause, heal_after=0.6, budget=60, mark="docker"),
    Fault("net-blackhole", targets.netns, blackhole, heal_after=1.0, unhealthy_grace=3.0, mark="netns"),
    Fault("net-latency", targets.netns, latency, heal_after=1.0, unhealthy_grace=3.0, mark="netns"),
    Fault("net-reset", targets.netns, reset, heal_after=1.0, unhealthy_grace=3.0, mark="netns"),
    Fault("pod-delete", targets.kube, pod_delete, budget=90, mark="kubernetes"),
    # host-kill has its own loop (tests.faults.hostkill): the host, not the plugin, dies
]}
