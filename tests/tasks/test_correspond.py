"""`probe correspond` (probe.tasks.correspond) on held-back folders in SPair-71k's layout that the tests write: its
outputs, both PCKs recomputed from keypoints.csv alone, an image matched with itself, the matches against full
upsampling and a brute-force cosine argmax, resuming, and every backbone family."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from typer.testing import CliRunner

import probe
from probe.backbones import BackboneSpec, build_backbone
from probe.cli import app
from probe.data.pairs import read_pairs
from probe.features.store import ActivationStore
from probe.tasks.correspond import FREE_INPUT_SIZE, CorrespondOptions, pair_inputs, run_correspond
from spair_layout import write_image, write_pair, write_spair_folder
from test_backbones import SPECS, built_spec
from test_diffusers import diffusers_folders  # noqa: F401 (a fixture): tiny diffusers model folders
from test_latent_diffusion import pipelines  # noqa: F401 (a fixture): tiny DiT ... FLUX folders
from test_transformers_backbones import transformers_folders, transformers_models  # noqa: F401 (fixtures)

runner = CliRunner()
COLUMNS = ["block", "step", "pair", "category", "viewpoint", "keypoint", "src_x", "src_y", "trg_x", "trg_y",
           "pred_x", "pred_y", "bbox_size"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def recomputed(rows: pd.DataFrame, alpha: float) -> tuple[float, float]:
    """(PCK per point, PCK per image) in percent from keypoints.csv's rows alone, written out independently."""
    distance = np.sqrt((rows.pred_x.to_numpy() - rows.trg_x.to_numpy()) ** 2 +
                       (rows.pred_y.to_numpy() - rows.trg_y.to_numpy()) ** 2)
    hits = distance <= alpha * rows.bbox_size.to_numpy()
    per_pair = [hits[(rows.pair == name).to_numpy()].mean() for name in dict.fromkeys(rows.pair)]
    return 100 * hits.sum() / len(hits), 100 * float(np.mean(per_pair))


