"""`plugbay health/info/call --server-name`: a network target over TLS whose certificate names another host
than the address dialed (a replica reached by its IP, its certificate issued for a service name). The command
line had no way to say the name (the library's NetworkTLS(server_name=)), so such a plugin could not be probed;
without the flag the refusal names it. The KV example served in network mode over mTLS on 127.0.0.1."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests import netcerts
from tests.cli_util import plugbay, running
from tests.test_cli import COOKIE, KV_CMD
from tests.test_network_broker import REPO, CounterReplica, host_tls

NAME = "kv.plugbay.test"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """The plugin's target and the mTLS flags; its certificate names NAME only, not 127.0.0.1."""
    folder = tmp_path_factory.mktemp("servername")
    certs = netcerts.write_set(folder / "tls")
    named = netcerts.issue(certs.server_ca, NAME, server=True, sans=[x509.DNSName(NAME)])
    certs.cert_file.write_bytes(named.cert_pem + certs.server_ca.cert_pem)
    certs.key_file.write_bytes(named.key_pem)
    rep = CounterReplica(folder / "kv", certs, script=REPO / "examples" / "kv" / "plugin.py")
    try:
        tls = host_tls(certs)
        flags = ["--cert", str(tls.cert_file), "--key", str(tls.key_file), "--ca", tls.ca_file]
        yield f"static:///{rep.address}", flags
    finally:
        rep.stop()
        shutil.rmtree(rep.tmp, ignore_errors=True)  # the plugin's own TMPDIR


def test_server_name_reaches_a_plugin_whose_certificate_names_another_host(served: tuple[str, list[str]]) -> None:
    target, flags = served
    said = plugbay("health", target, *flags, "--server-name", NAME, "--timeout", "10")
    assert said.returncode == 0 and said.stdout.startswith("SERVING"), said
    info = plugbay("info", target, *flags, "--server-name", NAME, "--timeout", "10")
    assert info.returncode == 0 and "tls: True" in info.stdout and "health: SERVING" in info.stdout, info


def test_a_name_mismatch_says_which_name_was_checked_and_not_the_ca(served: tuple[str, list[str]]) -> None:
    target, flags = served
    said = plugbay("health", target, *flags, "--timeout", "5")  # a bound against a hang only
    err = said.stdout + said.stderr
    assert said.returncode == 2, said
    assert "does not name '127.0.0.1', the address dialed (the name checked without --server-name)" in err, err
    assert "Pass --server-name with a name its subjectAltName carries" in err, err
    assert "--ca" not in err and "CA" not in err.split("(gRPC said")[0], err  # the chain was not in question
    wrong = plugbay("health", target, *flags, "--server-name", "other.plugbay.test", "--timeout", "5")
    err = wrong.stdout + wrong.stderr
    assert wrong.returncode == 2, wrong
    assert "does not name 'other.plugbay.test', the name given by --server-name" in err, err
    assert "serve the plugin with a certificate that names other.plugbay.test" in err, err
    assert "--ca" not in err and "CA" not in err.split("(gRPC said")[0], err


def test_spaces_around_the_name_are_dropped_and_inside_it_refused(served: tuple[str, list[str]]) -> None:
    target, flags = served
    pasted = plugbay("health", target, *flags, "--server-name", f" {NAME} ", "--timeout", "10")
    assert pasted.returncode == 0 and pasted.stdout.startswith("SERVING"), pasted
    two = plugbay("health", target, *flags, "--server-name", f"{NAME} other", "--timeout", "5")
    assert two.returncode == 2 and "holds whitespace: give one name" in two.stderr, two


def test_server_name_is_refused_where_it_means_nothing(served: tuple[str, list[str]]) -> None:
    target, _ = served
    plain = plugbay("health", target, "--insecure", "--server-name", NAME, "--timeout", "5")
    assert plain.returncode == 2 and "not --insecure" in plain.stderr, plain


def test_server_name_is_refused_with_a_reattach_config(tmp_path: Path) -> None:
    with running(["--cmd", KV_CMD, "--cookie", COOKIE, "--automtls"], tmp_path) as run:
        said = plugbay("health", run.target, "--server-name", NAME, "--timeout", "10")
        assert said.returncode == 2 and "--server-name is for a network target" in said.stderr, said
        assert plugbay("health", run.target, "--timeout", "10").returncode == 0  # the plugin was left running
