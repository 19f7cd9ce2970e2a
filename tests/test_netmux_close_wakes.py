"""A network plugin's brokering front stops at once, its accept loop woken, not at the loop's next poll.

NetworkFront.close() waited for its accept loop's next poll (ACCEPT_POLL, 0.2 s) and joined it for 5 s
at most, leaving it running past that. The plugin here (tests/plugins/long_poll_kv_net.py) polls and
joins for an hour, holds a real host session (a yamux session over mutual TLS, with its own plugin
instance) and is sent SIGTERM: it exits by itself only if close() woke the loop, and it says whether
the loop still ran once serve() returned.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests import netcerts
from tests.netflood import peer, ping, until_pong
from tests.test_network_serve import NetPlugin, tls_env

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "tests" / "plugins" / "long_poll_kv_net.py"
HANG_GUARD = 30.0  # only a front that waits its hour-long poll or join out takes this long


def test_sigterm_stops_the_front_with_a_live_session_without_waiting_its_poll(tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    plugin = NetPlugin(tmp_path, tls_env(certs), [sys.executable, str(PLUGIN)])
    try:
        host = peer(plugin.address, certs)
        try:
            host.sendall(ping(1))
            assert until_pong(host, 1) == set()  # the session and its instance are up
            plugin.proc.send_signal(signal.SIGTERM)
            try:
                out, err = plugin.proc.communicate(timeout=HANG_GUARD)
            except subprocess.TimeoutExpired:
                raise AssertionError("the plugin did not exit: its front waited out an accept poll") from None
        finally:
            host.close()
    finally:
        if plugin.proc.poll() is None:
            plugin.proc.kill()
            plugin.proc.communicate(timeout=10)
    assert plugin.proc.returncode == 0, err.decode()[-2000:]
    assert out.decode().split() == ["STOPPED"], (out, err.decode()[-2000:])
