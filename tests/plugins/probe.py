"""A Python plugin (plugbay serve()) for the plugin-side tests, steered by PROBE_* env vars.

It serves the KV service under the KV example's cookie. Put(key, value) writes
instead of storing when the key names an output path:
  out      print(value) (Python's sys.stdout)
  err      sys.stderr.write(value)
  fd1/fd2  os.write(1|2, value) (below Python's buffers)
  sub      run `sh -c value` (a child process writing to the inherited fds)
  log      log value at INFO through Python logging
  crash    raise RuntimeError(value) in a new thread (an exception that ends a thread)
  announce serve a grpc health server through the broker now (accept_and_serve); Get("announced")
           then returns its broker id, for the host to dial whenever it opens its broker stream
  announce-kv  the same with this KV service (so a brokered call can run "sub" and block)
  announce-at  announce value ("NETWORK|ADDRESS") on the broker stream as a server of its own, serving nothing
           there itself (a plugin naming another process's socket); Get("announced") returns the id
  announce-shut  announce a unix socket of its own, listening in its working folder with mode 000 (no one but
           a process with CAP_DAC_OVERRIDE may connect to it), serving nothing; Get("announced") returns the id
  unserve  stop the brokered server of broker id value (stop_serving), leaving its announcement with the host
other keys are stored in memory; Get returns them.

PROBE_VERSIONS="2,3"   serve under those app versions (versioned_plugins) instead of 1
PROBE_MISCONFIGURED=1  a handshake config with an empty cookie value
PROBE_BAD=register     the plugin's grpc_server raises
PROBE_BAD=notgrpc      the plugin set holds an object that is not a GRPCPlugin
PROBE_STDIO_MAX=N      keep at most N bytes of captured output
PROBE_BASICCONFIG=1    logging.basicConfig() (a stderr handler of the program's own) before serve()
PROBE_STOP_GRACE=S     the graceful stop's grace (server.STOP_GRACE) in seconds: a stop that waits it out shows
PROBE_AFTER_SERVE=F    write "serve returned" to the file F once serve() has returned
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "kv"))
sys.path.insert(0, str(REPO / "src"))

import grpc  # noqa: E402
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay.core.broker.broker import GRPCBroker  # noqa: E402
from plugbay.core.protocol.handshake import HandshakeConfig  # noqa: E402
from plugbay.core.plugin.server import ServeConfig, serve  # noqa: E402

log = logging.getLogger("probe")


class ProbeKV:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.broker: GRPCBroker | None = None
        self.kept: list[socket.socket] = []  # announce-shut's listeners

    def put(self, key: str, value: bytes) -> None:
        text = value.decode()
        if key == "out":
            print(text, end="")
        elif key == "err":
            sys.stderr.write(text)
        elif key == "fd1":
            os.write(1, value)
        elif key == "fd2":
            os.write(2, value)
        elif key == "sub":
            subprocess.run(["sh", "-c", text], check=True, timeout=30)
        elif key == "log":
            log.info(text, extra={"probe": True})
        elif key == "crash":
            crashing = threading.Thread(target=_raise, args=(text,), name="probe-crash")
            crashing.start()
            crashing.join(5)
        elif key == "announce" and self.broker is not None:
            from plugbay._proto.grpc.health.v1 import health_pb2_grpc
            from plugbay.core.plugin.health import HealthServicer

            service_id = self.broker.next_id()
            self.broker.accept_and_serve(service_id, lambda server: health_pb2_grpc.add_HealthServicer_to_server(
                HealthServicer(), server))
            self.data["announced"] = str(service_id).encode()
        elif key == "announce-kv" and self.broker is not None:
            from kv_plugin_def import _KVServicer
            from kvproto import kv_pb2_grpc

            service_id = self.broker.next_id()
            self.broker.accept_and_serve(service_id, lambda server: kv_pb2_grpc.add_KVServicer_to_server(
                _KVServicer(self), server))
            self.data["announced"] = str(service_id).encode()
        elif key == "announce-at" and self.broker is not None:
            from plugbay._proto.plugin import grpc_broker_pb2 as pb

            network, _, address = text.partition("|")
            service_id = self.broker.next_id()
            self.broker._send(pb.ConnInfo(service_id=service_id, network=network, address=address))
            self.data["announced"] = str(service_id).encode()
        elif key == "announce-shut" and self.broker is not None:
            from plugbay._proto.plugin import grpc_broker_pb2 as pb

            service_id = self.broker.next_id()
            path = os.path.join(os.getcwd(), f"shut-{service_id}.sock")
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            listener.listen(8)
            os.chmod(path, 0)
            self.kept.append(listener)
            self.broker._send(pb.ConnInfo(service_id=service_id, network="unix", address=path))
            self.data["announced"] = str(service_id).encode()
        elif key == "unserve" and self.broker is not None:
            self.broker.stop_serving(int(text))
        else:
            self.data[key] = value

    def get(self, key: str) -> bytes:
        return self.data.get(key, b"")


class BrokerProbePlugin(KVPlugin):
    """The KV plugin that also hands the plugin's broker to ProbeKV (for "announce")."""

    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        assert isinstance(self.impl, ProbeKV)
        self.impl.broker = broker
        super().grpc_server(broker, server)


class RaisingPlugin(KVPlugin):
    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        raise RuntimeError("the probe refuses to register")


def main() -> None:
    handshake = HANDSHAKE
    if os.environ.get("PROBE_MISCONFIGURED"):
        handshake = object.__new__(HandshakeConfig)  # bypasses the constructor's own check
        object.__setattr__(handshake, "protocol_version", 1)
        object.__setattr__(handshake, "magic_cookie_key", "BASIC_PLUGIN")
        object.__setattr__(handshake, "magic_cookie_value", "")
    plugin: Any = BrokerProbePlugin(ProbeKV())
    bad = os.environ.get("PROBE_BAD")
    if bad == "register":
        plugin = RaisingPlugin(ProbeKV())
    elif bad == "notgrpc":
        plugin = object()
    config = ServeConfig(handshake=handshake, plugins={PLUGIN_NAME: plugin})
    versions = os.environ.get("PROBE_VERSIONS")
    if versions:
        config = ServeConfig(handshake=handshake,
                             versioned_plugins={int(v): {PLUGIN_NAME: plugin} for v in versions.split(",")})
    if os.environ.get("PROBE_BASICCONFIG"):  # the program configured logging itself, to stderr
        logging.basicConfig(level=logging.INFO, format="probe-handler %(levelname)s %(message)s")
    if os.environ.get("PROBE_STDIO_MAX"):
        config.stdio_buffer_bytes = int(os.environ["PROBE_STDIO_MAX"])
    if os.environ.get("PROBE_STOP_GRACE"):
        import plugbay.core.plugin.server as plugin_server

        plugin_server.STOP_GRACE = float(os.environ["PROBE_STOP_GRACE"])
    serve(config)
    if os.environ.get("PROBE_AFTER_SERVE"):
        Path(os.environ["PROBE_AFTER_SERVE"]).write_text("serve returned")


def _raise(text: str) -> None:
    raise RuntimeError(text)


if __name__ == "__main__":
    main()
