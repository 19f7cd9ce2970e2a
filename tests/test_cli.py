"""The plugbay command as a subprocess against real plugins on the process runner (Python and Go)."""

from __future__ import annotations

import json
import os
import pty
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2
from plugbay.core.plugin.health import HealthServicer
from plugbay.core.plugin.fdlimit import SOFT_CAP
from plugbay.core.plugin.health import add_to_server as add_health
from plugbay.errors import CallFailedError
from tests.cli_util import KV_PLUGIN, KV_PROTO, REPO, cli_env, plugbay, running, serving
from tests.rlimited import rlimited

PY = sys.executable
KV_CMD = f"{PY} {KV_PLUGIN}"
COOKIE = "BASIC_PLUGIN=hello"


@pytest.fixture(scope="module")
def kv_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    tmp = tmp_path_factory.mktemp("cli-kv")
    with running(["--cmd", KV_CMD, "--cookie", COOKIE], tmp) as run:
        yield run


def test_help_has_examples_and_exit_codes() -> None:
    top = plugbay("--help")
    assert top.returncode == 0
    assert "Exit codes" in top.stdout and "4  not healthy" in top.stdout
    for command in ("run", "info", "health", "call", "diagnose", "sweep", "bench", "demo"):
        out = plugbay(command, "--help")
        assert out.returncode == 0, out.stderr
        assert "Example" in out.stdout, command
    assert "Example" in plugbay("images", "build", "--help").stdout


def test_sweep_refuses_a_grace_it_cannot_use_before_it_sweeps(tmp_path: Path) -> None:
    # click's FloatRange(min=0) lets nan through: the command swept, and refused it only at the images' sweep
    for grace in ("nan", "-1"):
        refused = plugbay("sweep", "--temp", "--temp-dir", str(tmp_path), "--grace", grace)
        assert refused.returncode == 2 and "grace" in refused.stderr, (grace, refused.stdout, refused.stderr)
        assert "removed" not in refused.stdout


def test_run_prints_handshake_facts_and_sigint_leaves_nothing(tmp_path: Path) -> None:
    with running(["--cmd", KV_CMD, "--cookie", COOKIE, "--automtls"], tmp_path) as run:
        config = run.config()
        pid = int(config["runner"]["pid"])
        socket_dir = Path(config["handshake"]["address"]).parent
        assert socket_dir.is_dir()
        assert os.stat(run.reattach).st_mode & 0o777 == 0o600  # holds the AutoMTLS key
        assert config["client_cert"] is not None
        code = run.interrupt()
    assert code == 0, run.stderr
    for line in ("runner: process", "core protocol: 1", "app protocol: 1", "network: unix", "tls: True",
                 "multiplex: False", "ready: press Ctrl-C to stop"):
        assert line in run.stdout
    assert "plugin stopped; nothing left behind" in run.stdout
    # plugin log lines came through logging with their hclog levels
    assert "DEBUG plugin.plugin: configuring server automatic mTLS" in run.stderr
    assert not Path(f"/proc/{pid}").exists()
    assert not socket_dir.exists()
    assert not run.reattach.exists()


def test_health_call_info_with_proto(kv_run: object) -> None:
    target = kv_run.target  # type: ignore[attr-defined]
    health = plugbay("health", target)
    assert health.returncode == 0
    assert health.stdout.startswith("SERVING ")
    as_json = json.loads(plugbay("health", target, "--json").stdout)
    assert as_json["status"] == "SERVING" and as_json["ms"] > 0
    put = plugbay("call", target, "/proto.KV/Put", '{"key": "cli", "value": "aGVsbG8="}', "--proto", str(KV_PROTO))
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout) == {}
    got = plugbay("call", target, "/proto.KV/Get", '{"key": "cli"}', "--proto", str(KV_PROTO))
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {"value": "aGVsbG8="}
    info = json.loads(plugbay("info", target, "--proto", str(KV_PROTO), "--json").stdout)
    assert info["health"]["status"] == "SERVING"
    assert info["facts"]["runner"] == "ProcessRunner" and info["facts"]["app_version"] == 1
    assert info["services_source"] == "proto"
    assert [m["path"] for m in info["services"][0]["methods"]] == ["/proto.KV/Get", "/proto.KV/Put"]
    plain = plugbay("info", target)
    assert plain.returncode == 0
    assert "services: unknown (the plugin offers no server reflection; pass --proto FILE)" in plain.stdout


