"""The gateway's --multiplex in front of a real go-plugin 1.0.1 Go plugin, which cannot multiplex brokered
connections: refused when the gateway starts, with what to do, rather than offered to hosts in Discovery
(a default RemoteClient took the offer and failed only at its start_timeout, told "Socket closed").
Without --multiplex the same plugin serves hosts over plain gRPC, and its application errors (UNKNOWN:
what go-plugin's Go plugins answer for any plain Go error) never eject it from a host's pool."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
import pytest

from plugbay import OutlierPolicy, RemoteClient, RemoteConfig
from plugbay.errors import ClientStateError, ConfigError, GatewayError
from plugbay.network import NetworkTLS
from plugbay.network.gateway import Gateway
from plugbay.network.gateway.cli import main as gateway_main
from tests import netcerts, procs
from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS
from tests.ports import bind_lost, held_by, released_ports
from tests.race_util import Starting, pid_alive, wait_for_file
from tests.resilience_util import wait_until
from tests.test_gateway import certs, config, kv_bin, pytestmark  # noqa: F401 (fixtures, marks)


def _host_tls(certs: netcerts.CertSet) -> NetworkTLS:  # noqa: F811
    folder = certs.dir
    (folder / "client.crt").write_bytes(certs.client.cert_pem)
    (folder / "client.key").write_bytes(certs.client.key_pem)
    (folder / "server-ca.crt").write_bytes(certs.server_ca.cert_pem)
    return NetworkTLS(str(folder / "client.crt"), str(folder / "client.key"), str(folder / "server-ca.crt"),
                      server_name="localhost")


def test_multiplex_with_a_plugin_that_cannot_is_refused_at_start(kv_bin: str, certs: netcerts.CertSet,  # noqa: F811
                                                                 in_tmp: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(kv_bin, certs, multiplex=True)
    for port in released_ports():  # the port it is given, bound before the check, is freed again
        cfg.listen = f"127.0.0.1:{port}"
        gw = Gateway(cfg)
        try:
            with pytest.raises((GatewayError, ConfigError)) as info:
                gw.start()
        finally:
            gw.stop()
        if not bind_lost(info.value):
            break
    assert isinstance(info.value, GatewayError), info.value
    said = str(info.value)
    assert "does not multiplex brokered connections" in said and "without --multiplex" in said, said
    assert procs.children(os.getpid(), zombies=False) == []  # the checked child was stopped
    with pytest.raises(ClientStateError, match="failed to start"):
        gw.address  # noqa: B018 - the property is what is tested
    assert held_by(os.getpid(), port) == []  # nothing listens: no host is offered anything
    # the command says so and exits 1
    tls = ["--cert", str(certs.cert_file), "--key", str(certs.key_file), "--client-ca", str(certs.client_ca_file)]
    assert gateway_main(["--listen", "127.0.0.1:0", "--cookie", "BASIC_PLUGIN=hello", "--plugins", "kv_grpc",
                         "--multiplex", *tls, "--", kv_bin]) == 1
    assert "does not multiplex brokered connections" in capsys.readouterr().err


def test_without_multiplex_a_default_host_calls_and_application_errors_do_not_eject(
        kv_bin: str, certs: netcerts.CertSet, in_tmp: Path) -> None:  # noqa: F811
    outlier = OutlierPolicy(consecutive_failures=2, base_ejection_time=30.0)
    with Gateway(config(kv_bin, certs)) as gw, RemoteClient(RemoteConfig(
            target=f"static:///{gw.address}", handshake=HANDSHAKE, plugins=PLUGINS, tls=_host_tls(certs),
            outlier=outlier, start_timeout=30.0, name="kv-gateway")) as client:
        assert client.description is not None and client.description.multiplex is False
        assert not client.multiplexed  # brokered connections were offered by default, and declined by Discovery
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        for _ in range(outlier.consecutive_failures * 3):
            with pytest.raises(grpc.RpcError) as missing:
                kv.get("missing")  # the Go plugin's plain error: UNKNOWN "open kv_missing: ..."
            assert missing.value.code() == grpc.StatusCode.UNKNOWN
            assert "kv_missing" in str(missing.value.details())
        snap = client.metrics()
        key = f"tcp:{gw.address}"
        assert snap["ejections"] == 0 and snap["ejected"] == 0, snap
        assert snap["endpoints"][key]["ejections"] == 0 and snap["endpoints"][key]["failures"] == 0, snap
        assert kv.get("k") == b"v"


def test_stop_during_the_multiplexing_check_ends_it_and_its_child(kv_bin: str, certs: netcerts.CertSet,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    # start() holds the gateway's lock while it checks: stop() must end a check whose child never answers
    # at once, not wait out start_timeout
    bound = 20.0
    hang_file = tmp_path / "hang.pid"
    script = tmp_path / "child.sh"
    script.write_text(f'#!/bin/sh\nif [ "$PLUGIN_MULTIPLEX_GRPC" = true ]; then echo $$ > {hang_file}; exec sleep 300;'
                      f" fi\nexec {kv_bin}\n")
    script.chmod(0o755)
    gw = Gateway(config(str(script), certs, multiplex=True, start_timeout=120.0))
    starting = Starting(gw.start)
    hang = None
    try:
        wait_for_file(hang_file, bound)
        assert wait_until(lambda: hang_file.read_text().strip().isdigit(), bound)
        hang = int(hang_file.read_text())
        stopping = Starting(gw.stop)
        assert stopping.ended(bound), f"gateway.stop() did not return within {bound}s (start_timeout 120)"
        assert stopping.error is None, stopping.error
        error = starting.outcome(bound)
        assert isinstance(error, GatewayError) and "stopped" in str(error), error
        assert wait_until(lambda: not pid_alive(hang), bound), f"the checked child {hang} outlived stop()"
    finally:
        gw.stop()
        starting.ended(bound)
        if hang is not None and pid_alive(hang):
            os.kill(hang, signal.SIGKILL)
