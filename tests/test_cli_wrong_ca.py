"""`plugbay health`, `info` and `call` given a --ca that did not sign the plugin's certificate: they printed
gRPC's raw words (DEADLINE_EXCEEDED ... CERTIFICATE_VERIFY_FAILED) with the advice "check that the plugin
runs", exit 3 (unreachable). Now a typed error (TLSConfigError) names the TLS failure and the flag to fix,
exit 2 (a configuration error). The KV example served in network mode over mTLS on 127.0.0.1."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests import netcerts
from tests.cli_util import KV_PROTO, cli_env, plugbay
from tests.test_network_broker import REPO, CounterReplica, host_tls


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str], list[str]]]:
    """The plugin's target, the flags of the right mTLS files, and the same with another CA's certificate."""
    folder = tmp_path_factory.mktemp("wrongca")
    certs = netcerts.write_set(folder / "tls")
    rep = CounterReplica(folder / "kv", certs, script=REPO / "examples" / "kv" / "plugin.py")
    try:
        tls = host_tls(certs)
        rogue = folder / "rogue-ca.crt"
        rogue.write_bytes(netcerts.make_ca("rogue CA").cert_pem)
        right = ["--cert", str(tls.cert_file), "--key", str(tls.key_file), "--ca", tls.ca_file]
        yield f"static:///{rep.address}", right, [*right[:4], "--ca", str(rogue)]
    finally:
        rep.stop()
        shutil.rmtree(rep.tmp, ignore_errors=True)  # the plugin's own TMPDIR


COMMANDS = [["health"], ["info"], ["call", "/proto.KV/Get", '{"key": "a"}', "--proto", str(KV_PROTO)],
            ["call", "/proto.KV/Get", '{"key": "a"}']]


@pytest.mark.parametrize("args", COMMANDS, ids=["health", "info", "call", "call-reflection"])
def test_a_ca_that_did_not_sign_the_plugins_certificate_is_named(served: tuple[str, list[str], list[str]],
                                                                 args: list[str]) -> None:
    target, _, wrong = served
    said = plugbay(args[0], target, *args[1:], *wrong, "--timeout", "5")  # a bound against a hang only
    err = said.stdout + said.stderr
    assert said.returncode == 2, said
    assert "TLS with " in err and "not signed by the CA given (--ca)" in err, err
    assert "pass --ca with the CA that signed the plugin's certificate" in err, err
    assert "Traceback" not in err and "check that the plugin runs" not in err, err


def test_the_right_ca_still_serves(served: tuple[str, list[str], list[str]]) -> None:
    target, right, _ = served
    said = plugbay("health", target, *right, "--timeout", "10")
    assert said.returncode == 0 and said.stdout.startswith("SERVING"), said


def test_the_plugins_own_error_is_no_tls_failure(served: tuple[str, list[str], list[str]]) -> None:
    """A status the plugin sent (NOT_FOUND, its message naming the key) is its answer, whatever its words."""
    target, right, _ = served
    said = plugbay("call", target, "/proto.KV/Get", '{"key": "certificate verify failed"}', *right,
                   "--proto", str(KV_PROTO), "--timeout", "10")
    err = said.stdout + said.stderr
    assert "TLS with " not in err and "--ca" not in err, err
    assert "NOT_FOUND" in err and "no value stored for key 'certificate verify failed'" in err, err
    assert said.returncode not in (0, 2), said


@pytest.fixture(scope="module")
def stranger_flags(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """--cert/--key of a certificate another CA signed (the plugin refuses it)."""
    folder = tmp_path_factory.mktemp("stranger")
    who = netcerts.issue(netcerts.make_ca("stranger CA"), "stranger", server=False)
    (folder / "s.crt").write_bytes(who.cert_pem)
    (folder / "s.key").write_bytes(who.key_pem)
    return ["--cert", str(folder / "s.crt"), "--key", str(folder / "s.key")]


@pytest.mark.parametrize("args", COMMANDS, ids=["health", "info", "call", "call-reflection"])
@pytest.mark.parametrize("fault", ["wrong-ca", "refused-cert"])
def test_a_definite_tls_failure_ends_the_command_without_waiting_out_its_timeout(
        served: tuple[str, list[str], list[str]], stranger_flags: list[str], args: list[str], fault: str) -> None:
    """A wait for a target coming up (the probes' wait_for_ready) cannot help files the TLS handshake refuses:
    the command said so only when --timeout ran out ("gRPC said: DEADLINE_EXCEEDED ..."), where the library's
    pool fails such a call at once. Now the connection's own failure ends it, whatever --timeout is."""
    target, right, wrong = served
    flags = wrong if fault == "wrong-ca" else [*stranger_flags, *right[4:]]
    said = plugbay(args[0], target, *args[1:], *flags, "--timeout", "60", timeout=200)
    err = said.stdout + said.stderr
    assert said.returncode == 2, said
    assert "TLS with " in err and ("not signed by the CA given (--ca)" in err if fault == "wrong-ca"
                                   else "the plugin refused the host's certificate" in err), err
    assert "DEADLINE_EXCEEDED" not in err and "UNAVAILABLE: failed to connect" in err, err


# gRPC's C core prints its own log lines (``E1207 ... ssl_transport_security_utils.cc ... Corruption detected``,
# ``I1207 ... Handshake failed``) to stderr on a TLS failure: the command printed them above its own one-line
# error. They are off unless --debug (or the user's own GRPC_VERBOSITY).
GRPC_LINES = ("ssl_transport_security", "Handshake failed with error")


def _wrong_ca(served: tuple[str, list[str], list[str]]) -> list[str]:
    target, _, wrong = served
    return [target, *wrong, "--timeout", "30"]


def _env() -> dict[str, str]:
    env = cli_env()
    env.pop("GRPC_VERBOSITY", None)
    env.pop("GRPC_TRACE", None)
    return env


def test_grpcs_own_log_lines_are_not_printed_above_the_error(served: tuple[str, list[str], list[str]]) -> None:
    said = plugbay("health", *_wrong_ca(served), env=_env(), timeout=120)
    assert said.returncode == 2, said
    assert "not signed by the CA given (--ca)" in said.stderr, said.stderr
    assert not any(line in said.stderr for line in GRPC_LINES), said.stderr
    assert said.stderr.startswith("error: TLS with "), said.stderr


def test_debug_keeps_them(served: tuple[str, list[str], list[str]]) -> None:
    said = plugbay("--debug", "health", *_wrong_ca(served), env=_env(), timeout=120)
    assert said.returncode == 2, said
    assert any(line in said.stderr for line in GRPC_LINES), said.stderr


def test_the_users_own_verbosity_is_kept(served: tuple[str, list[str], list[str]]) -> None:
    said = plugbay("health", *_wrong_ca(served), env={**_env(), "GRPC_VERBOSITY": "INFO"}, timeout=120)
    assert said.returncode == 2, said
    assert any(line in said.stderr for line in GRPC_LINES), said.stderr
