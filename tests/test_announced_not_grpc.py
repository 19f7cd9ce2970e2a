"""A plugin whose announced address answers no HTTP/2 is refused at once, not dialled until start_timeout.

A handshake line is the plugin's word: the path or port it names may be another service's (an engine's API
socket, a web server). gRPC then reads an HTTP/1 answer where HTTP/2's SETTINGS frame belongs, which no wait
changes; the start used to retry it for the whole start_timeout and then advise raising it.
"""

from __future__ import annotations

import base64
import datetime
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig  # noqa: E402
from plugbay.errors import HandshakeTimeoutError, ProtocolMismatchError  # noqa: E402
from tests.resilience_util import wait_until  # noqa: E402

LISTENER = REPO / "tests" / "plugins" / "http1_listener.py"


def _gone(pid: int) -> bool:
    """No process ``pid`` runs: none is there, or only its zombie (ended, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _cert_field() -> str:
    """A handshake line's certificate field: a self-signed DER certificate in unpadded base64, as go-plugin's."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode().rstrip("=")


@pytest.mark.parametrize("network,tls", [("unix", False), ("tcp", False), ("unix", True)])
def test_an_announced_address_that_answers_http1_is_a_protocol_mismatch(network: str, tls: bool,
                                                                         tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    cmd = [sys.executable, str(LISTENER), network, str(pid_file), *([_cert_field()] if tls else [])]
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, start_timeout=30,
                                 auto_mtls=tls, cmd=cmd))
    try:
        with pytest.raises(ProtocolMismatchError) as caught:
            client.start()
        # before the kill below, which would hide a start() that left the plugin running
        pid = int(pid_file.read_text())
        assert wait_until(lambda: _gone(pid), 10), "the refused plugin was left running"
    finally:
        client.kill()
    assert not isinstance(caught.value, HandshakeTimeoutError)
    message = str(caught.value)
    assert ("answered the AutoMTLS handshake with no TLS" if tls else "speaks no HTTP/2") in message
    assert "not the plugin's gRPC server" in message
    assert "raise start_timeout" not in message.lower()
