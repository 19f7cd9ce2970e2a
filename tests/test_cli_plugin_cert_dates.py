"""`plugbay health` against a plugin whose certificate is out of its dates by this host's clock.

The command line ended at once (exit 2) on the plugin's certificate "not valid yet", where a plugin
mid-renewal served a few seconds early (or a little clock skew) is reached once the date passes, which the
command did before within its --timeout. Such a date failure now waits like any target coming up, and is
named (exit 2) only when --timeout ran out. The KV example served in network mode over mTLS on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

from tests import netcerts
from tests.cli_util import plugbay
from tests.test_network_broker import CounterReplica, host_tls
from tests.test_network_serve_lapsed_cert import KV_PLUGIN, dated_server_set


def _flags(certs: netcerts.CertSet) -> list[str]:
    tls = host_tls(certs)
    return ["--cert", str(tls.cert_file), "--key", str(tls.key_file), "--ca", tls.ca_file]


def test_a_plugin_certificate_valid_in_a_few_seconds_is_reached_within_the_timeout(tmp_path: Path) -> None:
    # The dated certificate is written once the plugin serves (it takes changed files at its next handshake),
    # so the plugin's start takes none of the margin; the plugin's warning of the set "not valid until" shows
    # that the command's first handshake came before the date, else the margin widens (a loaded machine).
    for soon in (8.0, 30.0, 90.0):  # seconds from the certificate's making to its notBefore
        certs = netcerts.write_set(tmp_path / f"tls-{soon:.0f}")
        replica = CounterReplica(tmp_path / f"kv-{soon:.0f}", certs, script=KV_PLUGIN)
        try:
            valid_from = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=soon)
            server = netcerts.issue(certs.server_ca, "localhost", server=True, not_before=valid_from,
                                    not_after=valid_from + datetime.timedelta(days=30))
            certs.cert_file.write_bytes(server.cert_pem)
            certs.key_file.write_bytes(server.key_pem)
            said = plugbay("health", f"static:///{replica.address}", *_flags(certs), "--timeout", f"{soon + 60:.0f}",
                           timeout=soon + 200)
        finally:
            _, plugin_err = replica.stop()
            shutil.rmtree(replica.tmp, ignore_errors=True)
        if "is not valid until" in plugin_err:
            break
    else:
        raise AssertionError("the command's first handshake came after the certificate's notBefore each time:"
                             " nothing was tested")
    assert said.returncode == 0 and said.stdout.startswith("SERVING"), said


def test_a_plugin_certificate_out_of_its_dates_is_named_at_the_timeout(tmp_path: Path) -> None:
    certs = dated_server_set(tmp_path / "tls", (-30, -1))
    replica = CounterReplica(tmp_path / "kv", certs, script=KV_PLUGIN)
    try:
        said = plugbay("health", f"static:///{replica.address}", *_flags(certs), "--timeout", "2")
    finally:
        replica.stop()
        shutil.rmtree(replica.tmp, ignore_errors=True)
    err = said.stdout + said.stderr
    assert said.returncode == 2, said
    assert "TLS with " in err and "the plugin's certificate has expired" in err, err
    assert "Traceback" not in err, err


def test_an_expired_cert_flag_is_named_with_its_date(tmp_path: Path) -> None:
    """The plugin's refusal of an expired --cert named no date ("signed by a CA it does not trust"): the
    library's RemoteClient said it, the command line did not."""
    certs = netcerts.write_set(tmp_path / "tls")
    replica = CounterReplica(tmp_path / "kv", certs, script=KV_PLUGIN)
    try:
        cert, key = _expired_client(certs, tmp_path)
        flags = ["--cert", cert, "--key", key, *_flags(certs)[4:]]
        said = plugbay("health", f"static:///{replica.address}", *flags, "--timeout", "30", timeout=200)
    finally:
        replica.stop()
        shutil.rmtree(replica.tmp, ignore_errors=True)
    err = (said.stdout + said.stderr).replace(cert, "")  # its folder names the test
    assert said.returncode == 2, said
    assert "this host's certificate (--cert '') expired at" in err, err
    assert err.count("renew it") == 1, err


def _expired_client(certs: netcerts.CertSet, folder: Path) -> tuple[str, str]:
    """A client certificate the plugin's client CA signed, expired yesterday."""
    host = netcerts.issue(certs.client_ca, "host", server=False, days=(-30, -1))
    (folder / "host.crt").write_bytes(host.cert_pem)
    (folder / "host.key").write_bytes(host.key_pem)
    return str(folder / "host.crt"), str(folder / "host.key")
