"""examples/counter: the bidirectional example, end to end over the process runner.

The host serves AddHelper through the broker; the plugin's Put calls it back.
Every mode is run through the example's own command line, and through the API
with a host helper that does something other than adding, so the stored
value proves the plugin really called back into this host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "counter"
PLUGIN_CMD = f"{sys.executable} {EXAMPLE / 'plugin.py'}"

sys.path.insert(0, str(EXAMPLE))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402

from plugbay import Client, ClientConfig  # noqa: E402
from plugbay.errors import BrokerClosedError  # noqa: E402


def host(cwd: Path, *args: str, plugin: str = PLUGIN_CMD) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COUNTER_PLUGIN=plugin)
    return subprocess.run([sys.executable, str(EXAMPLE / "host.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


MODES = {
    "plain": [],
    "automtls": ["--automtls"],
    "multiplex": ["--multiplex"],
    "multiplex-automtls": ["--multiplex", "--automtls"],
}


@pytest.mark.parametrize("mode", list(MODES))
def test_cli_put_put_get(tmp_path: Path, mode: str) -> None:
    flags = MODES[mode]
    r = host(tmp_path, *flags, "put", "hello", "5")
    assert r.returncode == 0, r.stderr
    r = host(tmp_path, *flags, "put", "hello", "-2")
    assert r.returncode == 0, r.stderr
    r = host(tmp_path, *flags, "get", "hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3"
    # the Go example's file format, so Go and Python plugins share the store
    assert json.loads((tmp_path / "kv_hello").read_text()) == {"Value": 3}


def test_cli_get_missing_key_fails_with_message(tmp_path: Path) -> None:
    r = host(tmp_path, "get", "nothing")
    assert r.returncode == 1
    assert "no value stored for key 'nothing'" in r.stderr


def test_cli_needs_plugin_command(tmp_path: Path) -> None:
    r = host(tmp_path, "get", "x", plugin="")
    assert r.returncode == 1 and "set COUNTER_PLUGIN" in r.stderr


def test_cli_put_needs_a_number(tmp_path: Path) -> None:
    r = host(tmp_path, "put", "x")
    assert r.returncode == 2 and "put needs KEY" in r.stderr


class Multiplier:
    """A host helper that is not addition: the result shows whose helper ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def sum(self, a: int, b: int) -> int:
        self.calls.append((a, b))
        return (a + 1) * b


@pytest.mark.parametrize("multiplex", [False, True], ids=["per-connection", "multiplexed"])
@pytest.mark.parametrize("auto_mtls", [False, True], ids=["plain", "automtls"])
def test_api_callback_reaches_this_host(in_tmp: Path, multiplex: bool, auto_mtls: bool) -> None:
    helper = Multiplier()
    cfg = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                       cmd=[sys.executable, str(EXAMPLE / "plugin.py")], auto_mtls=auto_mtls,
                       multiplex_broker=multiplex)
    with Client(cfg) as client:
        counter = client.dispense(PLUGIN_NAME)
        counter.put("k", 3, helper)      # (0+1)*3 = 3
        counter.put("k", 4, helper)      # (3+1)*4 = 16
        assert counter.get("k") == 16
        assert helper.calls == [(0, 3), (3, 4)]
        # each Put served its helper on a fresh broker id and stopped it afterwards
        assert client.broker._served == []
    # the client's broker is closed with the client
    with pytest.raises(BrokerClosedError):
        client.broker.dial(1)


def test_api_helper_error_reaches_the_host(in_tmp: Path) -> None:
    class Broken:
        def sum(self, a: int, b: int) -> int:
            raise RuntimeError("the host's adder is broken")

    cfg = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                       cmd=[sys.executable, str(EXAMPLE / "plugin.py")])
    with Client(cfg) as client:
        counter = client.dispense(PLUGIN_NAME)
        with pytest.raises(grpc.RpcError) as err:
            counter.put("k", 1, Broken())
        # the helper's failure travelled host -> plugin (UNKNOWN) -> host
        assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert not (in_tmp / "kv_k").exists()


@pytest.mark.parametrize("multiplex", [False, True], ids=["per-connection", "multiplexed"])
def test_plugin_death_fails_a_pending_broker_dial(in_tmp: Path, multiplex: bool) -> None:
    import signal
    import threading

    cfg = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                       cmd=[sys.executable, str(EXAMPLE / "plugin.py")], multiplex_broker=multiplex)
    with Client(cfg) as client:
        client.dispense(PLUGIN_NAME).put("k", 1, Multiplier())  # the broker stream is up
        errors: list[BaseException] = []

        def dialer() -> None:
            try:
                client.broker.dial(777, timeout=60)  # never announced
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=dialer, name="plugbay-test-dialer")
        t.start()
        os.kill(int(client.runner.id), signal.SIGKILL)
        t.join(30)
        assert not t.is_alive(), "the dial outlived the plugin"
        assert len(errors) == 1 and isinstance(errors[0], BrokerClosedError), errors
        assert "777" in str(errors[0])


