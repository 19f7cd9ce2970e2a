"""A DNS server that does not answer is an unreachable discovery source, as a cluster's API server that does not
answer is: a DiscoveryUnavailableError, and `plugbay health` says UNREACHABLE (exit 3), each --watch check a line.

It was a bare DiscoveryError, which the command line took for a failed plugin (exit 1, "error: ..." and no
status line: a --watch --json ended without printing one), while a name with no record read UNREACHABLE.
A server that answers with an error code (SERVFAIL) is reachable: its failure stays a DiscoveryError.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dnslib import RCODE

from plugbay.errors import DiscoveryError, DiscoveryUnavailableError
from plugbay.network.resolvers import DNSResolver
from tests.cli_util import cli_env, plugbay
from tests.dns_util import Zone, serving, silent_server


def test_a_dns_server_that_does_not_answer_is_an_unavailable_discovery_source() -> None:
    with silent_server() as server:
        resolver = DNSResolver("kv.plugbay.test", 7001, dns_server=server, allow_loopback=True, timeout=0.5)
        with pytest.raises(DiscoveryUnavailableError) as err:
            resolver.start(lambda eps: None)
    assert f"DNS lookup of 'kv.plugbay.test' (A/AAAA) at {server} failed" in str(err.value)
    assert "Check that the DNS server is reachable" in str(err.value)

    # one that answers with an error code is reachable: its failure is the DNS's, no unavailable source
    zone = Zone()
    zone.rcode = RCODE.SERVFAIL
    with serving(zone) as server:
        resolver = DNSResolver("kv.plugbay.test", 7001, dns_server=server, allow_loopback=True, timeout=2.0)
        with pytest.raises(DiscoveryError) as failed:
            resolver.start(lambda eps: None)
    assert not isinstance(failed.value, DiscoveryUnavailableError), failed.value
    assert "SERVFAIL" in str(failed.value)


def test_plugbay_health_says_unreachable_when_the_dns_server_does_not_answer() -> None:
    with silent_server() as server:
        target = f"dns://{server}/kv.plugbay.test:7001"
        once = plugbay("health", target, "--insecure", "--allow-loopback", "--timeout", "2")
        watch = plugbay("health", target, "--insecure", "--allow-loopback", "--timeout", "2", "--watch",
                        "--count", "2", "--interval", "0.1", "--json")
    assert once.returncode == 3, once.stderr
    assert once.stdout.startswith("UNREACHABLE "), once.stdout + once.stderr
    assert f"DNS lookup of 'kv.plugbay.test' (A/AAAA) at {server} failed" in once.stdout
    assert watch.returncode == 3, watch.stderr
    checks = [json.loads(line) for line in watch.stdout.splitlines()]
    assert [c["status"] for c in checks] == ["UNREACHABLE", "UNREACHABLE"], watch.stdout + watch.stderr


def test_plugbay_health_says_unreachable_when_the_kubernetes_api_does_not_answer(tmp_path: Path,
                                                                                 closed_port: int) -> None:
    port = closed_port  # held, nothing listens there: the API server is down
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: down\n"
        f"clusters: [{{name: down, cluster: {{server: 'https://127.0.0.1:{port}', insecure-skip-tls-verify: true}}}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: down, context: {cluster: down, user: u}}]\n")
    done = plugbay("health", "kubernetes:///plugins/kv:7001", "--insecure", "--timeout", "3",
                   env=cli_env(KUBECONFIG=str(kubeconfig)))
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith("UNREACHABLE "), done.stdout + done.stderr
    assert f"cannot reach the Kubernetes API at https://127.0.0.1:{port}" in done.stdout


def test_a_watch_on_an_unusable_kubeconfig_stops_with_its_error(tmp_path: Path) -> None:
    # no usable kubeconfig is a configuration to fix, not a discovery source to wait for: a --watch printed
    # UNREACHABLE for it at every interval, for ever (found in review); it ends with the error, as before
    done = plugbay("health", "kubernetes:///plugins/kv:7001", "--insecure", "--timeout", "2", "--watch",
                   "--interval", "0.5", "--count", "3", env=cli_env(KUBECONFIG=str(tmp_path / "missing")))
    assert done.returncode != 0, done.stdout + done.stderr
    assert "UNREACHABLE" not in done.stdout, done.stdout  # no status line per interval: it stopped at once
    assert "error:" in done.stderr and "kubeconfig" in done.stderr.lower(), done.stderr
