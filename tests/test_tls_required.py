"""AutoMTLS does not silently downgrade: a plugin that announces no certificate is refused
wherever the connection leaves the host's private folder (or whenever require_tls=True).

The "old plugin" is the real KV plugin started without PLUGIN_CLIENT_CERT (what a plugin
built before AutoMTLS does: it serves plaintext and announces no certificate).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig, ConfigError, TLSRequiredError  # noqa: E402
from plugbay.runners.process import ProcessRunner  # noqa: E402

PY = sys.executable
TRAP = str(REPO / "tests" / "plugins" / "trap_kv.py")
PLUGINS = {PLUGIN_NAME: KVPlugin(None)}  # type: ignore[arg-type]
OLD_PLUGIN = ["sh", "-c", f'unset PLUGIN_CLIENT_CERT; exec "{PY}" "{TRAP}"']


@pytest.fixture(autouse=True)
def _in_tmp(in_tmp: None) -> None:
    """The KV plugin writes its files in the working folder."""


def _config(**kw: Any) -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=30, **kw)


def test_require_tls_refuses_a_plugin_without_certificate() -> None:
    client = Client(_config(runner=ProcessRunner(OLD_PLUGIN), auto_mtls=True, require_tls=True))
    with pytest.raises(TLSRequiredError, match=r"(?s)'sh' announced no AutoMTLS certificate.*"
                       r"require_tls=True.*Upgrade the plugin.*require_tls=False") as info:
        client.start()
    assert info.value.name == "sh"
    assert client.runner.wait(10) is not None  # the refused plugin was stopped


def test_a_private_process_plugin_may_still_downgrade(caplog: pytest.LogCaptureFixture) -> None:
    # go-plugin's behaviour for plugins older than AutoMTLS, kept where the socket is private
    with Client(_config(runner=ProcessRunner(OLD_PLUGIN), auto_mtls=True)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"
        assert client.connection_mode == "plaintext"
    assert any("sent no AutoMTLS certificate" in r.getMessage() for r in caplog.records)


def test_require_tls_without_automtls_is_a_config_error() -> None:
    client = Client(_config(cmd=[PY, TRAP], auto_mtls=False, require_tls=True))
    with pytest.raises(ConfigError, match="require_tls=True needs AutoMTLS: set auto_mtls=True"):
        client.start()


def test_process_runner_is_private_and_keeps_plaintext_by_default() -> None:
    with Client(_config(cmd=[PY, TRAP])) as client:
        assert client.runner.private_transport
        assert client.connection_mode == "plaintext"


@pytest.mark.docker
@pytest.mark.usefixtures("plugbay_docker")
class TestDocker:
    def test_tcp_transport_turns_automtls_on_and_refuses_an_old_plugin(self, plugbay_image: Any) -> None:
        from plugbay.runners.docker import DockerRunner

        tag = plugbay_image("kv")
        with Client(_config(runner=DockerRunner(tag, transport="tcp", writable_dirs=("/tmp", "/data")))) as client:
            assert not client.runner.private_transport
            assert client.connection_mode == "grpc-tls"  # AutoMTLS on without being asked
            kv = client.dispense(PLUGIN_NAME)
            kv.put("k", b"tls")
            assert kv.get("k") == b"tls"
        old = ["sh", "-c", "unset PLUGIN_CLIENT_CERT; exec /usr/local/bin/plugbay-entrypoint"]
        with pytest.raises(TLSRequiredError, match="DockerRunner's connection leaves the host's private"
                                                   " folder.*require_tls=False"):
            Client(_config(runner=DockerRunner(tag, transport="tcp", entrypoint=old, writable_dirs=("/tmp", "/data")))).start()
        with Client(_config(runner=DockerRunner(tag, transport="tcp", entrypoint=old, writable_dirs=("/tmp", "/data")),
                            require_tls=False)) as client:
            assert client.connection_mode == "plaintext"  # the caller accepted plaintext
            kv = client.dispense(PLUGIN_NAME)
            kv.put("k", b"plain")
            assert kv.get("k") == b"plain"

    def test_unix_transport_is_private(self, plugbay_image: Any) -> None:
        from plugbay.runners.docker import DockerRunner

        with Client(_config(runner=DockerRunner(plugbay_image("kv"), writable_dirs=("/tmp", "/data")))) as client:
            assert client.runner.private_transport
            assert client.connection_mode == "plaintext"