def test_outputs_and_both_pcks_recompute_from_keypoints_csv(tmp_path):
    folder = write_spair_folder(tmp_path / "spair", categories=("bird", "cat", "dog"), pairs_per_category=2,
                                keypoints=6)
    out = tmp_path / "out"
    args = ["correspond", "--data", folder, "--blocks", "8,12", "--steps", "50,200", "--threads", 1, "--quiet",
            "--out", out]
    dry = run(*args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert not out.exists() and not list((tmp_path / "cache").rglob("*.npy"))  # the plan only: nothing written

    result = run(*args)
    assert result.exit_code == 0, result.output
    keypoints = pd.read_csv(out / "keypoints.csv")
    assert list(keypoints.columns) == COLUMNS
    pairs = read_pairs(folder)
    assert len(keypoints) == 4 * 6 * len(pairs)  # every keypoint of every pair, per cell
    for pair in pairs:  # the targets and the bounding-box rule come from the annotations
        data = json.loads((folder / "PairAnnotation" / "test" / f"{pair.name}.json").read_text())
        rows = keypoints[(keypoints.pair == pair.name) & (keypoints.block == "block8") & (keypoints.step == 50)]
        np.testing.assert_array_equal(rows[["trg_x", "trg_y"]].to_numpy(), data["trg_kps"])
        x1, y1, x2, y2 = data["trg_bndbox"]
        assert (rows.bbox_size == max(x2 - x1, y2 - y1)).all() and (rows.viewpoint == data["viewpoint_variation"]).all()
        assert ((rows.pred_x >= 0) & (rows.pred_x < data["trg_imsize"][0]) & (rows.pred_y < data["trg_imsize"][1])).all()

    grid = pd.read_csv(out / "grid.csv")
    assert list(grid.columns) == ["block", "layer_index", "step", "alpha", "pck_point", "pck_image"]
    assert len(grid) == 4 * 3 and set(grid.alpha) == {0.05, 0.1, 0.15}
    for row in grid.itertuples():
        cell = keypoints[(keypoints.block == row.block) & (keypoints.step == row.step)]
        point, image = recomputed(cell, row.alpha)
        assert row.pck_point == pytest.approx(point, abs=1e-9) and row.pck_image == pytest.approx(image, abs=1e-9)

    metrics = json.loads((out / "metrics.json").read_text())
    at_01 = grid[grid.alpha == 0.1].reset_index()
    top = at_01.loc[int(np.argmax(at_01.pck_image.to_numpy()))]
    assert metrics["best"] == {"block": top.block, "step": int(top.step)}
    best = keypoints[(keypoints.block == top.block) & (keypoints.step == top.step)]
    assert metrics["pairs"] == len(pairs) and metrics["keypoints"] == 6 * len(pairs)
    for key, alpha in (("0.05", 0.05), ("0.1", 0.1), ("0.15", 0.15)):
        point, image = recomputed(best, alpha)
        assert metrics["pck_point"][key] == pytest.approx(point, abs=1e-9)
        assert metrics["pck_image"][key] == pytest.approx(image, abs=1e-9)
        for category in ("bird", "cat", "dog"):
            point, image = recomputed(best[best.category == category], alpha)
            assert metrics["per_category"][category]["pck_point"][key] == pytest.approx(point, abs=1e-9)
            assert metrics["per_category"][category]["pck_image"][key] == pytest.approx(image, abs=1e-9)
        for viewpoint in (0, 1, 2):
            point, image = recomputed(best[best.viewpoint == viewpoint], alpha)
            assert metrics["per_viewpoint"][str(viewpoint)]["pck_image"][key] == pytest.approx(image, abs=1e-9)
            assert metrics["per_viewpoint"][str(viewpoint)]["pck_point"][key] == pytest.approx(point, abs=1e-9)
    baseline = best.astype({"pred_x": float, "pred_y": float})  # the same position, scaled to the target's size
    for pair in pairs:
        rows = baseline.pair == pair.name
        baseline.loc[rows, "pred_x"] = baseline.src_x[rows] * pair.target_size[0] / pair.source_size[0]
        baseline.loc[rows, "pred_y"] = baseline.src_y[rows] * pair.target_size[1] / pair.source_size[1]
    point, image = recomputed(baseline, 0.1)
    assert metrics["same_position"]["pck_point"]["0.1"] == pytest.approx(point, abs=1e-9)
    assert metrics["same_position"]["pck_image"]["0.1"] == pytest.approx(image, abs=1e-9)
    assert metrics["protocol"]["threshold"] == "bbox" and metrics["protocol"]["soft_argmax"] is None
    assert metrics["protocol"]["alphas"] == ["0.05", "0.1", "0.15"] and len(metrics["cells"]) == 4
    assert metrics["dataset"] == "spair" and metrics["options"]["backbone"]["kind"] == "ddpm"
    for name in ("matches.png", "grid.png"):
        assert Image.open(out / name).size[0] > 300, name
    assert f"best cell: {top.block} at t={int(top.step)}, PCK per image @0.05 " in result.output

    again = run(*args[:-2], "--alpha", "0.2", "--out", out)  # other alphas: every cell reused
    assert again.exit_code == 0, again.output
    last = json.loads((out / "probe-run.json").read_text())["runs"][-1]
    assert last["computed"] == [] and last["reused"] == 4
    assert list(json.loads((out / "metrics.json").read_text())["pck_image"]) == ["0.2"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "keypoints.csv"), keypoints)
    refused = run(*args, "--soft-argmax", "5")  # other predictions: refused in this folder
    assert refused.exit_code == 2 and "--soft-argmax unset in the sweep, 5 in this run" in refused.output


def faces_folder(tiny_domain, folder):
    """Each of two faces of the embedded default's kind, stretched to a non-square size, paired with itself."""
    rng = np.random.default_rng(1)
    for index, (width, height) in enumerate([(64, 48), (50, 70)]):
        face = Image.open(tiny_domain / "real" / "test" / f"{index:03d}.png").convert("RGB")
        picture = np.asarray(face.resize((width, height), Image.Resampling.BILINEAR))
        write_image(folder, "face", f"{index}.png", picture)
        points = np.stack([rng.integers(8, width - 8, 10), rng.integers(8, height - 8, 10)], axis=1)
        write_pair(folder, f"self-{index}", "face", f"{index}.png", f"{index}.png", (width, height), (width, height),
                   points, points, [0, 0, width - 1, height - 1], [0, 0, width - 1, height - 1])
    return folder


