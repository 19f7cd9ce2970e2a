"""The Go test programs: real builds against go-plugin 1.0.1, the build cache, and the reference
Go host -> Go plugin KV round trip (the cell the benchmarks compare against)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
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


def test_changed_source_rebuilds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main = _copy_program(tmp_path, monkeypatch, "kv_plugin_copy")
    try:
        old = build_go("kv_plugin_copy")
        main.write_text(main.read_text() + "\n// changed\n")
        new = build_go("kv_plugin_copy")
        # The old binary stays: another process may still be running it.
        assert new != old and new.exists() and old.exists()
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


def test_import_of_a_missing_example_proto_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main = _copy_program(tmp_path, monkeypatch, "badimport_copy")
    main.write_text(main.read_text().replace('"plugbay.test/kvproto"', '"plugbay.test/nosuchproto"'))
    with pytest.raises(GoBuildError, match=r"imports plugbay.test/nosuchproto, which is neither .*/protos/examples/nosuch.proto nor a package"):
        build_go("badimport_copy")


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

@pytest.fixture
def sockdir() -> Iterator[str]:
    """TMPDIR for the Go programs: go-plugin 1.0.1 puts its unix sockets there and a killed Go
    plugin leaves its socket behind. A short path, since unix socket paths are limited to 107 bytes."""
    path = tempfile.mkdtemp(prefix="pb-go-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _host(host: str, plugin_env: str, plugin: str, cwd: Path, sockdir: str, *args: str, plugin_prefix: str = "",
          **env: str) -> tuple[int, str, str]:
    full_env = dict(os.environ, TMPDIR=sockdir, **env)
    full_env[plugin_env] = plugin_prefix + str(build_go(plugin))  # run by `sh -c`
    res = run_program(build_go(host), list(args), env=full_env, cwd=cwd, timeout=60)
    return res.returncode, res.stdout, res.stderr


def _kv(tmp_path: Path, sockdir: str, *args: str, plugin: str = "kv_plugin", plugin_prefix: str = "",
        **env: str) -> tuple[int, str, str]:
    return _host("kv_host", "KV_PLUGIN", plugin, tmp_path, sockdir, *args, plugin_prefix=plugin_prefix, **env)


@pytest.mark.parametrize("mtls", [[], ["--automtls"]], ids=["plain", "automtls"])
def test_go_host_go_plugin_round_trip(tmp_path: Path, sockdir: str, mtls: list[str]) -> None:
    rc, out, err = _kv(tmp_path, sockdir, *mtls, "put", "greeting", "hello world")
    assert rc == 0, (out, err)
    assert (tmp_path / "kv_greeting").read_bytes() == b"hello world"
    assert "kv_host: kill graceful=true" in err, err
    assert f"automtls={'true' if mtls else 'false'}" in err

    rc, out, err = _kv(tmp_path, sockdir, *mtls, "get", "greeting")
    assert (rc, out) == (0, "hello world\n"), err
    assert "kv_host: handshake protocol=grpc version=1 network=unix" in err
    assert "kv_host: kill graceful=true" in err


def test_bench_mode_prints_latency_json(tmp_path: Path, sockdir: str) -> None:
    rc, out, err = _kv(tmp_path, sockdir, "bench", "50")
    assert rc == 0, err
    figures = json.loads(out)
    assert figures["n"] == 50 and figures["automtls"] is False
    assert 0 < figures["p50_us"] <= figures["p99_us"]
    assert figures["start_to_first_call_ms"] > 0


def _pair_turns(order: str, n: int, block: int) -> list[str]:
    """Which plugin bench-pair asks, Get by Get: a warm-up block each in the start order, then turns
    that follow the start order and swap (ab: a b | b a | a b ...)."""
    first, second = order
    asked = [first] * block + [second] * block
    done = 0
    for i in itertools.count():
        if done == n:
            return asked
        k = min(block, n - done)
        for name in (first, second) if i % 2 == 0 else (second, first):
            asked += [name] * k
        done += k
    raise AssertionError("unreachable")


@pytest.mark.parametrize("order", ["ab", "ba"])
def test_bench_pair_mode_times_two_plugins_in_one_host(tmp_path: Path, sockdir: str, order: str) -> None:
    """The core bench's Go host -> Python plugin rows: both plugins start, each answers its own Gets in
    the blocks and order asked for, each plugin's figures under its own label, both end."""
    plugin, log = build_go("kv_plugin"), tmp_path / "gets.log"
    # a's Gets each wait 10 ms, so its p50 cannot be below that: b's figures under a's label would be
    rc, out, err = _kv(tmp_path, sockdir, "bench-pair", "120", "50", order, KV_GET_LOG=str(log),
                       KV_PLUGIN_B=f"KV_GET_TAG=b {plugin}", plugin_prefix="KV_GET_TAG=a KV_GET_DELAY=10ms ")
    assert rc == 0, (out, err)
    assert log.read_text().split() == _pair_turns(order, 120, 50)
    figures = json.loads(out)
    assert sorted(figures) == ["a", "b"]
    for side in figures.values():
        assert side["n"] == 120 and side["automtls"] is False  # 120: two full blocks and a part one each
        assert 0 < side["p50_us"] <= side["p99_us"] and side["calls_per_s"] > 0
        assert side["start_to_first_call_ms"] > 0
    assert figures["a"]["p50_us"] >= 10_000
    for name in "ab":
        assert err.count(f"kv_host: handshake plugin={name} protocol=grpc") == 1, err
        assert err.count(f"kv_host: kill plugin={name} graceful=true") == 1, err


