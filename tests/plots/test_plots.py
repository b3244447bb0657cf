import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import seaborn as sns
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.image import AxesImage
from PIL import Image

from probe import plots
from probe.errors import ProbeError

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=np.uint8)
NAMES = ["red", "green", "blue", "dark"]


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as png:
        assert png.format == "PNG"
        return png.size


def assert_written(fig, path) -> tuple[int, int]:
    """The PNG exists, is not blank, and has the figure's size at 150 dpi; no pyplot figure is left open."""
    width, height = fig.get_size_inches() * plots.DPI
    assert png_size(path) == (int(width), int(height))  # Agg truncates to whole pixels
    with Image.open(path) as png:
        assert len(png.convert("RGB").getcolors(maxcolors=1 << 24)) > 10
    assert plt.get_fignums() == []
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".partial")] == []
    return png_size(path)


def grid_table(steps=(50, 250, 100), blocks=(0, 1, 2, 10)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    cells = [(g, b, s) for g in ("all", "small") for b in blocks for s in steps]
    return pd.DataFrame([dict(group=g, layer=f"block{b}", layer_index=b, step=s, miou=float(rng.uniform(0, 80)))
                         for g, b, s in cells])


def image(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_colorize_exact_colours_and_black_ignore():
    labels = np.array([[0, 1], [255, 3]])
    rgb = plots.colorize(labels, PALETTE, ignore_label=255)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb, [[[255, 0, 0], [0, 255, 0]], [[0, 0, 0], [10, 20, 30]]])
    with pytest.raises(ProbeError, match=r"ids \[4\]"):
        plots.colorize(np.array([[4]]), PALETTE)
    with pytest.raises(ProbeError, match="integer"):
        plots.colorize(np.zeros((2, 2)), PALETTE)


def test_grid_heatmap_draws_the_table(tmp_path):
    table = grid_table()
    fig = plots.grid_heatmap(table, tmp_path / "heat.png", "small", "Horse-21", vmin=0, vmax=100)
    matrix = plots.grid_matrix(table, "small")
    assert list(matrix.index) == ["block0", "block1", "block2", "block10"] and list(matrix.columns) == [50, 100, 250]
    small = table[table.group == "small"].set_index(["layer", "step"])["miou"]
    assert all(matrix.loc[b, s] == small[b, s] for b, s in small.index)
    ax = fig.axes[0]
    mesh = ax.collections[0]
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(matrix.shape), matrix.to_numpy())
    assert (mesh.norm.vmin, mesh.norm.vmax) == (0, 100)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["block0", "block1", "block2", "block10"]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # y axis inverted: block 0 on top
    assert [t.get_text() for t in ax.texts] == [f"{v:.1f}" for v in matrix.to_numpy().ravel()]
    assert fig.axes[1].get_ylabel() == "mIoU, %" and ax.get_title() == "Horse-21"
    narrow = assert_written(fig, tmp_path / "heat.png")
    wide_fig = plots.grid_heatmap(grid_table(steps=range(8)), tmp_path / "wide.png", "all", "t")
    wide = assert_written(wide_fig, tmp_path / "wide.png")
    assert wide[0] > narrow[0] and wide[1] == narrow[1]


def test_grid_matrix_rejects_bad_tables():
    with pytest.raises(ProbeError, match="'large' not in the table"):
        plots.grid_matrix(grid_table(), "large")
    with pytest.raises(ProbeError, match="several rows"):
        plots.grid_matrix(pd.concat([grid_table(), grid_table()]), "all")
    with pytest.raises(ProbeError, match=r"lacks columns \['miou'\]"):
        plots.grid_matrix(grid_table().drop(columns="miou"))


def test_grid_lines_one_viridis_line_per_step(tmp_path):
    table = grid_table()
    fig = plots.grid_lines(table, tmp_path / "lines.png")
    matrix = plots.grid_matrix(table, "all")
    lines = fig.axes[0].lines
    assert [line.get_label() for line in lines] == ["t = 50", "t = 100", "t = 250"]
    for line, step, colour in zip(lines, matrix.columns, sns.color_palette("viridis", 3)):
        np.testing.assert_allclose(line.get_ydata(), matrix[step])
        np.testing.assert_allclose(line.get_xdata(), range(len(matrix.index)))
        np.testing.assert_allclose(line.get_color(), colour)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(matrix.index)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["t = 50", "t = 100", "t = 250"]
    assert_written(fig, tmp_path / "lines.png")


