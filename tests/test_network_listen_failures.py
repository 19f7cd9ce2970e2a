"""A network plugin or gateway that cannot listen says why, from the OS, and what to do.

grpcio's bind error says only "Failed to bind ... set GRPC_VERBOSITY=debug" (its reason goes to its own
log), and plugbay added "free the port" whatever the reason: a unix path whose folder is missing read
as a port to free. Real plugin processes (the KV example served in network mode, plain gRPC and the
TLS front) and a real Gateway, against a port a real listener holds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay.errors import ConfigError
from plugbay.network.gateway import Gateway, GatewayConfig
from tests.netcerts import CertSet, write_set

REPO = Path(__file__).resolve().parent.parent
TAKEN = "another process listens there"
NO_FOLDER = "No such file or directory; its folder does not exist"


@pytest.fixture()
def taken() -> Iterator[str]:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        yield f"127.0.0.1:{holder.getsockname()[1]}"


def _serve(listen: str, certs: CertSet | None) -> str:
    env = dict(os.environ, PLUGBAY_NETWORK_LISTEN=listen)
    if certs is None:
        env["PLUGBAY_NETWORK_INSECURE"] = "1"
    else:
        env.update(PLUGBAY_NETWORK_CERT=str(certs.cert_file), PLUGBAY_NETWORK_KEY=str(certs.key_file),
                   PLUGBAY_NETWORK_CLIENT_CA=str(certs.client_ca_file))
    done = subprocess.run([sys.executable, str(REPO / "examples" / "kv" / "plugin.py")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    return done.stderr


@pytest.mark.parametrize("tls", [False, True], ids=["grpcio", "front"])
def test_a_taken_port_and_a_missing_folder_are_named(tls: bool, taken: str, tmp_path: Path) -> None:
    certs = write_set(tmp_path) if tls else None
    err = _serve(taken, certs)
    assert f"couldn't listen on '{taken}': Address already in use; {TAKEN}" in err
    assert "free the port" not in err
    missing = tmp_path / "no-such-folder" / "kv.sock"
    err = _serve(f"unix:{missing}", certs)
    assert f"couldn't listen on 'unix:{missing}': {NO_FOLDER}" in err
    assert not missing.parent.exists()


def test_the_gateway_names_a_taken_port(taken: str) -> None:
    gateway = Gateway(GatewayConfig(cmd=[sys.executable, str(REPO / "examples" / "kv" / "plugin.py")],
                                    cookie=("BASIC_PLUGIN", "hello"), listen=taken, insecure=True))
    try:
        with pytest.raises(ConfigError, match=f"Address already in use; {TAKEN}"):
            gateway.start()
    finally:
        gateway.stop()


@pytest.mark.parametrize("tls", [False, True], ids=["grpcio", "front"])
def test_a_host_name_that_does_not_resolve_is_named(tls: bool, tmp_path: Path) -> None:
    """It read "Name or service not known; free the port or choose another listen address". The name has
    a space: the resolver refuses it without asking a DNS server."""
    err = _serve("no such-host:7001", write_set(tmp_path) if tls else None)
    assert "couldn't listen on 'no such-host:7001': " in err and "the host name does not resolve" in err, err
    assert "free the port" not in err


@pytest.mark.parametrize(("listen", "any_address"), [("192.0.2.1:7001", "0.0.0.0"), ("[fd00::1]:7001", "[::]")])
def test_an_address_of_no_interface_is_told_the_any_address_of_its_family(listen: str, any_address: str) -> None:
    """An IPv6 address was told to listen on 0.0.0.0. Binding sends nothing: no address is dialled."""
    if listen.startswith("[") and not _ipv6_sockets():
        pytest.skip("no IPv6 here: this kernel makes no AF_INET6 socket")
    err = _serve(listen, None)
    assert f"no interface of this machine has that address: listen on one of its own, or {any_address}\n" in err, err


def _ipv6_sockets() -> bool:
    """socket.has_ipv6 says Python was built with IPv6, not that this kernel makes IPv6 sockets."""
    if not socket.has_ipv6:
        return False
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", [".a", "a..b", "x" * 64])
def test_a_host_name_the_idna_codec_refuses_is_a_config_error(host: str, tmp_path: Path) -> None:
    """A raw UnicodeError ("label empty or too long") came out of the idna codec, from the plugin process and
    from NetworkServe and the gateway alike."""
    from plugbay.core.plugin.netconfig import NetworkServe

    with pytest.raises(ConfigError, match="is no valid host name") as made:
        NetworkServe(listen=f"{host}:7001", insecure=True)
    assert "0.0.0.0:7001" in str(made.value)
    with pytest.raises(ConfigError, match="is no valid host name"):
        Gateway(GatewayConfig(cmd=[sys.executable, str(REPO / "examples" / "kv" / "plugin.py")],
                              cookie=("BASIC_PLUGIN", "hello"), listen=f"{host}:0", insecure=True))
    err = _serve(f"{host}:7001", write_set(tmp_path))
    assert "is no valid host name" in err and "UnicodeError" not in err and "Traceback" not in err, err
