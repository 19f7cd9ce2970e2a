"""Where the faulted plugin runs: a process, the Go plugin, a container, a network namespace, a pod.

Each target is a context manager yielding a :class:`Target`: a config factory
the Supervisor restarts from, whether acknowledged writes must survive a
restart (the KV plugins keep kv_<key> files in their working folder, which the
target keeps across restarts), and a check for anything the target itself
could leave behind (a volume, a namespace, a pod).
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO / "examples" / "kv", REPO / "src", REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import ClientConfig, ProcessRunner  # noqa: E402

PY = sys.executable
KV_EXAMPLE = str(REPO / "examples" / "kv" / "plugin.py")
TRAP_KV = str(REPO / "tests" / "plugins" / "trap_kv.py")
NET_PORT = 4000
# Reconnect soon after a network fault heals (gRPC's default first backoff is 1 s).
FAST_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500),
                  ("grpc.min_reconnect_backoff_ms", 100))


class Unavailable(Exception):
    """A part the target needs cannot exist here (the test skips with this reason)."""


@dataclass
class Target:
    name: str
    factory: Callable[[], ClientConfig]
    durable: bool = True  # acknowledged writes must survive the fault
    infra: bool = False  # an in-process Kubernetes stand-in runs (see probe.Snapshot.leaks_since)
    leftovers: Callable[[], list[str]] = field(default=list)
    handles: dict[str, Any] = field(default_factory=dict)


def kv_config(runner: Any, **kw: Any) -> ClientConfig:
    kw.setdefault("start_timeout", 60.0)
    kw.setdefault("call_timeout", 5.0)
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner, **kw)


@contextlib.contextmanager
def process(workdir: Path, cmd: list[str] | None = None, name: str = "python-kv") -> Iterator[Target]:
    cwd = workdir / name
    cwd.mkdir(exist_ok=True)
    argv = cmd or [PY, KV_EXAMPLE]
    yield Target(name, lambda: kv_config(ProcessRunner(argv, cwd=cwd)))


@contextlib.contextmanager
def go_process(workdir: Path) -> Iterator[Target]:
    from tests import gobuild

    reason = gobuild.go_missing_reason()
    if reason:
        raise Unavailable(f"the Go KV plugin cannot be built: {reason}")
    binary = str(gobuild.build_go("kv_plugin"))
    with process(workdir, [binary], "go-kv") as target:
        yield target


@contextlib.contextmanager
def trap_process(workdir: Path) -> Iterator[Target]:
    with process(workdir, [PY, TRAP_KV], "trap-kv") as target:
        yield target


def docker_client() -> Any:
    import os

    if not os.path.exists("/var/run/docker.sock"):
        raise Unavailable("no Docker engine socket at /var/run/docker.sock")
    try:
        import docker

        client = docker.from_env(version="auto")
        client.ping()
        return client
    except Exception as exc:
        raise Unavailable(f"the Docker engine does not answer: {exc}") from exc


_IMAGES: dict[str, str] = {}
FAULTS_KV_TAG = "plugbay-faults-kv:latest"


def kv_image(client: Any) -> str:
    """The KV example image under the suite's own tag (built once per process, when out of date).

    Its own tag: the shared example tag is rebuilt by every checkout whose sources differ.
    """
    if FAULTS_KV_TAG not in _IMAGES:
        from plugbay.images import EXAMPLES, build_plugin_image

        recipe = EXAMPLES["kv"]
        build_plugin_image(FAULTS_KV_TAG, recipe.source(), recipe.entry, progress=lambda line: None,
                           client=client)
        _IMAGES[FAULTS_KV_TAG] = FAULTS_KV_TAG
    return _IMAGES[FAULTS_KV_TAG]


@contextlib.contextmanager
def docker(workdir: Path) -> Iterator[Target]:
    """The KV example image; /data (its working folder) is a named volume that outlives containers."""
    from docker.types import Mount

    from plugbay.runners.session import HOST_SESSION_ID
    from plugbay.runners.docker import DockerRunner

    client = docker_client()
    tag = kv_image(client)
    volume = f"plugbay-faults-{secrets.token_hex(4)}"
    client.volumes.create(volume, labels={"plugbay.session": HOST_SESSION_ID, "plugbay.test": "faults"})

    def leftovers() -> list[str]:  # called after the target closed: its own engine connection
        own = docker_client()
        try:
            left = [f"docker volume {v.name}" for v in own.volumes.list(filters={"name": volume})]
            found = own.containers.list(all=True, filters={"label": f"plugbay.session={HOST_SESSION_ID}"})
            return left + [f"container {c.short_id} ({c.name}, {c.status})" for c in found]
        finally:
            own.close()

    try:
        yield Target("docker-kv", lambda: kv_config(DockerRunner(
            tag, mounts=[Mount("/data", volume, type="volume")])), leftovers=leftovers,
            handles={"docker": client})
    finally:
        try:
            client.volumes.get(volume).remove(force=True)
        finally:
            client.close()


@contextlib.contextmanager
def netns(workdir: Path) -> Iterator[Target]:
    """The KV example inside a private network namespace, dialed across a veth pair."""
    from tests.resilience_util import NetNS

    try:
        ns = NetNS()
    except BaseException as exc:  # NetNS skips through pytest; the bench wants a reason instead
        if type(exc).__name__ == "Skipped":
            raise Unavailable(str(exc)) from None
        raise
    cwd = workdir / "netns-kv"
    cwd.mkdir(exist_ok=True)

    def factory() -> ClientConfig:
        runner = ProcessRunner(ns.command(PY, KV_EXAMPLE), cwd=cwd,
                               env={"PLUGBAY_LISTEN": f"tcp:{ns.plugin_ip}:{NET_PORT}"},
                               trusted_networks=[f"{ns.plugin_ip}/32"])  # another namespace: not this machine's
        return kv_config(runner, grpc_options=FAST_RECONNECT)

    def leftovers() -> list[str]:
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
        return [f"network namespace {ns.name}"] if ns.name in names.split() else []

    try:
        yield Target("netns-kv", factory, leftovers=leftovers, handles={"ns": ns})
    finally:
        ns.delete()


@contextlib.contextmanager
def kube(workdir: Path, standin: Any = None, image: str | None = None) -> Iterator[Target]:
    """The KV trap image as a pod on the API stand-in; pods keep no data across a delete."""
    from plugbay.runners.kubernetes import KubernetesRunner
    from tests.kube_standin.runtime import docker_available

    if not docker_available():
        raise Unavailable("no Docker engine is running: the stand-in's pods cannot run")
    own = standin is None
    if own:
        from tests.kube_standin.server import StandIn

        standin = StandIn(runtime="docker").start()
    try:
        if image is None:
            from tests.kube_standin.images import kvtrap_image

            image = kvtrap_image()
        kubeconfig = standin.write_kubeconfig(str(workdir / "kubeconfig.yaml"))

        def factory() -> ClientConfig:
            return kv_config(KubernetesRunner(image, kubeconfig=kubeconfig, writable_dirs=("/tmp", "/data"),
                                              start_timeout=60))

        def leftovers() -> list[str]:
            from plugbay.runners.session import HOST_SESSION_ID

            pods = standin.store.list(None, f"plugbay.session={HOST_SESSION_ID}", "")
            return [f"pod {p['metadata']['name']}" for p in pods]

        yield Target("kube-kv", factory, durable=False, infra=True, leftovers=leftovers,
                     handles={"standin": standin})
    finally:
        if own:
            standin.stop()
