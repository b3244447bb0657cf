"""`probe similarity` (probe.tasks.compare) on the fixture DDPM and the shipped MAE over the tiny domain: the table's
properties, its values against probe.similarity on the features read back from the store, resuming, the plan only,
and option errors before torch loads."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from typer.testing import CliRunner

from probe.cli import app

runner = CliRunner()
PIXELS = 256


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def similarity_args(tiny_domain, fixture_model, out, *extra, backbones="ddpm,mae"):
    checkpoint, flags = fixture_model
    return ["similarity", "--data", tiny_domain, "--backbones", backbones, "--checkpoint", checkpoint,
            "--model-flags", flags, "--blocks", "0,4,8", "--steps", "50,900", "--pixels", PIXELS, "--threads", 1,
            "--quiet", "--out", out, *extra]


def test_ddpm_against_mae_writes_a_symmetric_table_its_figures_and_resumes(tmp_path, tiny_domain, fixture_model):
    out = tmp_path / "sim"
    dry = run(*similarity_args(tiny_domain, fixture_model, out, "--dry-run"))
    assert dry.exit_code == 0, dry.output
    assert not out.exists() and not list((tmp_path / "cache").rglob("*.npy"))  # the plan only: nothing written

    result = run(*similarity_args(tiny_domain, fixture_model, out))
    assert result.exit_code == 0, result.output
    assert "values (cka, mutual_knn); best matches: cka: ddpm " in result.output
    table = pd.read_csv(out / "similarity.csv")
    assert list(table.columns) == ["backbone_a", "cell_a", "backbone_b", "cell_b", "metric", "value"]
    cells = [("ddpm", f"t{t}_block{b}") for t in (50, 900) for b in (0, 4, 8)] + [("mae", f"block{b}") for b in (0, 4, 8)]
    assert len(table) == 2 * len(cells) ** 2  # every ordered pair once per metric, each cell with itself included
    values = table.set_index(["metric", "backbone_a", "cell_a", "backbone_b", "cell_b"]).value
    assert values.index.is_unique
    swapped = table.set_index(["metric", "backbone_b", "cell_b", "backbone_a", "cell_a"]).value
    np.testing.assert_array_equal(swapped.reindex(values.index.set_names(swapped.index.names)).to_numpy(), values)
    itself = table[(table.backbone_a == table.backbone_b) & (table.cell_a == table.cell_b)]
    assert len(itself) == 2 * len(cells) and np.allclose(itself.value, 1.0, atol=1e-12)
    cka = table[table.metric == "cka"].value
    assert cka.between(0, 1 + 1e-12).all() and cka.min() < 0.9
    for name in ("within_ddpm_cka.png", "within_mae_mutual_knn.png", "steps_ddpm_cka.png",
                 "across_ddpm_mae_cka.png", "alignment_cka.png", "alignment_mutual_knn.png"):
        assert Image.open(out / name).size[0] > 300, name
    alignment = pd.read_csv(out / "alignment.csv")
    assert alignment.groupby("metric").layer_a.apply(list).to_dict() == {m: ["block0", "block4", "block8"]
                                                                          for m in ("cka", "mutual_knn")}
    for row in alignment.itertuples():  # each layer's best match is the row's maximum at the first step
        mine = table[(table.metric == row.metric) & (table.cell_a == f"t50_{row.layer_a}") & (table.backbone_b == "mae")]
        assert row.value == mine.value.max() and row.layer_b == mine.loc[mine.value.idxmax(), "cell_b"]
    info = json.loads((out / "similarity.json").read_text())
    assert info["rows"]["number"] == PIXELS and info["rows"]["resolution"] == 32 and info["rows"]["images"] == 3

    # the same numbers as probe.similarity on the features read back from the store
    from probe.backbones import BackboneSpec, build_backbone
    from probe.data.sources import open_source
    from probe.features.sampler import PixelSampler
    from probe.features.store import ActivationStore
    from probe.similarity import cka as cka_of, mutual_knn
    from probe.tasks.segment import SPLIT_NUMBER

    checkpoint, flags = fixture_model
    specs = {"ddpm": BackboneSpec("ddpm", checkpoint, flags, layers="0,4,8", steps="50,900"),
             "mae": BackboneSpec("mae", layers="0,4,8")}
    source = open_source(None, None, tiny_domain)
    order = np.sort(np.random.default_rng(0).choice(3 * 32 * 32, size=PIXELS, replace=False))
    image, ys, xs = order // 1024, order % 1024 // 32, order % 32
    features = {}
    for (kind, name) in (("ddpm", "t900_block4"), ("mae", "block8")):
        backbone = build_backbone(specs[kind], "grid", source.native_size)
        test = source.split("test", backbone.image_size, None, SPLIT_NUMBER)
        store = ActivationStore(backbone)
        maps = torch.stack([torch.from_numpy(np.array(store.read(im, name), dtype=np.float32)) for im in test])
        upsampled = F.interpolate(maps, size=(32, 32), mode="bilinear", align_corners=False)
        gathered = PixelSampler.from_store(store, test, [name], size=32).gather(image, ys, xs).numpy()
        np.testing.assert_allclose(gathered, upsampled[image, :, ys, xs].numpy(), atol=1e-5)
        features[kind] = gathered
    for metric, expected in (("cka", cka_of(features["ddpm"], features["mae"])),
                             ("mutual_knn", mutual_knn(features["ddpm"], features["mae"], 10))):
        assert values[metric, "ddpm", "t900_block4", "mae", "block8"] == pytest.approx(expected, abs=1e-9)

    again = run(*similarity_args(tiny_domain, fixture_model, out))  # a rerun reuses every cell
    assert again.exit_code == 0, again.output
    last = json.loads((out / "probe-run.json").read_text())["runs"][-1]
    assert last["computed"] == [] and last["reused"] == last["cells"] > 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "similarity.csv"), table)


def test_one_vector_per_image_one_backbone_and_the_other_metrics(tmp_path, tiny_domain, fixture_model):
    """--pool mean: one row per test image (3 here), so the debiased metrics, which need 4, are refused in one
    line; cka and svcca run on one backbone (no cross-backbone figures), each cell scoring 1 against itself."""
    out = tmp_path / "mean"
    refused = run(*similarity_args(tiny_domain, fixture_model, out, "--pool", "mean", "--metrics", "cka_debiased"))
    assert refused.exit_code == 2 and "3 rows (3 images" in refused.output and "at least 4" in refused.output
    result = run(*similarity_args(tiny_domain, fixture_model, out, "--pool", "mean", "--metrics", "cka,svcca",
                                  backbones="ddpm"))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "similarity.csv")
    assert set(table.metric) == {"cka", "svcca"} and len(table) == 2 * 6 ** 2
    itself = table[(table.backbone_a == table.backbone_b) & (table.cell_a == table.cell_b)]
    assert np.allclose(itself.value, 1.0)
    assert (out / "steps_ddpm_svcca.png").is_file() and not list(out.glob("across_*")) and \
        not (out / "alignment.csv").exists()
    assert json.loads((out / "similarity.json").read_text())["rows"]["resolution"] is None


CHECK = """
import json, sys
sys.argv = ["probe", "similarity", *json.loads(sys.argv[1])]
from probe.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


