"""Feature values as pyradiomics returns them (numpy scalars, 0-d arrays, complex rounding noise)."""

import math

import numpy as np
import pytest

from assets.radiomics.extract import _real


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.float64(2.5), 2.5),
        (np.array(7.25), 7.25),  # pyradiomics returns 0-d arrays for many features
        (3, 3.0),
        (np.complex128(1 - 2.5879398330056736e-17j), 1.0),  # seen on demo CT: noise, not data
    ],
)
def test_real_values_pass_through(value, expected):
    assert _real(value) == expected


def test_truly_complex_value_becomes_nan():
    assert math.isnan(_real(np.complex128(1 + 0.5j)))