def test_call_failures_have_one_line_and_exit_codes(kv_run: object) -> None:
    target = kv_run.target  # type: ignore[attr-defined]
    unknown = plugbay("call", target, "/proto.KV/Nope", "{}", "--proto", str(KV_PROTO))
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == \
        "error: unknown method 'Nope' of proto.KV (it has: Get, Put); check the method name"
    bad = plugbay("call", target, "/proto.KV/Get", '{"key": ', "--proto", str(KV_PROTO))
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: request is not valid JSON for proto.GetRequest")
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    wrong_field = plugbay("call", target, "/proto.KV/Get", '{"kee": "x"}', "--proto", str(KV_PROTO))
    assert wrong_field.returncode == 2 and "kee" in wrong_field.stderr
    missing = plugbay("call", target, "/proto.KV/Get", '{"key": "never-put"}', "--proto", str(KV_PROTO))
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr and "put one first" in missing.stderr
    no_reflection = plugbay("call", target, "/proto.KV/Get", '{"key": "x"}')
    assert no_reflection.returncode == 2 and "pass --proto FILE" in no_reflection.stderr
    debug = plugbay("--debug", "call", target, "/proto.KV/Nope", "{}", "--proto", str(KV_PROTO))
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_reflection_plugin_info_and_call(tmp_path: Path) -> None:
    cmd = f"{PY} {REPO / 'tests' / 'plugins' / 'reflect_kv.py'}"
    with running(["--cmd", cmd, "--cookie", COOKIE, "--json"], tmp_path, env=cli_env()) as run:
        info = json.loads(plugbay("info", run.target, "--json").stdout)
        assert info["services_source"] == "reflection"
        names = [s["service"] for s in info["services"]]
        assert "proto.KV" in names
        put = plugbay("call", run.target, "/proto.KV/Put", '{"key": "r", "value": "eA=="}')
        assert put.returncode == 0, put.stderr
        assert json.loads(plugbay("call", run.target, "/proto.KV/Get", '{"key": "r"}').stdout) == {"value": "eA=="}
        assert run.interrupt() == 0
    facts = json.loads(run.stdout.splitlines()[0])
    assert facts["runner"] == "process" and facts["plugin"] == "reflect_kv" and facts["multiplex"] is False
    assert "reattach" not in facts and facts["reattach_file"] == str(run.reattach)
    assert facts["connection"] == "plaintext" and facts["app_protocol"] == 1


def test_info_lists_and_describes_the_services_of_every_reflecting_plugin_of_a_process(tmp_path: Path) -> None:
    # two plugins in one process each register reflection: one reflection service answers for both
    # (it listed only the first plugin's services, and the CLI could not describe the other's)
    cmd = f"{PY} {REPO / 'tests' / 'plugins' / 'reflect_two.py'}"
    with running(["--cmd", cmd, "--cookie", COOKIE], tmp_path, env=cli_env()) as run:
        info = json.loads(plugbay("info", run.target, "--json").stdout)
        stats = plugbay("call", run.target, "/streaming.Streamer/GetStats", "{}")
        assert run.interrupt() == 0
    assert info["services_source"] == "reflection"
    methods = {s["service"]: sorted(m["name"] for m in s["methods"]) for s in info["services"]}
    assert methods["proto.KV"] == ["Get", "Put"] and methods["streaming.Streamer"] == ["Echo", "Generate", "GetStats"]
    assert stats.returncode == 0 and isinstance(json.loads(stats.stdout), dict), stats


