"""A multiplexed dial whose knock meets a broker stream just lost fails at once with BrokerClosedError
naming its broker id: the stream's words, shared by every sender, name none (a dial racing a plugin's
kill said only "the plugin's broker stream ended", whichever of its dials it was).

The order is driven, not timed: the dial is held at its knock (race_util.PauseAt) while the host's
connection to the plugin is lost and its broker stream detached, then let go.
"""

from __future__ import annotations

import pytest

from plugbay.core.broker.broker import GRPCBroker
from plugbay.errors import BrokerClosedError
from tests.race_util import BOUND, PauseAt, Starting
from tests.test_broker import check, register
from tests.test_broker_mux import SERVING, close_mux_pair, make_mux_pair


# held before the knock is sent (its send meets the lost stream), or once its ack came (the stream it
# opens meets the lost connection)
@pytest.mark.parametrize("held_at", ["_knock", "_wait_ack"], ids=["knock-unsent", "knock-acked"])
def test_a_dial_whose_knock_meets_a_just_lost_broker_stream_names_its_broker_id(held_at: str) -> None:
    p = make_mux_pair("unix")
    try:
        served = p.plugin.next_id()
        p.plugin.accept_and_serve(served, register("plugin-side"))
        assert check(p.host.dial(served), "plugin-side") == SERVING  # the broker stream is up
        dialed = p.plugin.next_id()
        p.plugin.accept_and_serve(dialed, register("never-reached"))
        pause = PauseAt(getattr(GRPCBroker, held_at).__code__, "call")
        dial = Starting(lambda: p.host.dial(dialed, timeout=BOUND), pause)
        try:
            pause.wait_reached()  # past the dial's checks that the broker is open: the loss comes now
            if held_at == "_wait_ack":
                with p.host._cond:  # the ack arrives (receive() notifies): the dial would open its stream next
                    assert p.host._cond.wait_for(lambda: dialed in p.host._acks, BOUND), "no ack came"
            session = p.hostmux.session
            assert session is not None
            session.abort("test: the plugin's connection is lost")
            with p.host._cond:  # the stream's reader sees the loss and detaches it (it notifies)
                assert p.host._cond.wait_for(lambda: p.host._send_q is None, BOUND), "the broker stream stayed"
        finally:  # a failed check above must not leave the dial held (its message would hide behind a leak)
            pause.release()
        error = dial.outcome()
        assert isinstance(error, BrokerClosedError), repr(error)
        assert f"broker id {dialed}" in str(error), str(error)
    finally:
        close_mux_pair(p)
