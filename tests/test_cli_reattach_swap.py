"""The command line's reattach (and a Client's) dials the socket it proved, not whatever is at its path a moment later.

Real processes: a KV plugin a Client started, another real KV server this test started, and the plugbay
command run by a wrapper that renames a symlink to that other server's socket onto the plugin's path right
after the runner's proof by name (the attacker's move, at the worst moment). The command refuses, naming the
path; the other server gets no call.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from plugbay import Client, ClientConfig, UnprovenAddressError
from plugbay.runners.attached import AttachedProcess
from tests.cli_util import KV_PROTO, cli_env
from tests.resilience_util import HANDSHAKE, KV_EXAMPLE, PLUGINS, PY

# the plugbay command, its runner's proof followed by the swap (in the command's own process)
SWAPPING = """import os, sys
from plugbay.cli import main
from plugbay.runners.attached import AttachedProcess
other = os.environ.pop("SWAP_TO")
mapped = AttachedProcess.plugin_to_host

def then_swapped(runner, network, address):
    network, path = mapped(runner, network, address)
    os.symlink(other, path + ".swap")
    os.rename(path + ".swap", path)
    return network, path

AttachedProcess.plugin_to_host = then_swapped
sys.exit(main())
"""


@pytest.fixture()
def other(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A real KV server no Client started, and its socket's path."""
    env = {**os.environ, HANDSHAKE.magic_cookie_key: HANDSHAKE.magic_cookie_value,
           "PLUGIN_PROTOCOL_VERSIONS": "1", "PLUGIN_UNIX_SOCKET_DIR": str(tmp_path)}
    (tmp_path / "other").mkdir()  # its working folder, where it stores each key it is given
    proc = subprocess.Popen([PY, KV_EXAMPLE], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=tmp_path / "other")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        assert line.split("|")[2:3] == ["unix"], line
        yield proc, line.split("|")[3]
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


# the plugbay command, its runner's proof followed by the socket's folder given away (this process may not search it)
SHUT_OUT = """import os, sys
from plugbay.cli import main
from plugbay.runners.attached import AttachedProcess
mapped = AttachedProcess.plugin_to_host

def then_shut_out(runner, network, address):
    network, path = mapped(runner, network, address)
    os.chown(os.path.dirname(path), 65534, 65534)  # its mode is 0700
    return network, path

AttachedProcess.plugin_to_host = then_shut_out
sys.exit(main())
"""
# root without the capabilities that pass over a folder's permissions (CAP_CHOWN kept)
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]


def run_reattached(tmp_path: Path, script: str, argv: list[str], prefix: Sequence[str] = (),
                   **env: str) -> tuple[subprocess.CompletedProcess[str], str, str]:
    """The plugbay command ``script`` wraps (run under ``prefix``), run on the reattach config of a KV plugin a
    Client started (killed afterwards): its run, the plugin's socket path, and what that path led to when the
    command ended."""
    first = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[PY, KV_EXAMPLE]))
    first.start()
    try:
        reattach = tmp_path / "reattach.json"
        reattach.write_text(first.reattach_config().to_json())
        path = first.reattach_config().handshake.address
        wrapper = tmp_path / "wrapper.py"
        wrapper.write_text(script)
        done = subprocess.run([*prefix, sys.executable, str(wrapper), argv[0], f"@{reattach}", *argv[1:]],
                              capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
                              env=cli_env(PYTHONDONTWRITEBYTECODE="1", **env))
        return done, path, os.path.realpath(path)
    finally:
        first.kill()


@pytest.mark.parametrize("command", [["health"], ["call", "/proto.KV/Put", '{"key": "k", "value": "aGk="}',
                                                   "--proto", str(KV_PROTO)]], ids=["health", "call"])
