"""A network target where nothing listens: every connection is refused.

A server that is starting refuses until it listens, so refusals are waited out for start_timeout, the user's
budget, like any other silence; at its end a start whose every endpoint was refusing says so: a
RemoteRefusedError (a HandshakeTimeoutError too, so what caught the timeout still catches it, and a
TargetUnreachableError) naming the address where nothing listens, not a bare "raise start_timeout". A server
that listens late, within start_timeout, is found, however long the refusals lasted (they once ended a start
after 15 s whatever start_timeout was left), and so is a Supervisor's only replica coming back 25 s late.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from plugbay import (HandshakeTimeoutError, RemoteClient, RemoteConfig, RemoteRefusedError, RestartPolicy, Supervisor,
                     TargetUnreachableError)
from plugbay.network import connect
from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, Replica
from tests.ports import HeldPort
from tests.resilience_util import wait_until

SHORT_START = 4.0  # long enough for the pool's first health checks to be refused


def _said_refused(error: BaseException, port: int) -> None:
    said = str(error)
    assert isinstance(error, HandshakeTimeoutError), said  # caught where a start's timeout is
    assert isinstance(error, TargetUnreachableError), said  # the command line's UNREACHABLE too
    assert f"at 'static:///127.0.0.1:{port}': the connection was refused for" in said, said
    assert f"nothing listens at 127.0.0.1:{port}" in said and "Connection refused" in said, said
    assert "Check the address and port, and that the plugin's service runs" in said, said
    assert "raising start_timeout helps only if it is still starting" in said, said


@pytest.mark.timeout(60)
def test_connect_to_nothing_listening_ends_at_start_timeout_as_refused(closed_port: int) -> None:
    port = closed_port
    with pytest.raises(RemoteRefusedError) as err:
        connect(f"static:///127.0.0.1:{port}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                start_timeout=SHORT_START, name="kv-refused")
    _said_refused(err.value, port)


@pytest.mark.timeout(60)
def test_a_remote_clients_start_against_nothing_listening_ends_as_refused(closed_port: int) -> None:
    port = closed_port
    client = RemoteClient(RemoteConfig(target=f"static:///127.0.0.1:{port}", handshake=HANDSHAKE, plugins=PLUGINS,
                                       insecure=True, start_timeout=SHORT_START, name="kv-refused"))
    try:
        with pytest.raises(HandshakeTimeoutError) as err:  # as a user catching the start's timeout does
            client.start()
    finally:
        client.kill()
    assert isinstance(err.value, RemoteRefusedError), err.value
    _said_refused(err.value, port)


@contextmanager
def _listening_after(seconds: float, held: HeldPort) -> Iterator[None]:
    """A replica listening on ``held``'s port in ``seconds``: the port is held (refusing) until then, so that no
    other socket takes it meanwhile."""
    started: list[Replica] = []

    def listen() -> None:
        held.release()
        started.append(Replica(f"127.0.0.1:{held.port}"))

    timer = threading.Timer(seconds, listen)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join(30)
        held.release()
        for replica in started:
            replica.stop()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("late", [5.0, 20.0])
def test_a_server_that_listens_late_within_start_timeout_is_found(late: float) -> None:
    held = HeldPort()
    port = held.port
    with _listening_after(late, held):
        with connect(f"static:///127.0.0.1:{port}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                     start_timeout=60, name="kv-late") as client:
            kv = client.dispense(PLUGIN_NAME)
            kv.put("k", b"v")
            assert kv.get("k") == b"v"


def _answers(kv: object) -> bytes | None:
    try:
        return kv.get("__pid__")  # type: ignore[attr-defined, no-any-return]
    except Exception:
        return None


@pytest.mark.timeout(120)
def test_a_supervisors_restart_waits_start_timeout_for_its_only_replica_to_come_back() -> None:
    # one restart allowed: a start given up before start_timeout (the refusals once ended it at 15 s) was the
    # Supervisor's end, though the replica came back well within the 60 s the user gave it
    first = Replica("127.0.0.1:0")
    port = first.port
    cfg = RemoteConfig(target=f"static:///127.0.0.1:{port}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                       call_timeout=1.5, health_interval=0.2, start_timeout=60, name="kv-sup-late")
    try:
        with Supervisor(cfg, health_interval=0.3, unhealthy_grace=1.0,
                        restart=RestartPolicy(max_restarts=1, window=120, initial_backoff=0.05)) as sup:
            kv = sup.dispense(PLUGIN_NAME)
            assert kv.get("__pid__") == str(first.proc.pid).encode()
            first.stop()
            with _listening_after(25.0, HeldPort(port=port)):
                old = str(first.proc.pid).encode()
                assert wait_until(lambda: _answers(kv) not in (None, old), 90), list(sup.events)
                assert sup.state != "failed" and sup.restarts == 1, list(sup.events)
    finally:
        first.stop()
