"""Broker interop with real go-plugin 1.0.1 Go code (per-connection mode).

* Go counter host -> Python counter plugin: the Python plugin dials the Go
  host's brokered AddHelper.
* Python counter host -> Go counter plugin: the Go plugin dials the Python
  host's brokered AddHelper.

go-plugin 1.0.1 has no multiplexed broker, and its plugin side cannot dial a
brokered server under AutoMTLS (its bug #109: the plugin's TLS config has no
ServerName, so it checks the host's certificate against "unused"). Those
limits are pinned down here too, so a change on either side shows up.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import grpc
import pytest

from plugbay import BrokerError, BrokerTLSError, Client, ClientConfig, PluginUnavailableError, RetryPolicy, install
from plugbay.errors import ProtocolMismatchError
from tests.gobuild import go_program_or_skip, run_program

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "counter"
PY_PLUGIN = f"{sys.executable} {EXAMPLE / 'plugin.py'}"

sys.path.insert(0, str(EXAMPLE))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402

pytestmark = pytest.mark.go


@pytest.fixture(scope="module")
def go_host() -> Path:
    return go_program_or_skip("counter_host")


@pytest.fixture(scope="module")
def go_plugin() -> Path:
    return go_program_or_skip("counter_plugin")


def run_go_host(host: Path, cwd: Path, *args: str):  # type: ignore[no-untyped-def]
    env = dict(os.environ, COUNTER_PLUGIN=PY_PLUGIN)
    return run_program(host, list(args), env=env, cwd=cwd, timeout=90)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def sum(self, a: int, b: int) -> int:
        self.calls.append((a, b))
        return a + b + 1000  # not plain addition: the stored value proves this host answered


# --------------------------------------------------------- Go host, Python plugin


def test_go_host_python_plugin_callback(go_host: Path, tmp_path: Path) -> None:
    r = run_go_host(go_host, tmp_path, "put", "n", "5")
    assert r.returncode == 0, r.stdout + r.stderr
    # the Python plugin called the Go host's AddHelper through the broker
    assert "sum a=0 b=5 r=5 broker_id=1" in r.stderr
    assert re.search(r"handshake protocol=grpc version=1 network=unix", r.stderr)
    r = run_go_host(go_host, tmp_path, "put", "n", "3")
    assert r.returncode == 0 and "sum a=5 b=3 r=8" in r.stderr
    r = run_go_host(go_host, tmp_path, "get", "n")
    assert r.returncode == 0 and r.stdout.strip() == "8"
    assert json.loads((tmp_path / "kv_n").read_text()) == {"Value": 8}


def test_go_host_automtls_python_plugin_callback(go_host: Path, tmp_path: Path) -> None:
    # the Go host serves AddHelper with its P-521 cert; the Python plugin verifies it via OpenSSL
    r = run_go_host(go_host, tmp_path, "--automtls", "put", "t", "7")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "automtls=true" in r.stderr and "sum a=0 b=7 r=7" in r.stderr


# --------------------------------------------------------- Python host, Go plugin


def test_python_host_go_plugin_callback(go_plugin: Path, in_tmp: Path) -> None:
    rec = Recorder()
    cfg = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, cmd=[str(go_plugin)])
    with Client(cfg) as client:
        assert not client.handshake.multiplex
        counter = client.dispense(PLUGIN_NAME)
        counter.put("g", 2, rec)
        counter.put("g", 3, rec)
        assert counter.get("g") == 2005
    assert rec.calls == [(0, 2), (1002, 3)]
    assert json.loads((in_tmp / "kv_g").read_text()) == {"Value": 2005}


def test_go_and_python_plugins_share_the_store(go_plugin: Path, in_tmp: Path) -> None:
    def run(cmd: list[str], value: int) -> int:
        cfg = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, cmd=cmd)
        with Client(cfg) as client:
            counter = client.dispense(PLUGIN_NAME)
            counter.put("s", value, Recorder())
            return int(counter.get("s"))

    assert run([sys.executable, str(EXAMPLE / "plugin.py")], 1) == 1001
    assert run([str(go_plugin)], 1) == 2002
    assert run([sys.executable, str(EXAMPLE / "plugin.py")], 1) == 3003


def test_go_101_plugin_cannot_broker_under_automtls(go_plugin: Path, in_tmp: Path) -> None:
    """go-plugin bug #109, present in 1.0.1: pinned so a fix (or a regression of ours) is noticed.
    It is a typed error naming the limitation and the way out, which a RetryPolicy does not retry."""
    cfg = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, cmd=[str(go_plugin)],
                       auto_mtls=True)
    retries: list[int] = []
    with Client(cfg) as client:
        counter = client.dispense(PLUGIN_NAME)
        # the main connection works under AutoMTLS: the Go plugin itself answers (file not found)
        with pytest.raises(grpc.RpcError) as first:
            counter.get("m")
        assert "no such file" in str(first.value.details())
        install(client, retry=RetryPolicy(all_idempotent=True, initial_backoff=0.01,
                                          on_retry=lambda m, n, e, s: retries.append(n)))
        with pytest.raises(BrokerTLSError) as err:
            counter.put("m", 1, Recorder())
    assert isinstance(err.value, grpc.RpcError) and err.value.code() == grpc.StatusCode.UNAVAILABLE
    # what this failure was before it had a type of its own: code catching PluginUnavailableError still does
    assert isinstance(err.value, PluginUnavailableError) and isinstance(err.value, BrokerError)
    assert "authentication handshake failed" in str(err.value.details())
    assert "not unused" in str(err.value.details())
    said = str(err.value)
    assert "go-plugin 1.0.1's known limitation" in said and "bug #109" in said, said
    assert "newer go-plugin" in said and "auto_mtls=False" in said and "Retry calls" not in said, said
    assert retries == [], "a failure every try meets again was retried"


def test_go_101_plugin_refuses_multiplexing(go_plugin: Path, in_tmp: Path) -> None:
    # an old plugin prints no 7th handshake field: the host says so, as go-plugin does
    cfg = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, cmd=[str(go_plugin)],
                       multiplex_broker=True)
    with pytest.raises(ProtocolMismatchError, match="multiplex"):
        with Client(cfg) as client:
            client.dispense(PLUGIN_NAME)
