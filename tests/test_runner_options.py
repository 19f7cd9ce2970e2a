"""The container runners' options: a wrong type or value is a ConfigError from the constructor naming the
option, before anything is created (no container, socket folder or pod), not a bare TypeError,
OverflowError or AttributeError from deep inside start()."""

from __future__ import annotations

import glob
import math
import os
import tempfile
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plugbay.errors import ConfigError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner
from plugbay.runners.docker.engine import SOCKET_DIR_PREFIX
from plugbay.runners.kubernetes import KubernetesRunner
from tests.kube_standin.fixtures import kubeconfig, standin  # noqa: F401

BASE = "plugbay-base:bookworm"

DOCKER_BAD: list[tuple[str, Any]] = [
    ("image", 5), ("image", b"x"), ("image", None),
    ("digest", 5), ("digest", b"sha256:00"),
    ("name", 5), ("name", "no spaces allowed"), ("name", "a"), ("name", "/"), ("name", "//kv"),
    ("extra_create_args", "x"), ("extra_create_args", ("a", "b")),
    ("cpus", math.inf), ("cpus", 1e300), ("cpus", math.nan), ("cpus", "1"), ("cpus", 1e-12), ("cpus", True),
    ("nano_cpus", -1), ("nano_cpus", 1.5), ("nano_cpus", 2**63),
    ("mem_limit", -1), ("mem_limit", 1.5), ("mem_limit", ""), ("mem_limit", "lots"), ("mem_limit", "0"),
    ("mem_limit", "-5m"), ("mem_limit", "64x"), ("mem_limit", "0.1"), ("mem_limit", "infm"),
    ("pids_limit", math.nan), ("pids_limit", "10"),
    ("socket_gid", math.nan), ("socket_gid", -5), ("socket_gid", 2**32 - 1), ("socket_gid", "100"),
    ("writable_dirs", None), ("writable_dirs", 5), ("writable_dirs", (1,)), ("writable_dirs", b"x"),
    ("cap_drop", None), ("cap_drop", "ALL"), ("cap_drop", 5),
    ("env", "x"), ("env", -1), ("env", {"A": 1}), ("env", {"A": "v\udcff"}),
    ("mounts", None), ("mounts", 5), ("mounts", [5]),
    ("tmpfs", "x"), ("tmpfs", {"/cache": 5}),
    ("entrypoint", 5), ("entrypoint", "python3"), ("command", b"x"), ("command", "true"), ("command", {"-v"}),
    ("entrypoint", frozenset({"/p"})), ("writable_dirs", {"/tmp": 1}), ("cap_drop", iter([5])),
    ("tmpfs_size", "lots"), ("tmpfs_size", 64), ("tmpfs_size", "64m,exec"),
    ("runtime", 5), ("runtime", ""), ("network", 5), ("labels", ""), ("labels", 5),
    ("read_only", "yes"), ("no_new_privileges", None),
]


@pytest.mark.parametrize(("option", "value"), DOCKER_BAD, ids=[f"{o}={v!r:.20}" for o, v in DOCKER_BAD])
def test_docker_runner_refuses_a_wrong_option_by_name(option: str, value: Any) -> None:
    kwargs = {"image": BASE, option: value}
    with pytest.raises(ConfigError, match=option):
        DockerRunner(**kwargs)


def test_docker_runner_still_takes_the_edges() -> None:
    assert DockerRunner(BASE, cpus=1e-9).nano_cpus == 1  # never 0, which the engine reads as no limit
    assert DockerRunner(BASE, cpus=2).nano_cpus == 2_000_000_000
    for size in ("256m", "256MB", "1.5g", "100", "100b", "256 m", ".5g"):  # what the engine client's parser takes
        assert DockerRunner(BASE, mem_limit=size).mem_limit == size
    assert DockerRunner(BASE, socket_gid=0).socket_gid == 0
    assert DockerRunner(BASE, socket_gid=2**32 - 2).socket_gid == 2**32 - 2
    assert DockerRunner(BASE, writable_dirs="/data").writable_dirs == ["/data"]
    assert DockerRunner(BASE, name="").container_name.startswith("plugbay-")
    assert DockerRunner(BASE, tmpfs_size="10%", mem_limit=64 * 2**20, pids_limit=-1, labels=["a"]).labels == {"a": ""}


