"""The grid's split of classes into small and large ones."""

import numpy as np
import pytest

from probe.errors import ProbeError
from probe.tasks.grid import size_groups


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


def test_layer_names_of_every_family_pass_the_syntax_check():
    from probe.backbones.spec import check_cell_syntax

    check_cell_syntax("5,6,0-17,block5,layer2.0,up1.2,rgb3x3", "blocks")  # rgb3x3: the pixels backbone's one layer
    for typo in ("5;6", "5,6,x"):
        with pytest.raises(ProbeError, match="is not a number, a range or a layer name"):
            check_cell_syntax(typo, "blocks")


def test_a_grid_of_the_pixels_backbone_runs(tmp_path):
    """Its cells name the layer rgb3x3, which the grid writes into each cell's spec and reads back."""
    import subprocess
    import sys
    from pathlib import Path

    probe = Path(sys.executable).with_name("probe")
    result = subprocess.run([str(probe), "grid", "--backbone", "pixels", "--train-number", "2", "--test-number", "2",
                             "--threads", "1", "--quiet", "--out", str(tmp_path / "g")], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("best cell: rgb3x3, mIoU ")
