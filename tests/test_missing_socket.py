"""A handshake line naming a unix socket that is not there: a prompt error naming the path.

Real processes: a plugin that prints a handshake line for a socket it never creates (and lives on)
is refused once a short grace after the handshake has passed, not after the whole start_timeout of
dials to nothing, and is killed; a path that holds another kind of file is refused at once, never
dialed; a plugin whose socket appears a moment after its line still starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from plugbay import Client, ClientConfig
from plugbay.errors import HandshakeError, HandshakeTimeoutError, MalformedHandshakeError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "counter"))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402

PLUGINS = {PLUGIN_NAME: CounterPlugin()}
MISBEHAVE = str(REPO / "tests" / "plugins" / "misbehave.py")


class Adder:
    def sum(self, a: int, b: int) -> int:
        return a + b


def test_a_socket_the_plugin_never_created_is_an_error_naming_it(tmp_path: Path) -> None:
    never = tmp_path / "never-made.sock"
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=30,
                                 cmd=[sys.executable, MISBEHAVE, "line", f"1|1|unix|{never}|grpc"]))
    with pytest.raises(HandshakeError) as raised:
        client.start()
    try:
        assert not isinstance(raised.value, HandshakeTimeoutError), raised.value  # not after the start_timeout
        text = str(raised.value)
        assert str(never) in text and "never created" in text, text
        assert client.runner.wait(10) is not None, "the plugin was left running"
    finally:
        client.kill()


@pytest.mark.parametrize("kind", ["regular file", "folder"])
def test_a_socket_path_that_holds_another_file_is_refused_undialed(tmp_path: Path, kind: str) -> None:
    # 1|1|unix|/etc/passwd|grpc: the file is there, so the host dialed it (connection refused) until start_timeout
    there = tmp_path / "not-a-socket"
    there.write_text("x") if kind == "regular file" else there.mkdir()
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=10,
                                 cmd=[sys.executable, MISBEHAVE, "line", f"1|1|unix|{there}|grpc"]))
    with pytest.raises(MalformedHandshakeError) as raised:
        client.start()
    try:
        text = str(raised.value)
        assert f"unix socket {str(there)!r}" in text and f"is a {kind}, not a socket" in text, text
        assert client.runner.wait(10) is not None, "the plugin was left running"
    finally:
        client.kill()


@pytest.mark.parametrize("late", ["0", "0.02"])
def test_a_socket_that_appears_just_after_the_line_is_dialled(in_tmp: Path, late: str) -> None:
    cmd = [sys.executable, str(REPO / "tests" / "plugins" / "late_socket.py"), late,
           sys.executable, str(REPO / "examples" / "counter" / "plugin.py")]
    with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=cmd)) as client:
        counter = client.dispense(PLUGIN_NAME)
        assert client.handshake.address.endswith("/late.sock")
        counter.put("k", 3, Adder())  # a brokered call back too: the plugin's broker sockets work
        assert counter.get("k") == 3
