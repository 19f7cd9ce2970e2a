"""What a refused or failing announced address is said to be: a tcp plugin whose files the host cannot read, one
in another network namespace (no advice to trust loopback: that dials the host's own port), and the plugin's
socket path, not the host's handle on it, in gRPC's words.

Real processes: a host run as another user (setpriv) with a non-dumpable plugin, a plugin under `unshare -n`, a
plugin whose socket closes every connection, a plugin announcing a listening socket no process holds (it is in
flight, in a unix message not yet received).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from plugbay import Client, ClientConfig, ProcessRunner
from plugbay.errors import HandshakeTimeoutError, PlugbayError, UnprovenAddressError
from plugbay.runners import ownsocket
from plugbay.runners.unixdiag import sock_diag_missing
from tests.resilience_util import HANDSHAKE, KV_EXAMPLE, PLUGIN_NAME, PLUGINS, PY
from tests.test_announced_owner import REPO, TELL_START, _unshare_works


# a tcp plugin that makes itself non-dumpable: a host without root may then read neither its open files nor its
# namespace links (/proc/PID/fd, /proc/PID/ns/net)
HIDDEN_HOST = """import sys
sys.path.insert(0, sys.argv[1])
from tests.resilience_util import HANDSHAKE, PLUGINS, PY
from plugbay import Client, ClientConfig, ProcessRunner
from plugbay.errors import PlugbayError
PLUGIN = ("import ctypes, socket, time\\nctypes.CDLL(None).prctl(4, 0, 0, 0, 0)\\n"  # PR_SET_DUMPABLE, 0
          "s = socket.socket()\\ns.bind(('127.0.0.1', 0))\\ns.listen(8)\\n"
          "print(f'1|1|tcp|127.0.0.1:{s.getsockname()[1]}|grpc', flush=True)\\ntime.sleep(60)\\n")
client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=5,
                             runner=ProcessRunner([sys.argv[2], "-c", PLUGIN])))
