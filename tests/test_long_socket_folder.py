"""A plugbay plugin under the longest socket folder a Client accepts: its own private sockets still fit.

A Client refuses a unix_socket_temp_dir whose private folder would leave the plugin's socket name
fewer than 20 bytes. A plugbay plugin's private sockets (the inner gRPC socket behind its TLS relay
or multiplexer, brokered servers, multiplexed dials) went one folder deeper, about 44 bytes past
that folder: under a long accepted folder a multiplexed plugin did not start, or its first brokered
call failed with "AF_UNIX path too long". They now go in the host's folder itself, which is private.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "counter"
sys.path.insert(0, str(EXAMPLE))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402

from plugbay import Client, ClientConfig  # noqa: E402
from plugbay.errors import ConfigError  # noqa: E402
from tests.thread_util import until  # noqa: E402

# 107 bytes a socket path may have, less 20 for the plugin's socket name and 17 for "/plugbay-XXXXXXXX"
LONGEST = 70


@pytest.fixture
def short_top() -> Iterator[str]:
    top = tempfile.mkdtemp(prefix="ln-")  # the session's temp dir is short; tmp_path may not be
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def folder_of(top: str, length: int) -> str:
    folder = os.path.join(top, "d" * (length - len(top) - 1))
    assert len(os.fsencode(folder)) == length
    os.mkdir(folder)
    return folder


class Doubler:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def sum(self, a: int, b: int) -> int:
        self.calls.append((a, b))
        return 2 * (a + b)


def config(folder: str, multiplex: bool, auto_mtls: bool, **kw: object) -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                        cmd=[sys.executable, str(EXAMPLE / "plugin.py")], auto_mtls=auto_mtls,
                        multiplex_broker=multiplex, unix_socket_temp_dir=folder, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("multiplex", [False, True], ids=["per-connection", "multiplexed"])
@pytest.mark.parametrize("auto_mtls", [False, True], ids=["plain", "automtls"])
def test_brokered_calls_work_under_the_longest_accepted_folder(in_tmp: Path, short_top: str, multiplex: bool,
                                                               auto_mtls: bool) -> None:
    folder = folder_of(short_top, LONGEST)
    helper = Doubler()
    with Client(config(folder, multiplex, auto_mtls)) as client:
        counter = client.dispense(PLUGIN_NAME)
        for n in range(1, 6):
            counter.put("k", n, helper)
        assert helper.calls == [(0, 1), (2, 2), (8, 3), (22, 4), (52, 5)]
        assert counter.get("k") == 114
        (private,) = os.listdir(folder)
        # the plugin's sockets are in the host's folder, and a brokered call's go with it (a
        # multiplexed dial's when its accept loop sees the channel closed): the marker, the plugin's
        # socket and its multiplexer's inner gRPC socket stay (a Python host's TLS needs no relay)
        stays = {".plugbay-owner": 1, "plugin": 1, "grpc": 1 if multiplex else 0}

        def kinds() -> dict[str, int]:
            names = os.listdir(os.path.join(folder, private))
            return {kind: sum(1 for n in names if n.startswith(kind)) for kind in stays} if all(
                n.startswith(tuple(stays)) for n in names) else {n: -1 for n in names}

        assert until(lambda: kinds() == stays, 10), kinds()
    assert os.listdir(folder) == []  # the plugin's sockets went with the host's folder


def test_one_byte_longer_is_refused_before_the_plugin_starts(in_tmp: Path, short_top: str) -> None:
    folder = folder_of(short_top, LONGEST + 1)
    client = Client(config(folder, True, True))
    with pytest.raises(ConfigError, match=f"to a folder whose path has at most {LONGEST} bytes"):
        client.start()
    assert client.runner.pid is None
    assert os.listdir(folder) == []


@pytest.mark.parametrize("spoil", [None, "group may enter", "no marker", "not plugbay's name", "a symlink to it"])
def test_only_a_proven_private_plugbay_folder_takes_sockets_as_it_is(short_top: str, spoil: str | None) -> None:
    from plugbay.core.transport.tempdirs import MARKER, make_tempdir, private_room

    root = make_tempdir("plugbay-", dir=short_top)
    if spoil == "group may enter":
        os.chmod(root, 0o750)
    elif spoil == "no marker":
        os.unlink(os.path.join(root, MARKER))
    elif spoil == "not plugbay's name":
        os.rename(root, os.path.join(short_top, "other"))
        root = os.path.join(short_top, "other")
    elif spoil == "a symlink to it":
        os.symlink(root, os.path.join(short_top, "plugbay-link"))
        root = os.path.join(short_top, "plugbay-link")
    path, made = private_room("plugbay-grpc-", root)
    if spoil is None:
        assert (path, made) == (root, False)
    else:
        assert made and os.path.dirname(path) == root and os.path.basename(path).startswith("plugbay-grpc-")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


# shared with a group (0770), the host's folder also holds the plugin's own 0700 folder: 24 bytes less
LONGEST_SHARED = LONGEST - len("/plugbay-broker-12345678")


def test_a_folder_shared_with_a_group_leaves_room_for_the_plugins_own_folder(in_tmp: Path, short_top: str) -> None:
    folder = folder_of(short_top, LONGEST_SHARED)
    helper = Doubler()
    with Client(config(folder, True, True, unix_socket_group=os.getgid())) as client:
        client.dispense(PLUGIN_NAME).put("k", 1, helper)
        assert helper.calls == [(0, 1)]
    longer = folder_of(short_top, LONGEST_SHARED + 1)
    client = Client(config(longer, True, True, unix_socket_group=os.getgid()))
    with pytest.raises(ConfigError, match=f"at most {LONGEST_SHARED} bytes .shared with unix_socket_group"):
        client.start()
    assert client.runner.pid is None and os.listdir(longer) == []


_FORKED_NAMES = r"""
import json, os, sys
from plugbay.core.transport import tempdirs
top = sys.argv[1]
parent = tempdirs.private_socket(top, "mux")
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # the child: the same serial as the parent's next name
    try:
        os.write(write, tempdirs.private_socket(top, "mux").encode())
    finally:
        os._exit(0)
