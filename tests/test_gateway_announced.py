"""The gateway proves its children's announced addresses as a Client does (the shared child through its Client,
a brokering session's own child before the session's one connection), says how a gateway's user opts out, and
GatewayConfig(trust_announced_address=True) / --trust-announced-address opts out.

Real processes: the "plugin" announces a socket another process made (this test's listener, a real KV
plugin this test started).
"""

from __future__ import annotations

import logging
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

from plugbay import Gateway, GatewayConfig
from plugbay.errors import ConfigError, GatewayError
from plugbay.network.gateway.cli import parse
from plugbay.runners.unixdiag import kernel_cannot_tell
from tests import netcerts
from tests.netflood import peer, ping, until_pong
from tests.resilience_util import HANDSHAKE, PY
from tests.test_announced_owner import MISBEHAVE, Foreign

CHILD = Path(__file__).resolve().parent / "plugins" / "hostile_session_child.py"
# where the kernel cannot tell who listens on a unix socket (as test_announced_one_shot skips), the proof is made
# on the session's one connection
KERNEL_CANNOT_TELL = kernel_cannot_tell(tempfile.gettempdir())


def _shared(line: str, **config: object) -> Gateway:
    return Gateway(GatewayConfig(cmd=[PY, MISBEHAVE, "line", line], listen="127.0.0.1:0", insecure=True,
                                 cookie=(HANDSHAKE.magic_cookie_key, HANDSHAKE.magic_cookie_value),
                                 start_timeout=10, **config))  # type: ignore[arg-type]


def test_the_shared_childs_unproven_address_is_refused_with_the_gateways_opt_out(tmp_path: Path) -> None:
    foreign = Foreign(tmp_path, None, False)
    try:
        gateway = _shared(foreign.line)
        with pytest.raises(GatewayError) as raised:
            gateway.start()
        gateway.stop()
        text = str(raised.value)
        # before: the advice was ClientConfig(trust_announced_address=True), which a gateway's user cannot set
        assert "which plugbay does not dial" in text and f"listened on by process {foreign.proc.pid}" in text, text
        assert "GatewayConfig(trust_announced_address=True)" in text and "--trust-announced-address" in text, text
        assert "ClientConfig(" not in text, text
        with _shared(foreign.line, trust_announced_address=True) as trusted:  # dialed: the KV plugin answers
            assert trusted.address.startswith("127.0.0.1:")
    finally:
        foreign.close()


def test_the_gateway_command_takes_trust_announced_address() -> None:
    flags = ["--cookie", "K=V", "--insecure", "--", "plugin"]
    assert parse(["--trust-announced-address", *flags], {}).trust_announced_address is True
    assert parse(flags, {}).trust_announced_address is False
    assert parse(flags, {"PLUGBAY_GATEWAY_TRUST_ANNOUNCED_ADDRESS": "1"}).trust_announced_address is True
    with pytest.raises(ConfigError, match="GatewayConfig.trust_announced_address"):
        Gateway(GatewayConfig(cmd=["plugin"], cookie=("K", "V"), insecure=True,
                              trust_announced_address="yes"))  # type: ignore[arg-type]


@pytest.mark.parametrize("trust", [False, True], ids=["proven", "trusted"])
def test_a_brokering_sessions_child_is_proven_before_its_connection(tmp_path: Path, trust: bool,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    # before: the session dialed whatever its child announced, raw: this test's listener got the connection;
    # then the connection was made and proven on itself, so a foreign one-connection server served it (closed
    # unused); now the kernel is asked first (sock_diag) and nothing is dialed, where it can tell
    certs = netcerts.write_set(tmp_path / "tls")
    path = str(tmp_path / "foreign.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(8)
        listener.settimeout(0)
        gw = Gateway(GatewayConfig(
            cmd=[sys.executable, str(CHILD), "foreign", path], cookie=("GWCHILD", "x"), listen="127.0.0.1:0",
            cert_file=str(certs.cert_file), key_file=str(certs.key_file), client_ca_file=str(certs.client_ca_file),
            child_mtls=False, multiplex=True, start_timeout=10, cwd=str(tmp_path), trust_announced_address=trust))
        with caplog.at_level(logging.WARNING, logger="plugbay.gateway"), gw:
            host = peer(gw.address, certs)
            try:
                host.sendall(ping(1))
                if trust:  # dialed as announced: the session is up, on this test's socket
                    assert until_pong(host, 1, timeout=30) == set()
                    listener.settimeout(10)
                    listener.accept()[0].close()
                    return
                # the session is refused and ends (60 s bounds are hang guards only)
                host.settimeout(60)
                try:
                    while host.recv(100):
                        pass
                except OSError:
                    pass
                if KERNEL_CANNOT_TELL is None:  # refused undialed: no connection waits at this test's listener
                    with pytest.raises(BlockingIOError):
                        listener.accept()
                else:  # proven on the connection itself (SO_PEERCRED), closed without a byte
                    listener.settimeout(60)
                    reached, _ = listener.accept()
                    with reached:
                        reached.settimeout(60)
                        assert reached.recv(100) == b"", "a byte of the session reached a socket its child did not make"
            finally:
                host.close()
        said = " ".join(r.getMessage() for r in caplog.records)
        assert "which plugbay does not dial" in said and "GatewayConfig(trust_announced_address=True)" in said, said


SERVES_ONCE = """import os, runpy, sys, threading, time
if os.path.exists("served"):  # a restart: the other server's socket is announced
    print(sys.argv[2], flush=True)
    time.sleep(60)
    sys.exit(0)
open("served", "w").close()
def until_told():
    while not os.path.exists("die"):
        time.sleep(0.05)
    os._exit(1)
threading.Thread(target=until_told, daemon=True).start()
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def test_a_restarts_unproven_address_is_logged_with_the_gateways_opt_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # before: the log gave the Client's advice, ClientConfig(trust_announced_address=True)
    foreign = Foreign(tmp_path, None, False)
    try:
        gw = Gateway(GatewayConfig(cmd=[PY, "-c", SERVES_ONCE, str(Path(__file__).parent / "plugins" /
                                                                  "gateway_child.py"), foreign.line],
                                   listen="127.0.0.1:0", insecure=True, cwd=str(tmp_path),
                                   cookie=(HANDSHAKE.magic_cookie_key, HANDSHAKE.magic_cookie_value),
                                   start_timeout=10))
        with caplog.at_level(logging.WARNING, logger="plugbay.gateway"), gw:
            (tmp_path / "die").touch()
            for _ in range(600):  # a hang guard only: the restart's refusal comes at once
                said = [r.getMessage() for r in caplog.records if "restarting the plugin failed" in r.getMessage()]
                if said:
                    break
                time.sleep(0.05)
        assert said, [r.getMessage() for r in caplog.records]
        assert "which plugbay does not dial" in said[0] and f"process {foreign.proc.pid}" in said[0], said[0]
        assert "GatewayConfig(trust_announced_address=True)" in said[0], said[0]
        assert "ClientConfig(" not in said[0], said[0]
    finally:
        foreign.close()
