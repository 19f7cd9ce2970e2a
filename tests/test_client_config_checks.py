"""A wrong ClientConfig (or HandshakeConfig, or ProcessRunner cmd) is a ConfigError saying what to pass,
raised before any plugin starts; a reattach that fails leaves the plugin it named running."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

import grpc  # noqa: E402

from plugbay import (  # noqa: E402
    AsyncSupervisor,
    CircuitBreaker,
    Client,
    ClientConfig,
    ConfigError,
    HandshakeConfig,
    HandshakeInfo,
    PlugbayError,
    ProcessRunner,
    ReattachConfig,
    RestartPolicy,
    RetryPolicy,
    Supervisor,
)

KV = [sys.executable, str(REPO / "examples" / "kv" / "plugin.py")]
PLUGINS = {PLUGIN_NAME: KVPlugin()}


def _config() -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=KV)


@pytest.mark.parametrize("changes, says", [
    ({"handshake": (1, "BASIC_PLUGIN", "hello")}, "handshake must be a HandshakeConfig"),
    ({"plugins": [KVPlugin()]}, "plugins must be a dict of plugin name -> GRPCPlugin instance"),
    ({"plugins": {PLUGIN_NAME: object()}}, "not a GRPC-compatible plugin"),
    ({"plugins": {PLUGIN_NAME: KVPlugin}}, "is the class KVPlugin: pass an instance, KVPlugin()"),
    ({"versioned_plugins": {"x": PLUGINS}}, "keys are protocol versions"),
    ({"cmd": "python plugin.py"}, "not one command line"),
    ({"cmd": []}, "non-empty list of strings"),
    ({"runner": "process"}, "runner must be a Runner"),
    ({"secure_config": b"\0" * 32}, "secure_config must be a SecureConfig"),
    ({"secure_config": ""}, "secure_config must be a SecureConfig"),
    ({"start_timeout": "5"}, "start_timeout must be a number of seconds > 0"),
    ({"start_timeout": -1}, "start_timeout must be a number of seconds > 0"),
    ({"start_timeout": float("inf")}, "start_timeout must be a number of seconds > 0"),
    ({"call_timeout": 0}, "call_timeout (None: no deadline) must be a number of seconds > 0"),
    ({"kill_grace": -0.5}, "kill_grace must be a number of seconds >= 0"),
    ({"env": {"A": 1}}, "env must be a dict of str -> str"),
    # what execve cannot carry: Popen raised a bare ValueError from start()
    ({"env": {"A=B": "1"}}, "environment variable name 'A=B' holds '='"),
    ({"env": {"": "1"}}, "environment variable name '' is empty"),
    ({"env": {"A": "x\0y"}}, "the value of environment variable 'A' holds a NUL byte"),
    ({"cmd": [sys.executable, "plug\0in.py"]}, "ClientConfig.cmd holds a NUL byte"),
    ({"grpc_options": {"grpc.x": 1}}, "grpc_options must be a list of (name, value) pairs"),
    ({"logger": "mylog"}, "logger must be a logging.Logger"),
    ({"min_port": 70000, "max_port": 80000}, "min_port must be a port number (1-65535)"),
    ({"min_port": 30000, "max_port": 20000}, "min_port 30000 is above max_port 20000"),
    ({"auto_mtls": "yes"}, "auto_mtls must be True, False or None"),
    ({"multiplex_broker": 1}, "multiplex_broker must be True or False"),
    ({"stdout_sink": "out.txt"}, "stdout_sink must be a callable"),
    ({"name": ""}, "name must be a non-empty str or None"),
    ({"mux_keepalive": "30"}, "ClientConfig.mux_keepalive must be (INTERVAL, TIMEOUT)"),
    ({"mux_keepalive": (-1.0, 10.0)}, "ClientConfig.mux_keepalive (-1.0, 10.0, 10.0): every figure must be"),
])
def test_a_wrong_field_is_a_config_error_naming_it(changes: dict[str, Any], says: str) -> None:
    fields: dict[str, Any] = {"handshake": HANDSHAKE, "plugins": PLUGINS, "cmd": KV, **changes}
    with pytest.raises(ConfigError) as err:
        ClientConfig(**fields)
    assert says in str(err.value)


def test_a_field_changed_after_construction_is_checked_by_client() -> None:
    config = ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=KV)
    config.logger = "mylog"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="logger must be a logging.Logger"):
        Client(config)
    with pytest.raises(ConfigError, match="Client takes a ClientConfig"):
        Client({"handshake": HANDSHAKE})  # type: ignore[arg-type]


def test_right_values_pass(tmp_path: Path) -> None:
    from fractions import Fraction

    ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=KV, unix_socket_temp_dir=tmp_path,  # a PathLike
                 grpc_options=[["grpc.primary_user_agent", "x"], (b"grpc.max_receive_message_length", 10)],
                 start_timeout=3, logger=logging.LoggerAdapter(logging.getLogger("x"), {}))
    with pytest.raises(ConfigError, match="start_timeout must be a number of seconds"):
        ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=KV, start_timeout=Fraction(3))  # no wait takes it
    ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=KV, start_timeout=5, call_timeout=None, kill_grace=0,
                 env={"A": "1"}, grpc_options=[("grpc.max_receive_message_length", 1 << 20)],
                 logger=logging.getLogger("x"), versioned_plugins={2: PLUGINS}, unix_socket_group=0,
                 stdout_sink=lambda data: None, min_port=1, max_port=65535)


@pytest.mark.parametrize("version", ["1", -1, True, 1.0])
def test_handshake_protocol_version_must_be_a_whole_number(version: Any) -> None:
    with pytest.raises(ConfigError, match="protocol_version must be a whole number"):
        HandshakeConfig(version, "BASIC_PLUGIN", "hello")


@pytest.mark.parametrize("key, value", [("K=V", "x"), ("K\0", "x"), ("K", "x\0")])
def test_a_magic_cookie_the_environment_cannot_carry_is_a_config_error(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match="magic cookie is passed to the plugin as an environment variable"):
        HandshakeConfig(1, key, value)


@pytest.mark.parametrize("kw, says", [
    ({"cmd": ["tr\0ue"]}, "ProcessRunner cmd holds a NUL byte"),
    ({"env": {"A=B": "1"}}, "ProcessRunner env cannot be the plugin's environment"),
    ({"cwd": "a\0"}, "ProcessRunner cwd holds a NUL byte"),
])
def test_a_process_runner_the_os_cannot_start_is_a_config_error(kw: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        ProcessRunner(**{"cmd": KV, **kw})


def test_a_launch_env_the_os_refuses_is_a_runner_error() -> None:
    from plugbay import RunnerError
    from plugbay.runners.base import LaunchSpec

    runner = ProcessRunner(KV)
    try:
        with pytest.raises(RunnerError, match="illegal environment variable name.*'=' from environment names"):
            runner.start(LaunchSpec(env={"A=B": "1"}))
        assert runner.pid is None
    finally:
        runner.kill(0)


def test_an_env_changed_after_construction_is_refused_by_start() -> None:
    config = ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=KV)
    config.env = {"A=B": "1"}
    with pytest.raises(ConfigError, match="environment variable name 'A=B'"):
        Client(config).start()


def test_a_command_line_string_is_not_a_cmd() -> None:
    with pytest.raises(ConfigError, match="not one command line"):
        ProcessRunner("python plugin.py")  # type: ignore[arg-type]


def test_a_missing_socket_folder_is_a_config_error_before_the_plugin_starts(tmp_path: Path) -> None:
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=KV,
                                 unix_socket_temp_dir=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="set unix_socket_temp_dir"):
        client.start()
    assert client.runner.pid is None  # never launched


@pytest.mark.parametrize("name, says", [
    ("x" * 300, "File name too long"),  # mkdtemp's OSError (ENAMETOOLONG) escaped start() untyped
    # the plugin failed to listen, after it was launched
    ("d" * 100, "107 bytes a unix socket path may have; set ClientConfig.unix_socket_temp_dir"),
])
def test_a_socket_folder_too_long_is_a_config_error_before_the_plugin_starts(tmp_path: Path, name: str,
                                                                            says: str) -> None:
    folder = tmp_path / name
    makeable = len(name) < 255
    if makeable:
        folder.mkdir()
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=KV, unix_socket_temp_dir=str(folder)))
    with pytest.raises(ConfigError, match="unix_socket_temp_dir") as err:
        client.start()
    assert says in str(err.value)
    assert client.runner.pid is None  # never launched
    assert not makeable or list(folder.iterdir()) == []


def test_a_multiplexed_plugins_reattach_config_is_refused() -> None:
    info = HandshakeInfo(1, 1, "unix", "/x", multiplex=True)
    with pytest.raises(ConfigError, match="multiplexed broker .* cannot be reattached"):
        ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=ReattachConfig(handshake=info))


def test_a_failed_reattach_leaves_the_plugin_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the KV plugin writes kv_<key> files in its cwd
    first = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=KV))
    try:
        first.start()
        kv = first.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        pid = first.runner.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # it answers nobody: the reattach's start times out
        try:
            second = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=1.0,
                                         reattach=first.reattach_config()))
            with pytest.raises(PlugbayError):
                second.start()
        finally:
            os.kill(pid, signal.SIGCONT)
        assert first.runner.wait(0) is None, "the failed reattach killed the plugin"
        assert kv.get("k") == b"v"
    finally:
        first.kill()


def test_a_running_plugins_runner_as_runner_is_a_config_error_and_left_running(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from plugbay.runners.base import reattach_runner

    monkeypatch.chdir(tmp_path)  # the KV plugin writes kv_<key> files in its cwd
    with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=KV)) as first:
        kv = first.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        attached = reattach_runner(first.reattach_config().runner)  # the running plugin, an AttachedRunner
        try:
            with pytest.raises(ConfigError, match=r"runner= .*reattach=ReattachConfig"):
                ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=attached)  # type: ignore[arg-type]
            config = ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=KV)
            config.cmd, config.runner = None, attached  # type: ignore[assignment]
            with pytest.raises(ConfigError, match=r"runner= .*reattach=ReattachConfig"):
                Client(config)
        finally:
            attached.detach()  # lets go of its reattach claim
        assert first.runner.wait(0.3) is None, "the refused config ended the running plugin"
        assert kv.get("k") == b"v"


def test_a_wrong_serve_config_plugin_set_is_a_config_error() -> None:
    from plugbay import ServeConfig

    with pytest.raises(ConfigError, match="ServeConfig.plugins must be a dict of plugin name"):
        ServeConfig(HANDSHAKE, plugins=[KVPlugin()])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="is the class KVPlugin: pass an instance"):
        ServeConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="keys are protocol versions"):
        ServeConfig(HANDSHAKE, versioned_plugins={"1": PLUGINS})  # type: ignore[dict-item]
    ServeConfig(HANDSHAKE, plugins=PLUGINS, versioned_plugins={2: PLUGINS})


def test_ctrl_c_during_kill_still_stops_the_plugin(tmp_path: Path) -> None:
    import subprocess

    host = REPO / "tests" / "plugins" / "ctrlc_kill_host.py"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, str(host)], capture_output=True, text=True, timeout=60, env=env,
                         cwd=tmp_path)
    lines = out.stdout.splitlines()
    pids = [int(line[4:]) for line in lines if line.startswith("pid=")]
    try:
        assert "alive=False" in lines, out.stdout + out.stderr[-2000:]
    finally:
        for pid in pids:  # never leave it behind, whatever the outcome
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("make, says", [
    (lambda: RetryPolicy(methods="Get"), "methods must be a list of method names"),
    (lambda: RetryPolicy(retry_on={"UNAVAILABLE"}), "use grpc.StatusCode.UNAVAILABLE"),
    (lambda: RetryPolicy(max_attempts="3"), "max_attempts must be a whole number"),
    (lambda: RetryPolicy(jitter=5), "jitter must be >= 0 and <= 1"),
    (lambda: RetryPolicy(per_attempt_timeout=0), "per_attempt_timeout (or None) must be > 0"),
    (lambda: CircuitBreaker(failure_threshold="5"), "failure_threshold must be a whole number"),
    (lambda: CircuitBreaker(failure_codes={"UNAVAILABLE"}), "use grpc.StatusCode.UNAVAILABLE"),
    (lambda: CircuitBreaker(window=float("nan")), "window must be a number"),
    (lambda: RestartPolicy(jitter=5), "jitter must be >= 0 and <= 1"),
    (lambda: RestartPolicy(max_restarts=1.5), "max_restarts must be a whole number"),
    (lambda: RetryPolicy(max_attempts=10 ** 400), "max_attempts is too large"),
    (lambda: RetryPolicy(retry_on=[[grpc.StatusCode.UNAVAILABLE]]), "retry_on holds"),
    (lambda: CircuitBreaker(failure_codes=[[grpc.StatusCode.UNAVAILABLE]]), "failure_codes holds"),
    (lambda: Supervisor("notaconfig"), "Supervisor takes a ClientConfig"),
    # no cmd (nor runner, nor reattach): made, then every start failed
    (lambda: Supervisor(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS)), "ClientConfig's cmd=, and this one"),
    (lambda: AsyncSupervisor(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS)), "ClientConfig's cmd=, and this one"),
    # a policy of the wrong kind would be accepted, then fail every call and never restart
    (lambda: Supervisor(_config(), restart=3), "Supervisor(restart=...) takes a RestartPolicy"),
    (lambda: Supervisor(_config(), restart={"max_restarts": 5}), "takes a RestartPolicy, got dict"),
    (lambda: Supervisor(_config(), retry=3), "Supervisor(retry=...): int is not a call layer"),
    (lambda: Supervisor(_config(), breaker="x"), "Supervisor(breaker=...) takes a CircuitBreaker"),
    (lambda: AsyncSupervisor(_config(), restart=3), "AsyncSupervisor(restart=...) takes a RestartPolicy"),
    (lambda: AsyncSupervisor(_config(), retry=3), "it has no run_async() method"),
    (lambda: AsyncSupervisor(_config(), breaker="x"), "AsyncSupervisor(breaker=...) takes a CircuitBreaker"),
])
def test_resilience_settings_of_the_wrong_kind_are_config_errors(make: Any, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        make()
    assert says in str(err.value)


def test_resilience_settings_of_the_right_kind_pass() -> None:
    RetryPolicy(methods=["Get", "/proto.KV/*"], retry_on={grpc.StatusCode.UNAVAILABLE}, max_attempts=2,
                per_attempt_timeout=1, overall_timeout=2.5)
    CircuitBreaker(failure_threshold=2, window=1, open_for=0.5, failure_codes=frozenset({grpc.StatusCode.INTERNAL}))
    RestartPolicy(max_restarts=0, initial_backoff=0, max_backoff=0)
    RestartPolicy(initial_backoff=60)  # above the default max_backoff: capped, as before
    codes = {grpc.StatusCode.UNAVAILABLE: 1}
    assert RetryPolicy(retry_on=codes.keys()).retry_on == frozenset(codes)  # any iterable of codes
    assert RetryPolicy(retry_on=(c for c in codes)).retry_on == frozenset(codes)  # read once
    CircuitBreaker(failure_codes=codes.keys())


def test_secure_config_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    from plugbay import SecureConfig

    with pytest.raises(ConfigError, match="SecureConfig.of_file cannot read"):
        SecureConfig.of_file(str(tmp_path / "missing"))


@pytest.mark.parametrize("kw, says", [
    ({"container_port": 0}, "container_port must be a port number (1-65535)"),
    ({"container_port": 70000}, "container_port must be a port number (1-65535)"),
    ({"container_port": "4000"}, "container_port must be a port number (1-65535)"),
    ({"user": 1000}, "user must be a str such as '1000'"),
])
def test_docker_runner_settings_are_checked_when_made(kw: dict[str, Any], says: str) -> None:
    from plugbay.runners.docker import DockerRunner

    with pytest.raises(ConfigError) as err:
        DockerRunner("plugbay-kv:latest", **kw)
    assert says in str(err.value)