@pytest.mark.parametrize("args, words", [
    (["--metrics", "cka,cosine"], "--metrics 'cka,cosine': unknown metric 'cosine'; choose among cka, cka_debiased"),
    (["--pool", "max"], "--pool 'max': use pixels"),
    (["--k", "0"], "--k 0: give 1 or more"),
    (["--backbones", "ddpm,vgg"], "vgg"),
])
def test_a_bad_option_is_one_line_before_torch_loads(tmp_path, args, words):
    result = subprocess.run([sys.executable, "-c", CHECK, json.dumps([*args, "--out", str(tmp_path / "o")])],
                            capture_output=True, text=True, timeout=120)
    assert json.loads(result.stdout.splitlines()[-1]) == {"code": 2, "torch": False}, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr
    assert not (tmp_path / "o").exists()


def test_help_fits_one_screen():
    result = runner.invoke(app, ["similarity", "--help"], terminal_width=80)
    lines = result.output.splitlines()
    assert result.exit_code == 0 and len(lines) <= 60 and max(map(len, lines)) <= 80


def test_cells_a_grid_extracted_cost_no_extraction(tmp_path, tiny_domain, fixture_model):
    checkpoint, flags = fixture_model
    grid = run("grid", "--data", tiny_domain, "--checkpoint", checkpoint, "--model-flags", flags, "--blocks", "0,8",
               "--steps", "50", "--threads", 1, "--quiet", "--out", tmp_path / "grid")
    assert grid.exit_code == 0, grid.output
    out = tmp_path / "sim"
    result = run("similarity", "--data", tiny_domain, "--backbone", "ddpm", "--checkpoint", checkpoint,
                 "--model-flags", flags, "--blocks", "0,8", "--steps", "50", "--pixels", PIXELS, "--threads", 1,
                 "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    records = [json.loads(path.read_text()) for path in (out / "cells").glob("*.json")]
    assert len(records) == 2 and all(r["result"]["extraction"]["image_steps"] == 0 for r in records)
    assert all(r["result"]["cells_a"] == ["t50_block0", "t50_block8"] for r in records)
