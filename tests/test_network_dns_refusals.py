"""A `dns` target that fails for a reason the operator fixes is told as one (an operator's trial):

* an answer of loopback addresses only, refused without the opt-in, is a configuration matter: a
  DiscoveryRefusedError (a ConfigError), and `plugbay health` exits 2 naming --allow-loopback, where it exited 1,
  "plugin or call failed";
* a DNS server that answers SERVFAIL or REFUSED was reached: the error says which code it answered and what that
  code means, not "check that the DNS server is reachable" (exit 1, as docs/cli.md has it).
"""

from __future__ import annotations

import pytest
from dnslib import RCODE, A

from plugbay.errors import ConfigError, DiscoveryError, DiscoveryRefusedError, DiscoveryUnavailableError
from plugbay.network.resolvers import DNSResolver
from tests.cli_util import plugbay
from tests.dns_util import Zone, serving

NAME = "kv.plugbay.test"


def test_a_loopback_only_answer_is_a_configuration_error_and_health_exits_2_naming_the_flag() -> None:
    zone = Zone()
    zone.set(f"{NAME}.", "A", [A("127.0.0.1")])
    with serving(zone) as server:
        with pytest.raises(DiscoveryRefusedError) as err:
            DNSResolver(NAME, 7001, dns_server=server, timeout=2.0).start(lambda eps: None)
        assert isinstance(err.value, ConfigError) and isinstance(err.value, DiscoveryError)
        refused = plugbay("health", f"dns://{server}/{NAME}:7001", "--insecure", "--timeout", "2")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    error = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "--allow-loopback" in error[0], refused.stderr


@pytest.mark.parametrize(("code", "said"), [
    (RCODE.SERVFAIL, "SERVFAIL is a server failure"),
    (RCODE.REFUSED, "REFUSED is a refusal: the server will not answer that query"),
])
def test_a_dns_server_answering_an_error_code_is_named_with_the_code_and_what_it_means(code: int, said: str) -> None:
    zone = Zone()
    zone.rcode = code
    with serving(zone) as server:
        with pytest.raises(DiscoveryError) as err:
            DNSResolver(NAME, 7001, dns_server=server, allow_loopback=True, timeout=2.0).start(lambda eps: None)
        done = plugbay("health", f"dns://{server}/{NAME}:7001", "--insecure", "--allow-loopback", "--timeout", "2")
    text = str(err.value)
    assert not isinstance(err.value, (DiscoveryUnavailableError, ConfigError)), text
    name = RCODE[code]
    assert f"{NAME} A: {server} answered {name}" in text and said in text, text
    assert text.count(said) == 1, text  # the meaning once, not per query
    assert "reachable" not in text, text  # it answered
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"answered {name}" in done.stderr and said in done.stderr, done.stderr
