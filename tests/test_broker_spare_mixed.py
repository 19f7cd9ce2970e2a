"""A host with a per-connection and a multiplexed broker side by side keeps its spare brokered server
useful to both: every brokered server is one kind, so one spare fits either broker's next callback.

A spare per kind of broker, with one spare per process, thrashed: each broker's refill replaced the
other's, and nearly every callback waited for a server to be built (a review counted 0-27 takes of 440).
Real counter plugins, real callbacks; the spare takes are counted as they happen.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from plugbay import Client, ClientConfig, ProcessRunner
from plugbay.core.broker import spares

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "counter"))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402

PUTS = 20  # per client, alternating


class Adder:
    def sum(self, a: int, b: int) -> int:
        return a + b


def _config(multiplex: bool, cwd: Path) -> ClientConfig:
    return ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, multiplex_broker=multiplex,
                        runner=ProcessRunner([sys.executable, str(REPO / "examples" / "counter" / "plugin.py")],
                                             cwd=str(cwd)), call_timeout=30)


def test_callbacks_alternating_between_a_per_connection_and_a_multiplexed_broker_take_spares(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    takes: list[bool] = []
    take = spares.SpareServer.take

    def counted(self: spares.SpareServer, key: Any) -> Any:
        built = take(self, key)
        takes.append(built is not None)
        return built

    monkeypatch.setattr(spares.SpareServer, "take", counted)
    with Client(_config(False, tmp_path)) as per_connection, Client(_config(True, tmp_path)) as multiplexed:
        counters = (per_connection.dispense(PLUGIN_NAME), multiplexed.dispense(PLUGIN_NAME))
        for _ in range(PUTS):
            for name, counter in zip(("pc", "mx"), counters):
                counter.put(name, 1, Adder())
        assert [counter.get(name) for name, counter in zip(("pc", "mx"), counters)] == [PUTS, PUTS]
    assert len(takes) >= 2 * PUTS
    # a spare is built between callbacks: most are taken (all but a few on a loaded machine)
    assert sum(takes) > len(takes) // 2, f"{sum(takes)} of {len(takes)} callbacks found a spare server"
