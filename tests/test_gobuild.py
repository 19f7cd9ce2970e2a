"""The Go test programs: real builds against go-plugin 1.0.1, the build cache, and the reference
Go host -> Go plugin KV round trip (the cell the benchmarks compare against)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests import gobuild
from tests.gobuild import GoBuildError, GoUnavailableError, build_go, run_program

_reason = gobuild.go_missing_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

PROGRAMS = sorted(p.parent.name for p in gobuild.GO_SOURCES.glob("*/main.go"))


@pytest.mark.parametrize("name", PROGRAMS)
def test_every_program_builds(name: str) -> None:
    path = build_go(name)
    assert path.parent == gobuild.BIN_DIR and path.name.startswith(f"{name}-")
    assert os.access(path, os.X_OK)


def test_second_build_reuses_the_cached_binary() -> None:
    first = build_go("kv_plugin")
    stat = first.stat()
    assert build_go("kv_plugin") == first
    # A fresh process has no in-memory memo: the on-disk cache must still answer.
    gobuild._memo.clear()
    again = build_go("kv_plugin")
    assert again == first
    assert (again.stat().st_ino, again.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


def _copy_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    """A private copy of tests/go/kv_plugin under another program name, so edits stay local."""
    sources = tmp_path / "go"
    shutil.copytree(gobuild.GO_SOURCES / "kv_plugin", sources / name)
    monkeypatch.setattr(gobuild, "GO_SOURCES", sources)
    gobuild._memo.pop(name, None)
    return sources / name / "main.go"


def test_changed_source_rebuilds_and_drops_the_old_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main = _copy_program(tmp_path, monkeypatch, "kv_plugin_copy")
    try:
        old = build_go("kv_plugin_copy")
        main.write_text(main.read_text() + "\n// changed\n")
        new = build_go("kv_plugin_copy")
        assert new != old and new.exists() and not old.exists()
        assert build_go("kv_plugin_copy") == new
    finally:
        for p in gobuild.BIN_DIR.glob("kv_plugin_copy-*"):
            p.unlink()


def test_compile_error_is_reported_with_the_compiler_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main = _copy_program(tmp_path, monkeypatch, "broken_copy")
    main.write_text(main.read_text() + "\nfunc broken() { undefinedThing() }\n")
    with pytest.raises(GoBuildError, match=r"(?s)go build of tests/go/broken_copy failed.*undefinedThing"):
        build_go("broken_copy")
    assert not list(gobuild.BIN_DIR.glob("broken_copy-*"))


def test_unknown_program_lists_the_known_ones() -> None:
    with pytest.raises(GoBuildError, match=r"no Go program 'nope'.*kv_plugin"):
        build_go("nope")
    with pytest.raises(GoBuildError, match="invalid Go program name"):
        build_go("../kv_plugin")


def test_missing_toolchain_is_a_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no go, no protoc
    assert not gobuild.go_available()
    with pytest.raises(GoUnavailableError, match=r"missing: the `go` command.*protoc"):
        build_go("kv_plugin")


def test_protos_are_generated_into_the_private_gopath() -> None:
    build_go("kv_plugin")
    generated = gobuild.GOPATH_PRIVATE / "src" / "plugbay.test" / "kvproto" / "kv.pb.go"
    text = generated.read_text()
    assert "package proto" in text and "RegisterKVServer" in text
    assert not list((gobuild.REPO / "tests" / "go").rglob("*.pb.go"))  # never committed


# --- Go host -> Go plugin, the reference cell ---------------------------------------------------

def _kv(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    env = dict(os.environ, KV_PLUGIN=str(build_go("kv_plugin")))
    res = run_program(build_go("kv_host"), list(args), env=env, cwd=tmp_path, timeout=60)
    return res.returncode, res.stdout, res.stderr


@pytest.mark.parametrize("mtls", [[], ["--automtls"]], ids=["plain", "automtls"])
def test_go_host_go_plugin_round_trip(tmp_path: Path, mtls: list[str]) -> None:
    rc, out, err = _kv(tmp_path, *mtls, "put", "greeting", "hello world")
    assert rc == 0, (out, err)
    assert (tmp_path / "kv_greeting").read_bytes() == b"hello world"
    assert "kv_host: kill graceful=true" in err, err
    assert f"automtls={'true' if mtls else 'false'}" in err

    rc, out, err = _kv(tmp_path, *mtls, "get", "greeting")
    assert (rc, out) == (0, "hello world\n"), err
    assert "kv_host: handshake protocol=grpc version=1 network=unix" in err
    assert "kv_host: kill graceful=true" in err


def test_bench_mode_prints_latency_json(tmp_path: Path) -> None:
    rc, out, err = _kv(tmp_path, "bench", "50")
    assert rc == 0, err
    figures = json.loads(out)
    assert figures["n"] == 50 and figures["automtls"] is False
    assert 0 < figures["p50_us"] <= figures["p99_us"]
    assert figures["start_to_first_call_ms"] > 0


def test_get_of_a_missing_key_fails_with_the_plugin_error(tmp_path: Path) -> None:
    rc, out, err = _kv(tmp_path, "get", "absent")
    assert rc == 1
    assert out.startswith("error: ") and "kv_absent: no such file or directory" in out
    assert "kv_host: kill graceful=true" in err  # the plugin is still shut down cleanly


def test_host_usage_errors(tmp_path: Path) -> None:
    rc, _, err = _kv(tmp_path, "put", "only-a-key")
    assert rc == 2 and "usage: kv_host" in err
    rc, out, _ = _kv(tmp_path, "bench", "zero")
    assert rc == 1 and "bench needs a positive call count" in out


def test_host_reports_a_plugin_that_is_not_a_plugin(tmp_path: Path) -> None:
    env = dict(os.environ, KV_PLUGIN="echo not-a-handshake; exit 0")
    res = run_program(build_go("kv_host"), ["get", "k"], env=env, cwd=tmp_path, timeout=60)
    assert res.returncode == 1 and res.stdout.startswith("error: "), (res.stdout, res.stderr)


def test_plugin_refuses_to_run_without_the_cookie(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BASIC_PLUGIN"}
    res = run_program(build_go("kv_plugin"), [], env=env, cwd=tmp_path, timeout=30)
    assert res.returncode == 1
    assert "This binary is a plugin. These are not meant to be executed directly." in res.stderr
    assert res.stdout == ""


def test_run_program_kills_the_whole_group_on_timeout(tmp_path: Path) -> None:
    # A host whose plugin never completes the handshake: the watchdog of run_program must end both.
    env = dict(os.environ, KV_PLUGIN="sleep 30")
    with pytest.raises(TimeoutError, match="did not finish within 1s and was killed"):
        run_program(build_go("kv_host"), ["get", "k"], env=env, cwd=tmp_path, timeout=1)