def test_bench_pair_mode_usage_errors(tmp_path: Path, sockdir: str) -> None:
    plugin_b = str(build_go("kv_plugin"))
    rc, _, err = _kv(tmp_path, sockdir, "bench-pair", "10", "5", KV_PLUGIN_B=plugin_b)
    assert rc == 2 and "bench-pair N BLOCK ab|ba" in err
    rc, out, _ = _kv(tmp_path, sockdir, "bench-pair", "10", "5", "ac", KV_PLUGIN_B=plugin_b)
    assert rc == 1 and "bench-pair's start order is ab or ba" in out
    rc, out, _ = _kv(tmp_path, sockdir, "bench-pair", "10", "0", "ab", KV_PLUGIN_B=plugin_b)
    assert rc == 1 and "bench-pair needs a positive block size" in out
    rc, out, _ = _kv(tmp_path, sockdir, "bench-pair", "zero", "5", "ab", KV_PLUGIN_B=plugin_b)
    assert rc == 1 and "bench-pair needs a positive call count" in out
    env = {k: v for k, v in os.environ.items() if k != "KV_PLUGIN_B"}
    res = run_program(build_go("kv_host"), ["bench-pair", "10", "5", "ab"], env=dict(env, KV_PLUGIN=plugin_b),
                      cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "set KV_PLUGIN_B to the second one's command" in res.stderr, res.stderr
    assert "KV_PLUGIN_B" in res.stderr.split("usage: kv_host", 1)[1]


def test_get_of_a_missing_key_fails_with_the_plugin_error(tmp_path: Path, sockdir: str) -> None:
    rc, out, err = _kv(tmp_path, sockdir, "get", "absent")
    assert rc == 1
    assert out.startswith("error: ") and "kv_absent: no such file or directory" in out
    assert "kv_host: kill graceful=true" in err  # the plugin is still shut down cleanly


def test_host_usage_errors(tmp_path: Path, sockdir: str) -> None:
    rc, _, err = _kv(tmp_path, sockdir, "put", "only-a-key")
    assert rc == 2 and "usage: kv_host" in err
    rc, out, _ = _kv(tmp_path, sockdir, "bench", "zero")
    assert rc == 1 and "bench needs a positive call count" in out


def test_host_reports_a_plugin_that_is_not_a_plugin(tmp_path: Path) -> None:
    env = dict(os.environ, KV_PLUGIN="echo not-a-handshake; exit 0")
    res = run_program(build_go("kv_host"), ["get", "k"], env=env, cwd=tmp_path, timeout=60)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert res.stdout.startswith("error: Unrecognized remote plugin message: not-a-handshake")


def test_plugin_refuses_to_run_without_the_cookie(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BASIC_PLUGIN"}
    for name in ("kv_plugin", "counter_plugin", "misbehave"):
        res = run_program(build_go(name), [], env=env, cwd=tmp_path, timeout=30)
        assert res.returncode == 1, name
        assert "This binary is a plugin. These are not meant to be executed directly." in res.stderr
        assert res.stdout == ""


def test_run_program_kills_the_whole_group_on_timeout(tmp_path: Path) -> None:
    # A host whose plugin never completes the handshake: run_program's deadline must end both.
    env = dict(os.environ, KV_PLUGIN="sleep 30")
    with pytest.raises(TimeoutError, match="did not finish within 1s and was killed"):
        run_program(build_go("kv_host"), ["--timeout", "30s", "get", "k"], env=env, cwd=tmp_path, timeout=1)


# --- counter: Go host <-> Go plugin with the broker callback ------------------------------------

def _counter(tmp_path: Path, sockdir: str, *args: str) -> tuple[int, str, str]:
    return _host("counter_host", "COUNTER_PLUGIN", "counter_plugin", tmp_path, sockdir, *args)


def test_counter_round_trip_calls_back_into_the_host(tmp_path: Path, sockdir: str) -> None:
    rc, out, err = _counter(tmp_path, sockdir, "put", "hits", "5")
    assert rc == 0, (out, err)
    assert "counter_host: sum a=0 b=5 r=5 broker_id=1" in err
    rc, out, err = _counter(tmp_path, sockdir, "put", "hits", "7")
    assert rc == 0, (out, err)
    assert "counter_host: sum a=5 b=7 r=12 broker_id=1" in err  # the plugin read 5 back and asked the host
    assert json.loads((tmp_path / "kv_hits").read_text()) == {"Value": 12}  # the Go example's format
    rc, out, err = _counter(tmp_path, sockdir, "get", "hits")
    assert (rc, out) == (0, "12\n"), err
    assert "counter_host: kill graceful=true" in err
    assert os.listdir(sockdir) == []  # brokered and main sockets all closed and removed


def test_counter_bench_brokers_every_put(tmp_path: Path, sockdir: str) -> None:
    rc, out, err = _counter(tmp_path, sockdir, "bench", "20")
    assert rc == 0, err
    assert json.loads(out)["n"] == 20
    assert json.loads((tmp_path / "kv_bench").read_text()) == {"Value": 20}


def test_go_plugin_1_0_1_cannot_broker_under_automtls(tmp_path: Path, sockdir: str) -> None:
    # go-plugin bug #109 (fixed upstream later): brokered connections under AutoMTLS verify the
    # host name "unused". This is why the Go broker cells run without AutoMTLS.
    assert _counter(tmp_path, sockdir, "put", "k", "1")[0] == 0
    rc, out, err = _counter(tmp_path, sockdir, "--automtls", "get", "k")
    assert (rc, out) == (0, "1\n"), err  # AutoMTLS itself works
    rc, out, err = _counter(tmp_path, sockdir, "--automtls", "put", "k", "1")
    assert rc == 1 and "certificate is valid for localhost, not unused" in out, (out, err)


# --- misbehave: the error paths a host must handle, from real go-plugin code ---------------------

def _misbehave_direct(tmp_path: Path, sockdir: str, **env: str) -> tuple[int, str, str]:
    full = dict(os.environ, BASIC_PLUGIN="hello", TMPDIR=sockdir, **env)
    res = run_program(build_go("misbehave"), [], env=full, cwd=tmp_path, timeout=30)
    return res.returncode, res.stdout, res.stderr


def test_misbehave_exit_before_handshake(tmp_path: Path, sockdir: str) -> None:
    rc, out, err = _misbehave_direct(tmp_path, sockdir, MISBEHAVE_MODE="exit")
    assert (rc, out) == (3, "")
    assert "misbehave: cannot open database /nonexistent/db" in err
    rc, _, err = _misbehave_direct(tmp_path, sockdir, MISBEHAVE_MODE="exit", MISBEHAVE_EXIT_CODE="9",
                                   MISBEHAVE_STDERR="custom failure")
    assert rc == 9 and "custom failure" in err


@pytest.mark.parametrize("mode", ["line", "silent"])
def test_misbehave_idles_bounded(tmp_path: Path, sockdir: str, mode: str) -> None:
    rc, out, err = _misbehave_direct(tmp_path, sockdir, MISBEHAVE_MODE=mode, MISBEHAVE_LINE="1|1|bogus",
                                     MISBEHAVE_MAX_SECONDS="1")
    assert rc == 4
    assert out == ("1|1|bogus\n" if mode == "line" else "")
    first = json.loads(err.splitlines()[0])  # hclog JSON, as go-plugin plugins log
    assert (first["@level"], first["@message"], first["mode"]) == ("info", "misbehave starting", mode)


def test_misbehave_announces_netrpc(tmp_path: Path, sockdir: str) -> None:
    rc, out, err = _kv(tmp_path, sockdir, "get", "k", plugin="misbehave", MISBEHAVE_MODE="netrpc")
    assert rc == 1 and 'Unsupported plugin protocol "netrpc". Supported: [grpc]' in out, (out, err)


def test_misbehave_offers_only_other_versions(tmp_path: Path, sockdir: str) -> None:
    rc, out, _ = _kv(tmp_path, sockdir, "get", "k", plugin="misbehave", MISBEHAVE_VERSIONS="2,3")
    assert rc == 1 and "Incompatible API version with plugin. Plugin version: 2, Client versions: [1]" in out


def test_misbehave_trap_keys(tmp_path: Path, sockdir: str) -> None:
    rc, out, _ = _kv(tmp_path, sockdir, "put", "a", "b", plugin="misbehave")
    assert rc == 0 and (tmp_path / "kv_a").read_text() == "b"  # otherwise a normal KV plugin

    rc, out, err = _kv(tmp_path, sockdir, "get", "__die__", plugin="misbehave")
    assert rc == 1 and "Unavailable" in out, (out, err)
    assert "dying during a call" in err

    rc, out, err = _kv(tmp_path, sockdir, "get", "__env__", plugin="misbehave")
    assert rc == 0, err
    env = json.loads(out)
    assert env["BASIC_PLUGIN"] == "hello" and env["PLUGIN_PROTOCOL_VERSIONS"] == "1"

    rc, out, err = _kv(tmp_path, sockdir, "-v", "get", "__log__", plugin="misbehave")
    assert (rc, out) == (0, "logged\n"), err
    for level, msg in [("TRACE", "trace message"), ("INFO", "info message"), ("ERROR", "error message")]:
        assert f"[{level}]" in err and msg in err
    assert "a raw stderr line that is not JSON" in err


def test_misbehave_hang_and_linger_are_ended_by_the_host(tmp_path: Path, sockdir: str) -> None:
    rc, out, err = _kv(tmp_path, sockdir, "--timeout", "2s", "get", "__hang__", plugin="misbehave")
    assert rc == 3 and "kv_host: timed out after 2s" in err and "hanging during a call" in err, (rc, out, err)
    rc, out, err = _kv(tmp_path, sockdir, "put", "x", "y", plugin="misbehave", MISBEHAVE_MODE="linger")
    assert rc == 0, (out, err)
    assert "lingering instead of exiting" in err and "kv_host: kill graceful=false" in err