def test_docker_runner_takes_real_numbers_iterables_and_the_engines_forms() -> None:
    """Taken before these checks (and by the engine): kept as int, float and lists."""
    assert DockerRunner(BASE, cpus=Fraction(1, 2)).nano_cpus == 500_000_000
    runner = DockerRunner(BASE, cpus=np.int64(2), pids_limit=np.int64(100), socket_gid=np.int64(5),
                          stop_timeout=Fraction(5), mem_limit=np.int64(2**26))
    assert (runner.nano_cpus, runner.pids_limit, runner.socket_gid, runner.stop_timeout, runner.mem_limit) == (
        2_000_000_000, 100, 5, 5.0, 2**26)
    assert [type(v) for v in (runner.nano_cpus, runner.pids_limit, runner.socket_gid, runner.mem_limit)] == [int] * 4
    assert type(DockerRunner(BASE, nano_cpus=np.int64(5)).nano_cpus) is int
    for size in ("1t", "1T", "2P", "3e", "64m", "10%"):
        assert DockerRunner(BASE, tmpfs_size=size).tmpfs_size == size
    assert DockerRunner(BASE, name="/kv").container_name == "/kv"  # the engine takes a leading '/'
    assert DockerRunner(BASE, name="ab").container_name == "ab"
    assert DockerRunner(BASE, writable_dirs={"/tmp"}, cap_drop={"ALL"}).writable_dirs == ["/tmp"]
    assert DockerRunner(BASE, writable_dirs={"/data": 1}.keys()).writable_dirs == ["/data"]
    runner = DockerRunner(BASE, command=(w for w in ["--v"]), entrypoint=iter(["/p"]), cap_drop=(c for c in ["ALL"]))
    assert (runner.command, runner.entrypoint, runner.cap_drop) == (["--v"], ["/p"], ["ALL"])
    with pytest.raises(ConfigError, match=r"command must be a list of strings in order .*a set has no order"):
        DockerRunner(BASE, command={"--v"})


def test_kubernetes_runner_takes_real_numbers_iterables_and_path_objects() -> None:
    runner = KubernetesRunner("x", namespace="d", api_client=_Api(), run_as_user=np.int64(1000),
                              writable_dirs={"/tmp"}, command=(w for w in ["/p"]), args=iter(["-v"]),
                              start_timeout=Fraction(60), kubeconfig=Path("/etc/kube/config"))
    opts = runner._opts
    assert (opts["run_as_user"], opts["writable_dirs"], opts["command"], opts["args"]) == (1000, ("/tmp",), ["/p"],
                                                                                           ["-v"])
    assert type(opts["run_as_user"]) is int and runner.start_timeout == 60.0
    # a str for the client (a Path was split as KUBECONFIG's list: a bare AttributeError) and reattach_data's JSON
    assert runner._kubeconfig == "/etc/kube/config"
    with pytest.raises(ConfigError, match="command must be a list of strings in order"):
        KubernetesRunner("x", namespace="d", api_client=_Api(), command={"/p"})


def _socket_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), SOCKET_DIR_PREFIX + "*")))


# each was taken by the old constructor: start() then failed bare (socket_gid) or ran a container
# from a command split into characters
STARTED_BAD = [("socket_gid", -5), ("socket_gid", math.nan), ("command", "true"), ("cpus", 1e300)]


@pytest.mark.docker
@pytest.mark.parametrize(("option", "value"), STARTED_BAD, ids=[f"{o}={v!r}" for o, v in STARTED_BAD])
def test_docker_refusal_creates_nothing(plugbay_docker: Any, option: str, value: Any) -> None:
    mark = uuid.uuid4().hex
    dirs = _socket_dirs()
    made: list[DockerRunner] = []
    try:
        with pytest.raises(ConfigError, match=option):
            runner = DockerRunner(BASE, **{option: value})
            made.append(runner)
            runner.start(LaunchSpec(env={}, labels={"plugbay-test-mark": mark}))
        assert plugbay_docker.containers.list(all=True, filters={"label": f"plugbay-test-mark={mark}"}) == []
        assert _socket_dirs() - dirs == set()
    finally:
        for runner in made:
            runner.kill(0)


class _Api:
    """An api_client stand-in: the constructor's checks come before any call on it."""


