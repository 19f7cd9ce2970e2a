"""A started plugin's announced socket is dialed only once plugbay proves the plugin (or a process it started)
listens there.

Real processes: a "plugin" whose handshake line names a socket another process made (a real KV plugin this
test started itself, or a socket this test listens on) is refused at once with UnprovenAddressError, which
names the address and the opt-out; ClientConfig(trust_announced_address=True) dials it as before. Plugins
started through wrappers (``sh -c`` with and without exec, ``env``, a parent that forks the server) serve as
before, over unix and tcp, plain and multiplexed.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest

from plugbay import Client, ClientConfig, ProcessRunner
from plugbay.errors import ConfigError, HandshakeTimeoutError, MalformedHandshakeError, UnprovenAddressError
from tests.cli_util import plugbay
from tests.resilience_util import HANDSHAKE, KV_EXAMPLE, PLUGIN_NAME, PLUGINS, PY

REPO = Path(__file__).resolve().parent.parent
MISBEHAVE = str(REPO / "tests" / "plugins" / "misbehave.py")
# a parent that forks, its child serving the plugin (it execs the KV plugin), the parent waiting on it as a shell
# does (a SIGTERM to the group is the server's to act on: a parent killed by it first left the server to SIGKILL)
FORKS = ("import os, signal, sys\npid = os.fork()\n"
         "if pid == 0:\n    os.execv(sys.executable, [sys.executable, sys.argv[1]])\n"
         "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nsys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n")


class Foreign:
    """A real KV plugin this test starts itself: a healthy gRPC server that no Client's plugin made."""

    def __init__(self, folder: Path, listen: str | None, multiplex: bool) -> None:
        env = {**os.environ, HANDSHAKE.magic_cookie_key: HANDSHAKE.magic_cookie_value,
               "PLUGIN_PROTOCOL_VERSIONS": "1", "PLUGIN_UNIX_SOCKET_DIR": str(folder)}
        if listen is not None:
            env["PLUGBAY_LISTEN"] = listen
        if multiplex:
            env["PLUGIN_MULTIPLEX_GRPC"] = "true"
        self.proc = subprocess.Popen([PY, KV_EXAMPLE], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline().decode().strip()
        assert self.line.count("|") >= 4, self.line
        self.network, self.address = self.line.split("|")[2:4]

    def close(self) -> None:
        self.proc.terminate()  # its SIGTERM handler removes the private folder a multiplexed plugin makes
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the KV example writes its kv_<key> files where it runs: not in the checkout


@pytest.fixture()
def foreign(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Foreign]:
    listen, multiplex = request.param
    started = Foreign(tmp_path, listen, multiplex)
    try:
        yield started
    finally:
        started.close()


def _announcing(line: str, **config: object) -> Client:
    """A Client whose plugin prints ``line`` as its handshake and serves nothing itself."""
    return Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=8,
                               runner=ProcessRunner([PY, MISBEHAVE, "line", line]), **config))  # type: ignore[arg-type]


def _refused(client: Client, network: str, address: str) -> str:
    try:
        with pytest.raises(UnprovenAddressError) as raised:
            client.start()
        assert client.runner.wait(10) is not None, "the refused plugin was left running"
    finally:
        client.kill()
    error = raised.value
    assert isinstance(error, MalformedHandshakeError)  # a broker's and a caller's catch of refusals hold it too
    assert (error.network, error.address) == (network, address)
    text = str(error)
    assert f"announced {network} address {address!r}, which plugbay does not dial" in text, text
    assert "trust_announced_address=True" in text, text
    return text


KINDS = [(None, False), ("tcp:127.0.0.1:0", False), (None, True)]
IDS = ["unix", "tcp", "unix-multiplexed"]


@pytest.mark.parametrize("foreign", KINDS, ids=IDS, indirect=True)
def test_a_running_plugin_the_started_one_did_not_make_is_refused(foreign: Foreign) -> None:
    # before: dialed, and the host's calls went to the other process's server (start() succeeded)
    multiplex = foreign.line.endswith("|true")
    text = _refused(_announcing(foreign.line, multiplex_broker=multiplex), foreign.network, foreign.address)
    said = (f"listened on by process {foreign.proc.pid}, which is neither the plugin process" if foreign.network
            == "unix" else "held by no process of the plugin's")
    assert said in text, text
    assert foreign.proc.poll() is None  # the other server is left alone


