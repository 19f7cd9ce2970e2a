"""Temp folders a killed process leaves: marked by their maker, removed by a sweep only when proven left.

A host killed with SIGKILL runs no cleanup: its private folder, its broker's
folder and the spare brokered server's folder (with sockets in them) stay in
the temp dir. These tests kill real hosts and check that the sweep removes
exactly what is provably plugbay's and provably abandoned, and nothing else:
not a live process's folder, not a folder whose plugin still listens (left
for a reattach), not a look-alike without plugbay's marker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay.core.transport.tempdirs import MARKER, make_tempdir, sweep_tempdirs
from tests.cli_util import cli_env, plugbay

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "counter"

_HOST = f"""
import json, sys, time
sys.path.insert(0, {str(EXAMPLE)!r})
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin
from plugbay import Client, ClientConfig

class Adder:
    def sum(self, a, b):
        return a + b

client = Client(ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: CounterPlugin()}},
                             cmd=[sys.executable, {str(EXAMPLE / "plugin.py")!r}]))
client.start()
counter = client.dispense(PLUGIN_NAME)
for n in range(3):  # callbacks: the broker serves them, and has a spare server built for the next
    counter.put("k", n, Adder())
time.sleep(0.5)
print(json.dumps({{"plugin_pid": client.reattach_config().runner["pid"]}}), flush=True)
time.sleep(120)
"""


def _made_by_a_gone_process(root: Path, prefix: str = "plugbay-t-") -> Path:
    """A marked folder whose maker has exited (a real process, run to its end)."""
    out = subprocess.run([sys.executable, "-c", "import sys; from plugbay.core.transport.tempdirs import "
                          "make_tempdir; print(make_tempdir(sys.argv[1], dir=sys.argv[2]))", prefix, str(root)],
                         capture_output=True, text=True, timeout=60, env=cli_env(), check=True)
    return Path(out.stdout.strip())


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temp dir for the host whose socket paths stay within 107 characters."""
    with tempfile.TemporaryDirectory(prefix="tmpd-") as folder:
        yield Path(folder)


def test_a_host_killed_with_sigkill_leaves_folders_the_sweep_removes(short_dir: Path, tmp_path: Path) -> None:
    temp = short_dir
    host = subprocess.Popen([sys.executable, "-c", _HOST], stdout=subprocess.PIPE, text=True,
                            env=cli_env(TMPDIR=str(temp)), stdin=subprocess.DEVNULL,
                            cwd=tmp_path)  # where the counter plugin keeps its values
    plugin_pid = 0
    try:
        assert host.stdout is not None
        line = host.stdout.readline()
        assert line, "the host printed nothing"
        plugin_pid = json.loads(line)["plugin_pid"]
        host.kill()
        host.wait(30)
        left = sorted(p.name.rsplit("-", 1)[0] for p in temp.iterdir())
        assert "plugbay-spares" in left and "plugbay-broker" in left and "plugbay" in left
        assert all((p / MARKER).is_file() for p in temp.iterdir())

        # the plugin still runs and listens in the host's folder: a new host may reattach, so it stays
        listed = sweep_tempdirs([str(temp)], dry_run=True)
        assert listed and all(Path(p).exists() for p in listed)
        removed = sweep_tempdirs([str(temp)])
        assert removed == listed
        kept = [p.name for p in temp.iterdir()]
        assert [name.rsplit("-", 1)[0] for name in kept] == ["plugbay"]
        assert any(entry.is_socket() for entry in (temp / kept[0]).iterdir())

        _kill(plugin_pid)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{plugin_pid}") and time.monotonic() < deadline:
            time.sleep(0.05)  # reaped by init once its parent, the killed host, is gone
        assert sweep_tempdirs([str(temp)]) == [str(temp / kept[0])]
        assert list(temp.iterdir()) == []
    finally:
        host.kill()
        host.wait(30)
        if plugin_pid:
            _kill(plugin_pid)


