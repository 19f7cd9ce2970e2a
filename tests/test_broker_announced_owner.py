"""A brokered address a process plugin announces on its broker stream (a ConnInfo) is dialed only once plugbay
proves that the plugin (or a process it started) listens there, as its handshake address is.

Real processes: tests/plugins/probe.py (plugbay serve()) announces, on its real broker stream, a socket this test
listens on ("announce-at"): broker.dial(id) raises BrokerAddressRefusedError naming the address, who listens there
and the opt-out, and this test's listener is never connected to. Its own brokered servers ("announce") are dialed as
before, a unix one through a handle on the socket it proved: a socket renamed onto the path afterwards is never
reached. ClientConfig(trust_announced_address=True) dials the announced address as before.

A dial of an id the plugin announced before it died raises BrokerClosedError (as a dial of an id it never announced
does), and one whose brokered server stopped says so: neither offers the opt-out, which would dial a dead socket.
A ConnInfo naming a regular file says it is a brokered address, not the handshake's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from plugbay import Client, ClientConfig, ProcessRunner
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.errors import BrokerAddressRefusedError, BrokerClosedError
from plugbay.runners.unixdiag import kernel_cannot_tell
from tests.resilience_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, PY

REPO = Path(__file__).resolve().parent.parent
PROBE = str(REPO / "tests" / "plugins" / "probe.py")


@pytest.fixture(params=["unix", "tcp"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket, str, str]]:
    """A socket this test listens on: (listener, network, address as a plugin would announce it)."""
    if request.param == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = str(tmp_path / "test.sock")
        sock.bind(path)
        address = path
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    sock.listen(8)
    try:
        yield sock, request.param, address
    finally:
        sock.close()


def _client(tmp_path: Path, **config: object) -> Client:
    return Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=30,
                               runner=ProcessRunner([PY, PROBE], cwd=str(tmp_path)), **config))  # type: ignore[arg-type]


def _announce(client: Client, key: str, value: bytes = b"") -> int:
    kv = client.dispense(PLUGIN_NAME)
    kv.put(key, value)
    return int(kv.get("announced"))


def _connections(listener: socket.socket) -> int:
    """How many connections to ``listener`` wait to be accepted (accepted and closed here)."""
    count = 0
    listener.setblocking(False)
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def _proof_connects(network: str, path: Path) -> bool:
    """Whether the unix proof connects once to a socket in folder ``path`` (the test's listener then counts
    it): where sock_diag cannot be asked, or the folder's file system may give inode numbers past 2**32, which
    the kernel's answer cuts (runners.unixdiag). A tcp proof reads the socket table, never connects."""
    return network == "unix" and kernel_cannot_tell(str(path)) is not None


def _announced_to_host(client: Client, key: str) -> int:
    """The id of a brokered server the plugin serves (``key``: "announce"), once its ConnInfo reached the host."""
    broker = client.broker
    arrived = threading.Event()
    receive = broker.receive

    def noting(msg):  # type: ignore[no-untyped-def]
        receive(msg)
        arrived.set()

    broker.receive = noting  # type: ignore[method-assign]
    id = _announce(client, key)
    broker.open_stream()
    assert arrived.wait(30), "the plugin's ConnInfo never reached the host"
    return id


def _healthy(channel: grpc.Channel) -> bool:
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def test_a_brokered_address_another_process_listens_on_is_refused(listener: tuple[socket.socket, str, str],
                                                                  tmp_path: Path) -> None:
    # before: broker.dial() returned a channel to the test's socket, and the brokered call went there
    sock, network, address = listener
    with _client(tmp_path) as client:
        id = _announce(client, "announce-at", f"{network}|{address}".encode())
        with pytest.raises(BrokerAddressRefusedError) as raised:
            client.broker.dial(id, timeout=10)
        text = str(raised.value)
        assert f"broker id {id}: plugin" in text and f"announced {network} address {address!r}" in text, text
        who = (f"listened on by process {os.getpid()}, which is neither the plugin process" if network == "unix"
               else "held by no process of the plugin's")
        assert who in text and "trust_announced_address=True" in text, text
        if not _proof_connects(network, tmp_path):  # the proof asked the kernel: nothing of the host's went there
            assert _connections(sock) == 0
        _connections(sock)  # else its one probe connection, made and closed: not counted below
        # the plugin's own brokered server is still dialed, and answers
        channel = client.broker.dial(_announce(client, "announce"), timeout=10)
        assert _healthy(channel)
        channel.close()
    assert _connections(sock) == 0


