"""A gateway whose --protocol-versions the plugin does not serve says to change that flag: the library's advice,
"add a VersionedPlugins entry", is no gateway operator's to take (the gateway sets its Client's versions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugbay.errors import GatewayError
from plugbay.network.gateway import Gateway, GatewayConfig
from tests.cli_util import KV_PLUGIN
from tests.resilience_util import PY


def test_no_common_version_names_the_gateways_flag(tmp_path: Path) -> None:
    gateway = Gateway(GatewayConfig(cmd=[PY, str(KV_PLUGIN)], cookie=("BASIC_PLUGIN", "hello"), listen="127.0.0.1:0",
                                    insecure=True, protocol_versions=(5,), plugins=("kv_grpc",), cwd=str(tmp_path)))
    with pytest.raises(GatewayError) as err:
        gateway.start()
    gateway.stop()
    said = str(err.value)
    assert "no common application protocol version: host supports [5], plugin supports [1]" in said, said
    assert "--protocol-versions, PLUGBAY_GATEWAY_PROTOCOL_VERSIONS" in said, said
    assert "VersionedPlugins" not in said, said
