"""The grid's split of classes into small and large ones."""

import numpy as np
import pytest

from probe.errors import ProbeError
from probe.grid import size_groups


def test_the_default_threshold_is_the_median_of_the_classes_present():
    """With few images most of a paper dataset's classes can be absent (area 0): the median of all areas would be 0
    and reject every split; the median of the present classes' areas is what splits them."""
    areas = np.array([0.5, 0.2, 0.1, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0, np.nan])
    groups, cut = size_groups(areas, None)
    assert cut == pytest.approx(0.15)
    assert groups == {0: "large", 1: "large", 2: "small", 3: "small", 4: "small", 5: "small", 6: "small",
                      7: "small", 8: "small"}


def test_a_given_threshold_is_used_and_checked():
    assert size_groups(np.array([0.3, 0.01]), 0.02) == ({0: "large", 1: "small"}, 0.02)
    with pytest.raises(ProbeError, match=r"--size-threshold 1.5: give a fraction of the image between 0 and 1"):
        size_groups(np.array([0.3, 0.01]), 1.5)
