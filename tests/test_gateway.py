"""The gateway in front of real go-plugin 1.0.1 Go plugins, reached by grpcio clients over mTLS on 127.0.0.1."""

from __future__ import annotations

import logging
import math
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay._proto.plugbay import discovery_pb2, discovery_pb2_grpc
from plugbay._proto.plugin import grpc_broker_pb2, grpc_broker_pb2_grpc, grpc_controller_pb2, grpc_controller_pb2_grpc
from plugbay.core.resilience.restart import RestartPolicy
from plugbay.errors import ClientStateError, ConfigError, GatewayError, TLSConfigError
from plugbay.network.gateway import BROKER_REFUSAL, Gateway, GatewayConfig
from plugbay.network.gateway.cli import main as gateway_main
from tests import gobuild, netcerts, procs
from tests.ports import bind_lost, held_by, released_ports

_reason = gobuild.go_missing_reason()
pytestmark = [pytest.mark.go, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402

COOKIE = ("BASIC_PLUGIN", "hello")
HANG_GUARD = 30.0  # a bound on waiting for what must come, so a test that fails does not hang; never a speed check


@pytest.fixture(scope="module")
def kv_bin() -> str:
    return str(gobuild.build_go("kv_plugin"))


@pytest.fixture(scope="module")
def misbehave_bin() -> str:
    return str(gobuild.build_go("misbehave"))


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


def config(cmd: str, certs: netcerts.CertSet, **kw: object) -> GatewayConfig:
    return GatewayConfig(cmd=[cmd], cookie=COOKIE, listen="127.0.0.1:0", cert_file=str(certs.cert_file),
                         key_file=str(certs.key_file), client_ca_file=str(certs.client_ca_file),
                         plugins=("kv_grpc",), **kw)  # type: ignore[arg-type]


def secure(certs: netcerts.CertSet, address: str, client: netcerts.Issued | None = None,
           server_ca: netcerts.Issued | None = None) -> grpc.Channel:
    who = client or certs.client
    creds = grpc.ssl_channel_credentials(root_certificates=(server_ca or certs.server_ca).cert_pem,
                                         private_key=who.key_pem, certificate_chain=who.cert_pem)
    return grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "localhost")])


@pytest.fixture
def gateway(kv_bin: str, certs: netcerts.CertSet, in_tmp: Path) -> Iterator[Gateway]:
    with Gateway(config(kv_bin, certs)) as gw:
        yield gw