os.close(write)
with os.fdopen(read, "rb") as pipe:
    child = pipe.read().decode()
os.waitpid(pid, 0)
print(json.dumps({"parent": parent, "child": child, "ours": tempdirs.private_socket(top, "mux"), "pid": os.getpid()}))
"""


def test_private_socket_names_are_short_and_differ_between_processes(short_top: str) -> None:
    # a fork continues the parent's serial numbers; a bind on a live socket's path takes it over silently.
    # The fork is a fresh interpreter's (no gRPC in it): a fork of this test process, where gRPC runs,
    # can crash in grpcio's fork handlers (tests/rlimited.py)
    import itertools
    import json
    import subprocess

    from plugbay.core.transport import tempdirs

    done = subprocess.run([sys.executable, "-c", _FORKED_NAMES, short_top], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=str(Path(tempdirs.__file__).parents[3])))
    assert done.returncode == 0, done.stderr
    names = json.loads(done.stdout)
    parent, child, ours = names["parent"], names["child"], names["ours"]
    assert len({parent, child, ours}) == 3 and child
    assert os.path.basename(parent).startswith(f"mux{names['pid']:x}-")
    # the longest stem, late in a long life, still fits the 19 bytes a folder leaves (pids have 6 hex digits)
    saved = tempdirs._serial
    tempdirs._serial = itertools.count(2 ** 28 - 1)
    try:
        name = os.path.basename(tempdirs.private_socket(short_top, "spare"))
    finally:
        tempdirs._serial = saved
    assert len(name) - len(f"{os.getpid():x}") + 6 <= 19, name


SPARES = r"""
import os, sys, time
from plugbay.core.broker.channels import stop_served
from plugbay.core.broker.spares import ServerSource
folder = os.environ["TMPDIR"]
source = ServerSource(None, lambda: folder, lambda: os.path.join(folder, "plugin" + os.urandom(5).hex()))
ready = []
for _ in range(3):
    served, path = source.get()
    source.refill()
    deadline = time.monotonic() + 10
    while source._spare._spare is None and time.monotonic() < deadline:
        time.sleep(0.02)
    ready.append(source._spare._spare is not None)
    stop_served(served)
source.close()
print(ready, sorted(os.listdir(folder)))
"""


def test_spare_brokered_servers_are_built_under_the_longest_accepted_folder(short_top: str) -> None:
    # a plugin's spares nested "plugbay-spares-XXXXXXXX" in $TMPDIR, the host's folder: 24 bytes too deep,
    # so every spare failed to build (said only at debug level) and each callback started a server anew
    import subprocess

    from plugbay.core.transport.tempdirs import make_tempdir

    host_folder = make_tempdir("plugbay-", dir=folder_of(short_top, LONGEST))
    done = subprocess.run([sys.executable, "-c", SPARES], env={**os.environ, "TMPDIR": host_folder},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[True, True, True] ['.plugbay-owner']", done.stdout