""" + TELL_START


def test_a_tcp_plugin_whose_files_cannot_be_read_is_named_as_such(tmp_path: Path) -> None:
    # before: its unreadable namespace link read as 'another network namespace', with advice to trust its network
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the host as another user (setpriv)")
    # the plugin's python: one the other user may run (this one may lie in root's home)
    plugin_python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else PY
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                           PY, "-c", HIDDEN_HOST, str(REPO), plugin_python], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO / "src"))})
    if "setpriv:" in done.stderr:
        print(f"skipped: setpriv cannot run here: {done.stderr.strip()}")
        pytest.skip(f"setpriv cannot run here: {done.stderr.strip()}")
    assert done.stdout.startswith("UnprovenAddressError"), (done.stdout, done.stderr[-2000:])
    assert "cannot be read here" in done.stdout and "setuid or non-dumpable" in done.stdout, done.stdout
    assert "network namespace" not in done.stdout and "trusted_networks" not in done.stdout, done.stdout


def test_a_tcp_plugin_in_another_network_namespace_is_not_advised_to_be_trusted() -> None:
    # before: 'name its network in ProcessRunner(trusted_networks=)': trusting 127.0.0.1 dials the host's own port
    why = _unshare_works("-n")
    if why is not None:
        print(f"skipped: {why}")
        pytest.skip(why)
    plugin = ("import socket, subprocess, time\nsubprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)\n"
              "s = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen(8)\n"
              "print(f'1|1|tcp|127.0.0.1:{s.getsockname()[1]}|grpc', flush=True)\ntime.sleep(60)\n")
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=8,
                                 runner=ProcessRunner(["unshare", "-n", PY, "-c", plugin])))
    try:
        with pytest.raises(UnprovenAddressError) as raised:
            client.start()
    finally:
        client.kill()
    text = str(raised.value)
    assert "runs in another network namespace" in text and "cannot reach" in text, text
    assert "run the plugin in the host's network namespace" in text, text
    assert "name its network in ProcessRunner(trusted_networks=)" not in text, text


# a "plugin" whose socket takes each connection and closes it: gRPC's attempts fail UNAVAILABLE, naming what it dialed
CLOSES = ("import socket, sys\npath = sys.argv[1]\ns = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
          "s.bind(path)\ns.listen(16)\nprint(f'1|1|unix|{path}|grpc', flush=True)\n"
          "while True:\n    s.accept()[0].close()\n")


def test_a_handshake_timeout_names_the_plugins_socket_not_the_hosts_handle(tmp_path: Path) -> None:
    # before: '(last: UNAVAILABLE: ... unix:/proc/self/fd/N ...)', the host's handle gRPC dialed
    path = str(tmp_path / "closes.sock")
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=3, kill_grace=1,
                                 runner=ProcessRunner([PY, "-c", CLOSES, path])))
    try:
        with pytest.raises(HandshakeTimeoutError, match="did not report 'plugin' SERVING") as raised:
            client.start()
    finally:
        client.kill()
    text = str(raised.value)
    assert "(last: UNAVAILABLE" in text and path in text, text
    assert "/proc/self/fd/" not in text, text


def test_a_calls_unavailable_names_the_plugins_socket_not_the_hosts_handle(tmp_path: Path) -> None:
    # before: 'failed with UNAVAILABLE (... unix:/proc/self/fd/N: connect failed ...)'; the plugin's shell lives on
    # while its server, killed, leaves the socket refusing (the KV example writes its kv_<key> files where it runs)
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, call_timeout=5, kill_grace=1,
                                 runner=ProcessRunner(["sh", "-c", f"{PY} {KV_EXAMPLE} & wait; sleep 30"],
                                                      cwd=tmp_path)))
    client.start()
    try:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        pid = client.runner.pid
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            os.kill(int(children.read().split()[0]), signal.SIGKILL)
        said: list[str] = []
        for _ in range(50):  # a hang guard: the broken stream's error first, then gRPC's failed redials
            with pytest.raises(PlugbayError) as raised:
                kv.get("k")
            said.append(str(raised.value))
            if "failed to connect" in said[-1]:
                break
    finally:
        client.kill()
    text = said[-1]
    assert "failed to connect" in text and client.handshake.address in text, said
    assert "/proc/self/fd/" not in text, text


def test_only_a_handle_on_a_socket_file_is_told_by_its_path(tmp_path: Path) -> None:
    # a plugin's own words naming /proc/self/fd/N (its descriptor N) were told as the host's file under that
    # number: '/proc/self/fd/3' became '/etc/hostname' for a host holding that file as 3
    from plugbay.core.transport.handlenames import named_handles

    regular = os.open("/etc/hostname", os.O_RDONLY)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "p.sock"))
    pinned = os.open(str(tmp_path / "p.sock"), os.O_PATH)
    try:
        said = f"open /proc/self/fd/{regular}: no such file; dial /proc/self/fd/{pinned}: refused"
        assert named_handles(said) == (f"open /proc/self/fd/{regular}: no such file;"
                                       f" dial {tmp_path / 'p.sock'}: refused"), named_handles(said)
    finally:
        os.close(pinned)
        os.close(regular)
        listener.close()



@pytest.mark.skipif(sock_diag_missing() is not None, reason=sock_diag_missing() or "")
@pytest.mark.parametrize("budget", [30.0, 0.0])
def test_a_listener_no_process_holds_is_refused_saying_where_it_may_be(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: float) -> None:
    # the refusal looks for the foreign listener's holder among every process's files, for a bounded time: with
    # time to look, no holder is found (the socket is in flight) and the message says it may be; with none, it says
    # it stopped looking rather than that nobody holds it
    monkeypatch.setattr(ownsocket, "_HOLDER_BUDGET", budget)
    path = str(tmp_path / "flight.sock")
    carrier, receiver = socket.socketpair()
    with carrier, receiver:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(8)
        socket.send_fds(carrier, [b"x"], [listener.fileno()])
        listener.close()  # now held only by the message in flight
        client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=8,
                                     runner=ProcessRunner([PY, str(REPO / "tests" / "plugins" / "misbehave.py"),
                                                           "line", f"1|1|unix|{path}|grpc"])))
        try:
            with pytest.raises(UnprovenAddressError) as raised:
                client.start()
        finally:
            client.kill()
    said = str(raised.value)
    if budget:
        assert "or by none at all (a socket held only in flight" in said, said
    else:
        assert ("a process not found in the 0 s this host looks for one (the open files of 0 of this machine's processes looked at)"
                in said), said