def test_kv_discovery_health_through_the_gateway(gateway: Gateway, certs: netcerts.CertSet, in_tmp: Path) -> None:
    with secure(certs, gateway.address) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        kv.Put(kv_pb2.PutRequest(key="gw", value=b"through \xff"), timeout=10)
        assert kv.Get(kv_pb2.GetRequest(key="gw"), timeout=10).value == b"through \xff"
        assert (in_tmp / "kv_gw").read_bytes() == b"through \xff"
        # the child's own error status and details come through unchanged
        with pytest.raises(grpc.RpcError) as missing:
            kv.Get(kv_pb2.GetRequest(key="nothing"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.UNKNOWN
        assert "kv_nothing" in str(missing.value.details())
        desc = discovery_pb2_grpc.DiscoveryStub(ch).Describe(discovery_pb2.DescribeRequest(), timeout=10)
        assert (desc.core_protocol, desc.protocol, desc.multiplex) == (1, "grpc", False)
        assert [(v.version, list(v.plugins)) for v in desc.versions] == [(1, ["kv_grpc"])]
        assert desc.server.startswith("plugbay-gateway/") and "go-plugin plugin" in desc.server
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        # brokering cannot work through the gateway: said at once, with the reason
        with pytest.raises(grpc.RpcError) as broker:
            list(grpc_broker_pb2_grpc.GRPCBrokerStub(ch).StartStream(iter([grpc_broker_pb2.ConnInfo()]), timeout=10))
        assert broker.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert broker.value.details() == BROKER_REFUSAL
        assert "does not multiplex brokered connections" in BROKER_REFUSAL
        # a remote host cannot shut the shared plugin down
        pid = gateway.child_pid
        grpc_controller_pb2_grpc.GRPCControllerStub(ch).Shutdown(grpc_controller_pb2.Empty(), timeout=10)
        assert kv.Get(kv_pb2.GetRequest(key="gw"), timeout=10).value == b"through \xff"
        assert gateway.child_pid == pid


def test_refuses_untrusted_clients_at_the_tls_layer(gateway: Gateway, certs: netcerts.CertSet,
                                                   tmp_path: Path) -> None:
    stranger = netcerts.issue(netcerts.make_ca("other CA"), "stranger", server=False)
    attempts = [secure(certs, gateway.address, stranger),
                grpc.secure_channel(gateway.address, grpc.ssl_channel_credentials(certs.server_ca.cert_pem),
                                    options=[("grpc.ssl_target_name_override", "localhost")]),
                grpc.insecure_channel(gateway.address)]
    for channel in attempts:
        with channel, pytest.raises(grpc.RpcError) as info:
            kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key="x"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    netcerts.assert_tls_refuses(gateway.address, certs, tmp_path)


def _k8s_style(folder: Path, version: str, source: netcerts.CertSet) -> None:
    """Kubernetes' Secret layout: files are symlinks through ..data, which points at a versioned folder."""
    target = folder / version
    target.mkdir()
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (target / name).write_bytes((source.dir / name).read_bytes())
    tmp_link = folder / "..data_tmp"
    tmp_link.symlink_to(version)
    os.replace(tmp_link, folder / "..data")  # the atomic swap the kubelet does
    for name in ("tls.crt", "tls.key", "ca.crt"):
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(f"..data/{name}")


def test_rotated_cert_files_are_used_without_dropping_connections(kv_bin: str, in_tmp: Path) -> None:
    mounted = in_tmp / "secret"
    mounted.mkdir()
    first = netcerts.write_set(in_tmp / "first")
    _k8s_style(mounted, "v1", first)
    cfg = GatewayConfig(cmd=[kv_bin], cookie=COOKIE, listen="127.0.0.1:0", cert_file=str(mounted / "tls.crt"),
                        key_file=str(mounted / "tls.key"), client_ca_file=str(mounted / "ca.crt"))
    with Gateway(cfg) as gw, secure(first, gw.address) as old:
        kv_old = kv_pb2_grpc.KVStub(old)
        kv_old.Put(kv_pb2.PutRequest(key="r", value=b"1"), timeout=10)
        second = netcerts.write_set(in_tmp / "second")  # a new server CA and a new client CA
        _k8s_style(mounted, "v2", second)
        with secure(second, gw.address) as new:
            assert kv_pb2_grpc.KVStub(new).Get(kv_pb2.GetRequest(key="r"), timeout=10).value == b"1"
        assert gw.certs is not None and gw.certs.reloads == 1
        # the connection made with the old files keeps working
        for i in range(5):
            kv_old.Put(kv_pb2.PutRequest(key="r", value=str(i).encode()), timeout=10)
        assert kv_old.Get(kv_pb2.GetRequest(key="r"), timeout=10).value == b"4"
        # a new connection with the old client certificate is refused now
        with secure(first, gw.address) as again, pytest.raises(grpc.RpcError) as info:
            kv_pb2_grpc.KVStub(again).Get(kv_pb2.GetRequest(key="r"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # a half-written set is not taken: the gateway keeps the current one and goes on
        (mounted / "v2" / "tls.key").write_bytes(b"garbage")
        with secure(second, gw.address) as newer:
            assert kv_pb2_grpc.KVStub(newer).Get(kv_pb2.GetRequest(key="r"), timeout=10).value == b"4"
        assert gw.certs.reloads == 1


def test_child_killed_calls_fail_fast_then_work_after_restart(gateway: Gateway, certs: netcerts.CertSet,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="plugbay.gateway")
    with secure(certs, gateway.address) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        kv.Put(kv_pb2.PutRequest(key="k", value=b"before"), timeout=10)
        old_pid = gateway.child_pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        codes: list[grpc.StatusCode] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                # the 3 s timeout is a hang guard only. "Fail fast" is the codes below: every call the
                # dead child could not take was refused UNAVAILABLE (no child, NOT_SENT), none waited
                # out its deadline (DEADLINE_EXCEEDED); a wall-clock bound per call added nothing, as grpc
                # ends each call at its 3 s whatever the gateway does
                value = kv.Get(kv_pb2.GetRequest(key="k"), timeout=3).value
                break
            except grpc.RpcError as exc:
                codes.append(exc.code())
                time.sleep(0.05)
        else:
            raise AssertionError(f"the gateway did not serve again within 30 s: {codes}")
        assert value == b"before"
        assert codes and set(codes) == {grpc.StatusCode.UNAVAILABLE}, codes
        assert gateway.child_pid not in (None, old_pid)
        assert gateway.keeper.restarts == 1
        said = [r.getMessage() for r in caplog.records if "restarting it" in r.getMessage()]
        assert said == ["gateway: the plugin exited with code -9 (killed by SIGKILL); restarting it"], said


class PluginLines(logging.Handler):
    """The records of a Gateway's plugin log (GatewayConfig.logger), waited for by message."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._cond = threading.Condition()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def wait_for(self, message: str, count: int = 1, timeout: float = HANG_GUARD) -> list[logging.LogRecord]:
        """The first ``count`` records whose hclog message is ``message``; fewer if they do not come in time."""
        def found() -> list[logging.LogRecord]:
            return [r for r in self.records if r.getMessage().startswith(message)][:count]
        with self._cond:
            self._cond.wait_for(lambda: len(found()) >= count, timeout)
            return found()


@pytest.fixture
def plugin_lines() -> Iterator[tuple[logging.Logger, PluginLines]]:
    logger = logging.getLogger("test-gateway-plugin-lines")
    logger.setLevel(logging.INFO)
    lines = PluginLines()
    logger.addHandler(lines)
    try:
        yield logger, lines
    finally:
        logger.removeHandler(lines)


def test_deadline_and_death_mid_call_are_forwarded(misbehave_bin: str, certs: netcerts.CertSet, in_tmp: Path,
                                                   plugin_lines: tuple[logging.Logger, PluginLines]) -> None:
    """What ends a call at the caller ends it at the child: its deadline, and a cancel. Checked at the child
    (its hang's end is a line in its log), since the caller's own grpc ends its call at its deadline, or
    on its cancel, whatever the gateway does."""
    logger, lines = plugin_lines
    # the child's __hang__ holds a call this long when nothing ends it: far past HANG_GUARD
    cfg = config(misbehave_bin, certs, env={"MISBEHAVE_MAX_SECONDS": f"{2 * HANG_GUARD:g}"}, logger=logger)
    with Gateway(cfg) as gw, secure(certs, gw.address) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        with pytest.raises(grpc.RpcError) as hang:
            kv.Get(kv_pb2.GetRequest(key="__hang__"), timeout=1.0)
        assert hang.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        got = lines.wait_for("hanging during a call")
        assert got, "the __hang__ call never reached the child"
        # the deadline went with the call: what was left of the caller's 1 s, not none
        deadline_in = got[0].plugin_fields["deadline_in"]  # type: ignore[attr-defined]
        assert deadline_in != "none" and 0 < float(deadline_in) <= 1.0, deadline_in
        # and the child's call ended with the caller's (by the forwarded deadline or the gateway's cancel,
        # whichever came first), not at the hang's own end
        assert lines.wait_for("hang ended by its caller"), "the child's call outlived the caller's deadline"

        # a call without a deadline that the caller cancels is cancelled at the child
        pending = kv.Get.future(kv_pb2.GetRequest(key="__hang__"))
        got = lines.wait_for("hanging during a call", count=2)
        assert len(got) == 2, "the second __hang__ call never reached the child"
        assert got[1].plugin_fields["deadline_in"] == "none"  # type: ignore[attr-defined]
        assert pending.cancel()
        ended = lines.wait_for("hang ended by its caller", count=2)
        assert len(ended) == 2, "the caller's cancel did not reach the child's call"
        assert ended[1].plugin_fields["reason"] == "context canceled"  # type: ignore[attr-defined]

        with pytest.raises(grpc.RpcError) as died:
            kv.Get(kv_pb2.GetRequest(key="__die__"), timeout=10)
        assert died.value.code() == grpc.StatusCode.UNAVAILABLE, died.value


def test_gives_up_when_the_child_keeps_dying(misbehave_bin: str, certs: netcerts.CertSet, in_tmp: Path) -> None:
    policy = RestartPolicy(max_restarts=1, window=60, initial_backoff=0.05, max_backoff=0.1)
    with Gateway(config(misbehave_bin, certs, restart=policy)) as gw, secure(certs, gw.address) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        for _ in range(2):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # wait for the (re)started child, then kill it through a call
                try:
                    kv.Get(kv_pb2.GetRequest(key="__die__"), timeout=5)
                except grpc.RpcError as exc:
                    if gw.child_pid is None or exc.code() != grpc.StatusCode.UNAVAILABLE:
                        pass
                if gw.keeper.client is None or gw.keeper.client.exited:
                    break
                time.sleep(0.05)
            while time.monotonic() < deadline and not gw.failed.is_set() and \
                    (gw.keeper.client is None or gw.keeper.client.exited):
                time.sleep(0.05)
        assert gw.failed.wait(20)
        assert "restart budget" in gw.keeper.failure and "fix the plugin" in gw.keeper.failure
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class _CountingPolicy(RestartPolicy):
    """RestartPolicy's own figures, keeping each failure count the keeper asked a backoff for."""

    asked: list[int] = field(default_factory=list)

    def backoff(self, consecutive: int) -> float:
        self.asked.append(consecutive)
        return 0.05


def test_a_child_that_dies_again_soon_after_each_restart_waits_longer_each_time(
        kv_bin: str, certs: netcerts.CertSet, in_tmp: Path) -> None:
    # the keeper's count of failures in a row went back to 0 whenever it saw the child running, so a crash
    # loop was restarted every initial_backoff (0.2 s) instead of 0.2, 0.4, 0.8 ... as network.md says
    policy = _CountingPolicy(max_restarts=10, window=60, stable_after=600)
    with Gateway(config(kv_bin, certs, restart=policy)) as gw:
        for _ in range(3):
            pid = gw.child_pid
            assert pid is not None
            time.sleep(1.0)  # the child runs a while (the keeper polls it every 0.2 s), far short of stable_after
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + HANG_GUARD
            while time.monotonic() < deadline and gw.child_pid in (None, pid):
                time.sleep(0.05)
            while time.monotonic() < deadline and (gw.keeper.client is None or gw.keeper.client.exited):
                time.sleep(0.05)
            assert gw.child_pid not in (None, pid), "the gateway did not restart its child"
    assert policy.asked == [1, 2, 3]


class _NoWaitPolicy(RestartPolicy):
    def backoff(self, consecutive: int) -> float:
        return math.nan


def test_a_restart_policy_that_gives_no_wait_makes_the_gateway_give_up_saying_so(
        kv_bin: str, certs: netcerts.CertSet, in_tmp: Path) -> None:
    # its ConfigError ended the keeper thread without a word: the gateway served on with no plugin
    with Gateway(config(kv_bin, certs, restart=_NoWaitPolicy())) as gw:
        pid = gw.child_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert gw.failed.wait(HANG_GUARD), "the gateway neither restarted its plugin nor gave up"
        assert "restart policy gave no wait" in gw.keeper.failure and "_NoWaitPolicy.backoff(1)" in \
            gw.keeper.failure, gw.keeper.failure


def test_start_errors_are_typed(misbehave_bin: str, kv_bin: str, certs: netcerts.CertSet, in_tmp: Path) -> None:
    failing = config(misbehave_bin, certs, env={"MISBEHAVE_MODE": "exit"})
    for port in released_ports():  # the port it is given, bound before the plugin starts, is freed again
        failing.listen = f"127.0.0.1:{port}"
        with pytest.raises((GatewayError, ConfigError)) as info:
            Gateway(failing).start()
        if not bind_lost(info.value):
            break
    assert isinstance(info.value, GatewayError) and "could not start its plugin" in str(info.value), info.value
    assert "exited with code 3" in str(info.value)
    assert held_by(os.getpid(), port) == []  # the failed start's listen port is free again (it stayed bound)
    bad = config(kv_bin, certs)
    bad.key_file = str(in_tmp / "nope.key")
    with pytest.raises(TLSConfigError, match="does not exist"):
        Gateway(bad).start()
    with pytest.raises(TLSConfigError, match="all three"):
        Gateway(GatewayConfig(cmd=[kv_bin], cookie=COOKIE, cert_file=str(certs.cert_file)))


def test_a_failed_or_stopped_gateway_refuses_to_start_again(misbehave_bin: str, kv_bin: str,
                                                           certs: netcerts.CertSet, in_tmp: Path) -> None:
    failed = Gateway(config(misbehave_bin, certs, env={"MISBEHAVE_MODE": "exit"}))
    with pytest.raises(GatewayError):
        failed.start()
    with pytest.raises(ClientStateError, match="failed to start and was torn down; make a new Gateway"):
        failed.start()
    with pytest.raises(ClientStateError, match="failed to start, so it serves no address"):
        failed.address  # noqa: B018 - the property is what is tested
    stopped = Gateway(config(kv_bin, certs))
    stopped.start()
    stopped.stop()
    with pytest.raises(ClientStateError, match="was stopped; make a new one"):
        stopped.start()


# --- the command line, as a real process -------------------------------------------------


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise AssertionError("the gateway printed nothing")
        return proc.stdout.readline().decode()
    finally:
        sel.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_stops_on_signal(kv_bin: str, certs: netcerts.CertSet, tmp_path: Path, sig: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "plugbay.network.gateway", "--listen", "127.0.0.1:0", "--cert", str(certs.cert_file),
         "--key", str(certs.key_file), "--client-ca", str(certs.client_ca_file), "--cookie", "BASIC_PLUGIN=hello",
         "--plugins", "kv_grpc", "--", kv_bin], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = _read_line(proc, 30)
        assert line.startswith("listening tcp 127.0.0.1:"), line
        address = line.split()[-1]
        with secure(certs, address) as ch:
            kv_pb2_grpc.KVStub(ch).Put(kv_pb2.PutRequest(key="cli", value=b"ok"), timeout=10)
        children = procs.children(proc.pid)
        assert children, "the plugin should run as the gateway's child"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()
    assert (tmp_path / "kv_cli").read_bytes() == b"ok"
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_cli_plugin_command_without_the_separator_says_to_put_it_after_it(
        kv_bin: str, certs: netcerts.CertSet, capsys: pytest.CaptureFixture[str]) -> None:
    # a first try's `plugbay gateway ... ./kv-plugin` was told only "unrecognized arguments: ./kv-plugin"
    tls = ["--cert", str(certs.cert_file), "--key", str(certs.key_file), "--client-ca", str(certs.client_ca_file)]
    assert gateway_main(["--cookie", "BASIC_PLUGIN=hello", *tls, kv_bin]) == 2
    said = capsys.readouterr().err
    assert f"unrecognized arguments: {kv_bin}; put the plugin command after '--', for example `-- {kv_bin}`" in said
    assert gateway_main(["--cookie", "BASIC_PLUGIN=hello", *tls, "--certs", "x", "--", kv_bin]) == 2
    said = capsys.readouterr().err  # a misspelled flag is no plugin command
    assert "unrecognized arguments: --certs x" in said and "after '--'" not in said


def test_cli_argument_errors(kv_bin: str, certs: netcerts.CertSet, capsys: pytest.CaptureFixture[str]) -> None:
    tls = ["--cert", str(certs.cert_file), "--key", str(certs.key_file), "--client-ca", str(certs.client_ca_file)]
    assert gateway_main(["--cookie", "BASIC_PLUGIN=hello", *tls]) == 2
    assert "no plugin command" in capsys.readouterr().err
    assert gateway_main([*tls, "--", kv_bin]) == 2
    assert "--cookie must be KEY=VALUE" in capsys.readouterr().err
    assert gateway_main(["--cookie", "A=b", "--", kv_bin]) == 2
    assert "--insecure serves plaintext" in capsys.readouterr().err
    assert gateway_main(["--cookie", "A=b", "--insecure", *tls, "--", kv_bin]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert gateway_main(["--cookie", "A=b", "--protocol-versions", "one", "--insecure", "--", kv_bin]) == 2
    assert "integers" in capsys.readouterr().err
    assert gateway_main(["--cookie", "A=b", "--keepalive", "30", *tls, "--", kv_bin]) == 2
    assert "--keepalive='30' is not INTERVAL,TIMEOUT" in capsys.readouterr().err
    assert gateway_main(["--cookie", "A=b", "--keepalive", "0,10", *tls, "--", kv_bin]) == 2
    said = capsys.readouterr().err
    assert "--keepalive='0,10' is not INTERVAL,TIMEOUT[,WRITE_TIMEOUT] in seconds, all > 0" in said
    with pytest.raises(ConfigError, match="GatewayConfig keepalive"):
        Gateway(GatewayConfig(cmd=[kv_bin], cookie=("A", "b"), insecure=True, keepalive=(30.0, 0.0)))
    bad = ["--cert", str(certs.key_file), "--key", str(certs.key_file), "--client-ca", str(certs.client_ca_file)]
    assert gateway_main(["--cookie", "A=b", "--listen", "127.0.0.1:0", *bad, "--", kv_bin]) == 2
    assert "holds no PEM certificate" in capsys.readouterr().err
    assert gateway_main(["--cookie", "A=b", "--listen", "nope", "--insecure", "--", kv_bin]) == 2
    assert "is not HOST:PORT" in capsys.readouterr().err
