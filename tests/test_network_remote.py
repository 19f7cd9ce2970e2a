"""RemoteClient as users meet it: handshake facts from Discovery, version negotiation, a plugin without
Discovery, the Supervisor over a target, and the kv/counter example hosts with --target."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from fractions import Fraction
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path

import pytest

from tests.net_util import (HANDSHAKE, PLUGIN_NAME, PLUGINS, SERVER_NAME, Replica, connection_lost, first_check_passed,
                             make_pki)
from tests.ports import HeldPort
from tests.resilience_util import wait_until

from plugbay import (
    AsyncRemoteClient,
    BrokerError,
    CallTimeoutError,
    ClientStateError,
    ConfigError,
    HandshakeTimeoutError,
    NoEndpointsError,
    RemoteClient,
    RemoteConfig,
    RestartPolicy,
    RetryPolicy,
    Supervisor,
    VersionMismatchError,
)
from plugbay.network import connect

REPO = Path(__file__).resolve().parent.parent
FAST_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 300),
                  ("grpc.min_reconnect_backoff_ms", 100))


@pytest.fixture()
def replica() -> Iterator[Replica]:
    rep = Replica("127.0.0.1:0", env={"NET_KV_VERSIONS": "1,2"})
    try:
        yield rep
    finally:
        rep.stop()


def test_handshake_facts_come_from_discovery_and_the_highest_common_version_wins(replica: Replica) -> None:
    with connect(f"static:///{replica.address}", handshake=HANDSHAKE, versioned_plugins={1: PLUGINS, 2: PLUGINS},
                 insecure=True, name="kv-v") as client:
        assert client.negotiated_version == 2
        info = client.handshake
        assert (info.network, info.address, info.protocol, info.multiplex) == ("tcp", replica.address, "grpc", False)
        assert client.description is not None and list(client.description.versions[1].plugins) == ["kv_grpc"]
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"


def test_no_common_version_is_a_version_mismatch_with_both_lists() -> None:
    rep = Replica("127.0.0.1:0", env={"NET_KV_VERSIONS": "3,4"})
    try:
        with pytest.raises(VersionMismatchError) as err:
            with RemoteClient(RemoteConfig(target=f"static:///{rep.address}", handshake=HANDSHAKE,
                                           plugins=PLUGINS, insecure=True)):
                pass
        assert "host supports [1], plugin supports [3, 4]" in str(err.value)
    finally:
        rep.stop()


def test_a_plugin_without_discovery_is_assumed_to_speak_the_handshake_version(
        caplog: pytest.LogCaptureFixture) -> None:
    rep = Replica("127.0.0.1:0", env={"NET_KV_DISCOVERY": "0"})
    try:
        with connect(f"static:///{rep.address}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                     name="kv-plain") as client:
            assert client.negotiated_version == 1 and client.description is None
            assert client.dispense(PLUGIN_NAME).get("__pid__") == str(rep.proc.pid).encode()
        assert "does not serve plugbay.network.v1.Discovery" in caplog.text
    finally:
        rep.stop()


@pytest.mark.parametrize("make, says", [
    (lambda: RemoteClient(None), "RemoteClient takes a RemoteConfig, got NoneType"),  # type: ignore[arg-type]
    (lambda: AsyncRemoteClient(None), "RemoteClient takes a RemoteConfig, got NoneType"),  # type: ignore[arg-type]
    (lambda: RemoteClient(RemoteConfig(target="static:///127.0.0.1:1", handshake=HANDSHAKE, plugins=PLUGINS,
                                       tls=3)), "RemoteConfig.tls must be a NetworkTLS or None, got int"),  # type: ignore[arg-type]
    (lambda: RemoteClient(RemoteConfig(target="static:///127.0.0.1:1", handshake=HANDSHAKE, plugins=PLUGINS,
                                       insecure=True, outlier=3)),  # type: ignore[arg-type]
     "RemoteConfig.outlier must be an OutlierPolicy or None, got int"),
])
def test_a_wrong_remote_option_is_a_config_error_when_the_client_is_made(make: Any, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        make()  # they raised AttributeError, from start() for tls= and outlier=


@pytest.mark.parametrize("option, says", [
    ({"policy": "random"}, r"RemoteConfig.policy: unknown pick policy 'random'; pass policy='round_robin' or"
                           r" 'pick_first'"),
    ({"health_interval": 0}, r"RemoteConfig.health_interval must be a number of seconds > 0, got 0; pass e.g."
                             r" health_interval=1.0"),
    ({"health_timeout": -1}, r"RemoteConfig.health_timeout must be a number of seconds > 0, got -1"),
    ({"health_interval": "1"}, r"RemoteConfig.health_interval must be a number of seconds > 0, got '1'"),
    ({"dns_refresh": 0}, r"RemoteConfig.dns_refresh must be a number of seconds > 0, got 0"),
    # passed on to the Client's ClientConfig, whose check named them ClientConfig.start_timeout etc.
    ({"start_timeout": "x"}, r"RemoteConfig.start_timeout must be a number of seconds > 0, got 'x'; pass e.g."
                             r" start_timeout=30.0"),
    ({"start_timeout": 0}, r"RemoteConfig.start_timeout must be a number of seconds > 0, got 0"),
    ({"call_timeout": -1}, r"RemoteConfig.call_timeout must be a number of seconds > 0, got -1"),
    ({"call_timeout": float("nan")}, r"RemoteConfig.call_timeout must be a number of seconds > 0, got nan"),
    ({"handshake": None}, r"RemoteConfig.handshake must be a HandshakeConfig, got NoneType"),
    ({"plugins": ["kv"]}, r"RemoteConfig.plugins"),
    ({"versioned_plugins": {1: 5}}, r"RemoteConfig.versioned_plugins"),
    ({"name": 5}, r"RemoteConfig.name must be a str or None, got 5"),
    ({"grpc_options": {"grpc.x": 1}}, r"RemoteConfig.grpc_options must be a list of \(name, value\) pairs"),
    ({"logger": "kv"}, r"RemoteConfig.logger"),
])
def test_a_wrong_pool_option_is_a_config_error_when_the_client_is_made(option: dict[str, Any], says: str) -> None:
    config = RemoteConfig(**{"target": "static:///127.0.0.1:1", "handshake": HANDSHAKE, "plugins": PLUGINS,
                             "insecure": True, **option})
    with pytest.raises(ConfigError, match=says):  # they passed RemoteClient() and failed only at start()
        RemoteClient(config)
    with pytest.raises(ConfigError, match=says):
        AsyncRemoteClient(config)


def test_remote_timeouts_take_any_real_number_kept_as_floats() -> None:
    # ClientConfig takes int or float only (its waits refuse a Fraction): RemoteConfig's check turns one into
    # a float before the ClientConfig is made, as it does the pool's health settings
    config = RemoteConfig(target="static:///127.0.0.1:1", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                          start_timeout=Fraction(3, 2), call_timeout=Fraction(5, 2))  # type: ignore[arg-type]
    client = RemoteClient(config)
    assert (client.config.start_timeout, client.config.call_timeout) == (1.5, 2.5)
    assert type(config.start_timeout) is float and type(config.call_timeout) is float
    client.kill()


def test_nothing_listening_is_a_handshake_timeout_naming_the_target(closed_port: int) -> None:
    port = closed_port
    with pytest.raises(HandshakeTimeoutError) as err:
        with RemoteClient(RemoteConfig(target=f"static:///127.0.0.1:{port}", handshake=HANDSHAKE, plugins=PLUGINS,
                                       insecure=True, start_timeout=1.5, name="kv-none")):
            pass
    # the refusals seen by then make it a RemoteRefusedError, a HandshakeTimeoutError too (test_network_refused)
    assert f"remote plugin 'kv-none' at 'static:///127.0.0.1:{port}'" in str(err.value)
    assert "Connection refused" in str(err.value) or "unhealthy" in str(err.value)


def test_the_broker_is_refused_with_a_typed_error(replica: Replica) -> None:
    with connect(f"static:///{replica.address}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True) as client:
        with pytest.raises(BrokerError, match="need a remote plugin that multiplexes them"):
            client.broker.dial(1)


def test_supervisor_over_a_target_holds_calls_while_no_endpoint_answers(
        tmp_path: Path, hold_port: Callable[[int], HeldPort]) -> None:
    rep = Replica("127.0.0.1:0")
    port = rep.port
    cfg = RemoteConfig(target=f"static:///127.0.0.1:{port}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                       call_timeout=1.5, health_interval=0.2, start_timeout=20, grpc_options=FAST_RECONNECT,
                       name="kv-sup")
    try:
        with Supervisor(cfg, health_interval=0.3, unhealthy_grace=1.0,
                        restart=RestartPolicy(max_restarts=5, initial_backoff=0.05)) as sup:
            kv = sup.dispense(PLUGIN_NAME)
            assert kv.get("__pid__") == str(rep.proc.pid).encode()
            rep.kill9()
            down = hold_port(port)  # refusing while it is down: nothing else takes its port
            connection_lost(sup.current_client, f"tcp:{rep.address}")  # else the call may break in flight
            started = time.monotonic()
            with pytest.raises((NoEndpointsError, CallTimeoutError)):
                kv.get("__pid__")
            # no endpoint answers until the test starts one below, so a call without its deadline would
            # never return: a generous bound tells the two apart without timing the deadline itself
            assert time.monotonic() - started < 15
            rep.stop()
            down.release()
            rep = Replica(f"127.0.0.1:{port}")  # discovery's endpoint answers again
            assert wait_until(lambda: _answers(kv) == str(rep.proc.pid).encode(), 30), list(sup.events)
            assert sup.current_client is not None and sup.current_client.runner.wait(0) is None
    finally:
        rep.stop()


def _answers(kv: object) -> bytes | None:
    try:
        return kv.get("__pid__")  # type: ignore[attr-defined, no-any-return]
    except Exception:
        return None


# --- the example hosts --------------------------------------------------------------------------


def run(example: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KV_PLUGIN", "COUNTER_PLUGIN")}
    return subprocess.run([sys.executable, str(REPO / "examples" / example / "host.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_kv_example_host_uses_a_remote_plugin_over_mtls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    rep = Replica("127.0.0.1:0", env={"NET_KV_CERT": pki["server"], "NET_KV_KEY": pki["server_key"],
                                      "NET_KV_CA": pki["ca"]})
    try:
        flags = ["--target", f"static:///{rep.address}", "--cert", pki["client"], "--key", pki["client_key"],
                 "--ca", pki["ca"], "--server-name", SERVER_NAME]
        put = run("kv", tmp_path, *flags, "put", "greeting", "hello world")
        assert (put.returncode, put.stdout) == (0, ""), put.stderr
        get = run("kv", tmp_path, *flags, "get", "greeting")
        assert (get.returncode, get.stdout) == (0, "hello world\n"), get.stderr
        rogue = ["--target", f"static:///{rep.address}", "--cert", pki["rogue_client"], "--key",
                 pki["rogue_client_key"], "--ca", pki["ca"], "--server-name", SERVER_NAME]
        refused = run("kv", tmp_path, *rogue, "get", "greeting")
        assert refused.returncode == 1 and "Error: TLS with remote plugin 'kv'" in refused.stderr
    finally:
        rep.stop()


def test_example_hosts_check_their_network_flags(tmp_path: Path) -> None:
    missing = run("kv", tmp_path, "--target", "static:///127.0.0.1:7001", "get", "k")
    assert missing.returncode == 2 and "--target needs --cert, --key and --ca" in missing.stderr
    stray = run("kv", tmp_path, "--cert", "x.crt", "get", "k")
    assert stray.returncode == 2 and "go with --target" in stray.stderr
    bad = run("kv", tmp_path, "--target", "static:///10.0.0.5", "--insecure", "get", "k")
    assert bad.returncode == 1 and "Error: bad target 'static:///10.0.0.5'" in bad.stderr
    both = run("counter", tmp_path, "--target", "static:///127.0.0.1:7001", "--insecure", "--multiplex", "get", "k")
    assert both.returncode == 2 and "--multiplex with --target needs TLS" in both.stderr


def test_counter_example_host_reaches_an_unmodified_plugin_on_the_network(tmp_path: Path) -> None:
    """The counter example plugin served on TCP (no Discovery): get works; put needs the broker."""
    env = {**os.environ, "BASIC_PLUGIN": "hello", "PLUGBAY_LISTEN": "tcp:127.0.0.1:0"}
    plugin = subprocess.Popen([sys.executable, str(REPO / "examples" / "counter" / "plugin.py")], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert plugin.stdout is not None
        line = plugin.stdout.readline()
        assert line.startswith("1|1|tcp|127.0.0.1:"), line
        port = int(line.split("|")[3].rpartition(":")[2])
        (tmp_path / "kv_hello").write_text('{"Value":7}')  # the Go example's file format
        flags = ["--target", f"static:///127.0.0.1:{port}", "--insecure"]
        get = run("counter", tmp_path, *flags, "get", "hello")
        assert (get.returncode, get.stdout) == (0, "7\n"), get.stderr
        put = run("counter", tmp_path, *flags, "put", "hello", "1")
        assert put.returncode == 1 and "brokered connections" in put.stderr
        assert "serves plain gRPC calls only" in put.stderr
    finally:
        plugin.terminate()
        plugin.wait(10)
        if plugin.stdout is not None:
            plugin.stdout.close()


def test_supervisor_does_not_reconnect_when_one_of_several_replicas_dies() -> None:
    a, b = Replica("127.0.0.1:0"), Replica("127.0.0.1:0")
    cfg = RemoteConfig(target=f"static:///{a.address},{b.address}", handshake=HANDSHAKE, plugins=PLUGINS,
                       insecure=True, call_timeout=2.0, health_interval=0.2, name="kv-sup2")
    try:
        # a Get sent on a's connection before gRPC saw it close fails (the pool never resends a call
        # that may have left); a read is safe to repeat, so the retry policy sends it again
        with Supervisor(cfg, health_interval=0.5, unhealthy_grace=3.0,
                        retry=RetryPolicy(methods=["Get"], initial_backoff=0.01)) as sup:
            kv = sup.dispense(PLUGIN_NAME)
            first_check_passed(sup.current_client, f"tcp:{a.address}", f"tcp:{b.address}")  # else all to one
            assert {kv.get("__pid__") for _ in range(6)} == {str(a.proc.pid).encode(), str(b.proc.pid).encode()}
            a.kill9()
            deadline = time.monotonic() + 4.0  # longer than unhealthy_grace: a reconnect would show
            answers = set()
            for _ in range(400):
                answers.add(kv.get("__pid__"))
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            assert answers == {str(b.proc.pid).encode()}
            assert sup.restarts == 0 and "failure" not in [e.kind for e in sup.events], list(sup.events)
    finally:
        a.stop()
        b.stop()


def start_ended_by(client: RemoteClient, how: str, ready: Callable[[], object]) -> tuple[BaseException | None, float]:
    """What client.start(), on another thread, ended with once ``how`` (close or kill) was asked of the
    client when ``ready()`` turned True, and how long that close or kill took."""
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            client.start()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    try:
        assert wait_until(ready, 10)
        asked = time.monotonic()
        getattr(client, how)()
        took = time.monotonic() - asked
    finally:
        starter.join(20)
    assert not starter.is_alive()
    return outcome[0], took


@pytest.mark.parametrize("how", ["kill", "close"])
def test_kill_during_start_ends_the_start_at_once(how: str, closed_port: int) -> None:
    port = closed_port  # nothing listens there: start() waits for an endpoint that never comes
    client = RemoteClient(RemoteConfig(target=f"static:///127.0.0.1:{port}", handshake=HANDSHAKE, plugins=PLUGINS,
                                       insecure=True, start_timeout=15.0, health_interval=0.2, name="kv-killed"))
    # well into the wait for an endpoint
    outcome, took = start_ended_by(client, how, lambda: client._pool is not None and time.sleep(0.5) is None)
    assert took < 5.0, f"{how}() waited {took:.1f}s: start_timeout (15 s) was waited out"
    assert isinstance(outcome, ClientStateError), outcome
    said = str(outcome)
    # what happened, and what to do; nothing was stopped: the plugin is remote (it once said "plugbay stopped the
    # plugin", a launched plugin's words)
    assert f"the client of remote plugin 'kv-killed' at 'static:///127.0.0.1:{port}' was closed (close() or kill())" \
        " while it was still connecting" in said and "Make a new RemoteClient" in said, said
    assert "stopped" not in said, said
    with pytest.raises(ClientStateError):
        client.start()
