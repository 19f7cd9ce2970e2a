"""At most once under a Supervisor: a call the plugin had read when it was SIGKILLed fails as in flight
(PluginDiedError) and is never sent to the restarted plugin. (A try that resent calls gRPC reported
reset by the dead plugin, "its bytes unread", was taken back: a stream or another stub's call on the
same connection could be the unread bytes, and a call the plugin had run went to its successor.)"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from tests.resilience_util import PLUGIN_NAME, faulty_config, wait_until

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402, I001

from plugbay import PluginDiedError, RestartPolicy, Supervisor  # noqa: E402

MANY = RestartPolicy(max_restarts=30, window=300, initial_backoff=0.05, max_backoff=0.2)


def test_a_call_the_plugin_had_read_when_it_was_sigkilled_fails_as_in_flight(tmp_path: Path) -> None:
    with Supervisor(lambda: faulty_config(tmp_path), restart=MANY, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        kv.put("__slow__", b"1")  # the next Get sleeps 10 s in the plugin
        client = sup.current_client
        assert client is not None
        direct = kv_pb2_grpc.KVStub(client.channel)  # a second stub on the same connection, as users make
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
        for _ in range(3):  # more of that stub's traffic while the plugin dies: none of it makes a resend
            try:
                direct.Get(kv_pb2.GetRequest(key="__pid__"), timeout=1)
            except Exception:  # noqa: BLE001 - the dead plugin's connection fails them
                pass
        caller.join(60)
        assert not caller.is_alive()
        assert isinstance(outcome[0], PluginDiedError), outcome
        assert int(kv.get("__pid__")) != pid  # the next call runs on the restarted plugin
        assert kv.get("__calls__") == b"0"  # which never got the call its predecessor had read


def test_a_call_made_right_after_a_sigkill_goes_to_the_restarted_plugin(tmp_path: Path) -> None:
    # Made once kill() returned, the call can never be read by the plugin (a SIGKILL pending runs no more of
    # its code), though its connection lives on for the few milliseconds its exit takes: sent there, it failed
    # as in flight (PluginDiedError) a few times in ten. Repeated, so that such a failure would show.
    with Supervisor(lambda: faulty_config(tmp_path), restart=MANY, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        pids = []
        for _ in range(20):
            pid = int(kv.get("__pid__"))
            os.kill(pid, signal.SIGKILL)
            assert int(kv.get("__pid__")) != pid  # at once: it waits for the restarted plugin
            pids.append(pid)
        assert sup.restarts == 20 and len(set(pids)) == 20
