"""A departed host's stuck handler never holds up the next host's admission (network mode, multiplexed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from plugbay import NetworkTLS, RemoteClient, RemoteConfig
from plugbay.core.protocol.handshake import parse_handshake_line
from tests import netcerts

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "tests" / "plugins" / "probe.py"
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402


def test_a_new_host_is_admitted_while_a_gone_hosts_handler_still_runs(tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    (tmp_path / "host.crt").write_bytes(certs.client.cert_pem)
    (tmp_path / "host.key").write_bytes(certs.client.key_pem)
    (tmp_path / "ca.crt").write_bytes(certs.server_ca.cert_pem)
    tls = NetworkTLS(str(tmp_path / "host.crt"), str(tmp_path / "host.key"), str(tmp_path / "ca.crt"),
                     server_name="localhost")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "PROBE_"))}
    env.update({"PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0", "PLUGBAY_NETWORK_CERT": str(certs.cert_file),
                "PLUGBAY_NETWORK_KEY": str(certs.key_file), "PLUGBAY_NETWORK_CLIENT_CA": str(certs.client_ca_file)})
    plugin = subprocess.Popen([sys.executable, str(PROBE)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=tmp_path, start_new_session=True)
    try:
        assert plugin.stdout is not None
        address = parse_handshake_line(plugin.stdout.readline().decode()).address

        def host() -> RemoteClient:
            return RemoteClient(RemoteConfig(target=f"static:///{address}", handshake=HANDSHAKE,
                                             plugins={PLUGIN_NAME: KVPlugin()}, tls=tls, multiplex=True,
                                             start_timeout=20, call_timeout=30))

        first = host()
        stuck = threading.Thread(target=lambda: _quietly(lambda: first.dispense(PLUGIN_NAME).put("sub", b"sleep 15")),
                                 name="test-stuck-call")
        stuck.start()
        time.sleep(1.0)  # the handler runs (sleep 15) on the plugin
        first.close()  # the host goes; its session is reaped while the handler still runs
        time.sleep(1.5)
        began = time.monotonic()
        second = host()
        try:
            second.dispense(PLUGIN_NAME).put("k", b"v")
            took = time.monotonic() - began
        finally:
            second.close()
        stuck.join(30)
        assert took < 8, f"the second host's first call took {took:.1f}s: its admission waited for the stuck handler"
    finally:
        plugin.send_signal(signal.SIGTERM)
        try:
            plugin.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(plugin.pid, signal.SIGKILL)
            plugin.communicate(timeout=10)


def _quietly(func: object) -> None:
    try:
        func()  # type: ignore[operator]
    except Exception:  # noqa: BLE001 - the call ends with its host's close: what it raises is not the point
        pass
