"""The network rows, all on 127.0.0.1: a bare grpcio channel -> go-plugin's Go KV plugin through the
gateway (plaintext and provided mTLS: the gateway's cost), and hosts of the Python KV plugin served
with NetworkServe (mTLS).

The gateway's floor is bench/floor_proxy.py: a bare grpcio server forwarding every method as
stream-stream raw bytes (as the gateway must) to the same Go KV plugin, talking TLS to it through
bench/floor_relay.py as the gateway talks AutoMTLS to its child through plugbay's relay, in the
bench process like the gateway, called by the same client; its rounds alternate with the
gateway's, a floor round before each gateway round.

The pool rows put one NetworkServe replica behind ``static:///`` and compare a RemoteClient
(multiplexed, as Discovery offers, and with ``brokered=False``) with a bare grpcio channel to the
same replica, and an AsyncRemoteClient with a bare grpc.aio channel, their rounds alternating.

Start-to-first-call runs from starting the gateway (its child's start included) or the plugin
process to the first Put answered over the network; compare with the core rows (process runner,
unix socket), which have no network hop and no second gRPC leg.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from common import REPO, Case, Context, Result, combine, go_program, interleaved, measure_kv
from floor import first_line

from plugbay.core.protocol.handshake import parse_handshake_line


def _certs(folder: str) -> object:
    from tests import netcerts

    return netcerts.write_set(Path(folder) / "tls")


def _channel(address: str, certs: object | None) -> grpc.Channel:
    from tests import netcerts

    if certs is None:
        return grpc.insecure_channel(address)
    assert isinstance(certs, netcerts.CertSet)
    return grpc.secure_channel(address, netcerts.channel_credentials(certs),
                               options=[("grpc.ssl_target_name_override", "localhost")])


def _gateway_round(plugin: str, mtls: bool, ctx: Context, cwd: str) -> Result:
    from kv_plugin_def import KVClient

    from plugbay.network.gateway import Gateway, GatewayConfig

    certs = _certs(cwd) if mtls else None
    tls = {}
    if certs is not None:
        tls = {"cert_file": str(certs.cert_file), "key_file": str(certs.key_file),  # type: ignore[attr-defined]
               "client_ca_file": str(certs.client_ca_file)}  # type: ignore[attr-defined]
    config = GatewayConfig(cmd=[plugin], cookie=("BASIC_PLUGIN", "hello"), listen="127.0.0.1:0", cwd=cwd,
                           insecure=not mtls, plugins=("kv_grpc",), **tls)  # type: ignore[arg-type]
    started = time.perf_counter()
    with Gateway(config) as gw, _channel(gw.address, certs) as ch:
        return measure_kv(KVClient(ch), ctx.calls, started, note="gateway + relay-tls to the child")


def _proxy_round(plugin: str, mtls: bool, ctx: Context, cwd: str) -> Result:
    """The gateway's floor: bench/floor_proxy.py in front of the same plugin, the same client and calls."""
    from floor_proxy import BareProxy
    from kv_plugin_def import KVClient

    certs = _certs(cwd) if mtls else None
    credentials = None
    if certs is not None:
        credentials = grpc.ssl_server_credentials(
            [(certs.key_file.read_bytes(), certs.cert_file.read_bytes())],  # type: ignore[attr-defined]
            root_certificates=certs.client_ca_file.read_bytes(), require_client_auth=True)  # type: ignore[attr-defined]
    started = time.perf_counter()
    with BareProxy([plugin], cwd, automtls=True, credentials=credentials) as proxy, \
            _channel(proxy.address, certs) as ch:
        return measure_kv(KVClient(ch), ctx.calls, started,
                          note="bench/floor_proxy.py: stream-stream raw bytes, deadline and status only;"
                               " TLS to the child through floor_relay.py; the child's stderr discarded")


