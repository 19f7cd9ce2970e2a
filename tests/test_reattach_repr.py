"""A ReattachConfig's repr (what logs and tracebacks show) hides what would let a reader reattach.

The JSON itself carries the proofs (a process plugin's id, a container's or pod's reattach secret)
and, with AutoMTLS, the client key the plugin trusts: it is stored where only the host can read it.
A repr is not: it reaches log files and error reports, so it names those fields without their values.
"""

from __future__ import annotations

from pathlib import Path

from tests.resilience_util import faulty_config

from plugbay import Client, ReattachConfig
from plugbay.core.protocol.tls import generate_cert


def test_a_real_reattach_configs_repr_hides_the_plugin_id_and_the_automtls_key(tmp_path: Path) -> None:
    with Client(faulty_config(tmp_path, auto_mtls=True)) as client:
        client.start()
        config = client.reattach_config()
        plugin_id = config.runner["plugin_id"]
        assert config.client_cert is not None
        key = config.client_cert.key_pem.decode()
        shown = repr(config)
        assert plugin_id not in shown and "plugin_id': '<hidden>'" in shown
        assert key not in shown and "BEGIN" not in shown and "key_pem=<hidden>" in shown
        assert str(config.runner["pid"]) in shown  # what is no proof stays readable
        # the JSON, which the next host needs, keeps them
        again = ReattachConfig.from_json(config.to_json())
        assert again.runner["plugin_id"] == plugin_id and again.client_cert == config.client_cert


def test_a_container_or_pods_reattach_secret_is_hidden_too() -> None:
    cert = generate_cert()
    config = ReattachConfig.from_json(
        '{"handshake": {"core_version": 1, "app_version": 1, "network": "tcp", "address": "127.0.0.1:4000",'
        ' "protocol": "grpc", "server_cert": ""},'
        ' "runner": {"kind": "DockerRunner", "id": "abc123abc123", "reattach_secret": "s3cr3t-value"}}')
    shown = repr(config) + repr(cert)
    assert "s3cr3t-value" not in shown and "reattach_secret': '<hidden>'" in shown
    assert cert.key_pem.decode() not in shown and "abc123abc123" in shown
