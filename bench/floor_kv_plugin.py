"""The floor for a Python plugin: a bare grpcio KV plugin, no plugbay at all.

It does what examples/kv/plugin.py does for a go-plugin host, and nothing else:
check the magic cookie, serve proto.KV (files ``kv_<key>`` in the working
directory, like the example), grpc.health.v1 and plugin.GRPCController on a
unix socket, print the go-plugin handshake line, and exit on Shutdown or
SIGTERM. With AutoMTLS (the host's certificate in PLUGIN_CLIENT_CERT) it reads
the certificate made ahead in $FLOOR_CERT_DIR (the bench sets it: a lower bound,
no key generation), else makes its own with cryptography, and serves behind bench/floor_relay.py's
BareTerminator (grpcio cannot take a go-plugin host's P-521 certificate, so a
bare grpcio plugin needs a TLS hop of its own). No broker, no stdio capture, no
logging.
The bench runs it under the Go host (tests/go/kv_host) next to the plugbay plugin.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "kv"))
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402  (the example's generated code)


class _KV(kv_pb2_grpc.KVServicer):
    def Get(self, request: kv_pb2.GetRequest, context: grpc.ServicerContext) -> kv_pb2.GetResponse:
        try:
            return kv_pb2.GetResponse(value=Path(f"kv_{request.key}").read_bytes())
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no value for {request.key!r}")
            raise

    def Put(self, request: kv_pb2.PutRequest, context: grpc.ServicerContext) -> kv_pb2.Empty:
        Path(f"kv_{request.key}").write_bytes(request.value)
        return kv_pb2.Empty()


def _raw(func):  # type: ignore[no-untyped-def]
    # Health and the controller as raw bytes: no generated code needed for two fixed messages.
    return grpc.unary_unary_rpc_method_handler(func, request_deserializer=None, response_serializer=None)


def main(kv: kv_pb2_grpc.KVServicer | None = None,
         register: Callable[[grpc.Server], None] | None = None) -> None:
    """Serve ``kv`` (default: files ``kv_<key>``) and what ``register`` adds, until Shutdown or SIGTERM."""
    if os.environ.get("BASIC_PLUGIN") != "hello":
        sys.stderr.write("This binary is a plugin; run it from a host.\n")
        raise SystemExit(1)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = grpc.server(ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
    kv_pb2_grpc.add_KVServicer_to_server(kv or _KV(), server)
    if register is not None:
        register(server)
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": _raw(lambda req, ctx: b"\x08\x01")}),  # status: SERVING
        grpc.method_handlers_generic_handler("plugin.GRPCController", {
            "Shutdown": _raw(lambda req, ctx: (stopped.set(), b"")[1])}),
    ))
    tmp = tempfile.mkdtemp(prefix="plugin")
    # like go-plugin since 1.5: the socket directly in PLUGIN_UNIX_SOCKET_DIR when the host names one
    # (a container's bind-mounted folder), else in a temp folder of its own
    sock_dir = os.environ.get("PLUGIN_UNIX_SOCKET_DIR")
    path = os.path.join(sock_dir, os.path.basename(tmp) + ".sock") if sock_dir else os.path.join(tmp, "plugin.sock")
    server.add_insecure_port(f"unix:{path}")
    server.start()
    relay, announced, cert = None, path, ""
    host_pem = os.environ.get("PLUGIN_CLIENT_CERT", "")
    try:
        if host_pem:
            from floor_relay import CERT_DIR_ENV, BareTerminator, host_certificate, made_ahead

            ahead = os.environ.get(CERT_DIR_ENV)
            cert_pem, key_pem = made_ahead(ahead) if ahead else host_certificate()
            relay = BareTerminator(path, host_pem, cert_pem, key_pem, tmp)
            announced = relay.path
            cert = base64.b64encode(ssl.PEM_cert_to_DER_cert(cert_pem.decode())).decode().rstrip("=")
        os.write(1, f"1|1|unix|{announced}|grpc|{cert}\n".encode())
        while not stopped.wait(0.5):
            pass
    finally:
        if relay is not None:
            relay.close()
        server.stop(1).wait(3)
        shutil.rmtree(tmp, ignore_errors=True)
        if sock_dir:
            try:
                os.unlink(path)
            except OSError:
                pass


if __name__ == "__main__":
    main()