def _gateway(mtls: bool, ctx: Context, kind: str = "gateway") -> Result:
    """``kind`` "gateway": the gateway's rounds, each after one of its floor's; "proxy": the floor's own."""
    plugin = go_program(ctx, "kv_plugin")
    if plugin is None:
        return Result(skipped=f"Go: {ctx.cache.get('go:reason')}")
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        if kind == "proxy":
            return combine([_proxy_round(plugin, mtls, ctx, cwd) for _ in range(ctx.rounds)])
        rounds: list[Result] = []
        floors: list[Result] = []
        for _ in range(ctx.rounds):
            floors.append(_proxy_round(plugin, mtls, ctx, cwd))
            rounds.append(_gateway_round(plugin, mtls, ctx, cwd))
        return combine(rounds, floor_starts=[f.start_to_first_call_ms for f in floors], floor_rounds=floors)


def _replica(cwd: str, certs: object) -> tuple[subprocess.Popen[bytes], str]:
    """The Python KV plugin served with NetworkServe (mTLS) on 127.0.0.1; (process, HOST:PORT)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_"))}
    # TMPDIR in the round's folder: a replica killed with -9 cannot remove its private socket folder
    env.update(PYTHONPATH=str(REPO / "src"), TMPDIR=cwd, PLUGBAY_NETWORK_LISTEN="127.0.0.1:0",
               PLUGBAY_NETWORK_CERT=str(certs.cert_file), PLUGBAY_NETWORK_KEY=str(certs.key_file),  # type: ignore[attr-defined]
               PLUGBAY_NETWORK_CLIENT_CA=str(certs.client_ca_file))  # type: ignore[attr-defined]
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "kv" / "plugin.py")], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        return proc, parse_handshake_line(first_line(proc)).address
    except BaseException:
        _end(proc)
        raise


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _host_tls(cwd: str, certs: object) -> object:
    """The host's NetworkTLS for ``certs`` (files written in ``cwd``)."""
    from plugbay.network import NetworkTLS

    host_files = Path(cwd) / "host"
    host_files.mkdir(exist_ok=True)
    (host_files / "c.pem").write_bytes(certs.client.cert_pem)  # type: ignore[attr-defined]
    (host_files / "k.pem").write_bytes(certs.client.key_pem)  # type: ignore[attr-defined]
    (host_files / "ca.pem").write_bytes(certs.server_ca.cert_pem)  # type: ignore[attr-defined]
    return NetworkTLS(str(host_files / "c.pem"), str(host_files / "k.pem"), str(host_files / "ca.pem"),
                      server_name="localhost")


def _pool_round(kind: str, calls: int, cwd: str) -> Result:
    """One NetworkServe replica (mTLS), then the same calls through ``kind``: "bare" (a grpcio channel),
    "remote" (RemoteClient, static:///), "bare-aio" (a grpc.aio channel) or "async" (AsyncRemoteClient)."""
    import asyncio

    from bench_async import _measure
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVClient, KVPlugin

    from plugbay import AsyncRemoteClient, RemoteConfig
    from plugbay.network import connect

    certs = _certs(cwd)
    started = time.perf_counter()
    proc, address = _replica(cwd, certs)
    plugins = {PLUGIN_NAME: KVPlugin()}
    try:
        if kind == "bare":
            with _channel(address, certs) as ch:
                return measure_kv(KVClient(ch), calls, started, note="bare grpcio channel")
        if kind in ("remote", "remote-plain"):
            plain = kind == "remote-plain"
            with connect(f"static:///{address}", handshake=HANDSHAKE, plugins=plugins, tls=_host_tls(cwd, certs),
                         call_timeout=10.0, brokered=not plain) as client:
                return measure_kv(client.dispense(PLUGIN_NAME), calls, started,
                                  note="endpoint pool, plain gRPC" if plain else "endpoint pool, yamux in TLS")

        async def main() -> Result:
            if kind == "bare-aio":
                import grpc.aio
                from kvproto import kv_pb2, kv_pb2_grpc

                from tests import netcerts

                creds = netcerts.channel_credentials(certs)  # type: ignore[arg-type]
                async with grpc.aio.secure_channel(address, creds, options=[
                        ("grpc.ssl_target_name_override", "localhost")]) as channel:
                    stub = kv_pb2_grpc.KVStub(channel)
                    return await _measure(
                        lambda: stub.Put(kv_pb2.PutRequest(key="bench", value=b"value"), timeout=10),
                        lambda: stub.Get(kv_pb2.GetRequest(key="bench"), timeout=10), calls, started)
            config = RemoteConfig(target=f"static:///{address}", handshake=HANDSHAKE, plugins=plugins,
                                  tls=_host_tls(cwd, certs), call_timeout=10.0)  # type: ignore[arg-type]
            async with AsyncRemoteClient(config) as client:
                kv = await client.dispense(PLUGIN_NAME)
                return await _measure(lambda: kv.put("bench", b"value"), lambda: kv.get("bench"), calls, started)

        result = asyncio.run(main())
        result.note = "bare grpc.aio channel" if kind == "bare-aio" else "endpoint pool on grpc.aio"
        return result
    finally:
        _end(proc)


