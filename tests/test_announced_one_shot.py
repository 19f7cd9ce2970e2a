"""The proof of a started plugin's unix socket makes no connection of its own: a foreign server that serves one
connection and exits (as go-plugin's multiplexed server does) is refused without being served.

Real processes: a one-connection unix server this test starts, whose socket a "plugin" announces as its own; the
refusal names the server's process, which is still running and has served nobody after it. A real go-plugin Go
plugin, its grpc-go logging warnings, logs no connection cut short before gRPC's preface for a start.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from plugbay import Client, ClientConfig, ProcessRunner
from plugbay.errors import UnprovenAddressError
from plugbay.runners.unixdiag import bound_listener, kernel_cannot_tell
from tests import gobuild
from tests.resilience_util import HANDSHAKE, PLUGINS, PY

REPO = Path(__file__).resolve().parent.parent
MISBEHAVE = str(REPO / "tests" / "plugins" / "misbehave.py")
# listens, tells it is ready, then serves the first connection it accepts and exits, as go-plugin's multiplexed
# server does; it prints what that connection sent
ONE_SHOT = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(8)\n"
            "print('ready', flush=True)\nconn, _ = s.accept()\nprint('served', conn.recv(64), flush=True)\n")
# without sock_diag, or on a file system whose inode numbers may pass 2**32, the proof falls back to connecting,
# the very thing these tests show it no longer does
_NOT_HERE = kernel_cannot_tell(tempfile.gettempdir())
pytestmark = pytest.mark.skipif(_NOT_HERE is not None, reason=_NOT_HERE or "")


@pytest.mark.parametrize("multiplexed", [False, True], ids=["per-connection", "multiplexed"])
def test_a_one_connection_server_a_plugin_announces_is_refused_and_left_unserved(tmp_path: Path,
                                                                                  multiplexed: bool) -> None:
    # before: the proof's own connection (multiplexed: the host's one connection, dialed first and proven on
    # itself) was the one it served, sending nothing, and it exited; the proof now asks the kernel first
    path = str(tmp_path / "one.sock")
    server = subprocess.Popen([PY, "-c", ONE_SHOT, path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        line = f"1|1|unix|{path}|grpc" + ("||true" if multiplexed else "")
        client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=8,
                                     multiplex_broker=multiplexed, runner=ProcessRunner([PY, MISBEHAVE, "line", line])))
        try:
            with pytest.raises(UnprovenAddressError) as raised:
                client.start()
        finally:
            client.kill()
        assert f"listened on by process {server.pid}, which is neither the plugin process" in str(raised.value)
        with socket.socket(socket.AF_UNIX) as caller:  # its one connection is still to be had
            caller.connect(path)
            caller.sendall(b"x")
            assert server.stdout.readline() == "served b'x'\n"
        assert server.wait(10) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        if server.stdout is not None:
            server.stdout.close()


@pytest.mark.go
@pytest.mark.skipif(gobuild.go_missing_reason() is not None, reason=gobuild.go_missing_reason() or "")
def test_a_go_plugin_sees_no_connection_but_the_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    # before: the proof's connection, closed unused, made grpc-go log one WARNING ("failed to receive the
    # preface from client: EOF") a start
    monkeypatch.syspath_prepend(str(REPO / "examples" / "kv"))
    from kv_plugin_def import HANDSHAKE as GO_HANDSHAKE, PLUGIN_NAME, KVPlugin
    monkeypatch.chdir(tmp_path)  # the KV plugin writes its kv_<key> files where it runs
    caplog.set_level(logging.DEBUG, logger="plugbay.plugin")
    config = ClientConfig(handshake=GO_HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                          cmd=[str(gobuild.build_go("kv_plugin"))], env={"GRPC_GO_LOG_SEVERITY_LEVEL": "warning"})
    with Client(config) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"
        for _ in range(1000):  # its log is read on another thread: until its last line ("get"), at most 10 s
            if any(r.getMessage() == "get key=k" for r in caplog.records):
                break
            time.sleep(0.01)
    said = [r.getMessage() for r in caplog.records if r.name.startswith("plugbay.plugin")]
    assert said[-1:] == ["get key=k"], said  # all it wrote before, a grpc-go warning of the proof's connection too
    assert not [line for line in said if "grpc" in line], said


def test_a_socket_file_renamed_or_linked_since_its_bind_is_still_named_by_its_file(tmp_path: Path) -> None:
    # on a file system whose inode numbers fit the kernel's 32 bits the file is matched exactly, whatever its
    # name now (plugbay's brokered servers hard-link their socket to the announced path and unlink the bound
    # one): a connection through it reaches that listener, so no probe connection is needed
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "bound.sock"))
        server.listen(1)
        inode = os.fstat(server.fileno()).st_ino
        assert bound_listener(str(tmp_path / "bound.sock")) == inode
        os.link(tmp_path / "bound.sock", tmp_path / "linked.sock")
        os.unlink(tmp_path / "bound.sock")
        assert bound_listener(str(tmp_path / "linked.sock")) == inode
        os.rename(tmp_path / "linked.sock", tmp_path / "moved.sock")
        assert bound_listener(str(tmp_path / "moved.sock")) == inode
    assert bound_listener(str(tmp_path / "moved.sock")) is None  # closed: nothing listens there


MOUNTED = """
import os, socket, subprocess, sys
sys.path.insert(0, sys.argv[1])
from plugbay.runners.unixdiag import bound_listener
for folder, mount in (("here", None), ("tmpfs", "size=1m"), ("tmpfs64", "size=1m,inode64")):
    os.mkdir(folder)
    if mount is not None and subprocess.run(["mount", "-t", "tmpfs", "-o", mount, "tmpfs", folder]).returncode:
        print(folder, "unmounted")
        continue
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(os.path.abspath(f"{folder}/s.sock"))
        server.listen(1)
        said = bound_listener(f"{folder}/s.sock")
        print(folder, "named" if said == os.fstat(server.fileno()).st_ino else said)