def test_an_image_paired_with_itself_is_matched(tmp_path, tiny_domain):
    """The shipped default DDPM (the one `probe segment` uses without data) at block 12, t = 50."""
    folder = faces_folder(tiny_domain, tmp_path / "faces")
    found = run_correspond(folder, BackboneSpec("ddpm", layers="12", steps="50"), CorrespondOptions(), 0,
                           tmp_path / "out", progress=False)
    assert found.metrics["pck_point"]["0.1"] >= 95 and found.metrics["pck_image"]["0.1"] >= 95
    assert not (tmp_path / "out" / "grid.csv").exists() and (tmp_path / "out" / "matches.png").is_file()  # one cell


def test_matches_equal_full_upsampling_and_a_brute_force_argmax(tmp_path):
    """DIFT's eval_spair.py written out: both maps upsampled whole (F.interpolate) to their images' sizes, the cosine
    map of each source keypoint against every target pixel, its argmax; and the soft-argmax over the window by hand.
    The API gives what the command writes."""
    folder = write_spair_folder(tmp_path / "spair", categories=("cat",), pairs_per_category=2, keypoints=5, seed=3)
    backbone = probe.load_backbone(blocks="5,12", steps=[50], purpose="grid")
    found = probe.correspond(backbone, folder, threads=1)
    soft = probe.correspond(backbone, folder, soft_argmax=3, threshold="image", alphas=[0.1], threads=1)
    network = backbone.network
    images, keys = pair_inputs(str(folder.absolute()), None, network.image_size)
    store = ActivationStore(network)
    for pair in read_pairs(folder):
        for layer in ("block5", "block12"):
            name = network.cell_name(layer, 50)
            maps = [torch.from_numpy(np.load(store.path(keys[path], name)).astype(np.float32))[None]
                    for path in pair.images]
            (sw, sh), (tw, th) = pair.source_size, pair.target_size
            source = F.interpolate(maps[0], size=(sh, sw), mode="bilinear")[0]
            target = F.normalize(F.interpolate(maps[1], size=(th, tw), mode="bilinear")[0].reshape(len(maps[1][0]), -1),
                                 dim=0)
            rows = found.keypoints[(found.keypoints.pair == pair.name) & (found.keypoints.block == layer)]
            soft_rows = soft.keypoints[(soft.keypoints.pair == pair.name) & (soft.keypoints.block == layer)]
            for k, (x, y) in enumerate(pair.source_points.astype(int)):
                cosine = F.normalize(source[:, y, x], dim=0) @ target  # (th * tw,)
                py, px = divmod(int(cosine.argmax()), tw)
                assert (rows.pred_x.iloc[k], rows.pred_y.iloc[k]) == (px, py)
                window = cosine.view(th, tw)[max(0, py - 1):py + 2, max(0, px - 1):px + 2].double()
                weights = torch.softmax(window.reshape(-1) / 0.04, 0).view_as(window)
                ys, xs = torch.meshgrid(torch.arange(max(0, py - 1), min(th, py + 2)).double(),
                                        torch.arange(max(0, px - 1), min(tw, px + 2)).double(), indexing="ij")
                assert soft_rows.pred_x.iloc[k] == pytest.approx(float((weights * xs).sum()), abs=1e-4)
                assert soft_rows.pred_y.iloc[k] == pytest.approx(float((weights * ys).sum()), abs=1e-4)
            assert (soft_rows.bbox_size == max(pair.target_size)).all()
    out = tmp_path / "out"
    result = run("correspond", "--data", folder, "--blocks", "5,12", "--steps", "50", "--threads", 1, "--quiet",
                 "--out", out)
    assert result.exit_code == 0, result.output
    written = pd.read_csv(out / "keypoints.csv")
    pd.testing.assert_frame_equal(written, found.keypoints, check_dtype=False)
    assert found.heatmap().axes[0].get_ylabel() == "decoder block"


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_every_backbone_family_runs_it(tmp_path, kind, request):
    """The small instances tests/backbones builds of every registered family, on one pair of odd-sized images."""
    spec = built_spec(kind, request)
    folder = write_spair_folder(tmp_path / "spair", categories=("cat",), pairs_per_category=1, keypoints=3)
    found = run_correspond(folder, spec, CorrespondOptions(alphas=[0.1]), 0, tmp_path / "out", threads=1,
                           progress=False)
    backbone = build_backbone(spec, "grid", FREE_INPUT_SIZE)
    cells = [(layer, step) for layer in backbone.layers for step in backbone.steps]
    assert [(c["block"], c["step"]) for c in found.metrics["cells"]] == cells
    assert len(found.keypoints) == 3 * len(cells) and found.keypoints.pred_x.notna().all()
    assert 0 <= found.metrics["pck_image"]["0.1"] <= 100
    assert (tmp_path / "out" / "matches.png").is_file()
    assert (tmp_path / "out" / "grid.png").is_file() == (len(cells) > 1)