def test_only_proven_folders_are_removed(tmp_path: Path) -> None:
    gone = _made_by_a_gone_process(tmp_path)
    mine = Path(make_tempdir("plugbay-t-", dir=str(tmp_path)))  # this process lives: never its folders
    unmarked = tmp_path / "plugbay-unmarked"
    unmarked.mkdir()
    not_ours = _made_by_a_gone_process(tmp_path, "other-")  # a marked folder without plugbay's name
    symlinked = tmp_path / "plugbay-link"
    symlinked.symlink_to(_made_by_a_gone_process(tmp_path / "plugbay-unmarked"))
    forged = _made_by_a_gone_process(tmp_path)
    (forged / MARKER).write_text("plugbay-owner 1 - - 1 -\n")  # a maker that cannot be told gone
    other_ns = _made_by_a_gone_process(tmp_path)
    fields = (other_ns / MARKER).read_text().split()
    fields[3] = "1"  # another pid namespace's pid says nothing here
    (other_ns / MARKER).write_text(" ".join(fields) + "\n")
    marker_link = _made_by_a_gone_process(tmp_path)
    os.unlink(marker_link / MARKER)
    os.symlink(gone / MARKER, marker_link / MARKER)
    earlier_boot = _made_by_a_gone_process(tmp_path)
    fields = (earlier_boot / MARKER).read_text().split()
    fields[2] = "00000000-0000-0000-0000-000000000000"  # every process of another boot has ended
    (earlier_boot / MARKER).write_text(" ".join(fields) + "\n")

    others: list[Path] = []
    if os.geteuid() == 0:  # another user's folder, or marker, is not this user's to judge (root can make them)
        others = [_made_by_a_gone_process(tmp_path), _made_by_a_gone_process(tmp_path)]
        os.chown(others[0], 65534, 65534)
        os.chown(others[1] / MARKER, 65534, 65534)

    other_host = _made_by_a_gone_process(tmp_path)
    fields = (other_host / MARKER).read_text().split()
    fields[6] = "another-machine"  # a temp dir shared with another machine: its processes are not seen here
    (other_host / MARKER).write_text(" ".join(fields) + "\n")

    assert sorted(sweep_tempdirs([str(tmp_path)])) == sorted([str(gone), str(earlier_boot)])
    for path in (mine, unmarked, not_ours, symlinked, forged, other_ns, marker_link, other_host, *others):
        assert path.exists(), path
    assert (unmarked / symlinked.resolve().name).exists()  # not followed through the link
    os.unlink(mine / MARKER)
    os.rmdir(mine)


@pytest.mark.parametrize("host", ["build host", "h\u00f4te", "tab\there"])
def test_a_machine_name_with_spaces_or_non_ascii_is_marked_and_matched(tmp_path: Path, host: str) -> None:
    # the marker's last field is the machine's name: one written from a name with a space or a
    # non-ASCII letter must be written at all, and read back as this machine's
    patched = f"import socket; socket.gethostname = lambda: {host!r}; "
    made = subprocess.run([sys.executable, "-c", patched + "import sys; from plugbay.core.transport.tempdirs import "
                           "make_tempdir; print(make_tempdir('plugbay-t-', dir=sys.argv[1]))", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, env=cli_env())
    assert made.returncode == 0, made.stderr
    folder = made.stdout.strip()
    assert (Path(folder) / MARKER).read_text().isascii()
    swept = subprocess.run([sys.executable, "-c", patched + "import sys; from plugbay.core.transport.tempdirs import "
                            "sweep_tempdirs; print(sweep_tempdirs([sys.argv[1]]))", str(tmp_path)],
                           capture_output=True, text=True, timeout=60, env=cli_env())
    assert swept.returncode == 0 and swept.stdout.strip() == repr([folder]), swept.stderr
    # a name that is not this one escaped (spaces dropped, non-ASCII raw) is not taken for this machine
    other = _made_by_a_gone_process(tmp_path)
    fields = (other / MARKER).read_text().split()
    fields[6] = host.replace(" ", "")
    (other / MARKER).write_text(" ".join(fields) + "\n")
    again = subprocess.run([sys.executable, "-c", patched + "import sys; from plugbay.core.transport.tempdirs import "
                            "sweep_tempdirs; print(sweep_tempdirs([sys.argv[1]]))", str(tmp_path)],
                           capture_output=True, text=True, timeout=60, env=cli_env())
    assert again.returncode == 0 and again.stdout.strip() == "[]", again.stderr


def test_a_listening_socket_keeps_its_folder_until_it_closes(short_dir: Path) -> None:
    tmp_path = short_dir
    folder = _made_by_a_gone_process(tmp_path)
    (folder / "nested").mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(folder / "nested" / "plugin.sock"))
        listener.listen(1)
        assert sweep_tempdirs([str(tmp_path)]) == []
    finally:
        listener.close()
    assert sweep_tempdirs([str(tmp_path)], dry_run=True) == [str(folder)]
    assert folder.exists()
    assert sweep_tempdirs([str(tmp_path)]) == [str(folder)]
    assert not folder.exists()


