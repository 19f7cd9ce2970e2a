"""A knock whose dialer gave up routes no later stream (multiplexed brokering, plugbay on both sides).

The serving side routes the peer's next stream by the order of knocks; a knock
answered after its dialer timed out (it came before accept_and_serve) must not
take the stream the dialer opens next for another id.
"""

from __future__ import annotations

import time

import pytest

from plugbay.errors import BrokerTimeoutError
from tests.test_broker import check, register
from tests.test_broker_mux import SERVING, close_mux_pair, make_mux_pair


@pytest.mark.parametrize("mode", ["unix", "unix-eager"])
def test_a_knock_answered_after_its_dial_timed_out_takes_no_later_stream(mode: str) -> None:
    network, _, eager = mode.partition("-")
    p = make_mux_pair(network)
    p.front.peer_holds = bool(eager)  # eager: the plugin opens its stream right after the knock
    try:
        a = p.host.next_id()
        with pytest.raises(BrokerTimeoutError):
            p.plugin.dial(a, timeout=0.5)  # nobody serves it yet
        p.host.accept_and_serve(a, register("helper-a"))  # answers that knock: its dialer is gone
        b = p.host.next_id()
        p.host.accept_and_serve(b, register("helper-b"))
        for _ in range(2):
            assert check(p.plugin.dial(b), "helper-b") == SERVING
        assert check(p.plugin.dial(a), "helper-a") == SERVING
    finally:
        close_mux_pair(p)


def test_a_knock_older_than_a_dial_waits_is_not_answered_when_its_id_is_served() -> None:
    p = make_mux_pair("unix")
    p.host.dial_timeout = 0.5  # how long an early knock is kept
    try:
        a = p.host.next_id()
        with pytest.raises(BrokerTimeoutError):
            p.plugin.dial(a, timeout=0.3)
        time.sleep(0.5)
        p.host.accept_and_serve(a, register("helper-a"))
        assert not p.hostmux._knocks and a not in p.host._early_knocks
        assert check(p.plugin.dial(a), "helper-a") == SERVING
    finally:
        close_mux_pair(p)