def test_layers_task_correspondence_plots_each_backbones_best_step_per_layer(tmp_path):
    # `probe layers --task correspondence`: probe correspond per backbone into out/<label>/, then per layer the best
    # step's PCK per image at alpha 0.1 against relative depth, one line per backbone.
    folder = write_spair_folder(tmp_path / "spair", categories=("cat", "dog"), pairs_per_category=2, keypoints=5)
    out = tmp_path / "layers"
    args = ["layers", "--task", "correspondence", "--data", folder, "--backbones", "ddpm,mae", "--steps", "50,200",
            "--threads", 1, "--quiet", "--out", out]
    result = run(*args)
    assert result.exit_code == 0, result.output
    cells = pd.read_csv(out / "layers_cells.csv")
    best = pd.read_csv(out / "layers.csv")
    for label, layers in (("ddpm", 18), ("mae", 12)):
        grid = pd.read_csv(out / label / "grid.csv")
        at_01 = grid[grid.alpha == 0.1]
        mine = cells[cells.backbone == label]
        assert len(mine) == len(at_01) == layers * (2 if label == "ddpm" else 1)
        np.testing.assert_allclose(mine.pck_image, at_01.pck_image)
        np.testing.assert_allclose(mine.relative_depth, at_01.layer_index / (layers - 1))
        rows = best[best.backbone == label]
        expected = at_01.groupby("block", sort=False).pck_image.max()
        assert len(rows) == layers
        np.testing.assert_allclose(rows.set_index("layer").pck_image[expected.index], expected)
        assert (out / label / "matches.png").is_file() and (out / label / "keypoints.csv").is_file()
    summary = json.loads((out / "layers.json").read_text())
    assert summary["task"] == "correspondence" and summary["alpha"] == 0.1
    top = best[best.backbone == "mae"].sort_values("pck_image", ascending=False, kind="stable").iloc[0]
    assert summary["backbones"][1]["best_layer"]["pck_image"] == pytest.approx(top.pck_image)
    assert Image.open(out / "layers.png").size[0] > 300
    assert f"mae: best {top.layer} (depth {top.relative_depth:.2f}) PCK@0.1 {top.pck_image:.1f}" in result.output

    again = run(*args)  # resumed: every backbone's cells reused
    assert again.exit_code == 0, again.output
    for label in ("ddpm", "mae"):
        assert json.loads((out / label / "probe-run.json").read_text())["runs"][-1]["computed"] == []
    pd.testing.assert_frame_equal(pd.read_csv(out / "layers.csv"), best)

    refused = run("layers", "--task", "correspondence", "--train-number", 5, "--out", tmp_path / "other")
    assert refused.exit_code == 2
    assert "--train-number: for --task segmentation; correspondence takes --dataset spair71k" in refused.output
    assert run("layers", "--task", "depth", "--out", tmp_path / "other").exit_code == 2
    assert "--pairs is for --task correspondence" in run("layers", "--pairs", 3, "--out", tmp_path / "other").output
