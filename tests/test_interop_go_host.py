"""Go host -> Python plugin: go-plugin 1.0.1's own client (tests/go/kv_host) drives examples/kv/plugin.py."""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import gobuild
from tests.gobuild import build_go, run_program

_reason = gobuild.go_missing_reason()
pytestmark = [pytest.mark.go, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

REPO = Path(__file__).resolve().parent.parent
KV_PLUGIN = REPO / "examples" / "kv" / "plugin.py"
PROBE = REPO / "tests" / "plugins" / "probe.py"


@pytest.fixture
def sockets() -> Iterator[Path]:
    # Short, so the socket path stays within the OS's 107 bytes (pytest's tmp_path may not).
    with tempfile.TemporaryDirectory(prefix="gh") as path:
        yield Path(path)


class GoHost:
    """Runs kv_host with a Python plugin; the plugin's exit code lands in a file."""

    def __init__(self, tmp_path: Path, sockets: Path, plugin: Path = KV_PLUGIN,
                 env: dict[str, str] | None = None) -> None:
        self.work = tmp_path / "work"
        self.sockets = sockets  # the plugin's TMPDIR: its unix socket goes here
        self.work.mkdir(exist_ok=True)
        self.rc_file = tmp_path / "plugin.rc"
        self.plugin = plugin
        self.extra = env or {}

    def run(self, *args: str) -> tuple[int, str, str]:
        self.rc_file.unlink(missing_ok=True)
        cmd = f"{shlex.quote(sys.executable)} {shlex.quote(str(self.plugin))}; echo $? > {shlex.quote(str(self.rc_file))}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
        env.update({"KV_PLUGIN": cmd, "TMPDIR": str(self.sockets), **self.extra})
        done = run_program(build_go("kv_host"), ["--timeout", "60s", *args], env=env, cwd=self.work, timeout=90)
        return done.returncode, done.stdout, done.stderr

    def plugin_exit_code(self) -> int:
        return int(self.rc_file.read_text().strip())


@pytest.mark.parametrize("automtls", [False, True], ids=["plain", "automtls"])
def test_put_get_round_trip_and_graceful_shutdown(tmp_path: Path, sockets: Path, automtls: bool) -> None:
    host = GoHost(tmp_path, sockets)
    flags = ["--automtls"] if automtls else []
    code, out, err = host.run(*flags, "put", "greeting", "hello from go")
    assert code == 0, out + err
    assert f"network=unix address={host.sockets}/plugin" in err
    assert f"automtls={'true' if automtls else 'false'}" in err
    assert "kv_host: kill graceful=true" in err  # Shutdown, then the process went away by itself
    assert host.plugin_exit_code() == 0
    assert list(host.sockets.iterdir()) == []  # the plugin removed its socket
    assert (host.work / "kv_greeting").read_bytes() == b"hello from go"

    code, out, err = host.run(*flags, "get", "greeting")
    assert code == 0, out + err
    assert out == "hello from go\n"
    assert "kv_host: kill graceful=true" in err
    assert host.plugin_exit_code() == 0
    assert list(host.sockets.iterdir()) == []


def test_written_by_one_mode_read_by_the_other(tmp_path: Path, sockets: Path) -> None:
    host = GoHost(tmp_path, sockets)
    assert host.run("--automtls", "put", "k", "v1")[0] == 0
    code, out, _ = host.run("get", "k")
    assert (code, out) == (0, "v1\n")


def test_tcp_listener_with_go_hosts_port_range(tmp_path: Path, sockets: Path) -> None:
    # go-plugin 1.0.1 hosts send PLUGIN_MIN_PORT/MAX_PORT (10000..25000); PLUGBAY_LISTEN=tcp uses them.
    host = GoHost(tmp_path, sockets, env={"PLUGBAY_LISTEN": "tcp"})
    code, out, err = host.run("--automtls", "put", "t", "over tcp")
    assert code == 0, out + err
    line = next(x for x in err.splitlines() if "kv_host: handshake" in x)
    port = int(line.split("address=127.0.0.1:")[1].split()[0])
    assert 10000 <= port <= 25000
    assert host.plugin_exit_code() == 0
    assert (host.work / "kv_t").read_bytes() == b"over tcp"


def test_plugin_logs_reach_go_hclog_as_structured_entries(tmp_path: Path, sockets: Path) -> None:
    host = GoHost(tmp_path, sockets)
    code, out, err = host.run("-v", "put", "logged", "x")
    assert code == 0, out + err
    # go-plugin parsed our hclog JSON line: level INFO, message "put", key/values as fields
    entry = next(x for x in err.splitlines() if "[INFO]" in x and ": put:" in x)
    assert "key=logged" in entry and "@module=kv" in entry and "bytes=1" in entry


def test_the_programs_own_stderr_logging_and_thread_crashes_reach_the_go_hosts_log(tmp_path: Path,
                                                                                  sockets: Path) -> None:
    # as a Go plugin's log package and panics do: only what is written to stderr itself after the
    # handshake goes to GRPCStdio (which go-plugin 1.0.1's host never reads)
    host = GoHost(tmp_path, sockets, plugin=PROBE, env={"PROBE_BASICCONFIG": "1"})
    code, out, err = host.run("-v", "put", "log", "the-programs-own-record")
    assert code == 0, out + err
    assert "probe-handler INFO the-programs-own-record" in err, err
    # a thread's end by an exception: an error record (plugbay's hclog, when logging is not the program's)
    host = GoHost(tmp_path, sockets, plugin=PROBE)
    code, out, err = host.run("-v", "put", "crash", "a-thread-went-down")
    assert code == 0, out + err
    entry = next((x for x in err.splitlines() if "unhandled exception in thread probe-crash" in x), None)
    assert entry is not None and "[ERROR]" in entry, err
    assert "RuntimeError: a-thread-went-down" in err  # the traceback travels in the record


def test_no_common_version_is_reported_by_the_go_host(tmp_path: Path, sockets: Path) -> None:
    host = GoHost(tmp_path, sockets, plugin=PROBE, env={"PROBE_VERSIONS": "2,3"})
    code, out, err = host.run("get", "k")
    assert code == 1
    # the plugin answered its lowest version; go-plugin's client names the mismatch
    assert "Incompatible API version with plugin. Plugin version: 2, Client versions: [1]" in out


def _read_only_mounts() -> str | None:
    """None when this process may make a mount namespace with a read-only bind mount, else why not."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="ro") as folder:
        try:
            done = subprocess.run(["unshare", "--mount", "sh", "-c",
                                   f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder}"],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"no unshare here: {exc}"
        return None if done.returncode == 0 else f"no read-only bind mounts here: {done.stderr.strip()[:120]}"


def _run_with_read_only_temp_dirs(work: Path, extra_env: dict[str, str], *args: str) -> tuple[int, str]:
    """kv_host (and so its plugin, tests/plugins/probe.py) where /tmp and /var/tmp are read-only."""
    reason = _read_only_mounts()
    if reason is not None:
        pytest.skip(reason)
    cmd = f"{shlex.quote(sys.executable)} {shlex.quote(str(PROBE))}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_", "PROBE_"))}
    env.update({"KV_PLUGIN": cmd, "TMPDIR": "/tmp", **extra_env})
    # every temp dir Python would fall back to is read-only for the host and its plugin
    script = ("for d in /tmp /var/tmp; do mount --bind $d $d && mount -o remount,bind,ro $d || exit 97; done && "
              f"exec {shlex.quote(str(build_go('kv_host')))} --timeout 60s {' '.join(args)}")
    done = run_program("unshare", ["--mount", "sh", "-c", script], env=env, cwd=work, timeout=90)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("automtls", [False, True], ids=["plain", "automtls"])
def test_a_read_only_temp_dir_is_fine_with_a_socket_dir(tmp_path: Path, automtls: bool) -> None:
    """A container's case: no writable temp dir, PLUGIN_UNIX_SOCKET_DIR writable. With a Go host's AutoMTLS
    the plugin fronts its socket with a TLS relay, whose private folder went to the temp dir (a traceback)."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm for a writable socket folder outside /tmp")
    work = tmp_path / "work"  # the plugin's cwd: read-only too (tempfile falls back to it)
    work.mkdir()
    sockets = tempfile.mkdtemp(prefix="pbsock", dir="/dev/shm")
    try:
        flags = ["--automtls"] if automtls else []
        code, output = _run_with_read_only_temp_dirs(work, {"PLUGIN_UNIX_SOCKET_DIR": sockets}, *flags, "put", "k", "v")
        assert code == 0, output
        assert "Traceback" not in output
        assert not os.listdir(sockets)  # the plugin's sockets and folders were made there, and removed
    finally:
        import shutil

        shutil.rmtree(sockets, ignore_errors=True)


def test_no_writable_folder_at_all_is_one_line_saying_what_to_check(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    code, output = _run_with_read_only_temp_dirs(work, {}, "-v", "put", "k", "v")
    assert code != 0
    assert "plugin setup failed" in output and "PLUGIN_UNIX_SOCKET_DIR (or TMPDIR)" in output, output
    assert "Traceback" not in output
