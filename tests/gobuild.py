"""Build the real go-plugin (1.0.1) Go programs the interop tests and benchmarks run.

``build_go("kv_plugin")`` compiles ``tests/go/kv_plugin`` (a Go main package) against Debian's
go-plugin sources in GOPATH mode and returns the path of a cached, statically linked binary.
The cache key is a hash of the program's sources, the example protos, the Go version and this
builder's recipe, so a binary is rebuilt only when one of those changes. An exclusive file lock
serialises builds between pytest processes (and helpers) sharing the cache.

Go code for ``protos/examples/NAME.proto`` is generated at build time with protoc and Debian's
protoc-gen-go into the private GOPATH as package ``plugbay.test/NAMEproto``; it is never committed.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.procs import descendants

REPO = Path(__file__).resolve().parent.parent
GO_SOURCES = REPO / "tests" / "go"
# Shared Go packages, importable by the programs as plugbay.test/<dir name>.
GO_LIBS = GO_SOURCES / "lib"
EXAMPLE_PROTOS = REPO / "protos" / "examples"
CACHE = REPO / ".cache" / "go"
GOPATH_PRIVATE = CACHE / "gopath"
BIN_DIR = CACHE / "bin"
SYSTEM_GOPATH = Path("/usr/share/gocode")
GO_PLUGIN_SRC = SYSTEM_GOPATH / "src" / "github.com" / "hashicorp" / "go-plugin"
PROTOC_GEN_GO = Path("/usr/bin/protoc-gen-go")
# Import path prefix of the generated example packages: kv.proto -> plugbay.test/kvproto.
PROTO_IMPORT_PREFIX = "plugbay.test"
# Bump when the build recipe changes in a way that must invalidate cached binaries.
_RECIPE = "3"
BUILD_TIMEOUT = 600.0
PROTOC_TIMEOUT = 60.0
PRUNE_AFTER = 24 * 3600.0

_memo: dict[str, Path] = {}
_memo_lock = threading.Lock()


class GoBuildError(RuntimeError):
    """A Go test program could not be built; the message carries the compiler output."""


class GoUnavailableError(GoBuildError):
    """The Go toolchain, protoc or the go-plugin sources are not installed."""


def go_missing_reason() -> str | None:
    """Why Go programs cannot be built here, or None when everything needed is present."""
    missing = []
    if shutil.which("go") is None:
        missing.append("the `go` command (apt-get install golang-go)")
    if shutil.which("protoc") is None:
        missing.append("protoc (apt-get install protobuf-compiler)")
    if not PROTOC_GEN_GO.exists():
        missing.append(f"{PROTOC_GEN_GO} (apt-get install golang-goprotobuf-dev)")
    if not GO_PLUGIN_SRC.is_dir():
        missing.append(f"go-plugin sources at {GO_PLUGIN_SRC} (apt-get install golang-github-hashicorp-go-plugin-dev)")
    if not missing:
        return None
    return "cannot build Go test programs, missing: " + "; ".join(missing) + " (scripts/setup installs them)"


def go_available() -> bool:
    """True when build_go() can work (toolchain, protoc plugin and go-plugin sources present)."""
    return go_missing_reason() is None


def go_env() -> dict[str, str]:
    """Environment for `go` commands: GOPATH mode over the private GOPATH plus Debian's gocode."""
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",
        GOPATH=f"{GOPATH_PRIVATE}:{SYSTEM_GOPATH}",
        GOCACHE=str(CACHE / "gocache"),
        # Static binaries also run inside the minimal containers the Docker/Kubernetes tests use.
        CGO_ENABLED="0",
        GOFLAGS="",
    )
    return env


def _run(cmd: list[str], *, env: dict[str, str], cwd: Path, timeout: float, what: str) -> str:
    try:
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise GoUnavailableError(f"{what}: {exc.filename} not found; {go_missing_reason() or 'install it'}") from exc
    except subprocess.TimeoutExpired as exc:
        raise GoBuildError(f"{what} did not finish within {timeout:.0f}s: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        raise GoBuildError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
            "Fix the Go source or proto named above and run the test again."
        )
    return proc.stdout