def test_a_dial_of_an_id_a_plugin_announced_before_it_died_says_the_broker_closed(tmp_path: Path) -> None:
    # before: BrokerAddressRefusedError "the plugin process N is gone ... set
    # ClientConfig(trust_announced_address=True)", an opt-out that would dial a dead socket
    with _client(tmp_path) as client:
        id = _announced_to_host(client, "announce")
        pid = client.runner.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert client.runner.wait(30) is not None
        with pytest.raises(BrokerClosedError) as raised:
            client.broker.dial(id, timeout=10)
        text = str(raised.value)
        assert "killed by SIGKILL" in text and "for a brokered server" in text, text
        assert "trust_announced_address" not in text, text


def test_a_dial_of_a_brokered_server_that_stopped_says_so_without_the_opt_out(tmp_path: Path) -> None:
    # before: "nothing listens there ... set ClientConfig(trust_announced_address=True)"
    with _client(tmp_path) as client:
        id = _announced_to_host(client, "announce")
        client.dispense(PLUGIN_NAME).put("unserve", str(id).encode())
        with pytest.raises(BrokerAddressRefusedError) as raised:
            client.broker.dial(id, timeout=10)
        text = str(raised.value)
        assert f"broker id {id}: plugin" in text and "brokered server is no longer listening" in text, text
        assert "trust_announced_address" not in text, text
        # the plugin runs on: a server it serves now is dialed
        channel = client.broker.dial(_announce(client, "announce"), timeout=10)
        assert _healthy(channel)
        channel.close()


def test_a_brokered_address_naming_a_regular_file_says_it_is_a_brokered_one(tmp_path: Path) -> None:
    # before: the handshake's words ("go-plugin plugins print the path of the socket ... PLUGIN_UNIX_SOCKET_DIR")
    path = tmp_path / "not-a-socket"
    path.write_text("")
    with _client(tmp_path) as client:
        id = _announce(client, "announce-at", f"unix|{path}".encode())
        with pytest.raises(BrokerAddressRefusedError) as raised:
            client.broker.dial(id, timeout=10)
        text = str(raised.value)
        assert f"address {str(path)!r} for a brokered server" in text and "a regular file" in text, text
        assert "PLUGIN_UNIX_SOCKET_DIR" not in text, text


def test_trust_announced_address_dials_a_brokered_address_as_announced(listener: tuple[socket.socket, str, str],
                                                                       tmp_path: Path) -> None:
    sock, network, address = listener
    with _client(tmp_path, trust_announced_address=True) as client:
        channel = client.broker.dial(_announce(client, "announce-at", f"{network}|{address}".encode()), timeout=10)
        grpc.channel_ready_future(channel)  # asks the lazy channel to connect
        sock.settimeout(30)
        conn, _ = sock.accept()  # the announced address was dialed, unproven
        with conn:
            conn.settimeout(30)
            assert conn.recv(3) == b"PRI"  # the HTTP/2 preface of the host's channel
        channel.close()


def test_a_socket_renamed_onto_a_proven_brokered_path_is_never_dialed(tmp_path: Path) -> None:
    # the proven socket is dialed through a handle on it; before: by its path, so a socket the plugin (or
    # anyone) renamed onto that path after the proof got the brokered calls
    with _client(tmp_path) as client:
        broker = client.broker
        seen: list[str] = []
        receive = broker.receive

        def noting(msg):  # type: ignore[no-untyped-def]
            seen.append(msg.address)
            receive(msg)

        broker.receive = noting  # type: ignore[method-assign]
        channel = broker.dial(_announce(client, "announce"), timeout=10)  # proven; not yet connected (lazy)
        [path] = seen
        os.rename(path, f"{path}.moved")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
            other.bind(path)
            other.listen(8)
            assert _healthy(channel)  # the plugin's brokered server answered, through the handle
            assert _connections(other) == 0
        channel.close()


def test_a_reattached_client_dials_the_plugins_own_brokered_server(tmp_path: Path) -> None:
    # plugbay binds a brokered socket at a private path and hard-links it to the one it announces, so the kernel's
    # table of unix sockets names the private path; before: a reattached Client looked the announced path up there
    # and refused the plugin's own server with a ReattachError that blamed the reattach data
    with _client(tmp_path) as owner:
        owner.dispense(PLUGIN_NAME)
        with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=30,
                                 reattach=owner.reattach_config())) as again:
            channel = again.broker.dial(_announce(again, "announce"), timeout=10)
            assert _healthy(channel)
            channel.close()
            again.close()  # leaves the plugin to its owner


