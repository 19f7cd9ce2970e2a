"""A served certificate's dates, as the serving side (CertFiles) and the host side (NetworkTLS) read them.

- A certificate that lapses while the process serves was never warned of: the check ran only as a set was
  read. Each handshake (CertFiles.ssl_context, a TLSRelay's provider per accepted connection) now compares
  the set's dates with the clock, and warns once per set.
- A set read again because its files were touched (same bytes), or a rejected one, warned again; now the
  warning is said once per set taken.
- A certificate whose date cryptography loads but cannot make a datetime of (GeneralizedTime year 0000)
  crashed serve() at its start (ValueError), and the host's NetworkTLS refused files it took before.
Real files, real TLS connections through a TLSRelay; a KV plugin served on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from plugbay.core.transport import certfiles, sockets
from plugbay.core.transport.relay import TLSRelay
from plugbay.network.tls import NetworkTLS
from tests import netcerts
from tests.test_network_broker import CounterReplica
from tests.test_network_serve_lapsed_cert import KV_PLUGIN
from tests.test_tlsrelay import echo_server  # noqa: F401  (the fixture)

_FAR = datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc)  # GeneralizedTime in DER: its year is edited


def _dated(ca: netcerts.Issued, not_before: datetime.datetime, not_after: datetime.datetime, *,
           server: bool = True, year_zero: bool = False) -> tuple[bytes, bytes]:
    """A certificate (PEM) for localhost/127.0.0.1 and its key; ``year_zero``: its notAfter (``_FAR``) made year
    0000 in the DER (the signature no longer matches: cryptography loads without verifying)."""
    issued = netcerts.issue(ca, "localhost", server=server, not_before=not_before, not_after=not_after,
                            sans=netcerts.LOCALHOST)
    der = issued.cert.public_bytes(serialization.Encoding.DER)
    if year_zero:
        assert der.count(b"21000101000000Z") == 1
        der = der.replace(b"21000101000000Z", b"00000101000000Z")
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    return pem, issued.key_pem


def _write(certs: netcerts.CertSet, cert_key: tuple[bytes, bytes]) -> None:
    certs.cert_file.write_bytes(cert_key[0] + certs.server_ca.cert_pem)
    certs.key_file.write_bytes(cert_key[1])


def _dates_warned(caplog: pytest.LogCaptureFixture, certs: netcerts.CertSet) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"the certificate in {str(certs.cert_file)!r}" in r.getMessage()]


def _connect(relay: TLSRelay) -> None:
    """One connection accepted by the relay: its provider (CertFiles.ssl_context) runs for its handshake."""
    host, _, port = relay.address[1].rpartition(":")
    socket.create_connection((host, int(port)), timeout=10).close()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def test_a_certificate_that_lapses_while_serving_is_warned_of_once(tmp_path: Path, echo_server: str,  # noqa: F811
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    caplog.set_level(logging.WARNING, logger="plugbay.network.tls")
    for window in (3.0, 15.0, 60.0):  # widened when the set was read after it lapsed (a loaded machine)
        caplog.clear()
        ends = _now() + datetime.timedelta(seconds=window)
        _write(certs, _dated(certs.server_ca, _now() - datetime.timedelta(minutes=5), ends))
        provider = certfiles.CertFiles(certfiles.TLSFiles(str(certs.cert_file), str(certs.key_file),
                                                          str(certs.client_ca_file)))
        if not _dates_warned(caplog, certs):  # read while valid: the lapse comes while the relay serves
            break
    else:
        pytest.fail("the set was read after it lapsed each time (60 s margin): nothing was tested")
    relay = TLSRelay(sockets.open_listener("tcp", "127.0.0.1:0"), ("unix", echo_server), provider.ssl_context,
                     "terminate")
    try:
        while _now() <= ends + datetime.timedelta(seconds=1):  # the certificate lapses while the relay serves
            time.sleep(0.2)
        for _ in range(5):
            _connect(relay)
        while len(_dates_warned(caplog, certs)) < 1 and _now() < ends + datetime.timedelta(seconds=30):
            time.sleep(0.05)  # the provider runs on the relay's thread
        for _ in range(5):
            _connect(relay)
    finally:
        relay.close()
    warned = _dates_warned(caplog, certs)
    assert len(warned) == 1 and "expired at" in warned[0], warned


def test_a_reload_warns_once_per_set_taken(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    old = _now() - datetime.timedelta(days=30), _now() - datetime.timedelta(days=1)
    _write(certs, _dated(certs.server_ca, *old))
    caplog.set_level(logging.WARNING, logger="plugbay.network.tls")
    provider = certfiles.CertFiles(certfiles.TLSFiles(str(certs.cert_file), str(certs.key_file),
                                                      str(certs.client_ca_file)), openssl=False)
    assert provider.fetch() is None and len(_dates_warned(caplog, certs)) == 1
    # touched, not changed (a Secret's mount swapped to the same content): no new set, no new warning
    for f in (certs.cert_file, certs.key_file):
        st = os.stat(f)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert provider.fetch() is None and provider.fetch() is None
    assert len(_dates_warned(caplog, certs)) == 1, _dates_warned(caplog, certs)
    # another expired set is taken: warned of once, however many handshakes follow
    _write(certs, _dated(certs.server_ca, *old))
    assert provider.fetch() is not None and provider.reloads == 1
    for _ in range(3):
        assert provider.fetch() is None
    assert len(_dates_warned(caplog, certs)) == 2, _dates_warned(caplog, certs)
    # a set cut short is refused (its own warning), and says nothing of dates
    full = certs.cert_file.read_bytes()
    certs.cert_file.write_bytes(full[: len(full) // 2])
    assert provider.fetch() is None and provider.fetch() is None
    assert any("not usable yet" in r.getMessage() for r in caplog.records)
    assert len(_dates_warned(caplog, certs)) == 2, _dates_warned(caplog, certs)


def test_serve_starts_with_a_certificate_dated_year_zero(tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    _write(certs, _dated(certs.server_ca, _now() - datetime.timedelta(minutes=5), _FAR, year_zero=True))
    replica = CounterReplica(tmp_path / "kv", certs, script=KV_PLUGIN)  # raised "counter plugin exited"
    try:
        code, err = replica.stop()
    finally:
        shutil.rmtree(replica.tmp, ignore_errors=True)
    assert code == 0 and "Traceback" not in err and "the certificate in" not in err, err


def test_the_host_takes_a_certificate_dated_year_zero(tmp_path: Path) -> None:
    ca = netcerts.make_ca("client CA")
    cert, key = _dated(ca, _now() - datetime.timedelta(minutes=5), _FAR, server=False, year_zero=True)
    (tmp_path / "host.crt").write_bytes(cert)
    (tmp_path / "host.key").write_bytes(key)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    taken = NetworkTLS(str(tmp_path / "host.crt"), str(tmp_path / "host.key"), str(tmp_path / "ca.crt")).files()
    assert taken.cert_pem == cert and taken.lapsed() == ""


def _not_yet_valid_provider(certs: netcerts.CertSet) -> tuple[certfiles.CertFiles, datetime.datetime]:
    """A provider (grpcio's path: no OpenSSL context) whose set was read while its certificate was not valid
    yet, and the certificate's notAfter. The window widens when building it took longer than the certificate's
    wait (a loaded machine): the set is always read before its notBefore."""
    for window in (2.0, 10.0, 40.0):
        begins = _now() + datetime.timedelta(seconds=window)
        ends = begins + datetime.timedelta(seconds=window)
        _write(certs, _dated(certs.server_ca, begins, ends))
        provider = certfiles.CertFiles(certfiles.TLSFiles(str(certs.cert_file), str(certs.key_file),
                                                          str(certs.client_ca_file)), openssl=False)
        if _now() < begins:
            return provider, ends
    pytest.fail("the set could not be read before its notBefore, 40 s ahead")


def test_a_set_not_yet_valid_that_expires_while_serving_is_warned_of_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    caplog.set_level(logging.WARNING, logger="plugbay.network.tls")
    provider, ends = _not_yet_valid_provider(certs)
    warned = _dates_warned(caplog, certs)
    assert len(warned) == 1 and "is not valid until" in warned[0], warned
    while _now() <= ends + datetime.timedelta(milliseconds=200):  # bounded: ends is at most 80 s ahead
        time.sleep(0.1)
    for _ in range(3):  # grpcio's fetcher, once per handshake: the same set, now expired
        assert provider.fetch() is None
    warned = _dates_warned(caplog, certs)
    assert len(warned) == 2 and "expired at" in warned[1], warned