@functools.cache
def _go_version() -> str:
    return _run(["go", "version"], env=go_env(), cwd=REPO, timeout=60, what="go version").strip()


def _program_dir(name: str) -> Path:
    if not name or "/" in name or name.startswith(".") or name == "lib":
        raise GoBuildError(f"invalid Go program name {name!r}: use a directory name under {GO_SOURCES}")
    pdir = GO_SOURCES / name
    if not (pdir / "main.go").is_file():
        known = sorted(p.parent.name for p in GO_SOURCES.glob("*/main.go"))
        raise GoBuildError(f"no Go program {name!r} in {GO_SOURCES} (no {name}/main.go); known programs: {known}")
    return pdir


_LOCAL_IMPORT = re.compile(rf'"{re.escape(PROTO_IMPORT_PREFIX)}/(\w+)"')


def _dependencies(name: str) -> tuple[list[Path], list[Path]]:
    """The example protos and the shared packages (tests/go/lib/PKG) program `name` imports as
    plugbay.test/NAMEproto and plugbay.test/PKG, followed through the shared packages too; only
    these count for its hash, so an unrelated new or broken proto never touches its build."""
    protos = {p.stem: p for p in EXAMPLE_PROTOS.glob("*.proto")}
    libs: dict[str, Path] = {}
    used_protos: dict[str, Path] = {}
    pending = [_program_dir(name)]
    while pending:
        text = "\n".join(p.read_text() for p in sorted(pending.pop().rglob("*.go")))
        for pkg in _LOCAL_IMPORT.findall(text):
            if (GO_LIBS / pkg).is_dir():
                if pkg not in libs:
                    libs[pkg] = GO_LIBS / pkg
                    pending.append(GO_LIBS / pkg)
            elif pkg.endswith("proto") and pkg.removesuffix("proto") in protos:
                used_protos[pkg] = protos[pkg.removesuffix("proto")]
            else:
                raise GoBuildError(
                    f"tests/go/{name} imports {PROTO_IMPORT_PREFIX}/{pkg}, which is neither "
                    f"{EXAMPLE_PROTOS / (pkg.removesuffix('proto') + '.proto')} nor a package in {GO_LIBS}; "
                    "add the proto or package, or fix the import"
                )
    return sorted(used_protos.values()), sorted(libs.values())


