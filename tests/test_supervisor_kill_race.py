"""A unary call made right after the plugin was SIGKILLed waits for the restart; one the plugin had
read when it died still fails as in flight (at most once)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from tests.resilience_util import PLUGIN_NAME, faulty_config, wait_until

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402, I001

from plugbay import PluginDiedError, RestartPolicy, Supervisor  # noqa: E402

MANY = RestartPolicy(max_restarts=30, window=300, initial_backoff=0.05, max_backoff=0.2)


def _closed_under_it(exc: BaseException) -> bool:
    """The one case left ambiguous: the Client closed the connection on the exit notice before gRPC read
    the reset, so the call ends CANCELLED and nothing tells whether the plugin had read it."""
    original = getattr(exc, "original", None)
    return original is not None and "channel closed" in str(original.details()).lower()


def test_a_call_made_right_after_a_sigkill_goes_to_the_restarted_plugin(tmp_path: Path) -> None:
    failed: list[BaseException] = []
    with Supervisor(lambda: faulty_config(tmp_path), restart=MANY, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        for round in range(10):
            pid = int(kv.get("__pid__"))
            os.kill(pid, signal.SIGKILL)
            try:
                kv.put("k", str(round).encode())  # written into the dying plugin's socket, unread
            except PluginDiedError as exc:
                failed.append(exc)
                continue
            assert int(kv.get("__pid__")) != pid
            assert kv.get("k") == str(round).encode()
    assert all(_closed_under_it(exc) for exc in failed), [str(e)[:200] for e in failed]


def test_a_call_the_plugin_had_read_when_it_was_sigkilled_fails_as_in_flight(tmp_path: Path) -> None:
    with Supervisor(lambda: faulty_config(tmp_path), restart=MANY, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        kv.put("__slow__", b"1")  # the next Get sleeps 10 s in the plugin
        client = sup.current_client
        assert client is not None
        direct = kv_pb2_grpc.KVStub(client.channel)  # past the gate: the stuck call is alone there
        pid = int(direct.Get(kv_pb2.GetRequest(key="__pid__")).value)
        outcome: list[BaseException | bytes] = []

        def stuck() -> None:
            try:
                outcome.append(kv.get("slow"))
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                outcome.append(exc)

        caller = threading.Thread(target=stuck)
        caller.start()
        assert wait_until(lambda: direct.Get(kv_pb2.GetRequest(key="__calls__")).value == b"1", 20)
        os.kill(pid, signal.SIGKILL)
        caller.join(60)
        assert not caller.is_alive()
        assert isinstance(outcome[0], PluginDiedError), outcome
        assert int(kv.get("__pid__")) != pid  # and the next call runs on the restarted plugin
