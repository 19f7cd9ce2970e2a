"""A host certificate the gateway refuses. A server certificate given as the host's (a first try's mistake: the
README's kv.crt as --cert) was said to be "signed by a CA it does not trust", as the plugin's refusal names no
reason. And the gateway without --multiplex does TLS in grpcio, which refuses a client certificate by closing
the connection right after the handshake, with no alert: gRPC says only "Socket closed", which the command line
told as UNREACHABLE, "check that the plugin runs" (exit 3), where docs/cli.md says a --cert the plugin does not
trust is a configuration error (exit 2).
The gateway in front of go-plugin's Go KV plugin (real go-plugin 1.0.1 code), on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import gobuild, netcerts
from tests.cli_util import cli_env, plugbay
from tests.net_util import HANDSHAKE, PLUGINS

from plugbay import NetworkTLS, RemoteClient, RemoteConfig, RemoteTLSError
from plugbay.network.gateway import Gateway, GatewayConfig


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, netcerts.CertSet]]:
    if not gobuild.go_available():
        pytest.skip("Go and go-plugin's sources are not installed (scripts/setup installs them)")
    folder = tmp_path_factory.mktemp("refusedcert")
    certs = netcerts.write_set(folder / "tls")
    config = GatewayConfig(cmd=[str(gobuild.build_go("kv_plugin"))], cookie=("BASIC_PLUGIN", "hello"),
                           listen="127.0.0.1:0", cert_file=str(certs.cert_file), key_file=str(certs.key_file),
                           client_ca_file=str(certs.client_ca_file), plugins=["kv_grpc"], cwd=str(folder))
    with Gateway(config) as gw:
        yield gw, certs


def _files(folder: Path, certs: netcerts.CertSet, who: netcerts.Issued) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "host.crt").write_bytes(who.cert_pem)
    (folder / "host.key").write_bytes(who.key_pem)
    (folder / "ca.crt").write_bytes(certs.server_ca.cert_pem)
    return [str(folder / "host.crt"), str(folder / "host.key"), str(folder / "ca.crt")]


def test_a_server_certificate_given_as_the_hosts_is_named_so(gateway: tuple[Gateway, netcerts.CertSet],
                                                             tmp_path: Path) -> None:
    gw, certs = gateway
    # signed by the CA the gateway trusts, but issued for servers: every TLS stack refuses it for a client
    cert, key, ca = _files(tmp_path, certs, netcerts.issue(certs.client_ca, "a server", server=True))
    config = RemoteConfig(target=f"static:///{gw.address}", handshake=HANDSHAKE, plugins=PLUGINS,
                          tls=NetworkTLS(cert, key, ca, server_name="localhost"), start_timeout=10)
    with pytest.raises(RemoteTLSError) as err:
        with RemoteClient(config):
            pass
    assert (f"this host's certificate (cert_file {cert!r}) is no client certificate: its extendedKeyUsage"
            " (serverAuth) lacks clientAuth; pass one issued for client use (extendedKeyUsage clientAuth)"
            ) in str(err.value), str(err.value)


def test_the_command_line_names_a_refused_cert_not_an_unreachable_plugin(
        gateway: tuple[Gateway, netcerts.CertSet], tmp_path: Path) -> None:
    gw, certs = gateway
    cert, key, ca = _files(tmp_path, certs, netcerts.issue(netcerts.make_ca("stranger CA"), "stranger", server=False))
    said = plugbay("health", f"static:///{gw.address}", "--cert", cert, "--key", key, "--ca", ca,
                   "--server-name", "localhost", "--timeout", "3")
    err = said.stdout + said.stderr
    assert said.returncode == 2, said
    assert "the plugin closed the connection right after each TLS handshake" in err, err
    assert "it most likely refused it (--cert signed by a CA it does not trust" in err, err
    assert "check that the plugin runs" not in err and "UNREACHABLE" not in err, err
    server = _files(tmp_path / "server", certs, netcerts.issue(certs.client_ca, "a server", server=True))
    said = plugbay("health", f"static:///{gw.address}", "--cert", server[0], "--key", server[1], "--ca", server[2],
                   "--server-name", "localhost", "--timeout", "3")
    assert said.returncode == 2 and "is no client certificate: its extendedKeyUsage (serverAuth)" in said.stderr, said
    right = _files(tmp_path / "right", certs, certs.client)
    ok = plugbay("health", f"static:///{gw.address}", "--cert", right[0], "--key", right[1], "--ca", right[2],
                 "--server-name", "localhost", "--timeout", "10")
    assert ok.returncode == 0 and ok.stdout.startswith("SERVING"), ok


def test_a_plugin_that_closed_after_handshakes_and_then_went_away_is_unreachable(tmp_path: Path) -> None:
    """A plugin going away (a rolling restart's TLS front closing each connection after its handshake while its
    backend stops, then nothing listening): the command kept the early closes to the end and said the plugin
    most likely refused a --cert it had taken (exit 2). Closes that do not last to the end say nothing: it is
    UNREACHABLE (exit 3), with the last attempt's words. A TLS server on 127.0.0.1 that takes the host's right
    certificate and closes each connection for 1 s from the first, then stops listening (its port held: dials are
    refused)."""
    import socket
    import ssl
    import subprocess
    import sys
    import threading
    import time

    from tests.ports import HeldPort

    certs = netcerts.write_set(tmp_path / "tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.cert_file, certs.key_file)
    context.load_verify_locations(certs.client_ca_file)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])  # as a gRPC server's: gRPC refuses a TLS peer that selects none
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.settimeout(0.1)
    taken: list[bool] = []

    def closing_for_a_second() -> None:
        # a second from the first handshake (the command's start may take longer on a loaded machine); a hang
        # guard of 60 s if none comes
        until = time.monotonic() + 60.0
        while time.monotonic() < until:
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:  # the listener closed (the test ends)
                return
            with conn:
                try:
                    with context.wrap_socket(conn, server_side=True):
                        if not taken:
                            until = time.monotonic() + 1.0
                        taken.append(True)  # the handshake took the host's certificate
                except (ssl.SSLError, OSError):
                    pass

    front = threading.Thread(target=closing_for_a_second)
    front.start()
    held: HeldPort | None = None
    try:
        right = _files(tmp_path / "right", certs, certs.client)
        said = subprocess.Popen([sys.executable, "-m", "plugbay", "health", f"static:///127.0.0.1:{port}", "--cert",
                                 right[0], "--key", right[1], "--ca", right[2], "--server-name", "localhost",
                                 "--timeout", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=cli_env(), stdin=subprocess.DEVNULL)
        try:
            front.join(10)
            listener.close()
            held = HeldPort(port=port)
            out, err = said.communicate(timeout=60)
        finally:
            if said.poll() is None:
                said.kill()
                said.communicate()
    finally:
        front.join(10)
        listener.close()
        if held is not None:
            held.release()
    assert taken, "the TLS front never completed a handshake (the test did not set up what it claims)"
    assert said.returncode == 3 and "UNREACHABLE" in out, (said.returncode, out, err)
    assert "most likely refused it" not in out + err, out + err