def test_a_socket_swapped_onto_the_path_after_the_clis_proof_is_not_dialed(
        tmp_path: Path, other: tuple[subprocess.Popen[bytes], str], command: list[str]) -> None:
    # before: the command dialed the path by name after plugin_to_host() proved it: health said SERVING and
    # the Put was stored by the other server
    server, other_socket = other
    done, path, led_to = run_reattached(tmp_path, SWAPPING, command, SWAP_TO=other_socket)
    assert led_to == other_socket  # the swap was made
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert "UnprovenAddressError" in done.stderr or "which plugbay does not dial" in done.stderr, done.stderr
    assert f"listened on by process {server.pid}, which is neither the plugin process" in done.stderr
    assert path in done.stderr and "/proc/self/fd/" not in done.stderr, done.stderr
    # the command's own way out, not the Python API's, and only one that works: a reattach config carries no trust
    # setting, so "start the plugin again with plugbay run --trust-announced-address" could not reach it (before)
    said = " ".join(done.stderr.split())
    assert "(unix:///PATH --insecure, which proves nothing of who listens)" in said, said
    assert "--trust-announced-address" not in said and "start the plugin again" not in said, said
    assert "ClientConfig" not in said, said
    assert server.poll() is None
    assert not (tmp_path / "other" / "kv_k").exists(), "the Put was stored by the other server"


def test_a_reattached_clients_refusal_of_a_swapped_socket_says_what_a_reattach_can_do(
        tmp_path: Path, other: tuple[subprocess.Popen[bytes], str], monkeypatch: pytest.MonkeyPatch) -> None:
    # before: "... (a `docker run` wrapper), set ClientConfig(trust_announced_address=True)", which a reattach
    # ignores (it proves every address whatever that says): the advice could not help
    server, other_socket = other
    mapped = AttachedProcess.plugin_to_host

    def then_swapped(runner: AttachedProcess, network: str, address: str) -> tuple[str, str]:
        network, path = mapped(runner, network, address)
        os.symlink(other_socket, path + ".swap")
        os.rename(path + ".swap", path)
        return network, path

    with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[PY, KV_EXAMPLE])) as first:
        monkeypatch.setattr(AttachedProcess, "plugin_to_host", then_swapped)
        again = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=30,
                                    reattach=first.reattach_config()))
        with pytest.raises(UnprovenAddressError) as refused:
            again.start()
        said = str(refused.value)
        assert f"listened on by process {server.pid}, which is neither the plugin process" in said, said
        # a Client of one's own opts out as no reattach can; the reattaching Client's own setting is not offered
        assert "start it again from a Client of your own with ClientConfig(trust_announced_address=True)" in said
        assert "set ClientConfig(trust_announced_address=True)" not in said, said
        assert "no reattach can reach that plugin" in said and "the Client that started it" in said, said
        again.close()
        assert first.runner.wait(0) is None  # a refused reattach leaves the plugin to its owner
    assert server.poll() is None


# the plugbay command, its plugin killed right after the runner's proof through the handle: the dial is refused
KILLED_AFTER_PROOF = """import os, signal, socket, sys
from plugbay.cli import main
from plugbay.runners.attached import AttachedProcess
proven = AttachedProcess.unproven_listener

def then_killed(runner, network, address, conn=None):
    why = proven(runner, network, address, conn)
    os.kill(runner.pid, signal.SIGKILL)
    while True:  # until its listener is gone with it
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(address)
        except ConnectionRefusedError:
            return why
        finally:
            probe.close()

AttachedProcess.unproven_listener = then_killed
sys.exit(main())
"""


@pytest.mark.parametrize("command", [["health"], ["call", "/proto.KV/Get", '{"key": "k"}', "--proto", str(KV_PROTO)]],
                         ids=["health", "call"])
def test_a_refused_dial_of_the_proven_socket_names_its_path(tmp_path: Path, command: list[str]) -> None:
    # before: the command's words were gRPC's, which name the handle dialed (unix:/proc/self/fd/N)
    done, path, _ = run_reattached(tmp_path, KILLED_AFTER_PROOF, [*command, "--timeout", "3"])
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert f"unix:{path}" in said and "/proc/self/fd/" not in said, said