def test_a_socket_an_ancestor_listens_on_is_refused(tmp_path: Path) -> None:
    # this test's process is the plugin's ancestor, not its descendant; before: dialed until start_timeout
    path = str(tmp_path / "host.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(8)
        text = _refused(_announcing(f"1|1|unix|{path}|grpc"), "unix", path)
    assert f"listened on by process {os.getpid()}" in text, text


def test_a_tcp_port_a_multiplexed_plugin_announces_is_refused_undialed() -> None:
    # the tcp proof reads the socket tables, no connection: before, the multiplexed connection was dialed first
    # and proven on itself, and this listener had it queued when the refusal came
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        text = _refused(_announcing(f"1|1|tcp|{address}|grpc||true", multiplex_broker=True), "tcp", address)
        assert "held by no process of the plugin's" in text, text
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing was dialed: no connection waits to be accepted
            listener.accept()


@pytest.mark.parametrize("foreign", KINDS, ids=IDS, indirect=True)
def test_trust_announced_address_dials_it_as_before(foreign: Foreign) -> None:
    multiplex = foreign.line.endswith("|true")
    with _announcing(foreign.line, multiplex_broker=multiplex, trust_announced_address=True) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"trusted")
        assert kv.get("k") == b"trusted"


@pytest.mark.parametrize("foreign", [("tcp:127.0.0.1:0", False)], ids=["tcp"], indirect=True)
@pytest.mark.parametrize("form", ["{}", "[::ffff:{}]"], ids=["ipv4", "ipv4-mapped"])
def test_an_address_in_trusted_networks_is_dialed_unproven(foreign: Foreign, form: str) -> None:
    # trusted_networks is the caller's word for the proof as for plugin_to_host(): the IPv4-mapped form too
    # (before: the proof alone did not see [::ffff:127.0.0.1] in 127.0.0.0/8, and refused it)
    host, _, port = foreign.address.rpartition(":")
    line = "|".join([*foreign.line.split("|")[:3], f"{form.format(host)}:{port}", "grpc"])
    runner = ProcessRunner([PY, MISBEHAVE, "line", line], trusted_networks=["127.0.0.0/8"])
    with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=runner, start_timeout=8)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"trusted network")
        assert kv.get("k") == b"trusted network"


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_trust_announced_address_is_checked(value: object) -> None:
    with pytest.raises(ConfigError, match="trust_announced_address must be True or False"):
        ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[PY, KV_EXAMPLE],
                     trust_announced_address=value)  # type: ignore[arg-type]


WRAPPERS = {
    "sh-exec": ["sh", "-c", f"exec {PY} {KV_EXAMPLE}"],
    "sh-child": ["sh", "-c", f"{PY} {KV_EXAMPLE}; exit $?"],  # no exec: the server is the shell's child
    "env": ["env", "PLUGBAY_WRAPPED=1", PY, KV_EXAMPLE],
    "forks": [PY, "-c", FORKS, KV_EXAMPLE],
}


@pytest.mark.parametrize("listen", [None, "tcp:127.0.0.1:0"], ids=["unix", "tcp"])
@pytest.mark.parametrize("multiplex", [False, True], ids=["plain", "multiplexed"])
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_a_plugin_started_through_a_wrapper_serves(wrapper: str, multiplex: bool, listen: str | None) -> None:
    env = {"PLUGBAY_LISTEN": listen} if listen else {}
    runner = ProcessRunner(WRAPPERS[wrapper], env=env)
    with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=runner, start_timeout=30,
                             multiplex_broker=multiplex)) as client:
        assert client.handshake.network == ("tcp" if listen else "unix")
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", wrapper.encode())
        assert kv.get("k") == wrapper.encode()


def _unshare_works(*flags: str) -> str | None:
    """Why `unshare FLAGS true` cannot run here (not root, no unshare, a sandbox's seccomp), or None."""
    try:
        done = subprocess.run(["unshare", *flags, "true"], capture_output=True, timeout=30)
    except OSError as exc:
        return f"unshare cannot run: {exc}"
    return None if done.returncode == 0 else f"unshare {' '.join(flags)} fails here: {done.stderr.decode()!r}"


