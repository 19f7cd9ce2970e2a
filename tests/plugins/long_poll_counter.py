"""examples/counter's plugin whose multiplexed accept loops poll, and are joined, for an hour.

Its exit after Shutdown then shows that close() woke each loop (the front's acceptor and every
brokered dial's bridge): had one waited for its poll, the plugin would still be joining it when
its host's grace ran out (tests/test_mux_close_wakes.py).
"""

from __future__ import annotations

import runpy
from pathlib import Path

from plugbay.core.broker import knock
from plugbay.core.transport import admit, muxbridge, muxplugin

HOUR = 3600.0
muxbridge.POLL = muxplugin.POLL = admit.ACCEPT_POLL = HOUR  # read as each loop starts, and at each poll
knock._BRIDGE_JOIN = muxplugin._ACCEPTOR_JOIN = HOUR

runpy.run_path(str(Path(__file__).resolve().parents[2] / "examples" / "counter" / "plugin.py"), run_name="__main__")
