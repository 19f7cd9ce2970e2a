"""finite_float, the one test of a number setting that every layer's checks make: a real number of the
allowed types, never a bool, whose float is finite (what a plain ``> 0`` test lets math.inf and 10**400
through)."""

from __future__ import annotations

import math
import numbers
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from plugbay.core.protocol.checks import finite_float


class _NoFloat:
    """A type registered as a Real that float() cannot take."""


numbers.Real.register(_NoFloat)


@pytest.mark.parametrize("value, expected", [(1, 1.0), (0, 0.0), (-2, -2.0), (2.5, 2.5), (1e300, 1e300),
                                             (Fraction(1, 4), 0.25), (10**300, 1e300)])
def test_a_real_number_with_a_finite_float_is_that_float(value: Any, expected: float) -> None:
    got = finite_float(value)
    assert got == expected and type(got) is float


@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_refused_though_it_is_an_int(value: bool) -> None:
    assert finite_float(value) is None
    assert finite_float(value, types=(int, float)) is None


@pytest.mark.parametrize("value", [10**400, -(10**400), Fraction(10**400, 3)])
def test_a_number_too_large_for_a_float_is_refused(value: Any) -> None:
    assert finite_float(value) is None


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_the_infinities_are_refused(value: float) -> None:
    assert finite_float(value) is None
    assert finite_float(value, types=(int, float)) is None


@pytest.mark.parametrize("value", ["1", b"1", None, Decimal("1"), 1j, [1.0], _NoFloat()])
def test_what_is_no_real_number_with_a_float_is_refused(value: Any) -> None:
    # a Decimal is no numbers.Real (it is kept apart from binary floats)
    assert finite_float(value) is None


def test_types_narrows_what_is_taken() -> None:
    # the waits take int and float only: a Fraction is refused there, taken where any Real is
    assert finite_float(Fraction(1, 2)) == 0.5
    assert finite_float(Fraction(1, 2), types=(int, float)) is None
    assert finite_float(3, types=int) == 3.0
    assert finite_float(3.0, types=int) is None


def test_numpy_scalars() -> None:
    np = pytest.importorskip("numpy", reason="numpy is not installed: its scalars cannot be tried")
    assert finite_float(np.float32(0.5)) == 0.5 and type(finite_float(np.float32(0.5))) is float
    assert finite_float(np.int64(7)) == 7.0
    assert finite_float(np.float64(np.inf)) is None and finite_float(np.float32("nan")) is None
    assert finite_float(np.bool_(True)) is None
    # np.float32 is no float subclass (refused where only int and float are taken); np.float64 is one
    assert finite_float(np.float32(0.5), types=(int, float)) is None
    assert finite_float(np.float64(0.5), types=(int, float)) == 0.5
