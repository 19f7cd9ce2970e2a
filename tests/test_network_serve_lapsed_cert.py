"""A plugin served on the network (or the gateway) with a certificate out of its dates says so in its log.

It served without a word: every host refused the certificate and said so only on its own side, and the
operator reading the plugin's log learned nothing. It still serves (a renewal is taken when the files
change), with one warning per set read. The examples' KV plugin behind serve()'s front, and the gateway,
as real processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests import netcerts
from tests.test_network_broker import REPO, CounterReplica

KV_PLUGIN = REPO / "examples" / "kv" / "plugin.py"


def dated_server_set(folder: Path, days: tuple[int, int]) -> netcerts.CertSet:
    """A server set whose certificate (for localhost and 127.0.0.1) is valid from ``days[0]`` to ``days[1]``
    days from now."""
    certs = netcerts.write_set(folder)
    server = netcerts.issue(certs.server_ca, "localhost", server=True, days=days)
    certs.cert_file.write_bytes(server.cert_pem)
    certs.key_file.write_bytes(server.key_pem)
    return certs


DATES = [((-30, -1), "expired at"), ((1, 30), "is not valid until")]


@pytest.mark.parametrize("days, said", DATES, ids=["expired", "not-yet-valid"])
def test_serve_warns_of_its_certificate_out_of_its_dates(tmp_path: Path, days: tuple[int, int], said: str) -> None:
    certs = dated_server_set(tmp_path / "tls", days)
    replica = CounterReplica(tmp_path / "kv", certs, script=KV_PLUGIN)
    try:
        for _ in range(3):  # handshakes: each one checks the set's dates again, and says nothing new
            handshake(replica.address, certs)
        code, err = replica.stop()  # it served (its handshake line came), and stops as usual
    finally:
        shutil.rmtree(replica.tmp, ignore_errors=True)
    assert code == 0, err
    assert f"the certificate in {str(certs.cert_file)!r} {said}" in err, err
    assert err.count(f"the certificate in {str(certs.cert_file)!r}") == 1, err


def test_a_certificate_in_its_dates_gets_no_warning(tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    replica = CounterReplica(tmp_path / "kv", certs, script=KV_PLUGIN)
    try:
        code, err = replica.stop()
    finally:
        shutil.rmtree(replica.tmp, ignore_errors=True)
    assert code == 0 and "the certificate in" not in err, err


@pytest.mark.parametrize("days, said", DATES, ids=["expired", "not-yet-valid"])
def test_the_gateway_warns_too(tmp_path: Path, days: tuple[int, int], said: str) -> None:
    certs = dated_server_set(tmp_path / "tls", days)
    gateway = subprocess.Popen(
        [sys.executable, "-m", "plugbay.network.gateway", "--listen", "127.0.0.1:0", "--cert", str(certs.cert_file),
         "--key", str(certs.key_file), "--client-ca", str(certs.client_ca_file), "--cookie", "BASIC_PLUGIN=hello",
         "--plugins", "kv_grpc", "--", sys.executable, str(KV_PLUGIN)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        assert gateway.stdout is not None
        line = gateway.stdout.readline()
        assert line.startswith("listening tcp "), gateway.stderr
        for _ in range(3):  # handshakes: each one checks the set's dates again, and says nothing new
            handshake(line.split()[2], certs)
    finally:
        gateway.terminate()
        _, err = gateway.communicate(timeout=30)
    assert gateway.returncode == 0, err
    assert f"the certificate in {str(certs.cert_file)!r} {said}" in err, err
    assert err.count(f"the certificate in {str(certs.cert_file)!r}") == 1, err


def handshake(address: str, certs: netcerts.CertSet) -> None:
    """One TLS handshake with the listener at ``address`` (host:port), its certificate taken unchecked (it
    is out of its dates), the host's client certificate presented."""
    client = certs.dir / "client.pem"
    client.write_bytes(certs.client.cert_pem + certs.client.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    ctx.load_cert_chain(str(client))
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost"):
        pass