def test_segmentation_panel_legend_lists_present_classes(tmp_path):
    gt = np.zeros((16, 16), int)
    gt[8:] = 1
    gt[0, 0] = 255
    pred = gt.copy()
    pred[:4, :4] = 3  # class 2 ("blue") appears in neither map
    fig = plots.segmentation_panel(image(0), gt, pred, NAMES, PALETTE, tmp_path / "panel.png", title="test 0")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["red", "green", "dark"]
    assert [ax.get_title() for ax in fig.axes] == ["image", "ground truth", "prediction"]
    drawn = [ax.images[0] for ax in fig.axes]
    np.testing.assert_array_equal(drawn[1].get_array(), plots.colorize(gt, PALETTE))
    np.testing.assert_array_equal(drawn[2].get_array(), plots.colorize(pred, PALETTE))
    assert all(d.get_interpolation() == "nearest" for d in drawn)
    assert_written(fig, tmp_path / "panel.png")
    boxes = [ax.get_position() for ax in fig.axes]  # three equal panels side by side
    assert boxes[0].x1 <= boxes[1].x0 and boxes[1].x1 <= boxes[2].x0
    assert len({(round(b.width, 6), round(b.y0, 6)) for b in boxes}) == 1
    with pytest.raises(ProbeError, match="label maps of the image's size"):
        plots.segmentation_panel(image(0), gt[:8], pred, NAMES, PALETTE, tmp_path / "bad.png")


def kmeans_inputs(names, blocks, steps, k=5):
    rng = np.random.default_rng(1)
    images = {n: image(i) for i, n in enumerate(names)}
    clusters = {(n, b, s): rng.integers(0, k, (8, 8)) for n in names for b in blocks for s in steps}
    return images, clusters


def test_kmeans_figure_layout(tmp_path):
    blocks, steps = ["block6", "block12"], [50, 200, 800]
    images, clusters = kmeans_inputs(["a", "b"], blocks, steps)
    fig = plots.kmeans_figure(images, clusters, blocks, steps, tmp_path / "two.png", k=5)
    assert len(fig.axes) == 2 * (1 + len(blocks) * len(steps))
    assert [ax.get_title() for ax in fig.axes if ax.get_title().startswith("t =")] == ["t = 50", "t = 200", "t = 800"]
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["block6", "block12"] * 2
    tab10 = plots.colorize(clusters["a", "block6", 50], plots.kmeans._cluster_palette(5))
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), tab10)
    two = assert_written(fig, tmp_path / "two.png")
    one_fig = plots.kmeans_figure({"a": images["a"]}, clusters, blocks, steps, tmp_path / "one.png", k=5)
    assert len(one_fig.axes) == 1 + len(blocks) * len(steps)
    one = assert_written(one_fig, tmp_path / "one.png")
    assert two[1] > 1.8 * one[1] and two[0] == one[0]  # a second image adds a row block, not columns


def test_kmeans_figure_rejects_missing_maps_and_large_k(tmp_path):
    images, clusters = kmeans_inputs(["a"], [6], [50, 200])
    del clusters["a", 6, 200]
    with pytest.raises(ProbeError, match=r"\('a', 6, 200\)"):
        plots.kmeans_figure(images, clusters, [6], [50, 200], tmp_path / "k.png", k=5)
    with pytest.raises(ProbeError, match="k=11"):
        plots.kmeans_figure(images, clusters, [6], [50], tmp_path / "k.png", k=11)
    assert not (tmp_path / "k.png").exists()


