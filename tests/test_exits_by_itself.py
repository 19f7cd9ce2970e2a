"""A plugin that exits by itself, as the Client hears of it: during the health check, between the
health check and the exit gate opening, and after writing its last GRPCStdio output."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig, PluginExitedError  # noqa: E402
from plugbay.core.host.stop import ExitGate  # noqa: E402

PY = sys.executable
EXITING = str(REPO / "tests" / "plugins" / "exiting_kv.py")


def config(mode: str, **kw: object) -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=[PY, EXITING, mode],
                        name="exiting", **kw)  # type: ignore[arg-type]


def test_last_stdio_lines_of_a_plugin_that_exits_by_itself_reach_the_sink(in_tmp: Path) -> None:
    got: list[bytes] = []

    def sink(data: bytes) -> None:
        time.sleep(0.002)  # a sink that writes somewhere (a file, a terminal) takes a moment
        got.append(data)

    client = Client(config("stdio", stdout_sink=sink))
    try:
        client.start()
        assert client.dispense(PLUGIN_NAME).get("bye") == b"ok"
        deadline = time.monotonic() + 20
        while not client.exited and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.exit_code == 0
        # read on after the exit was heard, not cut there (nor only by the kill() below)
        while b"".join(got).count(b"\n") < 400 and time.monotonic() < deadline:
            time.sleep(0.01)
        lines = b"".join(got).decode().splitlines()
        assert lines == [f"line {i}" for i in range(400)]
    finally:
        client.kill()


def test_a_plugin_exiting_during_the_health_check_is_reported_as_exited(in_tmp: Path) -> None:
    # it announced a socket that never answers, and exits 0.2 s on: grpcio retries the refused socket
    # for the whole of a health check try (2 s), which must not hide the exit
    client = Client(config("mute", start_timeout=30))
    began = time.monotonic()
    with pytest.raises(PluginExitedError, match="code 3 after printing its handshake line") as info:
        client.start()
    took = time.monotonic() - began
    client.kill()
    assert info.value.stderr_tail[-1] == "exiting_kv: gave up serving"
    # how soon the exit was seen (not after a whole 2 s health check try) is speed, not behaviour
    assert took < 30, f"start() took {took:.2f}s to see an exit 0.2 s in"  # a hang guard only


def test_the_exit_advice_fits_a_plugin_that_printed_its_handshake(in_tmp: Path) -> None:
    client = Client(config("mute", start_timeout=30))
    with pytest.raises(PluginExitedError) as info:
        client.start()
    client.kill()
    message = str(info.value)
    # its handshake line shows it had the magic cookie; nothing says how long it ran
    assert "magic cookie" not in message and "right after" not in message
    assert "It had started as a plugin" in message


class _SlowToTellGate(ExitGate):
    """The exit gate, with the exit watch's tell() made slow where it matters: it said no (start()
    has not connected), and start() opens the gate and looks at the exit code before the watch goes on.
    open() waits for that no, so the plugin's exit falls between the health check and the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.said_no = threading.Event()
        self.opened = threading.Event()

    def open(self) -> None:
        self.said_no.wait(10)
        super().open()
        self.opened.set()

    def tell(self) -> bool:
        said = super().tell()
        if not said and not self.said_no.is_set():
            self.said_no.set()
            self.opened.wait(10)
            time.sleep(0.2)  # start() reads the exit code right after open(): let it
        return said


def test_an_exit_between_the_health_check_and_the_gate_is_acted_on(in_tmp: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="plugbay.client")
    client = Client(config("health", start_timeout=30))
    gate = client._exit_gate = _SlowToTellGate()
    try:
        client.start()  # it served when checked: the start succeeds, and then hears of the exit
        assert gate.said_no.is_set()
        deadline = time.monotonic() + 10
        while not client.exited and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.exit_code == 0
        told = [r.getMessage() for r in caplog.records if "exited with code" in r.getMessage()]
        assert told == ["plugin exiting exited with code 0"]  # acted on, once: calls refused, streams ended
    finally:
        client.kill()
