"""The README's examples run as written (from a scratch folder that mirrors the checkout)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(python|sh)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]


def _scratch(tmp_path: Path) -> Path:
    tmp_path.mkdir(exist_ok=True)
    # the examples use paths relative to the checkout; the KV plugin writes kv_<key> files
    # into its working folder, which must not be the checkout
    for name in ("examples", "src"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # in a session of its own, ended whole afterwards: a section that fails half-way (a port taken, a
    # wait run out) must not leave the background processes it started (the gateways) running
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        _end_session(proc)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _end_session(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to what is left of the section's process group (gateways end their plugins on it), SIGKILL
    after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        ends = time.monotonic() + wait
        while time.monotonic() < ends:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            proc.poll()  # reaps the leader, whose zombie would keep the group
            time.sleep(0.05)
        else:
            continue
        break
    proc.communicate()


def _docker_up() -> bool:
    try:
        import docker

        client = docker.from_env(version="auto")
        try:
            client.ping()
        finally:
            client.close()
        return True
    except Exception:
        return False


def test_the_readme_has_the_examples_this_test_expects() -> None:
    kinds = [("plugin" if "serve(" in c else "docker" if "DockerRunner" in c else
              "async host" if "AsyncClient" in c else "errors" if "except" in c else "host") for c in PYTHON]
    assert kinds == ["host", "async host", "plugin", "docker", "errors"], kinds


def test_host_example_prints_the_value(tmp_path: Path) -> None:
    result = _run([sys.executable, "-c", PYTHON[0]], _scratch(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "b'world'"
    assert (tmp_path / "kv_hello").read_bytes() == b"world"


def test_async_host_example_prints_the_values(tmp_path: Path) -> None:
    result = _run([sys.executable, "-c", PYTHON[1]], _scratch(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[b'async world', b'async world', b'async world']"
    assert (tmp_path / "kv_hello").read_bytes() == b"async world"


def test_plugin_example_serves_a_host(tmp_path: Path) -> None:
    scratch = _scratch(tmp_path)
    (scratch / "memkv.py").write_text(PYTHON[2])
    env = {**os.environ, "KV_PLUGIN": f"{sys.executable} memkv.py"}
    put = _run([sys.executable, "examples/kv/host.py", "--automtls", "put", "a", "b"], scratch, env)
    assert put.returncode == 0, put.stdout + put.stderr
    # the in-memory plugin forgets between hosts, so a second host reads an empty value
    get = _run([sys.executable, "examples/kv/host.py", "get", "a"], scratch, env)
    assert get.returncode == 0 and get.stdout.strip() == "", get.stdout + get.stderr
    refused = _run([sys.executable, "memkv.py"], scratch)
    assert refused.returncode == 1 and "This binary is a plugin" in refused.stderr


def test_shell_example_round_trips_through_the_kv_host(tmp_path: Path) -> None:
    scratch = _scratch(tmp_path)
    sh = next(code for lang, code in BLOCKS if lang == "sh" and "KV_PLUGIN" in code)
    lines = [ln.split("#")[0].strip() for ln in sh.splitlines() if ln.strip()]
    plugin = shlex.split(lines[0].partition("=")[2])[0].replace(".venv/bin/python", sys.executable)
    env = {**os.environ, "KV_PLUGIN": plugin}
    outputs = []
    for line in lines[1:]:
        args = shlex.split(line)
        result = _run([sys.executable, *args[1:]], scratch, env)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout.strip())
    assert outputs[-1] == "world"


def test_docker_example(tmp_path: Path) -> None:
    if not _docker_up():
        pytest.skip("no Docker engine answers on this machine (scripts/setup starts one)")
    result = _run([sys.executable, "-c", PYTHON[3]], _scratch(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "b'in a container'"


def test_errors_example_tells_the_plugins_own_answer_from_plugbays(tmp_path: Path) -> None:
    # the plugin's NOT_FOUND comes through as grpcio's RpcError, not a PlugbayError: the section says so
    result = _run([sys.executable, "-c", PYTHON[4]], _scratch(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "StatusCode.NOT_FOUND"


SHELL = [code for lang, code in BLOCKS if lang == "sh"]


def test_network_section_runs_as_written(tmp_path: Path) -> None:
    """Two gateways in front of the KV plugin, put/get through static:///, one stopped, get again."""
    if shutil.which("openssl") is None:
        pytest.skip("the section makes its certificates with openssl, which is not installed")
    # it wrote ca.*, kv.*, host.*, gw*.log and kv_hello into the checkout (the folder it runs from)
    script = next(code for code in SHELL if "plugbay gateway" in code)
    scratch = _scratch(tmp_path / "checkout")
    (scratch / ".venv").symlink_to(ROOT / ".venv")  # the section runs .venv/bin/plugbay and python
    temp = Path(tempfile.mkdtemp(prefix="rd-"))  # short: the gateways' sockets go in it too
    try:
        result = _run(["bash", "-e", "-c", script], scratch, {**os.environ, "TMPDIR": str(temp)})
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split() == ["network", "network"]
        assert sorted(p.name for p in scratch.iterdir()) == [".venv", "examples", "src"]
        assert list(temp.iterdir()) == []  # its temp folder removed, and the gateways' own
    finally:
        shutil.rmtree(temp)


def test_network_section_takes_free_ports() -> None:
    """It listened on 7001 and 7002, which anything else on the machine (another checkout's run of it) may hold:
    its gateways take port 0, any free one, and the hosts dial what each says it got."""
    script = next(code for code in SHELL if "plugbay gateway" in code)
    assert re.findall(r"--listen \S+", script) == ["--listen 127.0.0.1:0"], script
    assert not re.findall(r"(?<![\w.])(?:127\.0\.0\.1)?:[1-9]\d{2,4}\b", script), script


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a markdown file's headings."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", markdown, flags=re.M)}


def test_host_side_doc_names_the_async_supervisor_and_remote_client_and_its_links_resolve() -> None:
    import plugbay

    text = (ROOT / "docs" / "host-side.md").read_text()
    flat = " ".join(text.split())
    # it said the Supervisor and the network clients were sync only, when both have asyncio ones
    assert "sync only" not in flat
    for name in ("AsyncSupervisor", "AsyncRemoteClient"):
        assert f"`{name}`" in flat and hasattr(plugbay, name), name
    for target, anchor in re.findall(r"\]\(([\w\-]+\.md)#([\w\-]+)\)", text):
        assert anchor in _anchors((ROOT / "docs" / target).read_text()), f"{target}#{anchor}"



HOST_SIDE_MD = (ROOT / "docs" / "host-side.md").read_text()
HOST_SIDE = [code for lang, code in re.findall(r"```(python|sh)\n(.*?)```", HOST_SIDE_MD, flags=re.S)
             if lang == "python"]


def test_host_side_error_classes_example_prints_what_it_says(tmp_path: Path) -> None:
    code = next(c for c in HOST_SIDE if "issubclass(CallTimeoutError" in c)
    result = _run([sys.executable, "-c", code], _scratch(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["False", "True StatusCode.CANCELLED", "False"]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"  # killed, not yet reaped by its new parent


def test_host_side_forgotten_client_runs_until_interpreter_exit(tmp_path: Path) -> None:
    code = next(c for c in HOST_SIDE if "def leak()" in c)
    result = _run([sys.executable, "-c", code], _scratch(tmp_path))
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split()[1])  # "plugin PID still runs; killed at interpreter exit"
    for _ in range(200):  # killed by the exit cleanup before the host ended; bounded wait for the reaping
        if _gone(pid):
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    raise AssertionError(f"plugin {pid} outlived its host")
