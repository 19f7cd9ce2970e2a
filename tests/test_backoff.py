"""doubling_pause: the one shape of the runners' and watches' reopen pauses."""

from __future__ import annotations

import pytest

from plugbay.core.transport.backoff import doubling_pause


@pytest.mark.parametrize("step, cap", [(0.25, 8.0), (0.2, 2.0), (0.2, 10.0)])
def test_the_pause_doubles_from_its_step_to_its_cap(step: float, cap: float) -> None:
    # the figures each caller had written out as min(step * 2 ** (n - 1), cap)
    for failures in range(1, 40):
        assert doubling_pause(failures, step, cap) == min(step * 2 ** (failures - 1), cap)


def test_a_long_run_of_failures_stays_at_the_cap() -> None:
    assert doubling_pause(10**6, 0.25, 8.0) == 8.0
    assert doubling_pause(1, 4.0, 2.0) == 2.0  # a step above the cap is cut too
