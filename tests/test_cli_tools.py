"""plugbay images build / bench / demo as subprocesses: progress on a terminal, plain lines in a pipe."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_util import REPO, cli_env, plugbay
from tests.test_cli import _pty_run


def need_docker() -> None:
    try:
        from plugbay.images import docker_client

        client = docker_client()
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no Docker engine answers: {exc}")


@pytest.mark.docker
def test_images_build_progress_on_a_terminal_plain_in_a_pipe() -> None:
    need_docker()
    piped = plugbay("images", "build", "kv", timeout=900)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip() == "plugbay-kv:latest"
    assert "step 1: base image plugbay-base:bookworm" in piped.stderr
    assert "step 2: image kv" in piped.stderr and "\x1b[" not in piped.stderr
    again = plugbay("images", "build", "kv", timeout=900)
    from plugbay.images import HASH_LABEL, docker_client

    client = docker_client()
    try:
        image = client.images.get("plugbay-kv:latest")
    finally:
        client.close()
    # it printed the content hash in brackets, where `docker images` shows the image's id
    said = f"plugbay-kv:latest is up to date (image {image.id[7:19]}, content {image.labels[HASH_LABEL][:12]})"
    assert said in again.stderr, again.stderr
    quiet = plugbay("images", "build", "kv", "--quiet", timeout=900)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "plugbay-kv:latest" and quiet.stderr == ""
    on_tty = _pty_run(["images", "build", "kv"], cli_env(TERM="xterm-256color", COLUMNS="120"), timeout=900)
    assert "step 2: image kv" in on_tty and "plugbay-kv:latest" in on_tty
    assert "\x1b[" in on_tty  # the live display (cursor control, colour)
    assert "0:00:" in on_tty  # elapsed time column


def test_images_build_usage_and_no_engine() -> None:
    unknown = plugbay("images", "build", "nope")
    assert unknown.returncode == 2 and "unknown example image 'nope'" in unknown.stderr
    half = plugbay("images", "build", "--plugin-dir", str(REPO / "examples" / "kv"))
    assert half.returncode == 2 and "--entry" in half.stderr
    dead = plugbay("images", "build", "kv", env=cli_env(DOCKER_HOST="unix:///nonexistent/docker.sock"))
    assert dead.returncode == 3 and dead.stderr.startswith("error: ")
    # --entry and --tag name your own image: without --plugin-dir they would be ignored for the kv image
    for args, flag in ((["--entry", "python /plugin/plugin.py"], "--entry"), (["kv", "--tag", "mine:1"], "--tag")):
        alone = plugbay("images", "build", *args, env=cli_env(DOCKER_HOST="unix:///nonexistent/docker.sock"))
        assert alone.returncode == 2 and f"error: {flag} needs --plugin-dir FOLDER" in alone.stderr, alone.stderr


def test_bench_help_and_only_name_every_area() -> None:
    areas = sorted(p.stem.removeprefix("bench_") for p in (REPO / "bench").glob("bench_*.py"))
    assert {"core", "async", "faults", "network", "scale"} <= set(areas)
    shown = " ".join(plugbay("bench", "--help", env=cli_env(COLUMNS="200")).stdout.split())
    assert f"Run one area ({', '.join(areas)})." in shown
    unknown = plugbay("bench", "--only", "nope")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == f"error: --only 'nope' is not a benchmark area; choose from {', '.join(areas)}"


def test_bench_json_rows_with_units_and_plot(tmp_path: Path) -> None:
    rows_file, png = tmp_path / "rows.jsonl", tmp_path / "bench.png"
    out = plugbay("bench", "--only", "core", "--calls", "5", "--rounds", "1", "--json", str(rows_file),
                  "--plot", str(png), timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert rows and {r["area"] for r in rows} == {"core"}
    assert all(r["units"]["p50_us"] == "us" and r["units"]["start_to_first_call_ms"] == "ms" for r in rows)
    assert any(not r["skipped"] and r["p50_us"] > 0 for r in rows)
    assert "area\thost -> plugin" in out.stdout  # plain table in a pipe
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = plugbay("bench", "--only", "nosuch", "--calls", "1", "--rounds", "1", timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "'nosuch' is not a benchmark area" in bad.stderr  # refused before it runs


def test_bench_prints_an_areas_own_table_after_the_main_one(tmp_path: Path) -> None:
    rows_file = tmp_path / "rows.jsonl"
    out = plugbay("bench", "--only", "faults", "--faults", "1", "--calls", "5", "--rounds", "1", "--json",
                  str(rows_file), timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]  # it failed on the fault table's rows
    lines = out.stdout.splitlines()
    main = lines.index(next(line for line in lines if line.startswith("area\thost -> plugin")))
    assert "\tplugbay / floor\t" in lines[main]
    fault_head = next(i for i, line in enumerate(lines) if line.startswith("fault\tfaults\trecovered\t"))
    assert fault_head > main and any(line.startswith("kill9-python\t1\t") for line in lines[fault_head:])
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert {r.get("fault") for r in rows if r.get("table") == "extra"} >= {"kill9-python", "host-kill"}


def test_bench_and_demo_outside_a_checkout(tmp_path: Path) -> None:
    # an installed copy of the package, without the checkout's bench/ and examples/
    site = tmp_path / "site"
    shutil.copytree(REPO / "src" / "plugbay", site / "plugbay", ignore=shutil.ignore_patterns("__pycache__"))
    env = cli_env(PYTHONPATH=str(site))
    env["PYTHONPATH"] = str(site)
    for command in ("bench", "demo"):
        out = subprocess.run([sys.executable, "-m", "plugbay", command], capture_output=True, text=True,
                             env=env, timeout=60, cwd=tmp_path, stdin=subprocess.DEVNULL)
        assert out.returncode == 2, out.stderr
        assert "source checkout" in out.stderr and "run it from a git checkout" in out.stderr


def test_demo_runs_the_readme_demo(tmp_path: Path) -> None:
    out = plugbay("demo", timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "plugbay demo: HashiCorp go-plugin's KV example" in out.stdout
    assert "get greeting -> 'hello from Python host -> Python plugin'" in out.stdout
    assert "3 puts and 3 gets at once -> ['async-0 from asyncio', 'async-1 from asyncio'," in out.stdout
    assert "demo finished" in out.stdout


def test_bench_refuses_an_output_file_it_cannot_write_before_it_runs(tmp_path: Path) -> None:
    for option in ("--json", "--plot"):
        out = plugbay("bench", "--only", "core", "--calls", "5", "--rounds", "1", option,
                      str(tmp_path / "missing" / "out"), timeout=600, cwd=tmp_path)
        assert out.returncode == 2 and f"{option} " in out.stderr and "cannot be written" in out.stderr, out.stderr
        assert "running core" not in out.stderr  # refused before the benchmark ran