def test_samples_figure_with_labels_and_legend(tmp_path):
    train = [image(i) for i in range(3)]
    samples = [image(10 + i) for i in range(4)]
    maps = [np.full((16, 16), i) for i in range(3)]
    fig = plots.samples_figure(train, samples, tmp_path / "s.png", NAMES, PALETTE, maps)
    drawn = [im.get_array() for im in fig.findobj(AxesImage)]
    assert len(drawn) == 2 * len(train) + len(samples)
    assert sum(np.array_equal(d, plots.colorize(m, PALETTE)) for d in drawn for m in maps) == 3
    legend_strip = fig.subfigs[1]
    assert [t.get_text() for t in legend_strip.legends[0].get_texts()] == NAMES
    with_labels = assert_written(fig, tmp_path / "s.png")
    plain_fig = plots.samples_figure(train, samples, tmp_path / "plain.png")
    assert len(plain_fig.findobj(AxesImage)) == len(train) + len(samples)
    plain = assert_written(plain_fig, tmp_path / "plain.png")
    assert with_labels[0] == plain[0] and with_labels[1] > plain[1]
    with pytest.raises(ProbeError, match="together"):
        plots.samples_figure(train, samples, tmp_path / "x.png", label_maps=maps)


def test_seed_bars_mean_std_and_points(tmp_path):
    table = pd.DataFrame(
        {"backbone": ["ddpm"] * 3 + ["random"] * 3 + ["pixels"], "seed": [0, 1, 2] * 2 + [0],
         "miou": [58.0, 60.0, 59.5, 20.0, 24.0, 22.0, 11.0]}
    )
    fig = plots.seed_bars(table, tmp_path / "bars.png")
    ax = fig.axes[0]
    bars = next(c for c in ax.containers if isinstance(c, BarContainer))
    means = table.groupby("backbone", sort=False)["miou"].mean()
    np.testing.assert_allclose([p.get_height() for p in bars], means.to_numpy())
    spans = [seg[1][1] - seg[0][1] for seg in bars.errorbar.lines[2][0].get_segments()]
    std = table.groupby("backbone", sort=False)["miou"].std(ddof=0)  # population std, as metrics.mean_std
    np.testing.assert_allclose(spans, 2 * std.to_numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ddpm", "random", "pixels"]
    points = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if isinstance(c, PathCollection)])
    assert sorted(points) == sorted(table["miou"])
    assert ax.texts[0].get_text() == f"{means['ddpm']:.1f} ± {std['ddpm']:.1f}"
    assert_written(fig, tmp_path / "bars.png")


def test_figures_must_be_png(tmp_path):
    with pytest.raises(ProbeError, match=r"\.png suffix"):
        plots.grid_lines(grid_table(), tmp_path / "lines.pdf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("blocks,steps", [((6, 12), (0, 250)), ((3,), (50,)), (tuple(range(18)), (0, 50, 100, 200, 300, 400, 600, 800, 999))])
def test_grid_heatmap_keeps_title_and_labels_inside_the_figure(tmp_path, blocks, steps):
    table = pd.DataFrame([{"layer": f"block{b}", "layer_index": b, "step": t, "group": "all", "miou": 40.0 + b + t / 100}
                          for b in blocks for t in steps])
    fig = plots.grid_heatmap(table, tmp_path / "grid.png", title="mIoU of a probe per block and step: all classes")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)  # lay out as savefig did
    frame = fig.bbox
    ax = fig.axes[0]
    for text in (ax.title, ax.yaxis.label, ax.xaxis.label):
        box = text.get_window_extent(renderer)
        assert text.get_text() and frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, text.get_text()


def test_a_backbone_without_steps_gives_one_column(tmp_path):
    table = pd.DataFrame([dict(group="all", layer=f"layer{i}.0", layer_index=i, step=pd.NA, miou=10.0 * i)
                          for i in (1, 2, 3, 4)]).astype({"step": "Int64"})
    matrix = plots.grid_matrix(table)
    assert list(matrix.columns) == [plots.NO_STEP] and list(matrix.index) == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    fig = plots.grid_heatmap(table, tmp_path / "heat.png", layer_title="ResNet sublayer")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "(no diffusion step)" and ax.get_ylabel() == "ResNet sublayer"
    assert [t.get_text() for t in ax.texts] == ["10.0", "20.0", "30.0", "40.0"]
    lines = plots.grid_lines(table, tmp_path / "lines.png", layer_title="ResNet sublayer").axes[0].lines
    assert [line.get_label() for line in lines] == ["no step"] and list(lines[0].get_ydata()) == [10, 20, 30, 40]


