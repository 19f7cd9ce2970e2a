"""A PluginContainer's plugin logs reach Python logging, as a started Client's do: its Client reattaches, and a
reattached Client reads no output, so before, a test's caplog (and a failed test's report) held nothing the
plugin logged, while the plugin_container fixture's (a DockerRunner's) did. A real container of the base image
whose entrypoint writes stderr lines around its handshake (Ryuk off, so nothing else removes it)."""

from __future__ import annotations

import json
import logging
import textwrap
import threading
import time
from typing import Any

import pytest

from plugbay.core.protocol.handshake import HandshakeConfig
from plugbay.testing import PluginContainer

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

IMAGE = "plugbay-base:bookworm"
HCLOG = json.dumps({"@level": "info", "@message": "warming up", "@module": "fx", "stage": "start"})
# hclog JSON and a plain line on stderr before the handshake, another hclog line after it, then it waits
PLUGIN = textwrap.dedent(f"""
    import os, socket, sys, time
    print({HCLOG!r}, file=sys.stderr, flush=True)
    print("a plain stderr line", file=sys.stderr, flush=True)
    path = os.path.join(os.environ["PLUGIN_UNIX_SOCKET_DIR"], "plugin.sock")
    srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen()
    print("1|1|unix|%s|grpc" % path, flush=True)
    print('{{"@level": "warn", "@message": "serving", "@module": "fx"}}', file=sys.stderr, flush=True)
    time.sleep(120)
""")


def _container(**options: Any) -> PluginContainer:
    return PluginContainer(IMAGE, HandshakeConfig(1, "FX_COOKIE", "fx"), transport="unix",
                           entrypoint=["python3", "-c", PLUGIN], client_options=options or None)


def _until(done: Any, wait: float = 30.0) -> None:
    end = time.monotonic() + wait  # a bound for a slow engine, not a timing claim
    while not done() and time.monotonic() < end:
        time.sleep(0.05)


def _followers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("plugbay-docker-stderr-")]


def test_the_plugins_stderr_goes_to_logging_until_stop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="plugbay.plugin")
    plugin = _container()
    with plugin:
        mine = lambda: [r for r in caplog.records if r.name == f"plugbay.plugin.{IMAGE}"]  # noqa: E731
        _until(lambda: len(mine()) >= 3)
        said = {r.getMessage(): r for r in mine()}
        assert said["warming up stage=start"].levelno == logging.INFO
        assert said["warming up stage=start"].plugin_module == "fx"  # type: ignore[attr-defined]
        assert said["serving"].levelno == logging.WARNING
        assert "a plain stderr line" in said
        assert _followers()
    assert _followers() == []  # stop() ended the follow


def test_raw_log_sink_gets_the_lines_that_are_no_hclog(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fx-plugin-logs")
    raw: list[str] = []
    named = logging.getLogger("fx-plugin-logs")
    with _container(raw_log_sink=raw.append, logger=named):
        _until(lambda: raw and any(r.getMessage() == "serving" for r in caplog.records))  # the last line
        assert raw == ["a plain stderr line"]
        assert {r.getMessage() for r in caplog.records if r.name == "fx-plugin-logs"} >= {"warming up stage=start",
                                                                                         "serving"}
