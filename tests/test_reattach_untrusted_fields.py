"""A reattach JSON's server certificate and plugin name are untrusted: checked when the JSON is read.

A certificate with a right DER outline but junk inside passed a base64 check and failed only at the
TLS dial (a bare ssl.SSLError for P-521, a wait for the whole start timeout for P-256); a name with a
newline or an escape reached the host's log lines as it was, forging records.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.resilience_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, faulty_config

from plugbay import Client, ClientConfig, ConfigError, ReattachConfig  # noqa: I001
from plugbay.core.protocol import der
from plugbay.core.protocol.tls import generate_cert


def validity_as_octet_string(cert_der: bytes) -> bytes:
    """``cert_der`` with its validity SEQUENCE re-tagged an OCTET STRING: the outline (and the curve)
    still read, OpenSSL refuses the certificate."""
    _, content, _ = der.read(cert_der)
    tbs, algorithm, signature = der.children(content)
    version, serial, sig_alg, issuer, validity, subject, spki, *rest = der.children(tbs[1])
    items = [version, serial, sig_alg, issuer, (der.OCTET_STRING, validity[1]), subject, spki, *rest]
    new_tbs = der.seq(*[der.tlv(tag, inner) for tag, inner in items])
    return der.seq(new_tbs, der.tlv(*algorithm), der.tlv(*signature))


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A running AutoMTLS plugin and its reattach JSON (as a dict)."""
    client = Client(faulty_config(Path(tmp_path_factory.mktemp("owner")), auto_mtls=True))
    client.start()
    try:
        yield client, json.loads(client.reattach_config().to_json())
    finally:
        client.kill()


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP521R1()], ids=["p256", "p521"])
def test_a_server_cert_openssl_refuses_is_a_config_error_when_read(owner: Any, curve: ec.EllipticCurve) -> None:
    client, data = owner
    bad = validity_as_octet_string(generate_cert(curve).cert_der)
    der.certificate_key(bad)  # the outline check alone takes it
    data = {**data, "handshake": {**data["handshake"], "server_cert": base64.b64encode(bad).decode()}}
    with pytest.raises(ConfigError, match=r"'server_cert' is base64 but not a DER X.509 certificate OpenSSL"
                                          r" loads .*pass ReattachConfig.to_json\(\) output, unedited"):
        ReattachConfig.from_json(json.dumps(data))
    assert client.runner.wait(0) is None


@pytest.mark.parametrize("name", [
    "kv\nCRITICAL root: FORGED LINE",
    "kv \x1b[31mred\x1b[0m",
    "kv\u2028two",
    "user \u202egnp.exe",  # a bidi override: shows as "exe.png"
    "iso\u2066late",
])
def test_a_name_with_control_or_bidi_characters_is_refused(owner: Any, name: str) -> None:
    _, data = owner
    with pytest.raises(ConfigError, match=r"'name' holds control or bidi formatting characters .*"
                                          r"Client.reattach_config\(\).to_json\(\) produced, unedited"):
        ReattachConfig.from_json(json.dumps({**data, "name": name}))


@pytest.mark.parametrize("name", [5, None, ["kv"], {"a": 1}])
def test_a_name_that_is_no_str_is_refused(owner: Any, name: object) -> None:
    _, data = owner
    with pytest.raises(ConfigError, match=r"'name' must be a str, got"):
        ReattachConfig.from_json(json.dumps({**data, "name": name}))


def test_an_unedited_reattach_json_reattaches_and_a_host_chosen_odd_name_round_trips_escaped(owner: Any) -> None:
    client, data = owner
    config = ReattachConfig.from_json(json.dumps(data))
    assert config.handshake.server_cert == client.reattach_config().handshake.server_cert
    # names of words and emoji joined by ZWNJ/ZWJ, a soft hyphen, spaces: text, kept as they are
    for name in ("\u0646\u0631\u0645\u200c\u0627\u0641\u0632\u0627\u0631", "kv \U0001f469\u200d\U0001f4bb",
                 "soft\u00adhyphen"):
        named = ReattachConfig(config.handshake, config.runner, config.client_cert, name=name)
        assert ReattachConfig.from_json(named.to_json()).name == name
        assert Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=["plugin"], name=name)).name == name
    # one made in code (testing's containers name it after the image) writes JSON that reads back
    odd = ReattachConfig(config.handshake, config.runner, config.client_cert, name="kv\u200b\nplugin\u202e")
    assert ReattachConfig.from_json(odd.to_json()).name == "kv\u200b\\x0aplugin\\u202e"
    again = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=config, start_timeout=20))
    try:
        again.start()
        kv = again.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"
    finally:
        again.close()  # lets go of the plugin: the owner's fixture kills it
    assert client.runner.wait(0) is None


@pytest.mark.parametrize("name", ["kv\nCRITICAL root: forged", "kv\x1b]0;title\x07", "a\u202eb"])
def test_client_config_name_with_control_or_bidi_characters_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="ClientConfig.name must be a plugin name without control or bidi"):
        ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=["plugin"], name=name)


def test_a_name_taken_from_a_file_name_is_escaped(tmp_path: Path) -> None:
    """A runner names the plugin after its executable, whose file name may hold anything: the Client's
    name (in log lines, and in its reattach JSON, which must read back) is escaped."""
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[str(tmp_path / "kv\nplugin\u202e")]))
    assert client.name == "kv\\x0aplugin\\u202e"


@pytest.mark.parametrize("client_cert", ["removed", None], ids=["removed", "null"])
def test_an_automtls_reattach_json_without_its_client_cert_is_refused_when_read(owner: Any, client_cert: Any) -> None:
    """The plugin announced a certificate, so it takes only the host key it was started with: without it the
    dial went out in plaintext and the Client waited its whole start_timeout for a health check."""
    client, data = owner
    data = {k: v for k, v in data.items() if k != "client_cert"}
    if client_cert is None:
        data["client_cert"] = None
    with pytest.raises(ConfigError, match=r"holds the plugin's AutoMTLS certificate but no client_cert.*"
                                          r"Client.reattach_config\(\).to_json\(\) produced, unedited"):
        ReattachConfig.from_json(json.dumps(data))
    assert client.runner.wait(0) is None


FORGED = "\x1b[2J\nCRITICAL root: FORGED LINE " + "x" * 100_000


@pytest.mark.parametrize("field", ["plugin_id", "kind", "pid", "start_time"])
def test_a_forged_runner_field_reaches_the_error_quoted_and_clipped(owner: Any, field: str) -> None:
    client, data = owner
    forged = {**data, "runner": {**data["runner"], field: FORGED}}
    reattaching = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=10,
                                      reattach=ReattachConfig.from_json(json.dumps(forged)))) \
        if field == "plugin_id" else None
    with pytest.raises(ConfigError) as caught:  # ReattachError is one
        if reattaching is None:
            ReattachConfig.from_json(json.dumps(forged)).attached_runner()
        else:
            reattaching.start()
    message = str(caught.value)
    assert "\x1b" not in message and "\n" not in message, message[:200]
    assert "characters cut" in message and len(message) < 2000
    assert not client.exited  # the plugin was left alone


def test_a_huge_pid_is_clipped_in_the_error() -> None:
    # an integer of up to 4300 digits passes the JSON parser: it reached the message whole
    from plugbay.errors import ReattachError
    from plugbay.runners.attached import checked_pid

    with pytest.raises(ReattachError, match="characters cut") as refused:
        checked_pid({"pid": 10 ** 4000})
    assert len(str(refused.value)) < 400, len(str(refused.value))