def test_a_service_whose_proto_file_name_another_plugins_file_shares_is_named_as_not_loadable(
        tmp_path: Path) -> None:
    # two plugins' pools each hold a plugin.proto (packages a and b): reflection lists a.Svc and b.Svc, but a
    # client keys files by name, so once one plugin.proto is loaded the other service cannot be: it was
    # described with no methods and no word, and a lookup of it called it an "unknown service"
    from plugbay.cli import descriptors
    from plugbay.cli.targets import Tls, reach

    cmd = f"{PY} {REPO / 'tests' / 'plugins' / 'reflect_clash.py'}"
    with running(["--cmd", cmd, "--cookie", COOKIE], tmp_path, env=cli_env()) as run:
        info = json.loads(plugbay("info", run.target, "--json").stdout)
        text = plugbay("info", run.target).stdout
        with reach(run.target, Tls()) as reached:  # one client that looks both up, as info does
            services = descriptors.from_reflection(reached.channel, 30)
            assert services is not None
            descriptors.describe(services)
            for name in ("a.Svc", "b.Svc"):
                try:
                    descriptors.find_method(services, f"/{name}/M")
                except CallFailedError as exc:
                    refused = str(exc)
        assert run.interrupt() == 0
    described = {s["service"]: s for s in info["services"]}
    unloadable = [name for name in ("a.Svc", "b.Svc") if not described[name]["methods"]]
    assert len(unloadable) == 1, info
    said = "listed by reflection but its descriptor could not be loaded (two plugins' proto files share a file name?)"
    assert said in described[unloadable[0]]["error"] and said in text, text
    assert said in refused and "unknown service" not in refused, refused


def test_gone_plugin_is_unreachable_and_diagnosed(tmp_path: Path) -> None:
    with running(["--cmd", KV_CMD, "--cookie", COOKIE], tmp_path) as run:
        saved = run.reattach.read_text()
        alive = json.loads(plugbay("diagnose", run.target, "--json").stdout)
        assert alive["runner"] == "ProcessRunner" and alive["state"] == "running"
        run.interrupt()
    gone = tmp_path / "gone.json"
    gone.write_text(saved)
    health = plugbay("health", f"@{gone}")
    assert health.returncode == 3
    assert health.stdout.startswith("UNREACHABLE") and "no longer running" in health.stdout
    call = plugbay("call", f"@{gone}", "/proto.KV/Get", "{}", "--proto", str(KV_PROTO))
    assert call.returncode == 3 and "start the plugin again" in call.stderr
    diag = plugbay("diagnose", saved)  # inline JSON
    assert diag.returncode == 0 and "state: gone" in diag.stdout
    # the JSON is untrusted: its pid may now be another process's, or not a pid at all
    data = json.loads(saved)
    data["runner"]["pid"] = os.getpid()
    reused = plugbay("diagnose", json.dumps(data))
    assert reused.returncode == 0 and "state: gone" in reused.stdout and "started later" in reused.stdout
    data["runner"]["pid"] = "x"
    bad = plugbay("diagnose", json.dumps(data))
    assert bad.returncode == 2 and "integer 'pid'" in bad.stderr and "unexpected" not in bad.stderr


def test_run_failures(tmp_path: Path) -> None:
    wrong = plugbay("run", "--cmd", KV_CMD, "--cookie", "BASIC_PLUGIN=wrong", cwd=tmp_path, timeout=60)
    assert wrong.returncode == 1
    assert wrong.stderr.count("error:") == 1 and "magic cookie" in wrong.stderr.lower()
    exits = plugbay("run", "--cmd", f"{PY} {REPO / 'tests' / 'plugins' / 'misbehave.py'} exit", "--cookie", COOKIE,
                    cwd=tmp_path, timeout=60)
    assert exits.returncode == 1
    assert "no database configured" in exits.stderr
    no_cookie = plugbay("run", "--cmd", KV_CMD)
    assert no_cookie.returncode == 2 and "--cookie KEY=VALUE is required" in no_cookie.stderr
    two = plugbay("run", "--cmd", KV_CMD, "--image", "x", "--cookie", COOKIE)
    assert two.returncode == 2 and "exactly one of" in two.stderr
    usage = plugbay("run", "--nope")
    assert usage.returncode == 2 and "No such option" in usage.stderr


