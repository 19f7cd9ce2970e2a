"""Network mode in real containers: the gateway image (Dockerfile.plugin target "gateway") in front of
go-plugin's Go KV plugin, and the unmodified Python KV image in network mode (PLUGBAY_NETWORK_*),
each reached from the host over mutual TLS on a port published on 127.0.0.1."""

from __future__ import annotations

import io
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay._proto.plugbay import discovery_pb2, discovery_pb2_grpc
from plugbay.errors import EngineUnavailableError
from tests import gobuild, netcerts

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402

pytestmark = [pytest.mark.docker]
UID = 10001


@pytest.fixture(scope="module")
def docker() -> Iterator[Any]:
    from plugbay.images import docker_client

    try:
        client = docker_client()
    except EngineUnavailableError as exc:
        pytest.skip(f"no Docker engine answers: {exc}")
    yield client
    client.close()


def _tls_tar(certs: netcerts.CertSet) -> bytes:
    """/etc/plugbay/tls with the three files, owned by the image's plugin user."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, mode in (("plugbay", 0o755), ("plugbay/tls", 0o750)):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, UID, UID
            tar.addfile(info)
        for path in (certs.cert_file, certs.key_file, certs.client_ca_file):
            data = path.read_bytes()
            info = tarfile.TarInfo(f"plugbay/tls/{path.name}")
            info.size, info.mode, info.uid, info.gid = len(data), 0o400, UID, UID
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _run(docker: Any, image: str, env: dict[str, str], certs: netcerts.CertSet) -> Any:
    from plugbay.runners.session import managed_labels

    container = docker.containers.create(image, environment=env, ports={"7001/tcp": ("127.0.0.1", None)},
                                         labels=managed_labels(), network_mode="bridge")
    try:
        assert container.put_archive("/etc", _tls_tar(certs))
        container.start()
    except BaseException:
        container.remove(force=True)
        raise
    return container


def _published(container: Any, marker: bytes) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        container.reload()
        ports = (container.attrs["NetworkSettings"]["Ports"] or {}).get("7001/tcp")
        if container.status != "running":
            raise AssertionError(f"container stopped: {container.logs().decode()[-2000:]}")
        if ports and marker in container.logs(stdout=True, stderr=False):
            return f"127.0.0.1:{ports[0]['HostPort']}"
        time.sleep(0.2)
    raise AssertionError(f"not serving after 30 s: {container.logs().decode()[-2000:]}")


def _stop(container: Any) -> int:
    try:
        container.stop(timeout=10)  # SIGTERM: the gateway stops its child and exits 0
        return int(container.wait(timeout=20)["StatusCode"])
    finally:
        container.remove(force=True)


def _use(address: str, certs: netcerts.CertSet, tmp_path: Path) -> discovery_pb2.DescribeResponse:
    with grpc.secure_channel(address, netcerts.channel_credentials(certs),
                             options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        kv.Put(kv_pb2.PutRequest(key="box", value=b"in a container"), timeout=20)
        assert kv.Get(kv_pb2.GetRequest(key="box"), timeout=20).value == b"in a container"
        desc: discovery_pb2.DescribeResponse = discovery_pb2_grpc.DiscoveryStub(ch).Describe(
            discovery_pb2.DescribeRequest(), timeout=20)
    netcerts.assert_tls_refuses(address, certs, tmp_path)
    return desc


@pytest.mark.go
@pytest.mark.skipif(gobuild.go_missing_reason() is not None, reason=gobuild.go_missing_reason() or "")
def test_gateway_image_over_mtls(docker: Any, tmp_path: Path) -> None:
    from plugbay.images import ensure_example

    image = ensure_example("kv-go-gateway", progress=lambda line: None, client=docker)
    certs = netcerts.write_set(tmp_path / "tls")
    container = _run(docker, image, {"PLUGBAY_GATEWAY_COOKIE": "BASIC_PLUGIN=hello",
                                     "PLUGBAY_GATEWAY_PLUGINS": "kv_grpc"}, certs)
    try:
        desc = _use(_published(container, b"listening tcp 0.0.0.0:7001"), certs, tmp_path)
        assert desc.server.startswith("plugbay-gateway/")
        assert [(v.version, list(v.plugins)) for v in desc.versions] == [(1, ["kv_grpc"])]
    finally:
        code = _stop(container)
    assert code == 0


def test_python_plugin_image_in_network_mode(docker: Any, tmp_path: Path) -> None:
    from plugbay.images import ensure_example

    image = ensure_example("kv", progress=lambda line: None, client=docker)
    certs = netcerts.write_set(tmp_path / "tls")
    container = _run(docker, image, {"PLUGBAY_NETWORK_LISTEN": "0.0.0.0:7001",
                                     "PLUGBAY_NETWORK_CERT": "/etc/plugbay/tls/tls.crt",
                                     "PLUGBAY_NETWORK_KEY": "/etc/plugbay/tls/tls.key",
                                     "PLUGBAY_NETWORK_CLIENT_CA": "/etc/plugbay/tls/ca.crt"}, certs)
    try:
        desc = _use(_published(container, b"|tcp|0.0.0.0:7001|grpc|"), certs, tmp_path)
        assert desc.server.startswith("plugbay/")
        assert [(v.version, list(v.plugins)) for v in desc.versions] == [(1, ["kv_grpc"])]
    finally:
        code = _stop(container)
    assert code == 0
