"""Reattach data is untrusted: a failed reattach signals or deletes nothing plugbay cannot prove it made."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.resilience_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, faulty_config

from plugbay import Client, ClientConfig, ConfigError, ReattachConfig, ReattachError, Supervisor  # noqa: I001
from plugbay.core.protocol.handshake import HandshakeInfo
from plugbay.runners.base import LaunchSpec, reattach_runner
from plugbay.runners.attached import _start_time
from plugbay.runners.process import AttachedProcess, ProcessRunner


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not a plugin (a reattach JSON might name it)."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def _reattach(pid: int, tmp_path: Path, **runner: object) -> ReattachConfig:
    info = HandshakeInfo(1, 1, "unix", str(tmp_path / "no-such.sock"))
    return ReattachConfig(handshake=info, runner={"kind": "ProcessRunner", "pid": pid, **runner})


@pytest.mark.parametrize("extra", [{}, {"start_time": "real"}, {"start_time": "real", "plugin_id": "f00"}])
def test_a_failed_reattach_leaves_a_process_that_is_not_the_plugin_alone(
        bystander: subprocess.Popen[bytes], tmp_path: Path, extra: dict[str, object]) -> None:
    if extra.get("start_time") == "real":
        extra = {**extra, "start_time": _start_time(bystander.pid)}
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS,
                                 reattach=_reattach(bystander.pid, tmp_path, **extra)))
    with pytest.raises(ReattachError, match=rf"cannot reattach to process {bystander.pid}: .*"
                       r"cannot prove it started it .*leaves it alone.*reattach_config\(\)\.to_json\(\)"):
        client.start()
    client.kill()
    assert bystander.poll() is None, "the bystander was killed"


def test_supervisor_reattach_fallback_leaves_the_named_process_alone(
        bystander: subprocess.Popen[bytes], tmp_path: Path) -> None:
    reattach = _reattach(bystander.pid, tmp_path, start_time=_start_time(bystander.pid))
    with Supervisor(lambda: faulty_config(tmp_path), reattach=reattach, health_interval=None) as sup:
        assert [e.kind for e in sup.events][:2] == ["reattach_failed", "started"]
        assert "ReattachError" in sup.events[0].detail
        sup.dispense(PLUGIN_NAME).put("a", b"1")
    assert bystander.poll() is None, "the bystander was killed"


@pytest.mark.parametrize("pid", [-1, 0, 1])
def test_reattach_refuses_pids_that_signal_groups_or_init(pid: int, tmp_path: Path) -> None:
    with pytest.raises(ReattachError, match=f"names pid {pid}, which is no plugin's"):
        reattach_runner({"kind": "ProcessRunner", "pid": pid, "start_time": 1, "plugin_id": "x"})


def test_attached_kill_checks_the_marker_again(bystander: subprocess.Popen[bytes]) -> None:
    attached = AttachedProcess(bystander.pid, _start_time(bystander.pid), "sleep", "not-its-id")
    with pytest.raises(ReattachError, match=rf"not killing process {bystander.pid}: .*does not carry"
                       r" PLUGBAY_PLUGIN_ID=not-its-id.*stop that process yourself"):
        attached.kill(0)
    assert bystander.poll() is None


def test_a_proven_plugin_is_reattached_and_killed() -> None:
    runner = ProcessRunner(["sleep", "60"])
    runner.start(LaunchSpec(env={}))
    try:
        data = runner.reattach_data()
        assert data["plugin_id"] == runner.plugin_id and len(runner.plugin_id) == 32
        attached = reattach_runner(data)
        attached.kill(0.2)
        assert runner.wait(5) is not None
    finally:
        runner.kill(0)


@pytest.mark.parametrize("field, bad", [
    ("key_pem", "garbage"),
    ("cert_pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
    ("key_pem", "other"),  # a real key, not the certificate's
])
def test_a_client_cert_that_is_no_certificate_and_key_is_refused_at_once(tmp_path: Path, field: str,
                                                                         bad: str) -> None:
    import json
    import time

    from plugbay.core.protocol.tls import generate_cert

    first = Client(faulty_config(tmp_path, auto_mtls=True))
    first.start()
    try:
        data = json.loads(first.reattach_config().to_json())
        data["client_cert"][field] = generate_cert().key_pem.decode() if bad == "other" else bad
        began = time.monotonic()
        with pytest.raises(ConfigError, match="client_cert is not a usable certificate and matching private"
                                              " key.*to_json\\(\\) produced"):
            second = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=5,
                                         reattach=ReattachConfig.from_dict(data)))
            second.start()  # the old code got here and waited out start_timeout
        assert time.monotonic() - began < 2
        assert first.runner.wait(0) is None
    finally:
        first.kill()
