"""A process plugin's announced TCP address is dialed only when it is this machine's.

Real processes: a plugin that prints a handshake line naming another machine's address (the cloud
metadata service, a public resolver, a link-local IPv6 address on an interface that does not hold
it, a scope naming no interface, a host name) is refused at once with MalformedHandshakeError and
killed, never dialed until start_timeout; the same address announced on the broker stream makes
broker.dial() raise BrokerAddressRefusedError at once. A plugin listening on this machine's own
link-local address (with its scope) starts and serves; a local port the plugin listens on is dialed as
announced (who listens there is proven in test_announced_owner.py, and on a brokered one in
test_broker_announced_owner.py). `plugbay run --trusted-network` opts an address in.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import plugbay.errors as errors
from plugbay import Client, ClientConfig, ProcessRunner
from plugbay.errors import BrokerError, ConfigError, MalformedHandshakeError
from tests.cli_util import plugbay
from tests.resilience_util import HANDSHAKE, KV_EXAMPLE, PLUGIN_NAME, PLUGINS, PY, NetNS

REPO = Path(__file__).resolve().parent.parent
MISBEHAVE = str(REPO / "tests" / "plugins" / "misbehave.py")


def _client(line: str, start_timeout: float = 8.0) -> Client:
    return Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=start_timeout,
                               runner=ProcessRunner([sys.executable, MISBEHAVE, "line", line])))


def _own_link_local() -> tuple[str, str] | None:
    """One of this machine's link-local IPv6 addresses and the interface that holds it, or None."""
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            rows = [line.split() for line in f]
    except OSError:
        return None
    # address, ifindex, prefix length, scope (0x20: link), flags (0x40: tentative, not bindable yet), interface
    found = [row for row in rows if len(row) == 6 and row[3] == "20" and not int(row[4], 16) & 0x40]
    # a machine's own interface before the bridges and veths containers come and go with
    found.sort(key=lambda row: row[5].startswith(("docker", "br-", "veth", "virbr")))
    if not found:
        return None
    text = ":".join(found[0][0][i:i + 4] for i in range(0, 32, 4))
    return str(ipaddress.IPv6Address(text)), found[0][5]


@pytest.fixture()
def link_local() -> tuple[str, str]:
    found = _own_link_local()
    if found is None:
        pytest.skip("no link-local IPv6 address on any interface of this machine (/proc/net/if_inet6)")
    return found


