"""A brokered dial from the host after the plugin's GoAway (a normal one: hashicorp/yamux's Session.GoAway()).

The knock travels on the broker stream, inside a gRPC connection on the went-away
session, and the knocked stream must follow it there, where no new stream is taken:
the dial fails, saying what the user can do, and sends no knock the plugin would ack
and wait for in vain.
"""

from __future__ import annotations

import time

import pytest

from plugbay.core.transport.ystream import GO_AWAY
from plugbay.errors import NoNewStreamsError
from tests.test_broker import check, register
from tests.test_broker_mux import close_mux_pair, make_mux_pair


def test_a_brokered_dial_after_the_plugins_goaway_fails_at_once_and_says_why() -> None:
    p = make_mux_pair("unix")
    try:
        sid = p.plugin.next_id()
        p.plugin.accept_and_serve(sid, register("plugin-side"))
        assert check(p.host.dial(sid), "plugin-side") == 1
        first = p.hostmux.session
        assert first is not None
        p.front.session._control(GO_AWAY, 0, 0, 0)  # code 0: as hashicorp/yamux's Session.GoAway() sends
        deadline = time.monotonic() + 5
        while not first.went_away:
            assert time.monotonic() < deadline, "the GoAway did not arrive"
            time.sleep(0.01)
        sid = p.plugin.next_id()
        p.plugin.accept_and_serve(sid, register("plugin-side"))
        with pytest.raises(NoNewStreamsError) as err:
            p.host.dial(sid, timeout=3)
        message = str(err.value)
        assert "GoAway" in message and "broker stream" in message and "Restart the plugin" in message
        time.sleep(0.3)  # a knock would have reached the plugin by now
        assert not p.front._knocks  # none went out: the plugin routes no stream to sid, waits for none
    finally:
        close_mux_pair(p)