def test_a_reattached_clients_dial_of_an_id_its_plugin_announced_before_it_died_says_the_broker_closed(
        tmp_path: Path) -> None:
    # before: ReattachError (a ConfigError) "process N is not the proven plugin (any more)", where a fresh
    # Client's dial says BrokerClosedError, which a Supervisor's broker takes for "died or restarted, call again"
    with _client(tmp_path) as owner:
        owner.dispense(PLUGIN_NAME)
        with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=30,
                                 reattach=owner.reattach_config())) as again:
            id = _announced_to_host(again, "announce")
            pid = owner.runner.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            assert owner.runner.wait(30) is not None
            with pytest.raises(BrokerClosedError, match="is gone"):
                again.broker.dial(id, timeout=10)


def test_a_reattached_client_refuses_a_brokered_address_another_process_listens_on(
        listener: tuple[socket.socket, str, str], tmp_path: Path) -> None:
    sock, network, address = listener
    with _client(tmp_path) as owner:
        owner.dispense(PLUGIN_NAME)
        with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=30,
                                 reattach=owner.reattach_config())) as again:
            id = _announce(again, "announce-at", f"{network}|{address}".encode())
            with pytest.raises(BrokerAddressRefusedError) as raised:
                again.broker.dial(id, timeout=10)
            text = str(raised.value)
            # the plugin's word on its broker stream, not the reattach data's
            assert f"broker id {id}: plugin" in text and f"announced {network} address {address!r}" in text, text
            assert "reattach data" not in text, text
            who = (f"listened on by process {os.getpid()}, which is neither the plugin process" if network == "unix"
                   else "held by no process of the plugin's")
            assert who in text and "no reattach can reach that plugin" in text, text
            # the reattaching Client's option does not apply to it; a Client of one's own that starts it may set it
            assert "set ClientConfig(trust_announced_address=True)" not in text, text
            assert "from a Client of your own with ClientConfig(trust_announced_address=True)" in text, text
            if not _proof_connects(network, tmp_path):  # the proof asked the kernel: nothing of the host's went there
                assert _connections(sock) == 0
            _connections(sock)  # else its one probe connection, made and closed: not counted below
            again.close()
    assert _connections(sock) == 0


# a reattaching host (the Python API) run as root without CAP_DAC_OVERRIDE: its plugin announces a brokered
# server at a unix socket of its own that it made mode 000 (announce-shut); the dial's refusal, on one line
SHUT_BROKERED = """import sys
sys.path.insert(0, sys.argv[1])
from plugbay import Client, ClientConfig, ReattachConfig
from plugbay.errors import PlugbayError
from tests.resilience_util import HANDSHAKE, PLUGIN_NAME, PLUGINS
with open(sys.argv[2]) as f:
    config = ReattachConfig.from_json(f.read())
client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=30, reattach=config))
try:
    kv = client.dispense(PLUGIN_NAME)
    kv.put("announce-shut", b"")
    client.broker.dial(int(kv.get("announced")), timeout=10)
    print("DIALED")
except PlugbayError as exc:
    print(type(exc).__name__, " ".join(str(exc).split()))
finally:
    client.close()  # leaves the plugin to its owner
"""


def test_a_reattached_clients_refusal_of_a_brokered_socket_it_may_not_connect_to_offers_no_opt_out(
        tmp_path: Path) -> None:
    # before: the refusal went on "... no reattach can reach that plugin ... from a Client of your own with
    # ClientConfig(trust_announced_address=True)", which gets past no permission: the user is what keeps it out
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the host without CAP_DAC_OVERRIDE (setpriv)")
    with _client(tmp_path) as owner:
        owner.dispense(PLUGIN_NAME)
        reattach = tmp_path / "reattach.json"
        reattach.write_text(owner.reattach_config().to_json())
        done = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", PY,
                               "-c", SHUT_BROKERED, str(REPO), str(reattach)], capture_output=True, text=True,
                              timeout=90, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO / "src")),
                                   "PYTHONDONTWRITEBYTECODE": "1"})
        if "setpriv:" in done.stderr:
            pytest.skip(f"setpriv cannot run here: {done.stderr.strip()}")
        said = done.stdout.strip()
        assert said.startswith("BrokerAddressRefusedError "), (said, done.stderr[-2000:])
        assert f"announced unix address '{tmp_path}/shut-" in said, said  # the plugin's own socket
        assert ("this host may not connect to that socket (Permission denied: its file's permissions), so neither"
                " can gRPC; run the host as a user who may connect (the plugin's own)") in said, said
        assert "trust_announced_address" not in said and "reattach can reach" not in said, said
        assert owner.runner.wait(0) is None  # a refused dial leaves the plugin to its owner