def test_the_command_line_sweeps_temp_folders(tmp_path: Path) -> None:
    gone = _made_by_a_gone_process(tmp_path)
    listed = plugbay("sweep", "--temp", "--temp-dir", str(tmp_path), "--dry-run", "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["temp"] == [str(gone)] and data["count"] == 1 and "docker" not in data
    assert gone.exists()
    swept = plugbay("sweep", "--temp", "--temp-dir", str(tmp_path))
    assert swept.returncode == 0 and f"temp {gone}" in swept.stdout and "removed 1" in swept.stdout
    assert not gone.exists()


@pytest.mark.parametrize("prefix", ["plugbay-", "plugbay-spares-"])
def test_folders_are_made_private_and_marked(tmp_path: Path, prefix: str) -> None:
    path = Path(make_tempdir(prefix, dir=str(tmp_path)))
    assert path.name.startswith(prefix) and path.stat().st_mode & 0o777 == 0o700
    fields = (path / MARKER).read_text().split()
    assert fields[:2] == ["plugbay-owner", "1"] and int(fields[4]) == os.getpid()
    assert (path / MARKER).stat().st_mode & 0o777 == 0o600


def test_a_sweeper_whose_proc_is_of_another_pid_namespace_removes_nothing(short_dir: Path) -> None:
    # the maker lives in a pid namespace of its own; a sweeper that entered it but kept the host's
    # /proc (nsenter -p without -m) would read the maker's pid as some host process's
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs util-linux's unshare and nsenter")
    make = (f"import time; from plugbay.core.transport.tempdirs import make_tempdir;"
            f" print(make_tempdir('plugbay-t-', dir={str(short_dir)!r}), flush=True); time.sleep(60)")
    outer = subprocess.Popen(["unshare", "-pf", "--kill-child", "--mount-proc", sys.executable, "-c", make],
                             stdout=subprocess.PIPE, text=True, env=cli_env())
    maker: list[str] = []
    try:
        assert outer.stdout is not None
        folder = outer.stdout.readline().strip()
        if not folder:
            pytest.skip("unshare cannot make a pid namespace here (no privilege)")
        maker = subprocess.run(["pgrep", "-P", str(outer.pid)], capture_output=True, text=True).stdout.split()
        assert maker, "the maker process was not found"
        sweep = ("from plugbay.core.transport.tempdirs import sweep_tempdirs;"
                 f" print(sweep_tempdirs([{str(short_dir)!r}]))")
        for command in ([sys.executable, "-c", sweep],  # from the host
                        ["nsenter", "-t", maker[0], "-p", sys.executable, "-c", sweep]):  # host /proc, maker's ns
            swept = subprocess.run(command, capture_output=True, text=True, timeout=60, env=cli_env())
            assert swept.returncode == 0, swept.stderr
            assert swept.stdout.strip() == "[]", (command, swept.stdout)
            assert os.path.isdir(folder)
    finally:
        for pid in maker:  # pid 1 of its namespace: --kill-child ends it with unshare, and so does this
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        outer.kill()
        outer.wait(30)