def test_configuration_mistakes_exit_2_with_one_line_before_anything_starts(tmp_path: Path) -> None:
    quote = plugbay("run", "--cmd", f"{PY} '{KV_PLUGIN}", "--cookie", COOKIE, cwd=tmp_path, timeout=60)
    assert quote.returncode == 2 and quote.stderr.count("error:") == 1 and "balance its quotes" in quote.stderr
    marker = tmp_path / "started"  # the plugin command would make it: it must never run
    nowhere = plugbay("run", "--cmd", f"touch {marker}", "--cookie", COOKIE, "--reattach-out",
                      str(tmp_path / "missing" / "kv.json"), cwd=tmp_path, timeout=60)
    assert nowhere.returncode == 2 and "give a file in an existing, writable folder" in nowhere.stderr
    assert not marker.exists()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it to write would block until a reader came
    piped = plugbay("run", "--cmd", f"touch {marker}", "--cookie", COOKIE, "--reattach-out", str(fifo),
                    cwd=tmp_path, timeout=60)
    assert piped.returncode == 2 and "is not a regular file" in piped.stderr
    assert not marker.exists() and fifo.exists()
    kept = tmp_path / "kept.json"
    kept.write_text("the user's")
    kept.chmod(0o444)  # read-only, also to root (who could write it)
    read_only = plugbay("run", "--cmd", f"touch {marker}", "--cookie", COOKIE, "--reattach-out", str(kept),
                        cwd=tmp_path, timeout=60)
    assert read_only.returncode == 2 and "is read-only" in read_only.stderr
    assert not marker.exists() and kept.read_text() == "the user's"


def test_plugin_that_exits_while_running(tmp_path: Path) -> None:
    with running(["--cmd", KV_CMD, "--cookie", COOKIE, "--multiplex"], tmp_path) as run:
        pid = int(run.config()["runner"]["pid"])
        os.kill(pid, signal.SIGKILL)
        out, err = run.proc.communicate(timeout=30)
        run.stdout, run.stderr = out, err
        assert run.proc.returncode == 1
        assert "exited with code -9" in err and "SIGKILL" in err
        assert "multiplex: True" in out and "cannot be reattached" in err


