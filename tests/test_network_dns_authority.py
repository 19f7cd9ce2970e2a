"""A target that names its DNS server (gRPC's ``dns://AUTHORITY/NAME`` form), against a real DNS server
(dnslib) on 127.0.0.1 and a real net_kv replica: the API and the plugbay command alike.

The command has no --dns-server option: this form is how it reaches a DNS server other than
/etc/resolv.conf's. No query leaves loopback.
"""

from __future__ import annotations

import pytest
from dnslib import SRV, A

from tests.cli_util import plugbay
from tests.dns_util import ZONE, Zone, serving
from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, Replica
from tests.net_util import loopback_replica  # noqa: F401  (the fixture)

from plugbay import ConfigError, RemoteClient, RemoteConfig


def test_remote_client_asks_the_dns_server_its_target_names(loopback_replica: Replica) -> None:
    zone = Zone()
    zone.set(f"kv.{ZONE}", "A", [A("127.0.0.1")])
    with serving(zone) as server:
        cfg = RemoteConfig(target=f"dns://{server}/kv.plugbay.test:{loopback_replica.port}", handshake=HANDSHAKE,
                           plugins=PLUGINS, insecure=True, allow_loopback=True, dns_refresh=600, call_timeout=5.0,
                           name="kv-authority")
        with RemoteClient(cfg) as client:
            kv = client.dispense(PLUGIN_NAME)
            assert kv.get("__pid__") == str(loopback_replica.proc.pid).encode()
        assert zone.queries >= 1
        # the same server given twice is one; two different ones are refused before anything runs
        same = RemoteConfig(target=cfg.target, handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                            dns_server=server, allow_loopback=True, name="kv-authority")
        with RemoteClient(same) as client:
            assert client.dispense(PLUGIN_NAME).get("__pid__") == str(loopback_replica.proc.pid).encode()
        other = RemoteConfig(target=cfg.target, handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                             dns_server="127.0.0.1:1", name="kv-authority")
        with pytest.raises(ConfigError, match="give the DNS server in one place"):
            RemoteClient(other)


def test_the_command_reaches_a_replica_through_the_dns_server_its_target_names(loopback_replica: Replica) -> None:
    zone = Zone()
    zone.set(f"kv.{ZONE}", "A", [A("127.0.0.1")])
    zone.set(f"_kv._tcp.{ZONE}", "SRV", [SRV(0, 0, loopback_replica.port, f"kv.{ZONE}")])
    with serving(zone) as server:
        for target in (f"dns://{server}/kv.plugbay.test:{loopback_replica.port}",
                       f"dns+srv://{server}/_kv._tcp.plugbay.test"):
            out = plugbay("health", target, "--insecure", "--timeout", "20", "--allow-loopback")
            assert out.returncode == 0, (target, out.stdout, out.stderr)
            assert "SERVING" in out.stdout, out.stdout
        asked = zone.queries
        assert asked >= 3  # A; SRV and its target's A
        # a name where the DNS server's address goes is refused before any query
        bad = plugbay("health", f"dns://ns.plugbay.test/kv.plugbay.test:{loopback_replica.port}", "--insecure")
        assert bad.returncode == 2 and "DNS server 'ns.plugbay.test' is not DNS_IP" in bad.stderr, bad.stderr
        assert zone.queries == asked
