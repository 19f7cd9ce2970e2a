"""SIGTERM at any moment of a plugin's start and stop ends serve() cleanly (real plugin processes).

The hang this guards against: serve()'s SIGTERM handler used to call
``threading.Event.set()``; landing while the main thread was inside that same
Event's ``wait()`` (which holds the Event's lock for a few bytecodes every
0.5 s, longer when another thread has the GIL) it waited for that lock forever
and the plugin never exited. The handlers now take no lock
(core/plugin/stopping.py). The window is too small to hit on demand, so these
tests send SIGTERM at several moments, for plaintext, grpcio TLS (P-256) and
the OpenSSL relay (P-521, on the plugin's asyncio loop), and each wait only
tells an exit from a hang (60 s); no speed is asserted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.serverproc import PluginProc, plugins, start  # noqa: F401  (plugins is a fixture)
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402  (on sys.path through tests.serverproc)

EXIT_BOUND = 60.0  # an exit, not a speed: a hung plugin never gets there


def _client_cert(curve: str) -> dict[str, str]:
    if curve == "plain":
        return {}
    from cryptography.hazmat.primitives.asymmetric import ec

    from plugbay.core.protocol.tls import generate_cert

    return {"PLUGIN_CLIENT_CERT": generate_cert(ec.SECP521R1() if curve == "p521" else None).cert_pem.decode()}


@pytest.mark.parametrize("curve", ["plain", "p256", "p521"])
def test_sigterm_right_after_the_handshake_line_and_shortly_after_exits_0(plugins: list[PluginProc],
                                                                          curve: str) -> None:
    env = _client_cert(curve)
    delays = (0.0, 0.005, 0.02, 0.05) if curve != "p256" else (0.0, 0.02)
    for delay in delays:  # a fresh plugin each time: the line, then SIGTERM at once or a moment later
        p = start(plugins, env)
        info = p.handshake()
        if delay:
            time.sleep(delay)
        p.proc.send_signal(signal.SIGTERM)
        code, err = p.finish(EXIT_BOUND)
        assert code == 0, (curve, delay, err[-2000:])
        assert "plugin received SIGTERM, stopping" in err
        assert not os.path.exists(info.address)  # the socket went too: a clean stop, not a kill


def test_sigterm_before_the_handshake_line_exits_by_the_signal_or_cleanly(plugins: list[PluginProc]) -> None:
    # Documented (docs/plugin-side.md): before serve() installed its handler the signal's default
    # action ends the process (no line printed); from then on setup completes, the line is printed
    # and the plugin stops at once with 0. Never a hang, never a line followed by a kill.
    env = _client_cert("p521")
    outcomes = set()
    for delay in (0.0, 0.15, 0.4, 0.8):
        p = start(plugins, env)
        time.sleep(delay)
        p.proc.send_signal(signal.SIGTERM)
        try:
            out, err = p.proc.communicate(timeout=EXIT_BOUND)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the plugin did not exit after a SIGTERM {delay}s after its start") from None
        code = p.proc.returncode
        assert code in (0, -signal.SIGTERM), (delay, code, err.decode()[-2000:])
        if out:  # it had its handler: the line, then a clean stop that removed its socket
            assert code == 0, err.decode()[-2000:]
            assert not os.path.exists(out.decode().split("|")[3])
        else:
            assert code == -signal.SIGTERM  # a plugin that prints no line never exits 0
        outcomes.add(code)
    assert outcomes  # each delay gave one of the two documented outcomes


def test_a_second_sigterm_during_the_graceful_stop_does_not_cut_it_short(plugins: list[PluginProc],
                                                                         tmp_path: Path) -> None:
    # A host (or `docker stop` after a Ctrl-C) may signal twice; the first one's stop still runs to
    # the end: exit 0 and the socket removed, not a death by the second signal mid-stop.
    p = start(plugins)
    info = p.handshake()
    kv = kv_pb2_grpc.KVStub(p.channel(info))
    marker = tmp_path / "started"
    slow = kv.Put.future(kv_pb2.PutRequest(key="sub", value=f"touch {marker}; sleep 1".encode()), timeout=20)
    for _ in range(200):  # bounded: at most 20 s
        if marker.exists():
            break
        time.sleep(0.1)
    assert marker.exists()
    p.proc.send_signal(signal.SIGTERM)  # the stop waits for the in-flight call (its grace)
    time.sleep(0.3)  # most likely inside that wait now; noted whenever it lands
    p.proc.send_signal(signal.SIGTERM)
    code, err = p.finish(EXIT_BOUND)
    assert code == 0, err[-2000:]
    assert not os.path.exists(info.address)
    slow.exception()  # finished or cut off by the grace period; either way it ended
