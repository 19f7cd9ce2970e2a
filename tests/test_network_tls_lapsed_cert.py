"""A host whose own client certificate is out of its dates (expired, not valid yet) is told so.

The plugin refuses such a certificate without saying why (TLS 1.3's alert reaches gRPC as a bare
decryption failure; grpcio's own TLS just closes), and the RemoteTLSError said only "signed by a CA it
does not trust, or no certificate given", sending the user to the CA files. The host holds the
certificate and a clock: the error now names the file and the date. Real KV replicas on 127.0.0.1: one
whose TLS is grpcio's (tests/plugins/net_kv.py), and the examples' plugin behind serve()'s OpenSSL front.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import netcerts
from tests.net_util import HANDSHAKE, PLUGINS, SERVER_NAME, Replica, make_pki
from tests.test_network_broker import REPO, CounterReplica

from plugbay import NetworkTLS, RemoteClient, RemoteConfig, RemoteTLSError
from plugbay.network.tls import tls_failure, with_lapsed_cert


@dataclass
class Served:
    address: str
    client_ca: netcerts.Issued  # what signs the clients the plugin trusts
    server_ca_file: str  # what signed the plugin's certificate
    server_name: str
    stranger: tuple[str, str]  # a current client certificate and key of another CA


@pytest.fixture(scope="module", params=["grpcio-tls", "openssl-front"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "grpcio-tls":
        pki = make_pki(folder)
        replica = Replica("127.0.0.1:0", env={"NET_KV_CERT": pki["server"], "NET_KV_KEY": pki["server_key"],
                                              "NET_KV_CA": pki["ca"]})
        try:
            yield Served(replica.address, netcerts.load_ca(pki["ca"]), pki["ca"], SERVER_NAME,
                         (pki["rogue_client"], pki["rogue_client_key"]))
        finally:
            replica.stop()
        return
    certs = netcerts.write_set(folder / "tls")
    (folder / "server-ca.crt").write_bytes(certs.server_ca.cert_pem)
    stranger = netcerts.issue(netcerts.make_ca("stranger CA"), "stranger", server=False)
    (folder / "stranger.crt").write_bytes(stranger.cert_pem)
    (folder / "stranger.key").write_bytes(stranger.key_pem)
    front = CounterReplica(folder / "kv", certs, script=REPO / "examples" / "kv" / "plugin.py")
    try:
        yield Served(front.address, certs.client_ca, str(folder / "server-ca.crt"),
                     "localhost", (str(folder / "stranger.crt"), str(folder / "stranger.key")))
    finally:
        front.stop()
        shutil.rmtree(front.tmp, ignore_errors=True)  # the plugin's own TMPDIR


def client_cert(served: Served, folder: Path, days: tuple[int, int]) -> tuple[str, str]:
    """A client certificate the plugin's client CA signed, valid from ``days[0]`` to ``days[1]`` days from now."""
    host = netcerts.issue(served.client_ca, "host", server=False, days=days)
    (folder / "host.crt").write_bytes(host.cert_pem)
    (folder / "host.key").write_bytes(host.key_pem)
    return str(folder / "host.crt"), str(folder / "host.key")


def refusal(served: Served, cert: str, key: str, brokered: bool = True) -> str:
    tls = NetworkTLS(cert, key, served.server_ca_file, server_name=served.server_name)
    config = RemoteConfig(target=f"static:///{served.address}", handshake=HANDSHAKE, plugins=PLUGINS,
                          tls=tls, brokered=brokered, start_timeout=30.0)
    with pytest.raises(RemoteTLSError) as err:
        with RemoteClient(config):
            pass
    text = str(err.value)
    assert "the plugin refused the host's certificate" in text or "having seen the host's certificate" in text, text
    return text


@pytest.mark.parametrize("brokered", [True, False], ids=["brokered", "plain"])
@pytest.mark.parametrize("dates, said", [((-30, -1), "expired at"), ((1, 30), "is not valid until")],
                         ids=["expired", "not-yet-valid"])
def test_a_host_certificate_out_of_its_dates_is_named(served: Served, tmp_path: Path, dates: tuple[int, int],
                                                      said: str, brokered: bool) -> None:
    cert, key = client_cert(served, tmp_path, dates)
    text = refusal(served, cert, key, brokered)
    assert f"this host's certificate (cert_file {cert!r}) {said}" in text, text
    words = text.replace(cert, "")  # its folder may name the test
    assert words.count("renew it") <= 1 and words.count("expired") <= 1, text  # the date and advice said once


def test_a_certificate_in_its_dates_gets_no_such_note(served: Served) -> None:
    """A refusal of a current certificate (another CA's) says nothing of dates."""
    text = refusal(served, *served.stranger)
    assert "this host's certificate (cert_file" not in text, text


def test_the_expired_alert_names_the_date_and_what_to_do_once(served: Served, tmp_path: Path) -> None:
    """A plugin whose TLS sends the "certificate expired" alert (TLS 1.2) named it twice: "as expired: renew
    it; ... expired at ...: renew it"."""
    cert, key = client_cert(served, tmp_path, (-30, -1))
    tls = NetworkTLS(cert, key, served.server_ca_file, server_name=served.server_name)
    tls.files()  # the set a connection is made with
    meaning = tls_failure("failed to connect: SSLV3_ALERT_CERTIFICATE_EXPIRED", tls=True)
    assert meaning is not None
    text = with_lapsed_cert(meaning, tls)
    assert text.startswith("the plugin refused the host's certificate"), text
    assert f"this host's certificate (cert_file {cert!r}) expired at" in text, text
    words = text.replace(cert, "")  # its folder names the test
    assert words.count("expired") == 1 and words.count("renew it") == 1, text
