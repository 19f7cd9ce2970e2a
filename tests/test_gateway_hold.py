"""What the gateway (plain gRPC, in front of a real go-plugin 1.0.1 Go plugin) holds, and for how long: a
connection that never finishes TLS, and its child and folders when a signal other than SIGTERM ends it."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from plugbay.network.gateway import Gateway, GatewayConfig
from tests import gobuild, netcerts, procs

_reason = gobuild.go_missing_reason()
pytestmark = [pytest.mark.go, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

REPO = Path(__file__).resolve().parent.parent
# the gateway closes an unfinished handshake after 10 s (serve()'s bound); grpcio's own default is 120 s
BOUND = 40.0


@pytest.fixture(scope="module")
def kv_bin() -> str:
    return str(gobuild.build_go("kv_plugin"))


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


def _half_client_hello() -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    out = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out, server_side=False)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = out.read()
    return hello[:len(hello) // 2]


def test_connections_that_never_finish_tls_are_closed(kv_bin: str, certs: netcerts.CertSet, in_tmp: Path) -> None:
    # they were held for grpcio's 120 s, with no cap and no certificate needed: two peers opening 10000
    # silent connections each took every descriptor, and a host with a valid certificate was refused
    with Gateway(GatewayConfig(cmd=[kv_bin], cookie=("BASIC_PLUGIN", "hello"), listen="127.0.0.1:0",
                               cert_file=str(certs.cert_file), key_file=str(certs.key_file),
                               client_ca_file=str(certs.client_ca_file))) as gw:
        host, _, port = gw.address.rpartition(":")
        silent = socket.create_connection((host, int(port)), timeout=10)
        halfway = socket.create_connection((host, int(port)), timeout=10)
        sel = selectors.DefaultSelector()
        try:
            halfway.sendall(_half_client_hello())
            open_ = {silent, halfway}
            for s in open_:
                sel.register(s, selectors.EVENT_READ)
            deadline = time.monotonic() + BOUND
            while open_ and (left := deadline - time.monotonic()) > 0:
                for key, _ in sel.select(left):
                    conn = key.fileobj
                    assert isinstance(conn, socket.socket)
                    try:
                        data = conn.recv(4096)
                    except ConnectionError:
                        data = b""
                    if not data:
                        sel.unregister(conn)
                        open_.discard(conn)
            assert not open_, f"{len(open_)} of the connections were still open after {BOUND:.0f}s"
        finally:
            sel.close()
            silent.close()
            halfway.close()


def _tmp_entries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT])
def test_cli_stops_with_its_child_and_folders_on_sighup_and_sigquit(kv_bin: str, certs: netcerts.CertSet,
                                                                   tmp_path: Path, sig: int) -> None:
    # only SIGTERM and SIGINT were handled: a closed terminal (SIGHUP) or SIGQUIT ended the gateway at once and
    # left its go-plugin child running (adopted by init) and its folder in TMPDIR
    tmp = Path(tempfile.mkdtemp(prefix="gwh-"))  # short: the child's socket path must fit in 107 bytes
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "plugbay.network.gateway", "--listen", "127.0.0.1:0", "--cert", str(certs.cert_file),
         "--key", str(certs.key_file), "--client-ca", str(certs.client_ca_file), "--cookie", "BASIC_PLUGIN=hello",
         "--", kv_bin], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    children: list[int] = []
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(30), "the gateway printed nothing"
        assert proc.stdout.readline().startswith(b"listening tcp "), proc.communicate(timeout=20)[1].decode()[-2000:]
        children = procs.children(proc.pid, zombies=False)
        assert children, "the plugin should run as the gateway's child"
        assert _tmp_entries(tmp), "the child's socket folder should be in the gateway's TMPDIR"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()[-2000:]
        deadline = time.monotonic() + 10
        while (left := [p for p in children if _running(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == [], f"the gateway's child outlived it: {left}"
        assert _tmp_entries(tmp) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        for pid in children:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