@pytest.mark.parametrize("auto_mtls", [False, True], ids=["plain", "automtls"])
def test_reattached_host_brokers_on_its_own_stream(in_tmp: Path, auto_mtls: bool) -> None:
    """A second host (reattach) opens its own StartStream; the plugin brokers with the newest one."""
    first = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                                cmd=[sys.executable, str(EXAMPLE / "plugin.py")], auto_mtls=auto_mtls))
    try:
        first.start()
        first.dispense(PLUGIN_NAME).put("r", 1, Multiplier())
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                                     reattach=first.reattach_config()))
        with second:
            helper = Multiplier()
            second.dispense(PLUGIN_NAME).put("r", 5, helper)   # (1+1)*5
            assert helper.calls == [(1, 5)]
            assert second.dispense(PLUGIN_NAME).get("r") == 10
    finally:
        first.kill()


# --- the file store shared with go-plugin's Go counter plugin ------------------------------------
# Go's Put does `v, _ := k.Get(key)` (any read or parse error counts as 0) and its Get unmarshals
# into struct{Value int64}; the expectations below were checked against Go 1.19's encoding/json.


def _api_client() -> Client:
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                               cmd=[sys.executable, str(EXAMPLE / "plugin.py")]))


def test_cli_put_over_a_non_json_file_counts_it_as_zero(tmp_path: Path) -> None:
    (tmp_path / "kv_shared").write_text("world")  # what the KV example stores
    r = host(tmp_path, "put", "shared", "5")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "ERROR" not in r.stderr, r.stderr
    assert json.loads((tmp_path / "kv_shared").read_text()) == {"Value": 5}


@pytest.mark.parametrize(("stored", "expected"), [
    ('{"value":3}', 3),                      # field names match case-insensitively
    ('{"VALUE":-4}', -4),
    ('{"Valu\\u0065":5}', 5),                # keys are matched after unescaping
    ("{}", 0),                               # a missing Value is 0
    ('{"other":[1,{"Value":9}]}', 0),        # only the top-level field counts
    ("null", 0),
    ('{"Value":null}', 0),
    ('{"Value":4,"value":null}', 4),         # null leaves the field alone
    ('{"Value":1,"value":2}', 2),            # the last match wins
    ('{"Value":-0}', 0),
    ('{"Value":9223372036854775807}', 2**63 - 1),
    ('{"Value":-9223372036854775808}', -2**63),
    (' \n{"Value":7}\t', 7),
    ('{"x":' + "9" * 5000 + ',"Value":41}', 41),  # a field Go ignores may hold any number (Python's int() refuses)
])
def test_get_reads_what_go_reads(in_tmp: Path, stored: str, expected: int) -> None:
    (in_tmp / "kv_k").write_text(stored)
    with _api_client() as client:
        assert client.dispense(PLUGIN_NAME).get("k") == expected


BAD_VALUES = [
    "world",                                 # not JSON
    "",
    '{"Value":1} x',                         # trailing data
    "\ufeff{\"Value\":1}",                   # a BOM
    '{"Value":3.0}',                         # any float literal, even a whole one
    '{"Value":1e2}',
    '{"Value":"3"}',
    '{"Value":true}',
    '{"Value":[1]}',
    '{"Value":{"n":1}}',
    '{"Value":9223372036854775808}',         # beyond int64
    '{"Value":-9223372036854775809}',
    '{"Value":' + "9" * 5000 + "}",
    '{"Value":NaN}',                         # Python's json accepts these, Go's does not
    '{"Value":Infinity}',
    '{"Value":"x","value":4}',               # a bad match spoils the read even when a later one is good
    "[1]",
    "3",
    '"x"',
]


@pytest.mark.parametrize("stored", BAD_VALUES)
def test_get_of_a_value_go_refuses_is_an_error(in_tmp: Path, stored: str) -> None:
    (in_tmp / "kv_k").write_text(stored)
    with _api_client() as client:
        with pytest.raises(grpc.RpcError) as err:
            client.dispense(PLUGIN_NAME).get("k")
    # a Go plugin's error reaches a host as UNKNOWN
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert "kv_k" in err.value.details()


@pytest.mark.parametrize("stored", BAD_VALUES)
def test_put_over_a_value_go_refuses_counts_it_as_zero(in_tmp: Path, stored: str) -> None:
    (in_tmp / "kv_k").write_text(stored)
    helper = Multiplier()
    with _api_client() as client:
        client.dispense(PLUGIN_NAME).put("k", 3, helper)
    assert helper.calls == [(0, 3)]
    assert json.loads((in_tmp / "kv_k").read_text()) == {"Value": 3}


def test_get_reads_past_invalid_utf8_in_other_fields(in_tmp: Path) -> None:
    # Go decodes invalid UTF-8 inside strings as U+FFFD rather than failing
    (in_tmp / "kv_k").write_bytes(b'{"Value":2,"x":"\xff"}')
    with _api_client() as client:
        assert client.dispense(PLUGIN_NAME).get("k") == 2


def test_get_of_an_unreadable_file_is_an_error(in_tmp: Path) -> None:
    (in_tmp / "kv_d").mkdir()
    with _api_client() as client:
        counter = client.dispense(PLUGIN_NAME)
        with pytest.raises(grpc.RpcError) as err:
            counter.get("d")
        assert err.value.code() == grpc.StatusCode.UNKNOWN and "kv_d" in err.value.details()