"""


def test_a_match_counts_only_on_ext_whose_inode_numbers_fit_the_kernels_32_bits(tmp_path: Path) -> None:
    # tmpfs (its counter starts again at 1 past 2**32 without inode64, and passes 2**32 with it), xfs, btrfs and
    # overlayfs alike: a socket of the plugin's bound to a file whose number matches a foreign file's in the
    # kernel's 32 bits would pass for it, so such a file is proven by connecting, as before sock_diag
    done = subprocess.run(["unshare", "-m", "--propagation", "private", PY, "-c", MOUNTED, str(REPO / "src")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"cannot make a private mount namespace here: {done.stderr.strip()[-200:]}")
    said = done.stdout.split("\n")
    if "tmpfs unmounted" in said:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[-200:]}")
    assert said[:2] == ["here named", "tmpfs None"], (done.stdout, done.stderr)
    assert said[2] in ("tmpfs64 None", "tmpfs64 unmounted"), (done.stdout, done.stderr)  # no inode64 before 5.9


# the host in a private mount namespace, its TMPDIR on a tmpfs: the kernel's answer does not count there (only
# ext2/3/4's does), so the multiplexed connection (made through the pinned socket) is proven on itself
FALLBACK = """
import os, socket, subprocess, sys
wide = sys.argv[4]  # short: a socket path under the Client's folder there must fit sun_path
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", wide], check=True)
os.environ["TMPDIR"] = wide
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from plugbay import Client, ClientConfig, ProcessRunner
from plugbay.errors import UnprovenAddressError
from plugbay.runners.unixdiag import bound_listener
from tests.resilience_util import HANDSHAKE, KV_EXAMPLE, PLUGIN_NAME, PLUGINS, PY
with socket.socket(socket.AF_UNIX) as probe:
    probe.bind(f"{wide}/probe.sock")
    probe.listen(1)
    print("kernel", "cannot tell" if bound_listener(f"{wide}/probe.sock") is None else "tells", flush=True)
with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=20, multiplex_broker=True,
                         runner=ProcessRunner([PY, KV_EXAMPLE]))) as client:
    kv = client.dispense(PLUGIN_NAME)
    kv.put("k", b"fallback")
    print("kv", kv.get("k").decode(), flush=True)
with socket.socket(socket.AF_UNIX) as foreign:
    foreign.bind(f"{wide}/foreign.sock")
    foreign.listen(8)
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=8, multiplex_broker=True,
                                 runner=ProcessRunner([PY, sys.argv[3], "line",
                                                       f"1|1|unix|{foreign.getsockname()}|grpc||true"])))
    try:
        client.start()
        print("foreign served", flush=True)
    except UnprovenAddressError as exc:
        print("foreign refused", f"process {os.getpid()}," in str(exc), flush=True)
    finally:
        client.kill()
    foreign.settimeout(0)
    reached, _ = foreign.accept()  # the proof's one connection, made through the handle
    print("foreign got", reached.recv(100), flush=True)
    reached.close()
"""


def test_where_the_kernel_cannot_tell_the_multiplexed_connection_is_proven_on_itself(tmp_path: Path) -> None:
    # the fallback of the multiplexed proof: a plugbay KV plugin still starts and serves; a foreign listener is
    # refused, having seen the one connection (closed without a byte) that told who listens. Passes on the code
    # before the proof moved ahead of the dial too (that proved every multiplexed connection this way)
    wide = tempfile.mkdtemp(prefix="pbw-", dir="/tmp")  # mounted on in the namespace only, which ends with it
    try:
        done = subprocess.run(["unshare", "-m", "--propagation", "private", PY, "-c", FALLBACK, str(REPO / "src"),
                               str(REPO), MISBEHAVE, wide], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    finally:
        os.rmdir(wide)
    if done.returncode != 0 and ("unshare:" in done.stderr or "mount:" in done.stderr):
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {done.stderr.strip()[-200:]}")
    assert done.stdout.split("\n")[:4] == ["kernel cannot tell", "kv fallback", "foreign refused True",
                                           "foreign got b''"], (done.stdout, done.stderr[-3000:])
