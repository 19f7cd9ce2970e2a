"""Wrong values in the network configs are refused when the object is made, with a ConfigError naming the
setting: before, some killed a background thread later (the gateway's keeper on a dict restart policy, the
pool's health thread on an infinite interval), some served in plaintext (insecure="false"), and the rest
failed at start() with a bare TypeError or AttributeError."""

from __future__ import annotations

import logging
import math
import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.resilience_util import HANDSHAKE, PLUGINS

from plugbay.core.resilience.restart import RestartPolicy
from plugbay.core.transport.keepalive import Keepalive
from plugbay.errors import ConfigError, TLSConfigError
from plugbay.network.ejection import OutlierPolicy
from plugbay.network.gateway import Gateway, GatewayConfig
from plugbay.network.pool import EndpointPool
from plugbay.network.remote import RemoteClient, RemoteConfig
from plugbay.network.resolver import Endpoint
from plugbay.network.static import StaticResolver
from plugbay.network.tls import NetworkTLS

HUGE = 10**400  # an int no float holds: float() and math.isfinite() raise OverflowError
COOKIE = ("BASIC_PLUGIN", "hello")


def _gateway(**kw: Any) -> Gateway:
    fields: dict[str, Any] = dict(cmd=[sys.executable, "plugin.py"], cookie=COOKIE, listen="127.0.0.1:0",
                                  insecure=True)
    fields.update(kw)
    return Gateway(GatewayConfig(**fields))


