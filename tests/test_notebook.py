"""examples/tour.ipynb runs end to end (so it cannot rot) and shows the numbers the API gives."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import probe

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "tour.ipynb"


def text_of(cell) -> str:
    """A code cell's printed text and plain-text results."""
    return "".join(output.get("text", "") + output.get("data", {}).get("text/plain", "") for output in cell.outputs)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook run in a fresh kernel, one torch thread (as the test process), in a cache of its own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROBE_CACHE", str(tmp_path_factory.mktemp("notebook_cache")))
        patch.setenv("OMP_NUM_THREADS", "1")
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
                       ).execute()
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_the_tour_shows_the_segmenters_miou_and_its_figures(executed):
    shown = "\n".join(text_of(cell) for cell in executed)
    assert not [output for cell in executed for output in cell.outputs if output.output_type == "error"]
    miou = float(re.search(r"segmenter mIoU (\d+\.\d\d)", shown).group(1))
    train, test = probe.load_dataset(number=8), probe.load_dataset(split="test", number=8)
    expected = probe.Segmenter(members=3, seed=0).fit(train).score(test)["miou"]
    assert miou == round(expected, 2)
    assert "same labels after save and load: True" in shown
    rows = dict(re.findall(r"^(ddpm|pixels)\s+(\d+\.\d+)$", shown, re.MULTILINE))
    assert sorted(rows) == ["ddpm", "pixels"] and float(rows["ddpm"]) == round(expected, 2)
    pictures = [cell for cell in executed if any("image/png" in output.get("data", {}) for output in cell.outputs)]
    assert len(pictures) == 3  # the heatmap, the cluster maps, the predictions
