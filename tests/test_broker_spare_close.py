"""The last broker leaving the spare servers (SpareServer.leave): no folder or worker thread left.

A plugin that stops leaves with wait=False (it does not join handlers still running); a host's
kill leaves with wait=True. Either way the spares folder goes, and a stopped server's worker
pool, queued behind one whose handler is stuck, is shut down once that handler returns.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay.core.broker import spares
from plugbay.core.broker.channels import stop_served
from plugbay.core.broker.spares import ServerSource
from plugbay.core.protocol.tls import generate_cert
from plugbay.core.transport.secure import MutualTLS
from tests.thread_util import wait_for


@pytest.mark.parametrize("wait", [True, False])
def test_no_spares_folder_is_left_when_the_last_broker_leaves_while_a_spare_is_built(
        wait: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the builder made or filled the folder while leave() removed it: about one close in fifty left it
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    private = tempfile.mkdtemp(prefix="private-")
    for i in range(1000):
        source = ServerSource(None, lambda: private, lambda: os.path.join(private, f"pub{i}"))
        source.refill()  # as accept_and_serve does after each brokered server
        source.close(wait=wait)
    assert [n for n in os.listdir(tmp_path) if n.startswith("plugbay-spares-")] == []


class _Handlers(grpc.GenericRpcHandler):
    def __init__(self, started: threading.Event) -> None:
        self.started = started

    def service(self, details: Any) -> Any:
        def sleep(request: bytes, context: Any) -> bytes:
            self.started.set()
            time.sleep(3)
            return b""

        quick = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")
        return {"/t.S/Sleep": grpc.unary_unary_rpc_method_handler(sleep), "/t.S/Quick": quick}.get(details.method)


def test_leaving_without_waiting_still_shuts_down_pools_queued_behind_a_stuck_handler(tmp_path: Path) -> None:
    source = ServerSource(None, lambda: str(tmp_path), None)
    started = threading.Event()
    stuck, stuck_path = source.get()
    stuck.server.add_generic_rpc_handlers((_Handlers(started),))
    with grpc.insecure_channel("unix:" + stuck_path) as stuck_channel:
        pending = stuck_channel.unary_unary("/t.S/Sleep").future(b"")
        assert started.wait(5)
        stop_served(stuck, grace=None, reap=source.reap, recycle=source.recycle)  # as stop_serving does
        time.sleep(0.3)  # the builder is now joining the stuck handler's worker
        idle, idle_path = source.get()
        idle.server.add_generic_rpc_handlers((_Handlers(threading.Event()),))
        with grpc.insecure_channel("unix:" + idle_path) as idle_channel:
            idle_channel.unary_unary("/t.S/Quick")(b"", timeout=5)  # its pool has a worker now
        stop_served(idle, grace=None, reap=source.reap, recycle=source.recycle)  # queued behind the stuck one
        source.close(wait=False)  # a plugin stopping: returns without joining the stuck handler
        pending.exception(timeout=10)
    # once the stuck handler returned, every brokered worker ends (the idle pool's was left waiting for good)
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("plugbay-brokered")],
             "the brokered servers' workers to end", timeout=10)


@pytest.fixture()
def short_tmp() -> Iterator[Path]:
    path = tempfile.mkdtemp(prefix="pbsp", dir="/tmp")  # unix socket paths stay under 108 bytes
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("when", ["being built", "asked for after"])
def test_a_spare_for_a_broker_that_left_is_not_kept_for_the_others(
        when: str, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an AutoMTLS client closed while its next spare was built (or accept_and_serve's refill ran after
    # its close): the spare landed with its certificate, listening until another broker's next refill
    if spares._SPARES is not None:
        pytest.skip("another broker of this process holds the spare servers")
    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    entered, release = threading.Event(), threading.Event()
    build = spares.build_server

    def held_build(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "plugbay-broker-spare":
            entered.set()
            release.wait(10)
        return build(*args, **kwargs)

    monkeypatch.setattr(spares, "build_server", held_build)
    private = tempfile.mkdtemp(prefix="private-")
    public = iter(range(100))
    leaving, staying = (ServerSource(MutualTLS(generate_cert(), generate_cert().cert_pem), lambda: private,
                                     lambda: os.path.join(private, f"pub{next(public)}")) for _ in range(2))
    holder = spares._SPARES
    assert holder is not None
    try:
        if when == "being built":
            leaving.refill()
            assert entered.wait(10)
            leaving.close()
        else:
            leaving.close()
            leaving.refill()
        release.set()
        wait_for(lambda: holder._wanted is None, "the builder to finish")
        assert holder._spare is None
        wait_for(lambda: not [p for p in short_tmp.glob("plugbay-spares-*/*") if p.is_socket()],
                 "the spare's socket to go")
    finally:
        release.set()
        staying.close()
    assert spares._SPARES is None