@pytest.mark.parametrize(("kw", "named"), [
    ({"restart": {"max_restarts": 3}}, "GatewayConfig.restart"),
    ({"restart": "x"}, "GatewayConfig.restart"),
    ({"env": 5}, "GatewayConfig.env"),
    ({"env": {"A": 1}}, "GatewayConfig.env"),
    ({"cwd": 5}, "GatewayConfig.cwd"),
    ({"start_timeout": math.nan}, "GatewayConfig.start_timeout"),
    ({"start_timeout": math.inf}, "GatewayConfig.start_timeout"),
    ({"start_timeout": "5"}, "GatewayConfig.start_timeout"),
    ({"start_timeout": HUGE}, "GatewayConfig.start_timeout"),
    ({"start_timeout": 2e9}, "GatewayConfig.start_timeout"),  # the child's ClientConfig takes at most 1e9
    ({"child_mtls": "no"}, "GatewayConfig.child_mtls"),
    ({"multiplex": "false"}, "GatewayConfig.multiplex"),
    ({"logger": "x"}, "GatewayConfig.logger"),
    ({"cmd": 5}, "GatewayConfig.cmd"),
    ({"cmd": "python plugin.py"}, "GatewayConfig.cmd"),
    ({"cmd": [sys.executable, 5]}, "GatewayConfig.cmd"),
    ({"keepalive": (HUGE, 10.0)}, "GatewayConfig keepalive"),
])
def test_the_gateway_refuses_wrong_child_settings_when_made(kw: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        _gateway(**kw)


def test_the_gateway_still_takes_what_it_documents(tmp_path: Path) -> None:
    gateway = _gateway(restart=RestartPolicy(max_restarts=1), env={"A": "b"}, cwd=str(tmp_path), start_timeout=5,
                       child_mtls=False, logger=logging.getLogger("gw"), keepalive=(math.inf, 10.0))
    assert gateway.config.start_timeout == 5
    with pytest.raises(ConfigError, match="plugin's command"):  # the message an empty command always had
        _gateway(cmd=[])


@pytest.mark.parametrize("config", ["--listen 127.0.0.1:0", {"cmd": ["plugin"]}, None])
def test_the_gateway_takes_only_a_gateway_config(config: Any) -> None:
    # a str or a dict failed with a bare AttributeError ('str' object has no attribute 'check')
    with pytest.raises(ConfigError, match="Gateway takes a GatewayConfig"):
        Gateway(config)


def test_a_gateway_without_tls_files_or_insecure_is_refused_when_made() -> None:
    # it was refused only by start(), once the child had been started
    with pytest.raises(TLSConfigError, match="cert_file, key_file and client_ca_file"):
        _gateway(insecure=False)


def _remote(**kw: Any) -> RemoteClient:
    fields: dict[str, Any] = dict(target="static:///127.0.0.1:1", handshake=HANDSHAKE, plugins=PLUGINS,
                                  insecure=True)
    fields.update(kw)
    return RemoteClient(RemoteConfig(**fields))


@pytest.mark.parametrize("name", ["health_interval", "health_timeout", "dns_refresh"])
@pytest.mark.parametrize("value", [math.inf, math.nan, HUGE, 1e300, -1, 0, "1", True])
def test_remote_waits_must_be_finite_seconds(name: str, value: Any) -> None:
    # inf, 10**400 and 1e300 passed '> 0' and then killed the pool's health thread (Event.wait overflows)
    with pytest.raises(ConfigError, match=f"RemoteConfig.{name} must be a number of seconds > 0.*finite"):
        _remote(**{name: value})


@pytest.mark.parametrize("name", ["health_interval", "health_timeout"])
@pytest.mark.parametrize("value", [math.nan, math.inf, HUGE])
def test_the_pool_refuses_waits_it_cannot_wait(name: str, value: Any) -> None:
    resolver = StaticResolver([Endpoint("tcp", "127.0.0.1:1", name="one")])
    with pytest.raises(ConfigError, match=f"EndpointPool.{name}"):
        EndpointPool(resolver, insecure=True, **{name: value})


@pytest.mark.parametrize("name", ["insecure", "allow_loopback", "multiplex", "brokered"])
@pytest.mark.parametrize("value", ["false", "", 0, 1, None])
def test_remote_switches_must_be_bools(name: str, value: Any) -> None:
    # insecure="false" is true: the host talked plaintext while NetworkServe refused the same value
    with pytest.raises(ConfigError, match=f"RemoteConfig.{name} must be True or False"):
        _remote(**{name: value})


@pytest.mark.parametrize(("name", "figures"), [
    ("mux_keepalive", (HUGE, 10.0)), ("mux_keepalive", (30.0, HUGE)), ("mux_keepalive", (30.0, 10.0, HUGE)),
    ("grpc_keepalive", (HUGE, 10.0)), ("grpc_keepalive", (30.0, 10.0, HUGE)),
])
def test_keepalive_figures_too_large_for_a_float_are_config_errors(name: str, figures: tuple[Any, ...]) -> None:
    with pytest.raises(ConfigError, match=f"RemoteConfig.{name}"):
        _remote(**{name: figures})
    with pytest.raises(ConfigError, match="my keepalive"):
        Keepalive.of((HUGE, 10.0), "my keepalive")


@pytest.mark.parametrize(("kw", "says"), [
    ({"dns_server": 5}, "RemoteConfig.dns_server must be"),
    ({"dns_server": "x"}, "dns_server 'x' is not IP"),
    ({"kubernetes": 5}, "RemoteConfig.kubernetes must be a dict"),
    ({"kubernetes": {"kubeconfig": 5}}, r"RemoteConfig.kubernetes\['kubeconfig'\] must be a str"),
    ({"kubernetes": {"context": 5}}, r"RemoteConfig.kubernetes\['context'\] must be a str"),
    ({"kubernetes": {"kubeconf": "/x"}}, "does not take; its options are api_client, kubeconfig"),
    ({"kubernetes": {"watch_timeout": "240"}}, r"kubernetes\['watch_timeout'\] must be a whole number"),
    ({"kubernetes": {"max_endpoints": 0}}, r"kubernetes\['max_endpoints'\] must be a whole number"),
    ({"kubernetes": {"allow_loopback": "yes"}}, r"kubernetes\['allow_loopback'\] must be True or False"),
])
def test_remote_discovery_options_are_checked_when_made(kw: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        _remote(**kw)


def test_good_discovery_options_are_taken() -> None:
    client = _remote(dns_server="127.0.0.1:5353", kubernetes={"kubeconfig": "/etc/kubeconfig", "context": "c",
                                                               "watch_timeout": 60})
    assert client.remote.dns_server == "127.0.0.1:5353"


@pytest.mark.parametrize(("kw", "says"), [
    ({"cert_file": 5}, "NetworkTLS cert_file must be the path"),
    ({"key_file": 5.0}, "NetworkTLS key_file must be the path"),
    ({"ca_file": None}, "NetworkTLS ca_file must be the path.*the CA file is required"),
    ({"ca_file": ["ca.crt"]}, "NetworkTLS ca_file must be the path"),
    ({"server_name": 5}, "NetworkTLS server_name must be"),
    ({"ca_file": b"ca\0.crt"}, "NUL byte"),
])
def test_network_tls_paths_are_checked_when_made(kw: dict[str, Any], says: str) -> None:
    fields: dict[str, Any] = dict(cert_file="host.crt", key_file="host.key", ca_file="ca.crt")
    fields.update(kw)
    with pytest.raises(ConfigError, match=says):
        NetworkTLS(**fields)


def test_network_tls_takes_path_objects(tmp_path: Path) -> None:
    tls = NetworkTLS(tmp_path / "host.crt", tmp_path / "host.key", tmp_path / "ca.crt")  # type: ignore[arg-type]
    assert tls.ca_file == tmp_path / "ca.crt"


@pytest.mark.parametrize(("kw", "named"), [
    ({"consecutive_failures": "5"}, "consecutive_failures"),
    ({"consecutive_failures": 2.5}, "consecutive_failures"),
    ({"consecutive_failures": True}, "consecutive_failures"),
    ({"consecutive_failures": 0}, "consecutive_failures"),
    ({"base_ejection_time": math.nan}, "base_ejection_time"),
    ({"base_ejection_time": None}, "base_ejection_time"),
    ({"base_ejection_time": 0}, "base_ejection_time"),
    ({"max_ejection_time": math.nan}, "max_ejection_time"),
    ({"max_ejection_time": 10.0}, "max_ejection_time"),  # below the base (30 s)
    ({"max_ejection_percent": 101}, "max_ejection_percent"),
    ({"max_ejection_percent": "50"}, "max_ejection_percent"),
    ({"max_ejection_percent": math.nan}, "max_ejection_percent"),
])
def test_outlier_policy_numbers_are_checked(kw: dict[str, Any], named: str) -> None:
    # a NaN base_ejection_time was taken, and turned ejection off: every ejection ended at once
    with pytest.raises(ConfigError, match=f"invalid OutlierPolicy: {named}"):
        OutlierPolicy(**kw)



def test_the_gateway_takes_any_real_start_timeout_and_a_bytes_cwd(tmp_path: Path) -> None:
    """Taken before these checks: kept as a float and a str, as the child's ClientConfig and ProcessRunner
    take them."""
    for value in (np.float32(30), Fraction(30), np.int64(30), 1e9):
        start_timeout = _gateway(start_timeout=value).config.start_timeout
        assert start_timeout == float(value) and type(start_timeout) is float
    assert _gateway(cwd=os.fsencode(tmp_path)).config.cwd == str(tmp_path)
    with pytest.raises(ConfigError, match=r"GatewayConfig\.cwd must be .*a str or os\.PathLike"):
        _gateway(cwd=5)


def test_outlier_policy_takes_real_numbers_and_no_cap() -> None:
    policy = OutlierPolicy(consecutive_failures=np.int64(5), base_ejection_time=Fraction(30),  # type: ignore[arg-type]
                           max_ejection_time=math.inf, max_ejection_percent=33.3)
    assert type(policy.consecutive_failures) is int and type(policy.base_ejection_time) is float
    assert policy.ejection_time(4) == 120.0  # math.inf: no cap
    assert policy.may_eject(0, 3) and not policy.may_eject(1, 6)  # 33.3% of 6: one at a time
    assert OutlierPolicy(max_ejection_percent=50.0).may_eject(1, 4)


def test_pool_and_remote_waits_take_real_numbers() -> None:
    pool = EndpointPool(StaticResolver([Endpoint("tcp", "127.0.0.1:1")]), insecure=True, health_interval=np.float32(1),
                        health_timeout=Fraction(1, 2), unhealthy_after=np.int64(2))
    try:
        assert (pool.health_interval, pool.health_timeout, pool.unhealthy_after) == (1.0, 0.5, 2)
        assert type(pool.health_interval) is float and type(pool.unhealthy_after) is int
    finally:
        pool.close()
    config = RemoteConfig(target="static:///127.0.0.1:1", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                          dns_refresh=np.float32(30), kubernetes=None)  # type: ignore[arg-type]
    from plugbay.network.remotecheck import check_remote
    check_remote(config)  # kubernetes=None: no options, as before these checks
    assert type(config.dns_refresh) is float


def test_tls_and_insecure_together_are_refused_when_the_config_is_made(tmp_path: Path) -> None:
    # refused only at start(), by the pool, the line that asked for both long passed
    from tests import netcerts

    certs = netcerts.write_set(tmp_path)
    tls = NetworkTLS(str(certs.cert_file), str(certs.key_file), str(certs.client_ca_file))
    with pytest.raises(ConfigError, match="not both: choose one"):
        RemoteConfig(target="static:///127.0.0.1:7001", handshake=HANDSHAKE, plugins=PLUGINS, tls=tls, insecure=True)
    cfg = RemoteConfig(target="static:///127.0.0.1:7001", handshake=HANDSHAKE, plugins=PLUGINS, tls=tls)
    cfg.insecure = True  # set afterwards: RemoteClient() still says so, before anything runs
    with pytest.raises(ConfigError, match="not both: choose one") as late:
        RemoteClient(cfg)
    # one wording for the rule, the pool's too: drop one of the two (not "tls= for plaintext", read as "pass")
    with pytest.raises(ConfigError, match="not both: choose one") as pool:
        EndpointPool(StaticResolver([Endpoint("tcp", "127.0.0.1:1")]), tls=tls, insecure=True)
    for err, owner in ((late, "RemoteConfig"), (pool, "EndpointPool")):
        said = str(err.value)
        assert said.startswith(f"{owner} takes") and "or drop tls= for plaintext" in said, said


def test_neither_tls_nor_insecure_is_refused_by_remote_client_before_start() -> None:
    # RemoteClient() took it and only start() said so (the pool's words, naming no RemoteConfig), so a
    # Supervisor or a factory handed on a config no start could use
    with pytest.raises(ConfigError, match=r"^RemoteConfig: a remote plugin is reached with mTLS .* or, deliberately,"
                                          r" in plaintext \(insecure=True\); pass one"):
        _remote(insecure=False)
    with pytest.raises(ConfigError, match=r"^EndpointPool: a remote plugin is reached with mTLS"):
        EndpointPool(StaticResolver([Endpoint("tcp", "127.0.0.1:1")]))


def test_metrics_before_start_names_the_class_held_and_how_to_start_it() -> None:
    """It said "Client.pool is only available after start()", of a RemoteClient's metrics()."""
    import asyncio

    from plugbay import AsyncRemoteClient
    from plugbay.errors import ClientStateError

    cfg = RemoteConfig(target="static:///127.0.0.1:7001", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True)
    with pytest.raises(ClientStateError) as sync_error:
        RemoteClient(cfg).metrics()
    assert str(sync_error.value) == ("RemoteClient.metrics() is only available after start(): call start() first,"
                                     " or use it as `with RemoteClient(config) as client:`")

    async def unstarted() -> None:
        client = AsyncRemoteClient(cfg)
        try:
            client.metrics()
        finally:
            await client.close()

    with pytest.raises(ClientStateError) as async_error:
        asyncio.run(unstarted())
    assert str(async_error.value).startswith("AsyncRemoteClient.metrics() is only available after start(): await"
                                             " client.start() first, or use it as `async with AsyncRemoteClient(")
