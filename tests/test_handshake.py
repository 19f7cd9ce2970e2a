"""The handshake line, version negotiation, and the generated code's freshness."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import pytest

from plugbay import errors
from plugbay.core.protocol.handshake import (
    HandshakeConfig,
    HandshakeInfo,
    is_handshake_line,
    parse_handshake_line,
    parse_versions,
)
from plugbay.core.protocol.tls import generate_cert
from plugbay.core.protocol.versions import negotiate_version

ROOT = Path(__file__).resolve().parent.parent


def test_five_field_line_from_old_plugins() -> None:
    info = parse_handshake_line("1|1|tcp|127.0.0.1:1234|grpc\n")
    assert (info.network, info.address, info.protocol, info.server_cert, info.multiplex) == \
        ("tcp", "127.0.0.1:1234", "grpc", None, False)


def test_six_field_line_carries_the_server_certificate() -> None:
    cert = generate_cert().cert_der
    line = HandshakeInfo(1, 3, "unix", "/tmp/x/plugin1", "grpc", cert).to_line()
    assert line.count("|") == 5 and not line.endswith("=")  # unpadded base64, as go-plugin writes
    info = parse_handshake_line(line)
    assert info.server_cert == cert and info.app_version == 3


def test_seven_field_line_announces_multiplexing() -> None:
    assert parse_handshake_line("1|2|unix|/s|grpc||true").multiplex is True
    assert parse_handshake_line("1|2|unix|/s|grpc||false").multiplex is False


def test_fields_past_the_seventh_are_ignored_as_go_plugin_ignores_them() -> None:
    # go-plugin's client reads parts[0..6] and nothing after: a later release may add a field
    info = parse_handshake_line("1|2|unix|/s|grpc||true|a-later-field|another")
    assert (info.app_version, info.address, info.multiplex) == (2, "/s", True)
    with pytest.raises(errors.MalformedHandshakeError, match="not a boolean"):
        parse_handshake_line("1|2|unix|/s|grpc||maybe|a-later-field", multiplex=True)


@pytest.mark.parametrize("field", ["", "v2", "yes", "maybe", " true", "tRUE"])
def test_a_seventh_field_that_is_no_boolean_is_refused_only_where_the_host_asked_to_multiplex(field: str) -> None:
    # go-plugin's host parses field 7 only when GRPCBrokerMultiplex is set (client.go, v1.8.0)
    line = f"1|1|tcp|127.0.0.1:1234|grpc||{field}|later"
    assert parse_handshake_line(line).multiplex is False
    assert is_handshake_line(line)
    with pytest.raises(errors.MalformedHandshakeError) as exc:
        parse_handshake_line(line, multiplex=True)
    assert f"multiplex field {field!r} is not a boolean" in str(exc.value) and repr(line) in str(exc.value)
    assert "set multiplex_broker=False" in str(exc.value)


def test_the_seventh_field_is_read_as_go_reads_a_boolean() -> None:
    for field, value in [(f, True) for f in ("1", "t", "T", "TRUE", "true", "True")] + \
                        [(f, False) for f in ("0", "f", "F", "FALSE", "false", "False")]:
        for asked in (False, True):
            assert parse_handshake_line(f"1|1|tcp|127.0.0.1:1|grpc||{field}", multiplex=asked).multiplex is value


def test_short_cert_field_means_no_certificate() -> None:
    # go-plugin ignores field 6 unless it is longer than 50 characters
    assert parse_handshake_line("1|1|tcp|127.0.0.1:1|grpc|abc").server_cert is None


@pytest.mark.parametrize("line,needle", [
    ("hello world", "at least 4"),
    ("x|1|tcp|a:1|grpc", "not a number"),
    ("1|one|tcp|a:1|grpc", "not a number"),
    ("1|1|udp|a:1|grpc", "unknown address type"),
    ("1|1|tcp||grpc", "empty address"),
    ("1|1|tcp|127.0.0.1|grpc", "no port"),
    ("1|1|tcp|:80|grpc", "no port"),
    ("1|1|tcp|127.0.0.1:http|grpc", "port 'http' of tcp address '127.0.0.1:http' is not a number in 1-65535"),
    ("1|1|tcp|127.0.0.1:0|grpc", "port '0' of tcp address"),
    ("1|1|tcp|127.0.0.1:70000|grpc", "port '70000' of tcp address"),
    ("1|1|tcp|a:1|grpc|" + "!" * 60, "base64"),
    ("1|1|tcp|a:1|grpc|" + "QUFB" * 20, "not a DER X.509 certificate"),
    ("\u0661|1|tcp|a:1|grpc", "core protocol version '\u0661' is not a number"),  # Arabic-Indic 1
    ("1|1_0|tcp|a:1|grpc", "app protocol version '1_0' is not a number"),
    ("1|+|tcp|a:1|grpc", "app protocol version '+' is not a number"),
    ("1| 1|tcp|a:1|grpc", "app protocol version ' 1' is not a number"),
    ("1|1|unix|/tmp/a\x00b|grpc", "address field: unix socket path '/tmp/a\\x00b' holds a control character"),
    ("1|1|unix|/tmp/a\x7fb|grpc", "address field: unix socket path '/tmp/a\\x7fb' holds a control character"),  # DEL
    ("1|1|unix|plugin.sock|grpc", "address field: unix socket path 'plugin.sock' is not absolute"),
    ("1|1|tcp|127.0.0.1:abc|grpc", "address field: port 'abc' of tcp address '127.0.0.1:abc' is not a number"),
    ("1|1|tcp|127.0.0.1:0|grpc", "port '0' of tcp address"),
    ("1|1|tcp|127.0.0.1:65536|grpc", "port '65536' of tcp address"),
    ("1|1|tcp|127.0.0.1|grpc", "tcp address '127.0.0.1' is not HOST:PORT"),
    ("1|1|tcp|:80|grpc", "tcp address ':80' is not HOST:PORT"),
    ("1|1|tcp|::1:80|grpc", "host '::1' of tcp address '::1:80' is not a hostname"),
    ("1|1|tcp|[nope]:80|grpc", "host '[nope]'"),
    ("1|1|tcp|a b:80|grpc", "host 'a b'"),
    # past DNS's lengths the resolver raised UnicodeError (no OSError), which killed a gateway session's thread
    ("1|1|tcp|" + "a" * 64 + ":1234|grpc|", "a label of 64 bytes, more than DNS's 63"),
    ("1|1|tcp|a..b:1234|grpc|", "host 'a..b' of tcp address 'a..b:1234' has an empty label"),
    ("1|1|tcp|.a:1234|grpc|", "has an empty label"),
])
def test_malformed_lines_are_quoted_in_the_error(line: str, needle: str) -> None:
    with pytest.raises(errors.MalformedHandshakeError) as exc:
        parse_handshake_line(line)
    assert needle in str(exc.value) and repr(line) in str(exc.value)


def test_a_hostname_longer_than_dns_allows_is_malformed() -> None:
    with pytest.raises(errors.MalformedHandshakeError, match="is 304 bytes long, more than DNS's 253"):
        parse_handshake_line("1|1|tcp|" + "a" * 60 + ("." + "a" * 60) * 4 + ":1|grpc|")


def test_strict_addresses_that_are_fine() -> None:
    for address in ("127.0.0.1:1", "[::1]:65535", "plugin.example-1:443", "0.0.0.0:4100", "plugin.example.:1",
                    "a" * 63 + ":1", ("a" * 63 + ".") * 3 + "a" * 61 + ":1"):
        assert parse_handshake_line(f"1|1|tcp|{address}|grpc").address == address
    assert parse_handshake_line("1|1|unix|/tmp/plugbay-x/plugin123|grpc").address == "/tmp/plugbay-x/plugin123"
    # a folder with '%' in its name (dialed percent-encoded: grpcio decodes unix targets)
    assert parse_handshake_line("1|1|unix|/tmp/a%2Fb/plugin1|grpc").address == "/tmp/a%2Fb/plugin1"


def test_reattach_handshake_facts_are_checked_too() -> None:
    with pytest.raises(errors.ConfigError,
                       match="address plugbay will not dial: unix socket path 'rel' is not absolute"):
        HandshakeInfo.from_dict({"core_version": 1, "app_version": 1, "network": "unix", "address": "rel"})


def test_a_reattach_server_cert_that_is_not_base64_is_a_config_error() -> None:
    # a loose base64 decode turned ":" into an empty certificate, which then read back as no certificate
    base = {"core_version": 1, "app_version": 1, "network": "unix", "address": "/tmp/x.sock"}
    for bad in (":", "!!!!", "QQ", 5, ["QQ=="]):
        with pytest.raises(errors.ConfigError, match="'server_cert' must be the plugin certificate in base64"):
            HandshakeInfo.from_dict({**base, "server_cert": bad})
    assert HandshakeInfo.from_dict({**base, "server_cert": ""}).server_cert is None
    cert = generate_cert().cert_der
    assert HandshakeInfo.from_dict({**base, "server_cert": base64.b64encode(cert).decode()}).server_cert == cert


def test_a_reattach_server_cert_is_checked_whole_as_a_handshake_lines_is() -> None:
    """Base64 of no certificate, or of one with junk inside a right outline, failed only at the TLS dial."""
    base = {"core_version": 1, "app_version": 1, "network": "unix", "address": "/tmp/x.sock"}
    junk = bytearray(generate_cert().cert_der)
    junk[10] = 0  # inside the TBS, as in the handshake line's test below
    for bad in (b"ABC", bytes(junk)):
        with pytest.raises(errors.ConfigError, match="'server_cert' is base64 but not a DER X.509 certificate"
                                                     " OpenSSL loads"):
            HandshakeInfo.from_dict({**base, "server_cert": base64.b64encode(bad).decode()})


def test_core_protocol_mismatch() -> None:
    with pytest.raises(errors.ProtocolMismatchError, match="core API version"):
        parse_handshake_line("2|1|tcp|127.0.0.1:1|grpc")


def test_unknown_protocol_is_named() -> None:
    with pytest.raises(errors.ProtocolMismatchError,
                       match="unknown protocol 'thrift'.*Check that the plugin is a go-plugin gRPC plugin"):
        parse_handshake_line("1|1|tcp|127.0.0.1:1|thrift")


def test_a_huge_unknown_protocol_is_clipped_in_the_message() -> None:
    # the field is the plugin's: it may be megabytes long, and the message goes into logs
    with pytest.raises(errors.ProtocolMismatchError) as info:
        parse_handshake_line("1|1|tcp|127.0.0.1:1|" + "p" * 60_000 + "END")
    message = str(info.value)
    assert len(message) < 1_000 and "characters cut" in message and "END'" in message
    assert message.startswith("the plugin announced unknown protocol 'ppp")


def test_netrpc_is_refused_with_advice() -> None:
    for line in ("1|1|tcp|127.0.0.1:1|netrpc", "1|1|tcp|127.0.0.1:1"):
        with pytest.raises(errors.UnsupportedProtocolError, match="serve gRPC"):
            parse_handshake_line(line)


def test_version_negotiation_picks_highest_common() -> None:
    assert negotiate_version([1, 2, 3], [2, 3, 4]) == 3
    with pytest.raises(errors.VersionMismatchError) as exc:
        negotiate_version([1, 2], [3])
    assert "[1, 2]" in str(exc.value) and "[3]" in str(exc.value)
    assert parse_versions("1, 2,3") == [1, 2, 3]
    with pytest.raises(errors.ConfigError, match="'two', which is not a version number; set it to comma-separated"):
        parse_versions("1,two")


def test_handshake_info_round_trips_through_json() -> None:
    info = HandshakeInfo(1, 2, "tcp", "127.0.0.1:9", "grpc", generate_cert().cert_der, True)
    assert HandshakeInfo.from_dict(info.to_dict()) == info


def test_empty_cookie_is_a_config_error() -> None:
    for key, value in (("", "x"), ("KEY", "")):
        with pytest.raises(errors.ConfigError, match="non-empty magic_cookie_key and magic_cookie_value;"
                                                     " pick a unique pair"):
            HandshakeConfig(1, key, value)


def test_generated_code_matches_protos() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts/genproto.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_certificate_with_the_right_outline_but_junk_inside_is_malformed() -> None:
    """The DER outline check reads the curve; OpenSSL then parses the whole certificate."""
    import base64

    from plugbay.core.protocol.der import certificate_key

    der = bytearray(generate_cert().cert_der)
    der[10] = 0  # inside the TBS: the outline (and the curve) still read fine
    certificate_key(bytes(der))
    line = "1|1|unix|/tmp/p.sock|grpc|" + base64.b64encode(bytes(der)).decode().rstrip("=")
    with pytest.raises(errors.MalformedHandshakeError, match="not a DER X.509 certificate"):
        parse_handshake_line(line)


def test_handshake_values_compare_print_hash_and_stay_frozen_like_dataclasses() -> None:
    # HandshakeConfig/HandshakeInfo are plain classes (core/protocol/records.py), not dataclasses:
    # equality, repr, hashing and immutability must still be what @dataclass(frozen=True) gave.
    from plugbay import HandshakeConfig, NetworkServe
    from plugbay.core.broker.brokertransport import BrokerTransport

    a = HandshakeConfig(1, "K", "V")
    assert a == HandshakeConfig(protocol_version=1, magic_cookie_key="K", magic_cookie_value="V")
    assert a != HandshakeConfig(2, "K", "V") and a != (1, "K", "V")
    assert repr(a) == "HandshakeConfig(protocol_version=1, magic_cookie_key='K', magic_cookie_value='V')"
    assert len({a, HandshakeConfig(1, "K", "V"), HandshakeConfig(2, "K", "V")}) == 2
    with pytest.raises(AttributeError, match="HandshakeConfig is frozen"):
        a.protocol_version = 2  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        del a.magic_cookie_key  # type: ignore[misc]
    with pytest.raises(errors.ConfigError, match="non-empty magic_cookie_key"):
        HandshakeConfig(1, "", "V")
    with pytest.raises(errors.ConfigError, match="non-empty magic_cookie_key"):
        a.replace(magic_cookie_value="")

    info = HandshakeInfo(1, 2, "unix", "/tmp/x.sock")
    assert (info.protocol, info.server_cert, info.multiplex, dict(info.extra)) == ("grpc", None, False, {})
    moved = info.with_address("tcp", "127.0.0.1:4000")
    assert (moved.network, moved.address, info.address) == ("tcp", "127.0.0.1:4000", "/tmp/x.sock")
    assert moved == HandshakeInfo(1, 2, "tcp", "127.0.0.1:4000") and moved != info
    assert repr(info).startswith("HandshakeInfo(core_version=1, app_version=2, network='unix',")
    with pytest.raises(TypeError, match="no field"):
        info.replace(port=1)

    assert NetworkServe() == NetworkServe(listen="0.0.0.0:7001", multiplex=True)
    assert NetworkServe(insecure=True).brokering is False
    assert BrokerTransport() == BrokerTransport(multiplex=False)
    with pytest.raises(AttributeError, match="frozen"):
        BrokerTransport().multiplex = True  # type: ignore[misc]


def test_numbers_too_long_for_int_are_no_numbers_not_a_value_error() -> None:
    # int() refuses more than 4300 digits with a bare ValueError (CPython's limit): the host's start
    # raised it instead of a HandshakeError, and a plugin failed on such a PLUGIN_PROTOCOL_VERSIONS piece
    big = "9" * 5000
    for line, needle in ((big + "|1|unix|/tmp/x|grpc", "core protocol version"),
                         ("1|" + big + "|unix|/tmp/x|grpc", "app protocol version"),
                         ("1|1|tcp|127.0.0.1:" + big + "|grpc", "is not a number in 1-65535")):
        with pytest.raises(errors.MalformedHandshakeError, match=needle) as caught:
            parse_handshake_line(line)
        assert len(str(caught.value)) < 1500  # the quoted line and reason are cut, not 15,000 characters
    assert not is_handshake_line(big + "|x")
    assert not is_handshake_line("1|" + big + "|unix|/tmp/x|grpc")
    with pytest.raises(errors.ConfigError, match="not a version number"):
        parse_versions("1," + big)


@pytest.mark.parametrize("over, needle", [
    ({"multiplex": "false"}, "'multiplex' must be true or false, got 'false'"),  # bool("false") read as True
    ({"multiplex": 1}, "'multiplex' must be true or false, got 1"),
    ({"core_version": 2}, "'core_version' is 2; plugbay speaks core protocol 1 only"),
    ({"app_version": -5}, "'app_version' must be 0 or more, got -5"),
    ({"protocol": "netrpc"}, "'protocol' must be 'grpc'"),
    ({"protocol": 5}, "'protocol' must be 'grpc'"),
    ({"network": "udp", "address": "whatever"}, "'network' must be 'tcp' or 'unix', got 'udp'"),
])
def test_reattach_facts_are_refused_where_a_handshake_line_would_be(over: dict[str, object], needle: str) -> None:
    base = {"core_version": 1, "app_version": 1, "network": "unix", "address": "/tmp/x.sock", "protocol": "grpc",
            "server_cert": None, "multiplex": False}
    with pytest.raises(errors.ConfigError, match=re.escape(needle)):
        HandshakeInfo.from_dict({**base, **over})
    assert HandshakeInfo.from_dict(base).multiplex is False
    assert HandshakeInfo.from_dict({**base, "multiplex": True}).multiplex is True


# --- read as go-plugin's host reads the line (client.go: TrimSpace, strconv.Atoi, base64.RawStdEncoding) ---

def _cert_needing_padding() -> bytes:
    while len(der := generate_cert().cert_der) % 3 == 0:  # its base64 would have no '=' to show
        pass
    return der


@pytest.mark.parametrize("line, core, app", [
    ("1|+1|tcp|127.0.0.1:1234|grpc", 1, 1),
    ("+1|1|tcp|127.0.0.1:1234|grpc", 1, 1),
    ("01|01|tcp|127.0.0.1:1234|grpc", 1, 1),
    ("1|+0000000000000000000000000002|tcp|127.0.0.1:1234|grpc", 1, 2),  # Atoi takes any leading zeros
    ("1|-0|tcp|127.0.0.1:1234|grpc", 1, 0),
    ("1|-1|tcp|127.0.0.1:1234|grpc", 1, -1),  # a number: refused later as a version no host has
    ("1|9223372036854775807|tcp|127.0.0.1:1234|grpc", 1, 2**63 - 1),
    ("\u00a0 1|1|tcp|127.0.0.1:1234|grpc\u2028\r", 1, 1),  # what TrimSpace trims
])
def test_versions_are_read_as_go_atoi_reads_them(line: str, core: int, app: int) -> None:
    info = parse_handshake_line(line)
    assert (info.core_version, info.app_version, info.protocol) == (core, app, "grpc")
    assert is_handshake_line(line)


@pytest.mark.parametrize("line, needle", [
    ("1|9223372036854775808|tcp|127.0.0.1:1234|grpc", "app protocol version '9223372036854775808' is not a number"),
    ("1|-9223372036854775809|tcp|127.0.0.1:1234|grpc", "app protocol version '-9223372036854775809'"),
    ("1|1 |tcp|127.0.0.1:1234|grpc", "app protocol version '1 ' is not a number"),
    ("1|0x1|tcp|127.0.0.1:1234|grpc", "app protocol version '0x1' is not a number"),
    ("1|--1|tcp|127.0.0.1:1234|grpc", "app protocol version '--1' is not a number"),
    ("\x1c1|1|tcp|127.0.0.1:1234|grpc", "core protocol version '\\x1c1' is not a number"),  # Go keeps U+001C
])
def test_versions_go_atoi_refuses_are_malformed(line: str, needle: str) -> None:
    with pytest.raises(errors.MalformedHandshakeError) as exc:
        parse_handshake_line(line)
    assert needle in str(exc.value) and "strconv.Atoi" in str(exc.value)


def test_a_negative_core_version_is_another_core_protocol() -> None:
    with pytest.raises(errors.ProtocolMismatchError, match="plugin speaks -1, plugbay speaks 1"):
        parse_handshake_line("-1|1|tcp|127.0.0.1:1234|grpc")
    assert is_handshake_line("-1|1|tcp|127.0.0.1:1234|grpc")  # told at once, as another core version's


def test_a_trailing_separator_go_keeps_is_part_of_the_protocol() -> None:
    with pytest.raises(errors.ProtocolMismatchError, match=r"unknown protocol 'grpc\\x1f'"):
        parse_handshake_line("1|1|tcp|127.0.0.1:1234|grpc\x1f")


def test_a_padded_server_cert_is_refused_as_go_plugin_refuses_it() -> None:
    der = _cert_needing_padding()
    padded = base64.b64encode(der).decode()
    assert padded.endswith("=")
    line = f"1|1|tcp|127.0.0.1:1234|grpc|{padded}"
    with pytest.raises(errors.MalformedHandshakeError) as exc:
        parse_handshake_line(line)
    assert "base64 padding ('=' at offset" in str(exc.value) and "RawStdEncoding" in str(exc.value)
    assert parse_handshake_line(line.rstrip("=")).server_cert == der  # what go-plugin's plugins print


def test_carriage_returns_in_the_server_cert_are_skipped_as_go_skips_them() -> None:
    der = generate_cert().cert_der
    field = base64.b64encode(der).decode().rstrip("=")
    line = f"1|1|tcp|127.0.0.1:1234|grpc|{field[:40]}\r{field[40:]}\r"
    assert parse_handshake_line(line).server_cert == der


def test_the_cert_field_length_is_counted_in_bytes_as_go_counts_it() -> None:
    assert parse_handshake_line("1|1|tcp|127.0.0.1:1|grpc|" + "\u00e9" * 25).server_cert is None  # 50 bytes
    with pytest.raises(errors.MalformedHandshakeError, match="not valid base64"):
        parse_handshake_line("1|1|tcp|127.0.0.1:1|grpc|" + "\u00e9" * 26)  # 52 bytes: go-plugin reads it


# go-plugin 1.0.1's own host (tests/go/kv_host) given each line by a plugin that prints it: it refuses
# the line (a parse error) exactly where plugbay does
_GO_REFUSES = ("Error parsing", "error parsing server cert", "Incompatible", "Unrecognized remote plugin message",
               "Unsupported plugin protocol")


@pytest.mark.parametrize("fields", ["1|+1", "+1|1", "01|01", "1|-1", "-1|1", "1|+", "1| 1", "1|1_0",
                                    "1|9223372036854775808", "\x1c1|1", "1|1", "1|1|cert-padded",
                                    "1|1|cert-unpadded"])
def test_go_plugins_host_takes_and_refuses_the_same_lines(tmp_path: Path, fields: str) -> None:
    import os
    import shlex

    from tests import gobuild

    host = gobuild.go_program_or_skip("kv_host")
    core_app, _, cert_kind = fields.rpartition("|") if "cert" in fields else (fields, "", "")
    cert = ""
    if cert_kind:
        encoded = base64.b64encode(_cert_needing_padding()).decode()
        cert = "|" + (encoded if cert_kind == "cert-padded" else encoded.rstrip("="))
    line = f"{core_app}|unix|{tmp_path / 'plugin.sock'}|grpc{cert}"
    try:  # kv_host speaks app version 1 only: another is a Client's VersionMismatchError (refuse_announced)
        plugbay_refuses = parse_handshake_line(line).app_version != 1
    except (errors.MalformedHandshakeError, errors.ProtocolMismatchError):
        plugbay_refuses = True
    misbehave = ROOT / "tests" / "plugins" / "misbehave.py"
    env = {**os.environ, "KV_PLUGIN": f"{shlex.quote(sys.executable)} {misbehave} line {shlex.quote(line)}"}
    done = gobuild.run_program(host, ["--automtls", "--timeout", "30s", "get", "k"], env=env, cwd=tmp_path,
                               timeout=60)
    go_refuses = any(phrase in done.stdout + done.stderr for phrase in _GO_REFUSES)
    assert done.returncode != 0  # no plugin serves there either way
    assert go_refuses or "dial unix" in done.stdout + done.stderr, done.stdout  # it took the line and dialled
    assert go_refuses == plugbay_refuses, (line, done.stdout, done.stderr[-2000:])


def test_a_certificate_field_with_a_lone_surrogate_is_malformed_not_a_unicode_error() -> None:
    # the field's length is counted in bytes, as Go's len(): a lone surrogate (from a caller's own
    # decoding) has none in UTF-8, and encoding it raised a bare UnicodeEncodeError
    line = "1|1|tcp|127.0.0.1:1234|grpc|" + "A" * 60 + "\udc80"
    with pytest.raises(errors.MalformedHandshakeError):
        parse_handshake_line(line)
    assert not is_handshake_line(line)