KUBE_BAD: list[tuple[str, Any]] = [
    ("image", 5), ("image", ""), ("namespace", 5),
    ("labels", 5), ("labels", "x"), ("labels", {"team": 5}),
    ("env", "x"), ("env", {"A": 1}), ("env", -1), ("env", {"A": "v\udcff"}),
    ("container_port", "80"), ("container_port", None), ("container_port", True), ("container_port", 70000),
    ("writable_dirs", None), ("writable_dirs", 5), ("writable_dirs", [["/tmp"]]), ("writable_dirs", ("tmp",)),
    ("host_id", 5), ("host_id", b"x"), ("host_id", ("a",)),
    ("resources", "x"), ("node_selector", "x"), ("node_selector", {"a": 1}), ("pod_template", 5),
    ("tolerations", "x"), ("tolerations", [5]),
    ("run_as_user", "1000"), ("run_as_user", -1), ("run_as_user", 1.5),
    ("command", "ls"), ("command", 5), ("args", b"x"), ("command", {"/p"}), ("args", frozenset({"-v"})),
    ("writable_dirs", {"/tmp": 1}),
    ("service_account", 5), ("kubeconfig", 5), ("context", 5), ("owner_reference", "yes"),
    ("start_timeout", math.nan), ("start_timeout", "60"),
]


@pytest.mark.parametrize(("option", "value"), KUBE_BAD, ids=[f"{o}={v!r:.20}" for o, v in KUBE_BAD])
def test_kubernetes_runner_refuses_a_wrong_option_by_name(option: str, value: Any) -> None:
    kwargs = {"image": "plugbay-kv:latest", "namespace": "default", "api_client": _Api(), option: value}
    with pytest.raises(ConfigError, match=option):
        KubernetesRunner(**kwargs)


def test_kubernetes_runner_still_takes_the_usual() -> None:
    runner = KubernetesRunner("x", namespace="d", api_client=_Api(), writable_dirs="/data", host_id="",
                              tolerations=({"key": "k", "operator": "Exists"},), run_as_user=0, command=[])
    assert runner._opts["writable_dirs"] == ("/data",)


# taken by the old constructor: start() then failed bare building the manifest, or made a pod from a
# command split into characters
KUBE_STARTED_BAD = [("labels", {"team": 5}), ("command", "ls"), ("tolerations", "x"), ("writable_dirs", 5)]


@pytest.mark.kubernetes
@pytest.mark.parametrize(("option", "value"), KUBE_STARTED_BAD, ids=[f"{o}={v!r}" for o, v in KUBE_STARTED_BAD])
def test_kubernetes_refusal_creates_no_pod(kubeconfig: str, option: str, value: Any) -> None:  # noqa: F811
    from tests.test_kubernetes_runner import pods_of_session

    made: list[KubernetesRunner] = []
    try:
        with pytest.raises(ConfigError, match=option):
            runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, start_timeout=10, **{option: value})
            made.append(runner)
            runner.start(LaunchSpec(env={}, labels={"plugbay.plugin": "options"}))
        assert pods_of_session(kubeconfig) == []
    finally:
        for runner in made:
            runner.kill(0)


def test_a_raw_byte_in_the_launch_environment_is_refused_before_anything_starts() -> None:
    """A container's or a pod's environment goes out as UTF-8 JSON: a cookie holding a byte that is not
    UTF-8 ('\\udcff', as os.environ shows one) is a ConfigError naming the variable, before an engine or
    API call (a process plugin takes it)."""
    spec = LaunchSpec(env={"RAW_COOKIE": "v\udcff"})
    for runner in (DockerRunner(BASE), KubernetesRunner("x", namespace="d", api_client=_Api())):
        with pytest.raises(ConfigError, match="cannot send environment variable 'RAW_COOKIE'"):
            runner.start(spec)


def _plugin_container(**kwargs: Any) -> Any:
    from tests import serverproc  # noqa: F401  (puts examples/kv on sys.path)
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay.testing import PluginContainer

    return PluginContainer(**{"image": BASE, "handshake": HANDSHAKE, "plugins": {PLUGIN_NAME: KVPlugin()},
                              **kwargs})


PC_BAD: list[tuple[str, Any]] = [
    ("image", 5), ("image", None), ("image", b"x"), ("versioned_plugins", 5), ("versioned_plugins", "x"),
    ("plugins", 5), ("container_port", "4000"), ("container_port", 0),
    ("start_timeout", math.nan), ("start_timeout", "60"), ("start_timeout", 0),
    ("call_timeout", math.inf), ("call_timeout", -1),
]


@pytest.mark.parametrize(("option", "value"), PC_BAD, ids=[f"{o}={v!r:.20}" for o, v in PC_BAD])
def test_plugin_container_refuses_a_wrong_option_by_name(option: str, value: Any) -> None:
    pytest.importorskip("testcontainers")
    with pytest.raises(ConfigError, match=option):
        _plugin_container(**{option: value})