@pytest.mark.parametrize("flags", [("-m",), ("-p", "-f", "--mount-proc")], ids=["mount", "pid-mount"])
@pytest.mark.parametrize("multiplex", [False, True], ids=["plain", "multiplexed"])
def test_a_tcp_plugin_in_its_own_mount_namespace_serves(flags: tuple[str, ...], multiplex: bool) -> None:
    # only the network namespace gives a port its meaning; before: refused ("another service listens there")
    why = _unshare_works(*flags)
    if why is not None:
        print(f"skipped: {why}")
        pytest.skip(why)
    runner = ProcessRunner(["unshare", *flags, PY, KV_EXAMPLE], env={"PLUGBAY_LISTEN": "tcp:127.0.0.1:0"})
    with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=runner, start_timeout=30,
                             multiplex_broker=multiplex)) as client:
        assert client.handshake.network == "tcp"
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"unshared")
        assert kv.get("k") == b"unshared"


def test_plugbay_run_trust_announced_address(tmp_path: Path) -> None:
    path = str(tmp_path / "host.sock")  # this test's own socket: the plugin's ancestor listens there
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(8)

        def run(*flags: str) -> tuple[int, str]:
            done = plugbay("run", "--cmd", f"{PY} {MISBEHAVE} line '1|1|unix|{path}|grpc'", "--cookie", "K=V",
                           "--start-timeout", "1", *flags, cwd=tmp_path, timeout=60)
            return done.returncode, done.stderr

        code, err = run()
        assert code != 0 and "announced address refused" in err, err
        assert "run again with --trust-announced-address" in err, err
        assert "ClientConfig(" not in err, err  # the command's flag, not the Python API's option
        code, err = run("--trust-announced-address")
        # dialed: this socket accepts and never answers, so the health check waits out the start timeout
        assert code != 0 and "announced address refused" not in err and "did not report 'plugin' SERVING" in err, err
    done = plugbay("run", "--image", "x", "--trust-announced-address", "--cookie", "K=V", cwd=tmp_path, timeout=60)
    assert done.returncode != 0 and "--trust-announced-address needs --cmd" in done.stderr, done.stderr


@pytest.mark.docker
def test_a_docker_run_wrappers_socket_is_refused_unless_trusted(plugbay_image: Any, tmp_path: Path) -> None:
    # the plugin runs in a container the command starts (`docker run` with the socket's folder mounted at the
    # same path): its listener is the container's process, under the engine, not the process plugbay started
    tag = plugbay_image("kv")
    folder = tmp_path / "mounted"
    folder.mkdir()
    folder.chmod(0o777)  # the image's plugin user makes its socket there
    name = f"plugbay-test-ownsocket-{os.getpid()}"
    cmd = ["docker", "run", "--rm", "--name", name, "--network", "none", "-v", f"{folder}:{folder}",
           "-e", f"{HANDSHAKE.magic_cookie_key}={HANDSHAKE.magic_cookie_value}", "-e", "PLUGIN_PROTOCOL_VERSIONS=1",
           "-e", f"PLUGIN_UNIX_SOCKET_DIR={folder}", tag]

    def client(**config: object) -> Client:
        return Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=cmd, start_timeout=60,
                                   **config))  # type: ignore[arg-type]

    try:
        refused = client()
        try:
            # before: dialed, and the calls went to the container's server
            with pytest.raises(UnprovenAddressError) as raised:
                refused.start()
        finally:
            refused.kill()
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        assert raised.value.network == "unix" and raised.value.address.startswith(str(folder)), raised.value
        assert "which is neither the plugin process" in str(raised.value), str(raised.value)
        with client(trust_announced_address=True) as trusted:
            kv = trusted.dispense(PLUGIN_NAME)
            kv.put("k", b"in a container")
            assert kv.get("k") == b"in a container"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


# listens on its own path, prints it, lets the host's probe connect, then renames a symlink to another
# server's socket (argv[2]) onto that path; every later connection to its own socket it closes at once
SWAPS = ("import os, socket, sys\npath, victim = sys.argv[1], sys.argv[2]\n"
         "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\ns.bind(path)\ns.listen(16)\n"
         "print(f'1|1|unix|{path}|grpc', flush=True)\ns.accept()[0].close()\n"
         "os.symlink(victim, path + '.swap')\nos.rename(path + '.swap', path)\n"
         "while True:\n    s.accept()[0].close()\n")