@pytest.fixture()
def listener() -> Iterator[socket.socket]:
    """A listening socket of this test process: a local server that is not the plugin."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock


def _refused_at_once(address: str, *why: str) -> None:
    client = _client(f"1|1|tcp|{address}|grpc")
    with pytest.raises(MalformedHandshakeError) as raised:
        client.start()
    try:
        text = str(raised.value)
        assert f"announced tcp address {address!r}, which plugbay does not dial" in text, text
        # the line the plugin printed was well formed: it is not quoted back as another, malformed one
        assert text.startswith("announced address refused: ") and "malformed" not in text, text
        assert all(part in text for part in why), text
        assert client.runner.wait(10) is not None, "the plugin was left running"
    finally:
        client.kill()


@pytest.mark.parametrize("address, why", [
    ("169.254.169.254:80", ("not this machine's", "trusted_networks=[...]")),
    ("8.8.8.8:53", ("not this machine's", "--trusted-network")),
    ("[fe80::1%lo]:80", ("not this machine's on interface 'lo'",)),  # lo holds no fe80 address
    ("metadata.google.internal:80", ("names a host by name",)),
    ("localhost.:80", ("names a host by name",)),  # a DNS name to gRPC, not RFC 6761's localhost
    # bind() takes a multicast or broadcast address on any host: the route to it leaves from another
    ("224.0.0.1:80", ("not this machine's",)),
    ("255.255.255.255:80", ("not this machine's",)),
    ("[::ffff:169.254.169.254]:80", ("not this machine's",)),
])
def test_an_address_not_of_this_machine_is_refused_at_once_undialed(address: str, why: tuple[str, ...]) -> None:
    # before: dialed until start_timeout (8 s), then a HandshakeTimeoutError
    _refused_at_once(address, *why)


def test_a_scope_naming_no_interface_is_refused_saying_so(link_local: tuple[str, str]) -> None:
    # the machine's own address, but a zone no interface has: before, dialed until start_timeout
    _refused_at_once(f"[{link_local[0]}%nosuch0]:80", "its scope 'nosuch0' names no network interface")


def test_the_machines_link_local_address_on_another_interface_is_refused(link_local: tuple[str, str]) -> None:
    _refused_at_once(f"[{link_local[0]}%lo]:80", "not this machine's on interface 'lo'")


def test_a_link_local_address_without_a_scope_is_refused_saying_so(link_local: tuple[str, str]) -> None:
    _refused_at_once(f"[{link_local[0]}]:80", "link-local IPv6 address without a scope")


@pytest.mark.parametrize("zone", ["name", "index"])
def test_a_plugin_on_the_machines_own_link_local_address_serves(link_local: tuple[str, str], zone: str,
                                                                 tmp_path: Path) -> None:
    # bound with the scope's interface index: without it the kernel refuses a link-local bind (EINVAL),
    # and the scoped address never equals an unscoped one; Go names a zone by number when it has no name
    address, interface = link_local
    scope = interface if zone == "name" else str(socket.if_nametoindex(interface))
    runner = ProcessRunner([PY, KV_EXAMPLE], env={"PLUGBAY_LISTEN": f"tcp:[{address}%{scope}]:0"}, cwd=tmp_path)
    with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=runner, start_timeout=30)) as client:
        assert client.handshake.address.startswith(f"[{address}%"), client.handshake.address
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"link-local")
        assert kv.get("k") == b"link-local"


# "LOCALHOST": RFC 6761's name in any case, as resolvers read it
@pytest.mark.parametrize("listen", ["tcp:localhost:0", "tcp:LOCALHOST:0", "tcp:[::1]:0"])
def test_local_addresses_are_dialed_as_announced(listen: str, tmp_path: Path) -> None:
    if listen == "tcp:[::1]:0" and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    runner = ProcessRunner([PY, KV_EXAMPLE], env={"PLUGBAY_LISTEN": listen}, cwd=tmp_path)
    with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=runner, start_timeout=30)) as client:
        assert client.handshake.address.startswith(listen[4:-1]), client.handshake.address  # as announced
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"local")
        assert kv.get("k") == b"local"


def test_a_brokered_address_off_this_machine_is_refused_at_once(listener: socket.socket,
                                                                link_local: tuple[str, str]) -> None:
    from plugbay._proto.plugin import grpc_broker_pb2 as pb

    with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[PY, KV_EXAMPLE],
                             start_timeout=30)) as client:
        broker = client.broker
        # what the plugin's broker stream hands the host's broker (a plugin may send any ConnInfo)
        for id, address, why in [(7001, "169.254.169.254:80", "not this machine's"),
                                 (7002, f"[{link_local[0]}%nosuch0]:80", "names no network interface")]:
            broker.receive(pb.ConnInfo(service_id=id, network="tcp", address=address))
            # before: a channel, dialed (lazily) to the address
            with pytest.raises(BrokerError) as raised:
                broker.dial(id, timeout=0.3)
            text = str(raised.value)
            assert isinstance(raised.value, errors.BrokerAddressRefusedError), repr(raised.value)
            assert not isinstance(raised.value, TimeoutError), text  # refused, not waited for
            assert f"broker id {id}: plugin" in text and f"tcp address {address!r}" in text and why in text, text
        # a local port is this machine's, and then who listens there is proven (test_broker_announced_owner.py):
        # this test's listener is no process of the plugin's
        broker.receive(pb.ConnInfo(service_id=7003, network="tcp",
                                   address=f"127.0.0.1:{listener.getsockname()[1]}"))
        with pytest.raises(errors.BrokerAddressRefusedError, match="held by no process of the plugin's"):
            broker.dial(7003, timeout=0.3)


@pytest.mark.parametrize("value", ["10.0.0.0/8", ["10.0.0.0/33"], ["not a network"], [7]])
def test_trusted_networks_are_read_strictly(value: object) -> None:
    with pytest.raises(ConfigError, match="trusted_networks"):
        ProcessRunner([PY, KV_EXAMPLE], trusted_networks=value)  # type: ignore[arg-type]


def test_a_trusted_network_lets_its_addresses_through() -> None:
    from plugbay.runners.announced import off_machine, read_networks

    assert off_machine("169.254.169.254:80", read_networks(["169.254.0.0/16"], "t")) is None
    assert off_machine("169.254.169.254:80", read_networks(["10.0.0.0/8", "::/0"], "t")) is not None
    # an IPv4-mapped address is dialed over IPv4: it is in the IPv4 network it maps to
    assert off_machine("[::ffff:10.1.2.3]:80", read_networks(["10.0.0.0/8"], "t")) is None
    assert off_machine("[::ffff:10.1.2.3]:80", read_networks(["192.0.2.0/24"], "t")) is not None


# Run in a network namespace with ip_nonlocal_bind on (as keepalived and HAProxy hosts set it), where bind()
# takes any address: off_machine() there, for addresses of that namespace, of its neighbour, and of nobody.
_IN_NAMESPACE = """
import json, socket, sys
from plugbay.runners.announced import off_machine
# first without it: an interface named "1" holds fe80::ab, index 1 is lo
zones = {a: off_machine(a, ()) for a in ("[fe80::ab%1]:80", "[fe80::ab%lo]:80")}
for family in ("ipv4", "ipv6"):
    with open(f"/proc/sys/net/{family}/ip_nonlocal_bind", "w") as f:
        f.write("1")