def _refused_without_dac(tmp_path: Path, script: str) -> tuple[str, str]:
    """`plugbay health` on a reattach whose socket ``script`` puts out of the command's reach, run as root without
    CAP_DAC_OVERRIDE (setpriv): its refusal's words on one line, and the socket's path."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the command without CAP_DAC_OVERRIDE (setpriv)")
    done, path, _ = run_reattached(tmp_path, script, ["health"], prefix=NO_DAC)
    if "setpriv:" in done.stderr:
        pytest.skip(f"setpriv cannot run here: {done.stderr.strip()}")
    said = " ".join(done.stderr.split())
    assert done.returncode != 0, said
    return said, path


def test_a_socket_the_clis_user_may_not_open_says_to_run_as_one_who_may(tmp_path: Path) -> None:
    # before: '... (a `docker run` wrapper), no reattach can reach that plugin ... from a Client of your own', the
    # Python API's advice, which no opt-out makes true: a dial by name is refused as the open was
    said, path = _refused_without_dac(tmp_path, SHUT_OUT)
    assert "UnprovenAddressError" in said or "which plugbay does not dial" in said, said
    assert f"this host may not open it (Permission denied); run as a user who may open {path}." in said, said
    assert "docker run" not in said and "Client" not in said and "reattach can reach" not in said, said


# the plugbay command, its plugin's socket folder given away before it starts (this process may not search it)
SHUT_OUT_FIRST = """import os, sys
from plugbay.cli import main
from plugbay.core.host.reattach import ReattachConfig
with open(sys.argv[2][1:]) as f:
    path = ReattachConfig.from_json(f.read()).handshake.address
os.chown(os.path.dirname(path), 65534, 65534)  # its mode is 0700
sys.exit(main())
"""


def test_a_socket_in_a_folder_the_clis_user_may_not_search_says_to_reattach_as_one_who_may(tmp_path: Path) -> None:
    # before: '... (this host may not connect to that socket (Permission denied: its file's permissions or a
    # security module) ...). Pass the JSON that Client.reattach_config().to_json() produced for this plugin, or stop
    # it and start it again from a Client of your own': the Python API's advice, and no other JSON gets past a folder
    said, path = _refused_without_dac(tmp_path, SHUT_OUT_FIRST)
    assert f"this host's user may not search folder {os.path.dirname(path)!r}" in said, said
    assert "run the host as a user who may connect (the plugin's own)" in said, said
    assert "Client" not in said and "JSON" not in said and "trust" not in said, said


# a reattaching host (the Python API), its plugin's socket folder given away before it starts
REATTACHING_HOST = """import os, sys
from plugbay import Client, ClientConfig, ReattachConfig
from plugbay.errors import PlugbayError
from tests.resilience_util import HANDSHAKE, PLUGINS
with open(sys.argv[1]) as f:
    config = ReattachConfig.from_json(f.read())
os.chown(os.path.dirname(config.handshake.address), 65534, 65534)  # its mode is 0700
client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=config, start_timeout=30))
try:
    client.start()
except PlugbayError as exc:
    print(type(exc).__name__, exc)
finally:
    client.close()
"""


def test_a_reattached_clients_refusal_of_a_folder_it_may_not_search_says_the_same(tmp_path: Path) -> None:
    # before: 'plugin process N does not listen there (...)', then the advice of other reattach data or a Client
    # of one's own, when the reattaching host's user is what keeps it out
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the host without CAP_DAC_OVERRIDE (setpriv)")
    first = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[PY, KV_EXAMPLE]))
    first.start()
    try:
        reattach = tmp_path / "reattach.json"
        reattach.write_text(first.reattach_config().to_json())
        folder = os.path.dirname(first.reattach_config().handshake.address)
        done = subprocess.run([*NO_DAC, sys.executable, "-c", REATTACHING_HOST, str(reattach)], capture_output=True,
                              text=True, timeout=90, stdin=subprocess.DEVNULL, env=cli_env(PYTHONDONTWRITEBYTECODE="1"))
        if "setpriv:" in done.stderr:
            pytest.skip(f"setpriv cannot run here: {done.stderr.strip()}")
        assert first.runner.wait(0) is None  # a refused reattach leaves the plugin to its owner
    finally:
        first.kill()
    said = done.stdout
    assert said.startswith("ReattachError"), (said, done.stderr[-2000:])
    assert f"this host's user may not search folder {folder!r}" in said, said
    assert "as a user who may connect (the plugin's own)" in said and "does not listen there" not in said, said
    assert "JSON" not in said and "Client of your own" not in said, said
