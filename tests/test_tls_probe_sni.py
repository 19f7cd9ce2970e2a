"""The TLS probe behind `plugbay health`'s verdict on a refused --cert sends the name gRPC's own connection
sends (SNI): none for an IP address. It sent a made-up name, "plugbay-probe", which the plugin's TLS logged as an
ERROR ("No match found for server name: plugbay-probe") at every probe: a gateway's operator read it as hosts
dialing it by a wrong name.

A gateway in its own process (its log is what an operator reads) before the KV example plugin, on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests import netcerts
from tests.cli_util import KV_PLUGIN, cli_env, plugbay

from plugbay.network.resolver import Endpoint
from plugbay.network.tlsprobe import sent_name


def test_the_probe_sends_the_name_grpc_sends() -> None:
    assert sent_name(Endpoint("tcp", "127.0.0.1:7001")) is None
    assert sent_name(Endpoint("tcp", "[::1]:7001")) is None
    assert sent_name(Endpoint("tcp", "kv.example.com:7001")) == "kv.example.com"
    assert sent_name(Endpoint("unix", "/run/kv.sock")) == "localhost"


def test_a_refused_cert_probe_leaves_no_error_in_the_plugins_log(tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "plugbay", "gateway", "--listen", "127.0.0.1:0", "--cert", str(certs.cert_file),
         "--key", str(certs.key_file), "--client-ca", str(certs.client_ca_file), "--cookie", "BASIC_PLUGIN=hello",
         "--plugins", "kv_grpc", "--", sys.executable, str(KV_PLUGIN)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=tmp_path,
        stdin=subprocess.DEVNULL)
    try:
        assert gateway.stdout is not None
        line = gateway.stdout.readline()
        assert line.startswith("listening tcp "), line
        address = line.split()[-1]
        stranger = netcerts.issue(netcerts.make_ca("stranger CA"), "stranger", server=False)
        (tmp_path / "host.crt").write_bytes(stranger.cert_pem)
        (tmp_path / "host.key").write_bytes(stranger.key_pem)
        (tmp_path / "ca.crt").write_bytes(certs.server_ca.cert_pem)
        said = plugbay("health", f"static:///{address}", "--cert", str(tmp_path / "host.crt"), "--key",
                       str(tmp_path / "host.key"), "--ca", str(tmp_path / "ca.crt"), "--timeout", "3")
        assert said.returncode == 2, said
        assert "the plugin closed the connection right after each TLS handshake" in said.stderr, said
    finally:
        gateway.terminate()
        _, log = gateway.communicate(timeout=60)
    assert gateway.returncode == 0, log
    assert "No match found for server name" not in log, log