def source_hash(name: str) -> str:
    """Hash of everything a program's binary depends on that can change in this repo."""
    pdir = _program_dir(name)
    protos, libs = _dependencies(name)
    h = hashlib.sha256()
    h.update(f"recipe={_RECIPE}\n{_go_version()}\n".encode())
    files = [(f"{name}/{p.relative_to(pdir)}", p) for p in sorted(pdir.rglob("*")) if p.is_file()]
    for lib in libs:
        files += [(f"lib/{p.relative_to(GO_LIBS)}", p) for p in sorted(lib.rglob("*")) if p.is_file()]
    files += [(f"protos/{p.name}", p) for p in protos]
    for label, path in files:
        h.update(label.encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@contextmanager
def _build_lock() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "build.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def generate_protos(name: str | None = None) -> list[str]:
    """Generate Go code for protos/examples/*.proto (only those program `name` uses, when given)
    into the private GOPATH.

    Returns the import paths produced. Debian's protoc-gen-go is goprotobuf 1.3.x, whose gRPC
    generator is the `plugins=grpc` option (the code it emits matches Debian's grpc-go 1.33).
    """
    env = go_env()
    imports = []
    for proto in _dependencies(name)[0] if name else sorted(EXAMPLE_PROTOS.glob("*.proto")):
        pkg = f"{PROTO_IMPORT_PREFIX}/{proto.stem}proto"
        out = GOPATH_PRIVATE / "src" / pkg
        # Write into a fresh directory and swap it in, so a stale file from a removed proto never lingers.
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{proto.stem}-", dir=out.parent))
        try:
            _run(
                [
                    "protoc",
                    f"--plugin=protoc-gen-go={PROTOC_GEN_GO}",
                    f"-I{EXAMPLE_PROTOS}",
                    f"--go_out=plugins=grpc,M{proto.name}={pkg}:{tmp}",
                    proto.name,
                ],
                env=env,
                cwd=REPO,
                timeout=PROTOC_TIMEOUT,
                what=f"protoc for {proto.name}",
            )
            generated = list(tmp.rglob("*.pb.go"))
            if not generated:
                raise GoBuildError(f"protoc produced no Go file for {proto}")
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            for f in generated:
                shutil.move(str(f), out / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        imports.append(pkg)
    return imports


def cached_binary(name: str) -> Path:
    """Where build_go(name) puts (or finds) the binary for the current sources."""
    return BIN_DIR / f"{name}-{source_hash(name)}"


def build_go(name: str) -> Path:
    """Build tests/go/<name> and return the path of its binary, reusing a cached build.

    Raises GoUnavailableError when the toolchain is missing and GoBuildError when compiling fails.
    """
    reason = go_missing_reason()
    if reason is not None:
        raise GoUnavailableError(reason)
    with _memo_lock:
        target = cached_binary(name)
        if _memo.get(name) == target and target.exists():
            return target
        with _build_lock():
            if not target.exists():
                _build(name, target)
        _memo[name] = target
        return target


def go_program_or_skip(name: str) -> Path:
    """build_go(name) for a test, which is skipped (saying what is missing) where Go programs cannot be built."""
    import pytest  # here, not at the top: the benchmarks build with this module too, without pytest

    reason = go_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    return build_go(name)


def _build(name: str, target: Path) -> None:
    (GOPATH_PRIVATE / "src").mkdir(parents=True, exist_ok=True)
    generate_protos(name)
    for lib in _dependencies(name)[1]:
        # GOPATH mode only finds packages under a GOPATH: copy each shared package in, fresh.
        dest = GOPATH_PRIVATE / "src" / PROTO_IMPORT_PREFIX / lib.name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(lib, dest)
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        _run(
            ["go", "build", "-o", str(tmp), "."],
            env=go_env(),
            cwd=_program_dir(name),
            timeout=BUILD_TIMEOUT,
            what=f"go build of tests/go/{name}",
        )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    # Older builds are dead weight once their sources are gone, but another process may still be
    # running one it resolved earlier: only prune those nobody has built for a while.
    horizon = time.time() - PRUNE_AFTER
    for old in BIN_DIR.glob(f"{name}-*"):
        suffix = old.name.removeprefix(f"{name}-")
        if old != target and suffix.isalnum() and len(suffix) == 16 and old.stat().st_mtime < horizon:
            old.unlink(missing_ok=True)


def run_program(
    binary: Path | str,
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run a built program (typically a Go host) to completion, bounded in time.

    It gets its own session and no stdin (go-plugin hands the host's stdin to the plugin), and on
    timeout the whole process group, plugin included, is killed before TimeoutError is raised.
    """
    proc = subprocess.Popen(
        [str(binary), *args],
        env=env if env is not None else dict(os.environ),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # the test hosts start their plugin in a process group of its own (hostutil.NewHost): found
        # before the host dies (its plugin is then orphaned), and ended with it
        groups = {_group_of(pid) for pid, _ in descendants(proc.pid)} - {None, proc.pid}
        _kill_group(proc.pid)
        for group in groups:
            assert group is not None
            _kill_group(group)
        out, err = proc.communicate()
        raise TimeoutError(
            f"{binary} {' '.join(args)} did not finish within {timeout:.0f}s and was killed; "
            f"stdout={out!r} stderr tail={err[-2000:]!r}"
        ) from None
    finally:
        # A host that exits leaves no plugin behind, except after a crash: reap the group anyway.
        _kill_group(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