with socket.socket() as s:
    s.bind(("169.254.169.254", 0))  # the premise: a bind proves nothing here
print(json.dumps([zones, {a: off_machine(a, ()) for a in sys.argv[1:]}]))
"""


def test_nonlocal_bind_does_not_make_an_address_this_machines(tmp_path: Path) -> None:
    space = NetNS()
    try:
        space.exec_ip("addr", "add", "fd31::2/64", "dev", space.plugin_if, "nodad")
        space.exec_ip("route", "add", "default", "via", space.host_ip)
        space.exec_ip("-6", "route", "add", "default", "via", "fd31::1")
        # an interface NAMED "1" holding fe80::ab, while index 1 is lo: a zone is a name first (glibc, gRPC, Go)
        space.exec_ip("link", "add", "name", "1", "type", "veth", "peer", "name", "pbz1")
        for interface in ("1", "pbz1"):
            space.exec_ip("link", "set", interface, "up")
        space.exec_ip("addr", "add", "fe80::ab/64", "dev", "1", "nodad")
        own = [f"{space.plugin_ip}:80", "127.0.0.1:80", "0.0.0.0:80", "[::]:80", "[fd31::2]:80", "[fe80::ab%1]:80",
               f"[::ffff:{space.plugin_ip}]:80"]
        broadcast = ipaddress.ip_interface(f"{space.plugin_ip}/30").network.broadcast_address  # the veth's subnet
        others = ["169.254.169.254:80", "169.254.169.253:80", "8.8.8.8:53", f"{space.host_ip}:80",
                  "[::ffff:169.254.169.254]:80", "[fd31::1]:80", "[2001:db8::1]:80", "224.0.0.1:80",
                  "255.255.255.255:80", f"{broadcast}:80"]
        done = subprocess.run(space.command(PY, "-c", _IN_NAMESPACE, *own, *others), capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        assert done.returncode == 0, done.stderr
        zones, said = json.loads(done.stdout)
    finally:
        space.delete()
    # before: "1" read as index 1 (lo), which does not hold fe80::ab
    assert zones["[fe80::ab%1]:80"] is None and "on interface 'lo'" in zones["[fe80::ab%lo]:80"], zones
    wrong = ([f"{a} refused: {said[a]}" for a in own if said[a] is not None] +
             [f"{a} let through" for a in others if said[a] is None or "not this machine's" not in said[a]])
    assert not wrong, "\n".join(wrong)


def _run(tmp_path: Path, line: str, *flags: str) -> tuple[int, str]:
    done = plugbay("run", "--cmd", f"{sys.executable} {MISBEHAVE} line '{line}'", "--cookie", "K=V",
                   "--start-timeout", "1", *flags, cwd=tmp_path, timeout=60)
    return done.returncode, done.stderr


def test_plugbay_run_trusted_network_opts_an_address_in(tmp_path: Path) -> None:
    line = "1|1|tcp|192.0.2.7:9|grpc"  # TEST-NET-1: nobody's, never answers
    code, err = _run(tmp_path, line)
    assert code != 0 and "not this machine's" in err and "--trusted-network" in err, err
    code, err = _run(tmp_path, line, "--trusted-network", "192.0.2.0/24", "--trusted-network", "fd00::/8")
    # let through: dialed, and nothing answers within the start timeout
    assert code != 0 and "not this machine's" not in err and "did not report 'plugin' SERVING" in err, err


@pytest.mark.parametrize("flags, said", [
    (["--trusted-network", "192.0.2.0/33"], "--trusted-network holds '192.0.2.0/33', which is no IP network"),
    (["--image", "x", "--trusted-network", "192.0.2.0/24"], "--trusted-network needs --cmd"),
])
def test_plugbay_run_trusted_network_is_checked(tmp_path: Path, flags: list[str], said: str) -> None:
    args = ["run", "--cookie", "K=V", *flags]
    if "--image" not in flags:
        args += ["--cmd", "true"]
    done = plugbay(*args, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and said in done.stderr, done.stderr
