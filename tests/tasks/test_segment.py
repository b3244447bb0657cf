"""`probe segment`'s tables beyond the mIoU: per_image.csv, confusion.csv and confusion.png, and what the
visualisations' titles say."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import label_maps, read_metrics
from probe.cli import app
from probe.metrics import SegmentationScore
from probe.tasks.segment import disagreement_title

CLASSES = 10  # the tiny domain's


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, tiny_domain, fixture_model):
    """A `probe segment` run on the tiny domain with the fixture model (3 test images)."""
    out = tmp_path_factory.mktemp("segment") / "seg"
    checkpoint, flags = fixture_model
    result = CliRunner().invoke(app, [str(a) for a in (
        "segment", "--data", tiny_domain, "--checkpoint", checkpoint, "--model-flags", flags, "--train-number", 4,
        "--test-number", 3, "--members", 2, "--blocks", "2,3,6", "--steps", "50,250", "--out", out, "--quiet")],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_confusion_csv_gives_the_mious_of_metrics_json(segmented, tiny_domain):
    metrics = read_metrics(segmented)
    confusion = pd.read_csv(segmented / "confusion.csv", index_col=0)
    names = (tiny_domain / "classes.txt").read_text().split()
    assert confusion.index.name == "true \\ predicted"
    assert list(confusion.index) == list(confusion.columns) == [*names, "ignore label 255"]
    counts = confusion.to_numpy()
    truths = label_maps(tiny_domain / "real" / "test")
    assert counts.sum() == sum(t.size for t in truths.values())
    assert counts[:CLASSES].sum() == sum((t != 255).sum() for t in truths.values())
    assert counts[:, CLASSES].sum() == 0  # the ensemble never predicts the ignore label
    diagonal = np.diag(counts)[:CLASSES]
    iou = diagonal / (1e-8 + counts.sum(1)[:CLASSES] + counts.sum(0)[:CLASSES] - diagonal)
    assert 100 * iou.mean() == pytest.approx(metrics["miou"], abs=1e-12)  # the same integers, the same formula
    assert dict(zip(names, 100 * iou)) == pytest.approx(metrics["per_class"], abs=1e-12)
    assert len(set(np.round(100 * iou, 6))) > 3  # the classes differ: not a degenerate run


def test_per_image_rows_recompute_from_each_prediction_file(segmented, tiny_domain):
    table = pd.read_csv(segmented / "per_image.csv", dtype={"image": str})
    assert list(table.columns) == ["image", "class", "iou", "intersection", "union", "true_pixels",
                                   "predicted_pixels"]
    names = (tiny_domain / "classes.txt").read_text().split()
    truths = label_maps(tiny_domain / "real" / "test")
    predictions = label_maps(segmented / "predictions")
    assert sorted(table["image"].unique()) == sorted(predictions) == ["000", "001", "002"]
    assert len(table) == 3 * CLASSES
    for stem, pred in predictions.items():
        rows = table[table["image"] == stem]
        score = SegmentationScore(CLASSES, 255)
        score.update(pred, truths[stem])
        assert list(rows["class"]) == names
        np.testing.assert_array_equal(rows["intersection"], score.intersection)
        np.testing.assert_array_equal(rows["union"], score.union)
        np.testing.assert_array_equal(rows["true_pixels"], [(truths[stem] == c).sum() for c in range(CLASSES)])
        np.testing.assert_array_equal(rows["predicted_pixels"], [(pred == c).sum() for c in range(CLASSES)])
        present = score.union > 0
        np.testing.assert_allclose(rows["iou"].to_numpy()[present], 100 * score.iou[present], rtol=1e-12)
        assert rows["iou"].isna().to_numpy().tolist() == (~present).tolist()
    # Summed over the images, intersections and unions give per_class.csv's IoU (the whole test set's, not the mean
    # of the images' IoUs).
    sums = table.groupby("class", sort=False)[["intersection", "union"]].sum()
    per_class = pd.read_csv(segmented / "per_class.csv").set_index("class")["iou"]
    np.testing.assert_allclose(100 * sums["intersection"] / (1e-8 + sums["union"]), per_class[sums.index],
                               rtol=1e-12)


def test_confusion_png_and_visualisation_titles(segmented):
    with Image.open(segmented / "confusion.png") as png:
        assert png.format == "PNG" and png.size[0] > 300
    assert {"per_image.csv", "confusion.csv", "confusion.png"} <= {p.name for p in segmented.iterdir()}
    title = disagreement_title("000", 0.1234)
    assert title == "000: ensemble disagreement 0.123 (Jensen-Shannon, mean of the top 10 % of pixels)"
    assert "uncertainty" not in title


def test_metrics_json_records_the_maps_kept_in_float32(tiny_domain, tmp_path):
    """A backbone whose activations reach 1e5 (beyond float16's range): the fit scores finite features and
    metrics.json's extraction record names every map the store kept in float32 (issue 33)."""
    from probe.backbones.pixels import PixelBackbone
    from probe.data.sources import open_source
    from probe.tasks.segment import SegmentOptions, evaluate

    class Loud(PixelBackbone):
        def features(self, images, stems, step):
            return {name: 1e5 * a for name, a in super().features(images, stems, step).items()}

    source = open_source(data=tiny_domain, progress=False)
    options = SegmentOptions(train_number=2, test_number=1, members=1)
    evaluation = evaluate(source, options, 0, tmp_path / "cache", progress=False, backbone=Loud(32))
    record = evaluation.metrics["extraction"]
    assert evaluation.metrics["train_images"] == ["000", "001"] and (record["files"], record["image_steps"]) == (3, 3)
    assert record["float32_maps"] == sorted(f"{key}/rgb3x3" for key in record_keys(evaluation))
    assert np.isfinite(evaluation.metrics["miou"]) and evaluation.metrics["features"]["dim"] == 27


def record_keys(evaluation) -> list[str]:
    from probe.features.store import image_key

    return [image_key(im) for im in evaluation.train + evaluation.test]
