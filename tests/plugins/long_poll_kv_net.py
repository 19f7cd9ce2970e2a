"""examples/kv's plugin in network mode (PLUGBAY_NETWORK_*) whose brokering front polls, and is joined, for an hour.

Once serve() returns (SIGTERM) it prints whether the front's accept loop still runs: close() must
have woken it, or the loop would wait its hour-long poll out, and serve() its hour-long join
(tests/test_netmux_close_wakes.py).
"""

from __future__ import annotations

import runpy
import threading
from pathlib import Path

from plugbay.core.plugin import netmux

HOUR = 3600.0
netmux.ACCEPT_POLL = HOUR  # read as the front makes its listener
netmux._ACCEPTOR_JOIN = HOUR  # (the join before it: 5 s, a literal)

runpy.run_path(str(Path(__file__).resolve().parents[2] / "examples" / "kv" / "plugin.py"), run_name="__main__")
alive = [t.name for t in threading.enumerate() if t.name == "plugbay-netmux-accept"]
print("ACCEPTING" if alive else "STOPPED", flush=True)