@pytest.mark.parametrize("foreign", [(None, False)], ids=["unix"], indirect=True)
def test_a_socket_swapped_onto_the_path_after_the_proof_is_not_dialed(foreign: Foreign, tmp_path: Path) -> None:
    # before: the proof's probe reached the plugin's own socket, gRPC then dialed the path by name and reached
    # the other server: start() succeeded, the calls went there, and kill()'s Shutdown stopped it
    path = str(tmp_path / "swapped.sock")
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=3, kill_grace=1,
                                 runner=ProcessRunner([PY, "-c", SWAPS, path, foreign.address])))
    try:
        # proven, it is the plugin's own socket that is dialed, and it answers no gRPC
        with pytest.raises(HandshakeTimeoutError, match="did not report 'plugin' SERVING"):
            client.start()
        assert os.path.realpath(path) == foreign.address  # the swap was made
    finally:
        client.kill()
    assert foreign.proc.poll() is None, "the other server was stopped by the host's Shutdown"
    probe = subprocess.run([PY, "-c", "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])",
                            foreign.address], capture_output=True, timeout=30)
    assert probe.returncode == 0, probe.stderr  # and still serves


# how a host script run as another user tells its start's end: the error's type and words, or nothing
TELL_START = """try:
    client.start()
except PlugbayError as exc:
    print(type(exc).__name__, exc)
finally:
    client.kill()
"""

# a host without CAP_DAC_OVERRIDE (root's bounding set cut by setpriv) whose plugin makes its socket mode 000
EACCES_HOST = """import os, sys
sys.path.insert(0, sys.argv[1])
from tests.resilience_util import HANDSHAKE, PLUGINS, PY
from plugbay import Client, ClientConfig, ProcessRunner
from plugbay.errors import PlugbayError
PLUGIN = ("import os, socket, sys, time\\npath = sys.argv[1]\\ns = socket.socket(socket.AF_UNIX)\\ns.bind(path)\\n"
          "s.listen(8)\\nos.chmod(path, 0)\\nprint(f'1|1|unix|{path}|grpc', flush=True)\\ntime.sleep(60)\\n")
client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=5,
                             runner=ProcessRunner([PY, "-c", PLUGIN, os.path.join(sys.argv[2], "p.sock")])))
""" + TELL_START


def test_a_socket_the_host_may_not_connect_to_is_refused_as_such(tmp_path: Path) -> None:
    # before: the probe's EACCES counted as 'nothing listens', waited out start_timeout, then said so
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the host without CAP_DAC_OVERRIDE (setpriv)")
    host = tmp_path / "host.py"
    host.write_text(EACCES_HOST)
    done = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all",
                           PY, str(host), str(REPO), str(tmp_path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO / "src"))})
    if "setpriv:" in done.stderr:
        pytest.skip(f"setpriv cannot run here: {done.stderr.strip()}")
    assert done.stdout.startswith("UnprovenAddressError"), (done.stdout, done.stderr[-2000:])
    assert "this host may not connect to that socket (Permission denied" in done.stdout, done.stdout


@pytest.mark.parametrize("trust", [False, True], ids=["proving", "trusting"])  # a reattach proves either way
@pytest.mark.parametrize("foreign", [(None, False)], ids=["unix"], indirect=True)
def test_a_socket_swapped_onto_the_path_after_a_reattachs_proof_is_not_dialed(
        foreign: Foreign, monkeypatch: pytest.MonkeyPatch, trust: bool) -> None:
    # before: plugin_to_host() proved the path by name, the handle was opened on whatever was there a moment later
    # and nothing looked at it: start() succeeded on the other server, the calls went there, and kill()'s Shutdown
    # stopped it (a multiplexed plugin cannot be reattached; its one connection goes through the same proof)
    from plugbay.runners.attached import AttachedProcess
    first = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[PY, KV_EXAMPLE]))
    first.start()
    try:
        mapped = AttachedProcess.plugin_to_host

        def then_swapped(runner: AttachedProcess, network: str, address: str) -> tuple[str, str]:
            network, path = mapped(runner, network, address)
            os.symlink(foreign.address, path + ".swap")  # the attacker's move, at the worst moment
            os.rename(path + ".swap", path)
            return network, path

        monkeypatch.setattr(AttachedProcess, "plugin_to_host", then_swapped)
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=10,
                                     trust_announced_address=trust, reattach=first.reattach_config()))
        with pytest.raises(UnprovenAddressError, match=f"listened on by process {foreign.proc.pid}, which is"
                           f" neither the plugin process {first.runner.pid}"):
            second.start()
        second.close()
    finally:
        first.kill()
    assert foreign.proc.poll() is None, "the other server was stopped by the host's Shutdown"
