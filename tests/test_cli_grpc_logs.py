"""gRPC's C core prints its own log lines (``E1207 ... ssl_transport_security_utils.cc ... Corruption
detected``, ``I1207 ... Handshake failed``) to stderr on a TLS failure: the command printed them above its
own one-line error. They are off unless --debug (or the user's own GRPC_VERBOSITY). The KV example served in
network mode over mTLS on 127.0.0.1, asked with a --ca that did not sign its certificate."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests import netcerts
from tests.cli_util import cli_env, plugbay
from tests.test_network_broker import REPO, CounterReplica, host_tls

GRPC_LINES = ("ssl_transport_security", "Handshake failed with error")


@pytest.fixture(scope="module")
def wrong_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """The plugin's target and flags with a CA that did not sign its certificate."""
    folder = tmp_path_factory.mktemp("grpclogs")
    certs = netcerts.write_set(folder / "tls")
    rep = CounterReplica(folder / "kv", certs, script=REPO / "examples" / "kv" / "plugin.py")
    try:
        tls = host_tls(certs)
        rogue = folder / "rogue-ca.crt"
        rogue.write_bytes(netcerts.make_ca("rogue CA").cert_pem)
        yield [f"static:///{rep.address}", "--cert", str(tls.cert_file), "--key", str(tls.key_file),
               "--ca", str(rogue), "--timeout", "30"]
    finally:
        rep.stop()
        shutil.rmtree(rep.tmp, ignore_errors=True)  # the plugin's own TMPDIR


def _env() -> dict[str, str]:
    env = cli_env()
    env.pop("GRPC_VERBOSITY", None)
    env.pop("GRPC_TRACE", None)
    return env


def test_grpcs_own_log_lines_are_not_printed_above_the_error(wrong_ca: list[str]) -> None:
    said = plugbay("health", *wrong_ca, env=_env(), timeout=120)
    assert said.returncode == 2, said
    assert "not signed by the CA given (--ca)" in said.stderr, said.stderr
    assert not any(line in said.stderr for line in GRPC_LINES), said.stderr
    assert said.stderr.startswith("error: TLS with "), said.stderr


def test_debug_keeps_them(wrong_ca: list[str]) -> None:
    said = plugbay("--debug", "health", *wrong_ca, env=_env(), timeout=120)
    assert said.returncode == 2, said
    assert any(line in said.stderr for line in GRPC_LINES), said.stderr


def test_the_users_own_verbosity_is_kept(wrong_ca: list[str]) -> None:
    said = plugbay("health", *wrong_ca, env={**_env(), "GRPC_VERBOSITY": "INFO"}, timeout=120)
    assert said.returncode == 2, said
    assert any(line in said.stderr for line in GRPC_LINES), said.stderr
