"""Multiplexed dials knock one at a time (go-plugin's dialMutex): a dial that waits for its turn
keeps its own deadline, however long the dial before it may wait for its knock's ack.

The peer here stalls for real: the example counter plugin, a separate process, is stopped
(SIGSTOP) once its multiplexed connection and broker stream are up, so no knock is answered.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from plugbay import Client, ClientConfig
from plugbay.errors import BrokerTimeoutError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "counter"
sys.path.insert(0, str(EXAMPLE))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402


def test_a_dial_queued_behind_an_unanswered_knock_times_out_at_its_own_deadline(in_tmp: Path) -> None:
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                                 cmd=[sys.executable, str(EXAMPLE / "plugin.py")], multiplex_broker=True))
    with client:
        client.broker.open_stream()
        pid = int(client.runner.id)
        first: list[BaseException] = []

        def long_dial() -> None:
            try:
                client.broker.dial(100, timeout=6.0)
            except BaseException as exc:
                first.append(exc)

        os.kill(pid, signal.SIGSTOP)
        try:
            holder = threading.Thread(target=long_dial, name="plugbay-test-long-dial")
            holder.start()
            time.sleep(0.3)  # its knock is out: it holds the turn until its ack or its 6 s
            began = time.monotonic()
            with pytest.raises(BrokerTimeoutError, match="an earlier one still waits for its knock's answer") as err:
                client.broker.dial(101, timeout=1.0)
            # it gave up within its own 1 s, while the 6 s dial it queued behind still waited (the old
            # code waited for that one: 6.7 s)
            behind = holder.is_alive() and not first
            took = time.monotonic() - began
            holder.join(15)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert behind, f"a 1 s dial ended only after the 6 s dial it queued behind ({took:.1f}s)"
        assert took < 30, took  # a hang guard only
        assert "101" in str(err.value)
        assert len(first) == 1 and isinstance(first[0], BrokerTimeoutError), first
