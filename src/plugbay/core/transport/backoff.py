"""The pause before reopening a stream or connection that broke: doubling with each failure, capped.

The runners' log and exit-wait streams and the network watches each reopen what broke
after a pause of their own figures; the shape is the same everywhere, so it lives here.
"""

from __future__ import annotations


def doubling_pause(failures: int, step: float, cap: float) -> float:
    """``step`` after one failure, doubled for each further failure in a row, never above ``cap``.

    ``failures`` counts from 1. A long run of failures stays at ``cap``: doubling stops there, so no
    float overflows however long a stream keeps breaking.
    """
    pause = step
    for _ in range(failures - 1):
        if pause >= cap:
            break
        pause *= 2
    return min(pause, cap)
