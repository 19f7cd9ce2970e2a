"""What the gateway says of its dead child's last words is true (an operator's trial).

A Python plugin that prints to sys.stderr after serve() began and then exits: those words go to its GRPCStdio
stream, which the gateway (the child's host), as go-plugin's host by default, discards; its log records reach
the gateway's log. The gateway's final error said "fix the plugin (its stderr is in the gateway's log)" and a
call's error "its log has the plugin's last stderr lines", which sent the operator looking for words that were
never kept. Both now say what the log holds: the plugin's log records and stderr lines, not what a plugin
serving GRPCStdio printed while serving.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import grpc
import pytest

from plugbay.core.resilience.restart import RestartPolicy
from plugbay.network.gateway import Gateway, GatewayConfig
from tests import netcerts

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "tests" / "plugins" / "resilience_kv.py"
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402


def test_the_gateways_words_on_a_dead_childs_stderr_say_what_its_log_holds(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    certs = netcerts.write_set(tmp_path / "tls")
    config = GatewayConfig(cmd=[sys.executable, str(PLUGIN)], cookie=("BASIC_PLUGIN", "hello"),
                           listen="127.0.0.1:0", cert_file=str(certs.cert_file), key_file=str(certs.key_file),
                           client_ca_file=str(certs.client_ca_file), plugins=("kv_grpc",),
                           restart=RestartPolicy(max_restarts=0, window=60))
    creds = grpc.ssl_channel_credentials(root_certificates=certs.server_ca.cert_pem,
                                         private_key=certs.client.key_pem, certificate_chain=certs.client.cert_pem)
    with Gateway(config) as gw, grpc.secure_channel(
            gw.address, creds, options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        with pytest.raises(grpc.RpcError) as died:
            kv.Get(kv_pb2.GetRequest(key="__print_then_die__"), timeout=30)
        assert gw.failed.wait(30), "the gateway did not give up on a child that died with no restart left"
        failure = gw.keeper.failure
    said = died.value.details()
    assert died.value.code() == grpc.StatusCode.UNAVAILABLE, said
    assert "exited with code 9 during the call" in said, said
    assert "not what a plugin serving GRPCStdio printed while serving" in said, said
    assert "restart budget" in failure and "not what a plugin serving GRPCStdio" in failure, failure
    assert "its stderr is in the gateway's log" not in failure, failure
    logged = [r.getMessage() for r in caplog.records]
    assert any("logged last words" in m for m in logged), logged  # a log record: kept
    assert not any("printed last words" in m for m in logged), logged  # a print while serving: not kept