@pytest.fixture()
def not_serving(tmp_path: Path) -> Iterator[str]:
    """A real gRPC server on a unix socket whose health service reports 'plugin' NOT_SERVING."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="plugbay-test-health"))
    health = HealthServicer()
    health.set_status("plugin", health_pb2.HealthCheckResponse.NOT_SERVING)
    add_health(health, server)
    with serving(server, f"unix:{tmp_path / 'h.sock'}") as target:
        try:
            yield target
        finally:
            health.close()


def test_health_not_serving_and_usage(not_serving: str) -> None:
    out = plugbay("health", not_serving, "--insecure")
    assert out.returncode == 4 and out.stdout.startswith("NOT_SERVING")
    watch = plugbay("health", not_serving, "--insecure", "--watch", "--count", "3", "--interval", "0.1", "--json")
    assert watch.returncode == 4
    assert [json.loads(line)["status"] for line in watch.stdout.splitlines()] == ["NOT_SERVING"] * 3
    assert plugbay("health", not_serving, "--insecure", "--service", "").returncode == 0  # the server as a whole
    need_tls = plugbay("health", not_serving)
    assert need_tls.returncode == 2 and "--insecure" in need_tls.stderr
    bad = plugbay("health", "dns-ish")
    assert bad.returncode == 2 and "is not a target" in bad.stderr
    missing = plugbay("health", "unix:///nonexistent/plugin.sock", "--insecure", "--timeout", "30")
    assert missing.returncode == 3 and "no socket at /nonexistent/plugin.sock" in missing.stdout
    several = plugbay("health", "static:///127.0.0.1:1,127.0.0.1:2", "--insecure", "--timeout", "1")
    assert several.returncode == 2 and "names 2 endpoints" in several.stderr  # a probe asks one replica
    bad_port = plugbay("health", "static:///127.0.0.1:http", "--insecure")
    assert bad_port.returncode == 2 and "static:///" in bad_port.stderr
    refused = plugbay("health", "static:///127.0.0.1:1", "--insecure", "--timeout", "1")
    assert refused.returncode == 3 and refused.stdout.startswith("UNREACHABLE")
    missing = plugbay("info", "@/nonexistent/reattach.json")
    assert missing.returncode == 2 and "cannot read reattach file" in missing.stderr


@pytest.mark.go
def test_go_plugin(tmp_path: Path) -> None:
    from tests import gobuild

    binary = gobuild.go_program_or_skip("kv_plugin")
    with running(["--cmd", str(binary), "--cookie", COOKIE, "--automtls"], tmp_path) as run:
        assert plugbay("health", run.target).returncode == 0
        put = plugbay("call", run.target, "/proto.KV/Put", '{"key": "go", "value": "Z28="}', "--proto", str(KV_PROTO))
        assert put.returncode == 0, put.stderr
        got = plugbay("call", run.target, "/proto.KV/Get", '{"key": "go"}', "--proto", str(KV_PROTO))
        assert json.loads(got.stdout) == {"value": "Z28="}
        info = json.loads(plugbay("info", run.target, "--json").stdout)
        assert info["facts"]["connection"] == "relay-tls"  # a Go plugin's P-521 certificate
        assert run.interrupt() == 0
    assert "connection: relay-tls" in run.stdout


def _pty_run(args: list[str], env: dict[str, str], timeout: float = 60) -> str:
    """Run the command with stdout and stderr on a pseudo-terminal; returns what it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([PY, "-m", "plugbay", *args], stdout=slave, stderr=slave, stdin=subprocess.DEVNULL,
                            env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        proc.kill() if proc.poll() is None else None
        proc.wait(10)
        os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


def test_colour_on_a_terminal_only(not_serving: str) -> None:
    env = cli_env(TERM="xterm-256color", COLUMNS="120")
    on_tty = _pty_run(["health", not_serving, "--insecure"], env)
    assert "NOT_SERVING" in on_tty and "\x1b[" in on_tty
    no_color = _pty_run(["health", not_serving, "--insecure"], {**env, "NO_COLOR": "1"})
    assert "NOT_SERVING" in no_color and "\x1b[" not in no_color
    piped = plugbay("health", not_serving, "--insecure", env=env)
    assert "NOT_SERVING" in piped.stdout and "\x1b[" not in piped.stdout + piped.stderr


def test_gateway_delegates_or_says_it_is_missing(tmp_path: Path) -> None:
    import importlib.util

    out = plugbay("gateway", "--help")
    if importlib.util.find_spec("plugbay.network") is None or \
            importlib.util.find_spec("plugbay.network.gateway") is None:
        assert out.returncode == 2
        assert out.stderr.strip().startswith("error: plugbay gateway is not available")
        return
    assert out.returncode == 0 and "usage: plugbay gateway" in out.stdout
    bogus = plugbay("gateway", "--bogus")
    assert bogus.returncode == 2 and "unrecognized arguments: --bogus" in bogus.stderr
    # verbatim delegation, `--` included: the gateway serves the KV plugin; the CLI talks to it
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # port 0: the gateway binds a free port itself and says which (a port found free beforehand could be taken
    # by another bind while the gateway started)
    gw = subprocess.Popen(rlimited([PY, "-m", "plugbay", "gateway", "--cookie", COOKIE, "--listen",
                                    "127.0.0.1:0", "--insecure", "--", PY, str(KV_PLUGIN)],
                                   RLIMIT_NOFILE=(1024, hard)), cwd=tmp_path, env=cli_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert gw.stdout is not None
        said = gw.stdout.readline() if select.select([gw.stdout], [], [], 120)[0] else ""  # bounded: a hang guard
        assert said.startswith("listening tcp 127.0.0.1:"), said
        target = f"static:///{said.split()[2]}"
        health = plugbay("health", target, "--insecure", "--timeout", "30")
        assert health.returncode == 0, health.stdout + health.stderr
        # started with the common soft limit, the gateway raised it as a plugin's serve() does (its sessions
        # admit only the streams half the soft limit allows)
        limits = [line for line in open(f"/proc/{gw.pid}/limits") if line.startswith("Max open files")]
        raised = SOFT_CAP if hard == resource.RLIM_INFINITY else min(hard, SOFT_CAP)
        assert int(limits[0].split()[3]) == raised, limits
        put = plugbay("call", target, "/proto.KV/Put", '{"key": "gw", "value": "Zw=="}', "--insecure",
                      "--proto", str(KV_PROTO))
        assert put.returncode == 0, put.stderr
        assert (tmp_path / "kv_gw").read_bytes() == b"g"
    finally:
        gw.send_signal(signal.SIGINT)
        try:
            gw.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            gw.kill()
            gw.communicate(timeout=10)
    assert gw.returncode == 0


def test_python_m_and_threads_untouched() -> None:
    # the CLI is host-side only: importing the plugin-side server does not import plugbay.cli
    code = ("import sys, plugbay.core.plugin.server; "
            "print(any(m.startswith('plugbay.cli') or m in ('click', 'rich') for m in sys.modules))")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert out.stdout.strip() == "False"
    assert plugbay("--version").stdout.startswith("plugbay, version")
    assert threading.active_count() >= 1


def test_without_the_cli_extra_the_command_says_how_to_get_it() -> None:
    # click is the cli extra: without it `plugbay` said nothing useful (a ModuleNotFoundError at import)
    code = "import sys; sys.modules['click'] = None; from plugbay.cli import main; sys.exit(main(['info']))"
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert out.returncode == 2
    assert out.stderr == "error: the plugbay command needs its extra: pip install 'plugbay[cli]'\n"


def test_reattached_plugin_turns_unhealthy(tmp_path: Path) -> None:
    cmd = f"{PY} {REPO / 'tests' / 'plugins' / 'resilience_kv.py'}"
    with running(["--cmd", cmd, "--cookie", COOKIE], tmp_path) as run:
        assert plugbay("health", run.target).returncode == 0
        flip = plugbay("call", run.target, "/proto.KV/Put", '{"key": "__health__", "value": "Tk9UX1NFUlZJTkc="}',
                       "--proto", str(KV_PROTO))  # b"NOT_SERVING"
        assert flip.returncode == 0, flip.stderr
        sick = plugbay("health", run.target)
        assert sick.returncode == 4 and sick.stdout.startswith("NOT_SERVING")
        info = json.loads(plugbay("info", run.target, "--json").stdout)
        assert info["health"]["status"] == "NOT_SERVING"
        assert run.interrupt() == 0  # probing an unhealthy plugin never stopped it


def test_second_ctrl_c_kills_at_once(tmp_path: Path) -> None:
    cmd = f"{PY} {REPO / 'tests' / 'plugins' / 'trap_kv.py'}"
    mark = tmp_path / "hanging"
    with running(["--cmd", cmd, "--cookie", COOKIE, "--kill-grace", "120"], tmp_path,
                 env=cli_env(TRAP_HANG_MARK=str(mark))) as run:
        pid = int(run.config()["runner"]["pid"])
        hang = subprocess.Popen([PY, "-m", "plugbay", "call", run.target, "/proto.KV/Get", '{"key": "__hang__"}',
                                 "--proto", str(KV_PROTO), "--timeout", "120"], env=cli_env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            # the call is in flight (the plugin says so; a loaded machine takes seconds to get there):
            # a graceful stop waits for it
            deadline = time.monotonic() + 60
            while not mark.exists() and hang.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert mark.exists(), "the __hang__ call never reached the plugin"
            run.proc.send_signal(signal.SIGINT)
            time.sleep(1.0)
            assert run.proc.poll() is None  # still stopping gracefully
            run.proc.send_signal(signal.SIGINT)
            out, err = run.proc.communicate(timeout=60)  # far below the 120 s grace
            run.stdout, run.stderr = out, err
        finally:
            hang.communicate(timeout=150)
    assert "killing the plugin" in run.stdout
    assert not Path(f"/proc/{pid}").exists()
    assert not run.reattach.exists()
    assert hang.returncode in (1, 3)  # the call in flight fails once the plugin is gone


def test_an_existing_reattach_out_file_is_replaced_by_a_private_one(tmp_path: Path) -> None:
    # it holds the AutoMTLS key: an existing 0644 file kept its mode, and showed the key to everyone
    existing = tmp_path / "reattach.json"
    existing.write_text(json.dumps({"handshake": {"network": "unix"}, "runner": {"kind": "ProcessRunner"},
                                    "name": "an older run's"}) + "\n")  # (running() waits for a final "}")
    existing.chmod(0o644)
    with running(["--cmd", KV_CMD, "--cookie", COOKIE, "--automtls"], tmp_path) as run:
        assert "PRIVATE KEY" in run.reattach.read_text()
        assert run.reattach.stat().st_mode & 0o777 == 0o600
    assert not existing.exists()  # this run wrote it, so this run removes it
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".plugbay-reattach-")] == []
