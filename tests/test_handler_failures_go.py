"""A Python plugin's handler failures as go-plugin 1.0.1's host (tests/go/kv_host) sees them.

grpcio left a handler's sys.exit() / KeyboardInterrupt unanswered (the Go host, with no deadline, waited
forever) and turned a nested call's grpc.RpcError into UNKNOWN "Exception calling application: <repr>";
a Go plugin answers the first and passes the second's status through.
"""

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

TRAP = Path(__file__).resolve().parent / "plugins" / "trap_kv.py"


@pytest.fixture
def sockets() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hf") as path:  # short: a unix socket's path limit
        yield Path(path)


def _get(tmp_path: Path, sockets: Path, key: str) -> tuple[int, str, str]:
    """``kv_host get KEY`` against trap_kv; its watchdog (exit 3) ends a call that never returns."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_", "TRAP_"))}
    env.update({"KV_PLUGIN": f"{shlex.quote(sys.executable)} {shlex.quote(str(TRAP))}", "TMPDIR": str(sockets)})
    done = run_program(build_go("kv_host"), ["--timeout", "20s", "get", key], env=env, cwd=tmp_path, timeout=60)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(("key", "raised"), [("__exit__", "SystemExit(3)"),
                                             ("__interrupt__", "KeyboardInterrupt()"),
                                             ("__genexit__", "GeneratorExit('a helper generator was closed')")])
def test_base_exception_in_a_handler_fails_the_call_with_unknown(tmp_path: Path, sockets: Path, key: str,
                                                                 raised: str) -> None:
    code, out, err = _get(tmp_path, sockets, key)
    assert code == 1, (code, out, err)  # answered, not the watchdog's 3
    assert f"code = Unknown desc = the handler raised {raised}" in out
    assert f"a handler raised {raised}; its call fails with UNKNOWN" in err  # logged, with its traceback
    assert "kv_host: kill graceful=true" in err  # the plugin still shuts down as asked


def test_a_nested_calls_status_reaches_the_go_host(tmp_path: Path, sockets: Path) -> None:
    code, out, err = _get(tmp_path, sockets, "__nested__")
    assert code == 1, (code, out, err)
    assert "code = Unavailable desc = " in out  # as a Go plugin returning the status error
    assert "_InactiveRpcError" not in out and "debug_error_string" not in out
    assert len(out.strip().splitlines()) == 1
    assert "Exception calling application" not in err  # no grpcio traceback either
    assert "kv_host: kill graceful=true" in err
