"""The host's NetworkTLS key reaches OpenSSL (a multiplexed session's TLS relay, the TLS probe) from the
user's own files while they hold the set in use: no copy of the private key in the temp folder, and no
need for a writable one. Only a set the files no longer hold is copied, and a temp folder that cannot take
it is a TLSConfigError naming TMPDIR, not a bare OSError. Each set's context is built when the set is read,
so the copy is needed only when the files change between the read and that build (ClientSet on its own
below)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from plugbay import NetworkTLS, TLSConfigError
from plugbay.network import tlsfiles, tlsprobe
from tests import netcerts


@pytest.fixture()
def no_tempdir(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A temp folder that does not exist (a read-only root without /tmp); notes each attempt to use it."""
    made: list[Any] = []
    real = tempfile.mkstemp

    def noted(*args: Any, **kwargs: Any) -> Any:
        made.append(args or kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "tempdir", "/nonexistent-plugbay-tmp")
    monkeypatch.setattr(tempfile, "mkstemp", noted)
    return made


def _files(tmp_path: Path) -> tuple[NetworkTLS, netcerts.CertSet]:
    certs = netcerts.write_set(tmp_path / "server")
    host = netcerts.issue(certs.client_ca, "host", server=False)
    (tmp_path / "tls.crt").write_bytes(host.cert_pem)
    (tmp_path / "tls.key").write_bytes(host.key_pem)
    (tmp_path / "ca.crt").write_bytes(certs.server_ca.cert_pem)
    return NetworkTLS(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"), str(tmp_path / "ca.crt")), certs


def test_the_relay_and_the_probe_load_the_key_from_the_users_files(tmp_path: Path, no_tempdir: list[Any]) -> None:
    tls, _ = _files(tmp_path)
    assert tls.ssl_context().get_ca_certs()  # the multiplexed connection's context, built
    tlsprobe._context(tls)  # the probe's, per probe
    assert no_tempdir == []  # the private key was not copied anywhere


def test_a_half_done_renewal_keeps_the_context_built_from_the_users_files(
        tmp_path: Path, no_tempdir: list[Any]) -> None:
    tls, certs = _files(tmp_path)
    tls.files()  # the good set, read, and its context built from the files while they hold it
    # a renewal half done (the new key written, its certificate not yet): the last good set stays in use
    (tmp_path / "tls.key").write_bytes(netcerts.issue(certs.client_ca, "next", server=False).key_pem)
    assert tls.ssl_context().get_ca_certs()
    assert no_tempdir == []


def _set_no_longer_on_disk(tmp_path: Path) -> tlsfiles.ClientSet:
    """A set read from the files, which then change before its context is built."""
    _, certs = _files(tmp_path)
    read = tlsfiles.load(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"), str(tmp_path / "ca.crt"))
    (tmp_path / "tls.key").write_bytes(netcerts.issue(certs.client_ca, "next", server=False).key_pem)
    return read


def test_a_set_the_files_no_longer_hold_without_a_temp_folder_is_a_tls_config_error(
        tmp_path: Path, no_tempdir: list[Any]) -> None:
    read = _set_no_longer_on_disk(tmp_path)
    with pytest.raises(TLSConfigError, match="TMPDIR"):
        read.ssl_context()  # only a copy of the set can be handed to OpenSSL
    assert len(no_tempdir) == 1


def test_a_set_the_files_no_longer_hold_is_copied_to_a_private_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read = _set_no_longer_on_disk(tmp_path)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    assert read.ssl_context().get_ca_certs()
    assert list(private.iterdir()) == []  # the copy is gone once loaded