def test_confusion_heatmap_draws_each_rows_shares(tmp_path):
    counts = pd.DataFrame([[8, 2, 0], [1, 3, 0], [0, 0, 0]], index=NAMES[:3], columns=NAMES[:3])
    fig = plots.confusion_heatmap(counts, tmp_path / "confusion.png", title="test set")
    ax = fig.axes[0]
    drawn = np.ma.filled(np.asarray(ax.collections[0].get_array(), dtype=float), np.nan).reshape(3, 3)
    np.testing.assert_allclose(drawn[:2], [[80, 20, 0], [25, 75, 0]])
    assert np.isnan(drawn[2]).all()  # a true class without pixels stays empty
    assert [t.get_text() for t in ax.texts] == ["80", "20", "0", "25", "75", "0"]
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES[:3]
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES[:3]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("predicted class", "true class", "test set")
    assert_written(fig, tmp_path / "confusion.png")


def test_pca_rgb_scales_each_component_and_the_figure_draws_it(tmp_path):
    projections = np.stack([np.arange(12.0).reshape(3, 4), -np.arange(12.0).reshape(3, 4) / 11,
                            np.full((3, 4), 2.0)], axis=-1)
    rgb = plots.pca_rgb(projections)
    np.testing.assert_array_equal(rgb[..., 0], np.round(255 * np.arange(12).reshape(3, 4) / 11))
    np.testing.assert_array_equal(rgb[..., 1], 255 - rgb[..., 0])
    np.testing.assert_array_equal(rgb[..., 2], 0)  # a constant component
    fig = plots.feature_pca_figure(image(1), projections, tmp_path / "pca.png", title="000, t50_block6")
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), rgb)
    assert fig.axes[1].images[0].get_extent() == [0, 16, 16, 0]  # stretched over the 16x16 image
    assert_written(fig, tmp_path / "pca.png")
    with pytest.raises(ProbeError, match=r"\(h, w, 3\)"):
        plots.pca_rgb(np.zeros((3, 4, 2)))


def test_grid_heatmap_of_another_score_without_groups(tmp_path):
    """`probe correspond`'s heatmap: one row per cell, the value column and the colour bar's label given."""
    table = grid_table().query("group == 'all'").drop(columns=["group", "miou"]).assign(pck_image=np.arange(12.0))
    fig = plots.grid_heatmap(table, tmp_path / "pck.png", group=None, value="pck_image", value_label="PCK, %",
                             title="PCK")
    matrix = plots.grid_matrix(table, None, "pck_image")
    np.testing.assert_allclose(np.asarray(fig.axes[0].collections[0].get_array()).reshape(matrix.shape),
                               matrix.to_numpy())
    assert matrix.loc["block10", 250] == 10.0 and fig.axes[1].get_ylabel() == "PCK, %"
    assert_written(fig, tmp_path / "pck.png")
    with pytest.raises(ProbeError, match=r"lacks columns \['pck_point'\]"):
        plots.grid_matrix(table, None, "pck_point")


def test_correspondence_figure_draws_a_line_per_keypoint_coloured_by_its_verdict(tmp_path):
    source, target = image(1, 16)[:12], image(2, 20)
    canvas = plots.correspondence.side_by_side(source, target)
    assert canvas.shape == (20, 36, 3) and (canvas[12:, :16] == 255).all()
    assert (canvas[:12, :16] == source).all() and (canvas[:, 16:] == target).all()
    panel = plots.MatchPanel(source, target, np.array([[1, 2], [5, 6], [10, 3]]), np.array([[4, 4], [9, 9], [0, 19]]),
                             np.array([[4, 5], [2, 2], [0, 19]]), np.array([True, False, True]), "pair")
    fig = plots.correspondence_figure([panel, panel], tmp_path / "matches.png", title="matches")
    ax = fig.axes[0]
    lines = [line for line in ax.lines if line.get_linestyle() == "-"]
    assert [line.get_color() for line in lines] == ["#2ca02c", "#d62728", "#2ca02c"]
    np.testing.assert_array_equal(lines[1].get_xdata(), [5, 9 + 16])  # the target drawn right of the source
    assert ax.get_title() == "pair: 2/3 correct" and len(fig.axes) == 2
    assert_written(fig, tmp_path / "matches.png")
    with pytest.raises(ProbeError, match="3 source keypoints but 2 predictions"):
        plots.correspondence_figure([plots.MatchPanel(source, target, panel.source_points, panel.predicted[:2],
                                                      panel.truth, panel.correct, "bad")])
