"""serve() in network mode: a Python plugin as a shared service on 127.0.0.1 over provided mutual TLS.

The plugin is the unmodified KV example (examples/kv/plugin.py) put on the network with
PLUGBAY_NETWORK_* (NetworkServe.from_env); the NetworkServe dataclass path runs in-process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay._proto.plugbay import discovery_pb2, discovery_pb2_grpc
from plugbay._proto.plugin import grpc_controller_pb2, grpc_controller_pb2_grpc
from plugbay.core.plugin.network import NetworkServe
from plugbay.core.protocol.handshake import parse_handshake_line
from plugbay.core.transport import certfiles
from plugbay.errors import ConfigError, TLSConfigError
from tests import netcerts

REPO = Path(__file__).resolve().parent.parent
KV_PLUGIN = REPO / "examples" / "kv" / "plugin.py"
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402


class NetPlugin:
    """examples/kv/plugin.py with PLUGBAY_NETWORK_* set; the address comes from its handshake line."""

    def __init__(self, cwd: Path, env: dict[str, str], argv: list[str] | None = None) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
        full.update(env)
        full["PYTHONPATH"] = str(REPO / "src")
        self.proc = subprocess.Popen(argv or [sys.executable, str(KV_PLUGIN)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=full, cwd=cwd)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line:
            self.proc.wait(10)
            assert self.proc.stderr is not None
            raise AssertionError(f"plugin exited: {self.proc.stderr.read().decode()}")
        self.info = parse_handshake_line(line)

    @property
    def address(self) -> str:
        return self.info.address

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, err.decode()


def tls_env(certs: netcerts.CertSet) -> dict[str, str]:
    return {"PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0", "PLUGBAY_NETWORK_CERT": str(certs.cert_file),
            "PLUGBAY_NETWORK_KEY": str(certs.key_file), "PLUGBAY_NETWORK_CLIENT_CA": str(certs.client_ca_file)}


def secure(certs: netcerts.CertSet, address: str, client: netcerts.Issued | None = None) -> grpc.Channel:
    return grpc.secure_channel(address, netcerts.channel_credentials(certs, client),
                               options=[("grpc.ssl_target_name_override", "localhost")])


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


@pytest.fixture
def plugin(tmp_path: Path, certs: netcerts.CertSet) -> Iterator[NetPlugin]:
    p = NetPlugin(tmp_path, tls_env(certs))
    yield p
    p.stop()


def test_kv_over_mtls_with_discovery_and_health(plugin: NetPlugin, certs: netcerts.CertSet,
                                                tmp_path: Path) -> None:
    assert plugin.info.network == "tcp" and plugin.address.startswith("127.0.0.1:")
    with secure(certs, plugin.address) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        kv.Put(kv_pb2.PutRequest(key="net", value=b"served"), timeout=10)
        assert kv.Get(kv_pb2.GetRequest(key="net"), timeout=10).value == b"served"
        assert (tmp_path / "kv_net").read_bytes() == b"served"
        desc = discovery_pb2_grpc.DiscoveryStub(ch).Describe(discovery_pb2.DescribeRequest(), timeout=10)
        assert (desc.core_protocol, desc.protocol, desc.multiplex) == (1, "grpc", True)  # brokering front
        assert [(v.version, list(v.plugins)) for v in desc.versions] == [(1, ["kv_grpc"])]
        assert desc.server.startswith("plugbay/")
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        # a remote host's Shutdown does not stop a shared service
        grpc_controller_pb2_grpc.GRPCControllerStub(ch).Shutdown(grpc_controller_pb2.Empty(), timeout=10)
        time.sleep(0.5)
        assert plugin.proc.poll() is None
        assert kv.Get(kv_pb2.GetRequest(key="net"), timeout=10).value == b"served"
    code, err = plugin.stop(signal.SIGINT)  # SIGINT stops a network plugin gracefully
    assert code == 0, err
    assert "Shutdown ignored" in err


def _refused(channel: grpc.Channel) -> grpc.RpcError:
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key="x"), timeout=5)
    return info.value


def test_refuses_clients_without_a_trusted_certificate(plugin: NetPlugin, certs: netcerts.CertSet,
                                                     tmp_path: Path) -> None:
    other_ca = netcerts.make_ca("someone else")
    stranger = netcerts.issue(other_ca, "stranger", server=False)
    wrong = _refused(secure(certs, plugin.address, stranger))
    assert wrong.code() == grpc.StatusCode.UNAVAILABLE
    no_cert = _refused(grpc.secure_channel(plugin.address, grpc.ssl_channel_credentials(
        root_certificates=certs.server_ca.cert_pem), options=[("grpc.ssl_target_name_override", "localhost")]))
    assert no_cert.code() == grpc.StatusCode.UNAVAILABLE
    plain = _refused(grpc.insecure_channel(plugin.address))
    assert plain.code() == grpc.StatusCode.UNAVAILABLE
    # the refusal is the server's TLS alert (grpcio only says "Socket closed"), and a trusted client passes
    netcerts.assert_tls_refuses(plugin.address, certs, tmp_path)


def test_insecure_serves_plaintext_and_warns(tmp_path: Path) -> None:
    p = NetPlugin(tmp_path, {"PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0", "PLUGBAY_NETWORK_INSECURE": "1"})
    try:
        with grpc.insecure_channel(p.address) as ch:
            kv_pb2_grpc.KVStub(ch).Put(kv_pb2.PutRequest(key="p", value=b"1"), timeout=10)
    finally:
        code, err = p.stop()
    assert code == 0
    assert "INSECURE" in err and "never in production" in err


def test_bad_tls_files_fail_with_what_to_do(tmp_path: Path, certs: netcerts.CertSet) -> None:
    env = tls_env(certs)
    env["PLUGBAY_NETWORK_KEY"] = str(tmp_path / "missing.key")
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_"))}
    proc = subprocess.run([sys.executable, str(KV_PLUGIN)], env={**full, **env, "PYTHONPATH": str(REPO / "src")},
                          cwd=tmp_path, capture_output=True, timeout=30)
    assert proc.returncode == 1
    assert b"does not exist" in proc.stderr and b"--key" in proc.stderr


@pytest.mark.parametrize("given, named", [
    ({"PLUGBAY_NETWORK_KEY": "missing.key"}, ["does not exist", "PLUGBAY_NETWORK_KEY"]),
    ({"PLUGBAY_NETWORK_CERT": None, "PLUGBAY_NETWORK_KEY": None, "PLUGBAY_NETWORK_CLIENT_CA": None},
     ["PLUGBAY_NETWORK_CERT, PLUGBAY_NETWORK_KEY, PLUGBAY_NETWORK_CLIENT_CA", "PLUGBAY_NETWORK_INSECURE=1"]),
    ({"PLUGBAY_NETWORK_KEY": None, "PLUGBAY_NETWORK_CLIENT_CA": None},
     ["all three", "PLUGBAY_NETWORK_KEY, PLUGBAY_NETWORK_CLIENT_CA"]),
])
def test_tls_file_errors_of_a_plugin_set_up_by_its_environment_name_its_variables(
        tmp_path: Path, certs: netcerts.CertSet, given: dict[str, str | None], named: list[str]) -> None:
    # a plugin served through PLUGBAY_NETWORK_* was told to pass --cert / --key / --client-ca, flags serve() has not
    env = {k: v for k, v in {**tls_env(certs), **given}.items() if v is not None}
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_"))}
    proc = subprocess.run([sys.executable, str(KV_PLUGIN)], env={**full, **env, "PYTHONPATH": str(REPO / "src")},
                          cwd=tmp_path, capture_output=True, timeout=30, text=True)
    assert proc.returncode == 1, proc.stderr
    for words in named:
        assert words in proc.stderr, proc.stderr


def test_tls_file_errors_hold_one_parenthesis_at_most(tmp_path: Path, certs: netcerts.CertSet) -> None:
    # "... or PLUGBAY_NETWORK_KEY (the gateway's PLUGBAY_GATEWAY_KEY) (in Kubernetes: mount the TLS Secret
    # there)" read as two asides in a row; "(got cert_file=...); pass the missing ones (from the environment"
    files = (str(certs.cert_file), str(certs.key_file), str(certs.client_ca_file))
    (tmp_path / "folder").mkdir()
    said = []
    for given in [(files[0], str(tmp_path / "missing.key"), files[2]), (files[0], files[1], str(tmp_path / "folder"))]:
        with pytest.raises(TLSConfigError) as err:
            certfiles.load(certfiles.TLSFiles(*given))
        said.append(str(err.value))
    with pytest.raises(TLSConfigError) as err:
        NetworkServe(listen="127.0.0.1:0", cert_file=files[0]).tls_files()
    said.append(str(err.value))
    assert "does not exist" in said[0] and "--key, key_file, PLUGBAY_NETWORK_KEY or the gateway's" in said[0], said
    assert "is a folder" in said[1] and "all three" in said[2], said
    for text in said:
        assert text.count("(") <= 1 and text.count(")") <= 1, text


def test_tls_file_errors(tmp_path: Path, certs: netcerts.CertSet) -> None:
    files = certfiles.TLSFiles(str(certs.cert_file), str(certs.key_file), str(certs.client_ca_file))
    other = netcerts.issue(certs.server_ca, "localhost", server=True)
    (tmp_path / "other.key").write_bytes(other.key_pem)
    with pytest.raises(TLSConfigError, match="does not belong to the certificate"):
        certfiles.load(certfiles.TLSFiles(files.cert_file, str(tmp_path / "other.key"), files.client_ca_file))
    (tmp_path / "junk.pem").write_bytes(b"not a pem")
    with pytest.raises(TLSConfigError, match="no PEM certificate"):
        certfiles.load(certfiles.TLSFiles(str(tmp_path / "junk.pem"), files.key_file, files.client_ca_file))
    with pytest.raises(TLSConfigError, match="unencrypted PEM private key"):
        certfiles.load(certfiles.TLSFiles(files.cert_file, str(tmp_path / "junk.pem"), files.client_ca_file))
    with pytest.raises(TLSConfigError, match="sign the hosts. client certificates"):
        certfiles.load(certfiles.TLSFiles(files.cert_file, files.key_file, str(tmp_path / "junk.pem")))
    unreadable = tmp_path / "dir.pem"
    unreadable.mkdir()
    with pytest.raises(TLSConfigError, match="is a folder; pass the PEM file in it"):
        certfiles.load(certfiles.TLSFiles(files.cert_file, files.key_file, str(unreadable)))
    from cryptography.hazmat.primitives.asymmetric import ec
    from plugbay.core.protocol.tls import generate_cert

    p521 = generate_cert(ec.SECP521R1())
    (tmp_path / "p521.crt").write_bytes(p521.cert_pem)
    (tmp_path / "p521.key").write_bytes(p521.key_pem)
    with pytest.raises(TLSConfigError, match="gRPC's TLS cannot use"):
        certfiles.load(certfiles.TLSFiles(str(tmp_path / "p521.crt"), str(tmp_path / "p521.key"),
                                          files.client_ca_file))
    with pytest.raises(TLSConfigError, match="all three"):
        NetworkServe(listen="127.0.0.1:0", cert_file=files.cert_file).tls_files()
    with pytest.raises(TLSConfigError, match="--insecure"):
        certfiles.server_credentials(None, insecure=False)
    from plugbay.core.plugin.network import _target

    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        _target("localhost")


def test_settings_of_the_wrong_kind_are_refused_when_made(certs: netcerts.CertSet) -> None:
    # insecure="false" read as True served plaintext to anyone; allow_shutdown="no" let any peer stop it
    for kwargs, named in (({"insecure": "false"}, "insecure must be True or False"),
                          ({"insecure": True, "allow_shutdown": "no"}, "allow_shutdown must be True or False"),
                          ({"multiplex": 1}, "multiplex must be True or False"),
                          ({"listen": 7001, "insecure": True}, "listen must be"),
                          ({"cert_file": 3}, "cert_file must be a file path")):
        with pytest.raises(ConfigError, match=named):
            NetworkServe(**kwargs)  # type: ignore[arg-type]
    made = NetworkServe(cert_file=certs.cert_file, key_file=certs.key_file,  # type: ignore[arg-type]
                        client_ca_file=certs.client_ca_file)
    assert made.cert_file == str(certs.cert_file) and made.tls_files() is not None


@pytest.mark.parametrize("kwargs, named", [
    # each was accepted when made; serve() then failed with a bare ValueError, UnicodeEncodeError or
    # TypeError, or bound somewhere else: grpcio ends an address at its NUL, and int() reads '١' as 1
    ({"listen": "unix:/tmp/\x00"}, r"listen address 'unix:/tmp/\\x00' holds a NUL byte"),
    ({"listen": "127.0.0.1\x00:0"}, "holds a NUL byte"),
    ({"listen": "unix:/tmp/\ud800.sock"}, "no UTF-8"),
    ({"listen": "\ud800:7001"}, "no UTF-8"),
    ({"listen": "127.0.0.1:\u00b2"}, "is not HOST:PORT"),
    ({"listen": "127.0.0.1:\u0661"}, "is not HOST:PORT"),
    ({"listen": "127.0.0.1:" + "9" * 5000}, r"port 999999999999\.\.\. is out of range 0-65535"),
    ({"listen": "127.0.0.1:" + "0" * 5000 + "70000"}, r"port 000000000000\.\.\. is out of range 0-65535"),
    ({"listen": "127.0.0.1:99999"}, r"'127\.0\.0\.1:99999': port 99999 is out of range 0-65535 \(0: any free port\)"),
    ({"listen": "localhost"}, "is not HOST:PORT"),
    ({"cert_file": "/tmp/tls.crt\x00"}, "cert_file '/tmp/tls.crt\\\\x00' is no path the OS can name"),
    ({"key_file": "/tmp/\ud800.key"}, "key_file .* is no path the OS can name"),
    ({"client_ca_file": b"/tmp/ca.crt"}, "client_ca_file must be a file path"),
])
def test_a_listen_address_or_tls_path_that_cannot_work_is_refused_when_made(
        kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        NetworkServe(**{"listen": "127.0.0.1:0", "insecure": True, **kwargs})  # type: ignore[arg-type]
    for listen in ("127.0.0.1:00007001", "[::]:65535", "unix:/tmp/with%percent.sock"):
        assert NetworkServe(listen=listen, insecure=True).listen == listen
    # zeros past int()'s 4300 digits are still port 0, as Go reads them (int() of them was a bare ValueError)
    from plugbay.core.plugin.netconfig import listen_target
    assert listen_target("127.0.0.1:" + "0" * 5000) == ("127.0.0.1:0", "tcp")
