"""The host's handles on a container's sockets (runners/docker/sockethandles): no engine needed.

The host dials ``/proc/self/fd/N``. A released handle's number names the next one, so a channel to
the new socket must never be handed a connection grpcio still holds to the old one.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from plugbay.core.transport.secure import dial
from plugbay.errors import RunnerError
from plugbay.runners.docker.sockethandles import SocketHandles, Unusable


def _server(folder: str, name: str) -> tuple[grpc.Server, ThreadPoolExecutor, str]:
    pool = ThreadPoolExecutor(2, thread_name_prefix="test-grpc")
    server = grpc.server(pool)
    who = grpc.unary_unary_rpc_method_handler(lambda request, context: name.encode(), lambda b: b, lambda b: b)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", {"Who": who}),))
    path = os.path.join(folder, f"{name}.sock")
    server.add_insecure_port(f"unix:{path}")
    server.start()
    return server, pool, path


def test_a_reused_handle_number_reaches_the_new_socket_not_the_old_connection() -> None:
    # grpcio shares connections between channels with the same target and options: a channel to
    # /proc/self/fd/N (now socket B) was given the still-open connection to socket A, the brokered
    # server whose channel had just closed (a callback answered by another brokered server).
    with tempfile.TemporaryDirectory(prefix="plugbay-h-", dir="/tmp") as folder:
        servers = [_server(folder, name) for name in ("A", "B")]
        handles = SocketHandles()
        wrong = []
        try:
            for _ in range(20):
                for _server_, _pool, path in servers:
                    name = os.path.basename(path)[0]
                    target = handles.dial_path(path)
                    secured = dial("unix", target, None, None)
                    try:
                        answer = secured.channel.unary_unary("/t.T/Who")(b"", timeout=5)
                    finally:
                        secured.close()
                        handles.release(target)
                    if answer != name.encode():
                        wrong.append((target, name, answer))
            assert wrong == []
        finally:
            handles.close()
            for server, pool, _ in servers:
                server.stop(None).wait(5)
                pool.shutdown(wait=True)


def test_handles_are_counted_per_user_and_refuse_what_is_not_a_socket() -> None:
    with tempfile.TemporaryDirectory(prefix="plugbay-h-", dir="/tmp") as folder:
        server, pool, path = _server(folder, "A")
        handles = SocketHandles()
        try:
            first, second = handles.dial_path(path), handles.dial_path(path)
            assert first == second  # one handle per socket
            handles.release(first)
            assert os.path.samefile(second, path)  # still held for its other user
            handles.release(second)
            os.symlink(path, os.path.join(folder, "link.sock"))
            with pytest.raises(Unusable, match="not a socket"):
                handles.dial_path(os.path.join(folder, "link.sock"))
            with pytest.raises(Unusable, match="does not exist"):
                handles.dial_path(os.path.join(folder, "later.sock"))
            handles.close()
            with pytest.raises(RunnerError, match="has ended"):
                handles.dial_path(path)
        finally:
            handles.close()
            server.stop(None).wait(5)
            pool.shutdown(wait=True)


def test_a_plugin_that_has_the_host_hold_too_many_sockets_is_refused_with_what_to_do(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from plugbay.runners.docker import sockethandles

    monkeypatch.setattr(sockethandles, "LIMIT", 3)
    with tempfile.TemporaryDirectory(prefix="plugbay-h-", dir="/tmp") as folder:
        listeners = []
        handles = SocketHandles()
        try:
            for n in range(4):
                listener = socket.socket(socket.AF_UNIX)
                listener.bind(os.path.join(folder, f"{n}.sock"))
                listeners.append(listener)
            held = [handles.dial_path(os.path.join(folder, f"{n}.sock")) for n in range(3)]
            with pytest.raises(RunnerError, match="hold 3 of its sockets open at once.*close brokered channels"):
                handles.dial_path(os.path.join(folder, "3.sock"))
            handles.release(held[0])  # a channel closed: room for one more
            assert handles.dial_path(os.path.join(folder, "3.sock")).startswith("/proc/self/fd/")
        finally:
            handles.close()
            for listener in listeners:
                listener.close()