def _pool(kind: str, floor: str | None) -> Callable[[Context], Result]:
    def run(ctx: Context) -> Result:
        with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
            return interleaved(ctx, lambda calls: _pool_round(kind, calls, cwd),
                               (lambda calls: _pool_round(floor, calls, cwd)) if floor else None)
    return run


def _failover_round(ctx: Context, cwd: str) -> Result:
    """Two replicas behind static:///; kill -9 one; time from the kill to the first answered Get."""
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay.network import connect

    certs = _certs(cwd)
    replicas = [_replica(cwd, certs) for _ in range(2)]
    try:
        tls = _host_tls(cwd, certs)
        target = "static:///" + ",".join(address for _, address in replicas)
        with connect(target, handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, tls=tls,  # type: ignore[arg-type]
                     call_timeout=5.0) as client:
            kv = client.dispense(PLUGIN_NAME)
            kv.put("bench", b"value")
            for _ in range(10):  # both replicas warm
                kv.get("bench")
            replicas[0][0].kill()
            killed = time.perf_counter()
            deadline = killed + 30
            while True:  # bounded: 30 s
                try:
                    kv.get("bench")
                    break
                except Exception:  # noqa: BLE001 - the figure is the time until one call succeeds
                    if time.perf_counter() > deadline:
                        return Result(skipped="FAILED: no call succeeded within 30 s after the kill")
            first_ok = (time.perf_counter() - killed) * 1000
            # in the figures, not the start column: no start is timed here
            return Result(note="kill -9 of 1 of 2 replicas -> first answered Get", metrics={"failover ms": first_ok})
    finally:
        for proc, _ in replicas:
            _end(proc)


def _failover(ctx: Context) -> Result:
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        return combine([_failover_round(ctx, cwd) for _ in range(ctx.rounds)])


def cases(ctx: Context) -> list[Case]:
    return [
        Case("bare grpcio", "Go (bare grpcio proxy)", False, lambda c: _gateway(False, c, "proxy"),
             area="network", transport="proxy, tcp plaintext", key="floor-gateway"),
        Case("bare grpcio", "Go (gateway)", False, lambda c: _gateway(False, c), area="network",
             transport="gateway, tcp plaintext", floor="floor-gateway"),
        Case("bare grpcio", "Go (bare grpcio proxy)", True, lambda c: _gateway(True, c, "proxy"),
             area="network", transport="proxy, tcp mTLS", key="floor-gateway-tls"),
        Case("bare grpcio", "Go (gateway)", True, lambda c: _gateway(True, c), area="network",
             transport="gateway, tcp mTLS", floor="floor-gateway-tls"),
        Case("Python", "2 Python replicas (failover)", True, _failover, area="network",
             transport="static:///, tcp mTLS"),
        Case("bare grpcio", "Python (NetworkServe)", True, _pool("bare", None), area="network",
             transport="tcp mTLS", key="floor-net"),
        Case("Python (RemoteClient)", "Python (NetworkServe)", True, _pool("remote", "bare"), area="network",
             transport="static:///, tcp mTLS, multiplexed", floor="floor-net"),
        Case("Python (RemoteClient)", "Python (NetworkServe)", True, _pool("remote-plain", "bare"), area="network",
             transport="static:///, tcp mTLS, brokered=False", floor="floor-net"),
        Case("bare grpc.aio", "Python (NetworkServe)", True, _pool("bare-aio", None), area="network",
             transport="tcp mTLS", key="floor-net-aio"),
        Case("Python (AsyncRemoteClient)", "Python (NetworkServe)", True, _pool("async", "bare-aio"),
             area="network", transport="static:///, tcp mTLS", floor="floor-net-aio"),
    ]
