"""Every figure of the toolkit (the paper's Figs 2-4 and friends), written as PNG at 150 dpi.

Figures are built as `matplotlib.figure.Figure` objects rendered by the Agg canvas: no pyplot state is
touched, so nothing stays open and the global backend is never switched. Each function writes its PNG
(to a temporary name, then renamed) and returns the Figure so callers and tests can inspect what was drawn.
Tables are tidy pandas DataFrames. One module per family of figures:

- common.py: what they share (the style, the PNG writer, argument checks, class legends, picture panels, colorize);
- grids.py: `probe grid`'s heatmap and lines per layer and step, `probe layers`' mIoU against relative depth;
- segmentation.py: image | ground truth | prediction panels, confusion heatmaps, a segmentation network's training
  history;
- features.py: a feature map's top 3 principal components as RGB beside the image;
- kmeans.py: k-means cluster maps per image, layer and step;
- synthesis.py: training images beside generated samples, `probe synthesize`'s preview;
- experiments.py: efficiency and robustness lines, mean ± std bars over seeds;
- similarity.py: `probe similarity`'s heatmaps of a metric between cells and its alignment plot;
- correspondence.py: `probe correspond`'s matches, source and target side by side.
"""

from probe.plots.common import DPI, colorize
from probe.plots.correspondence import MatchPanel, correspondence_figure
from probe.plots.experiments import efficiency_lines, robustness_lines, seed_bars
from probe.plots.features import feature_pca_figure, pca_rgb
from probe.plots.grids import NO_STEP, grid_heatmap, grid_lines, grid_matrix, layer_depth_lines
from probe.plots.kmeans import kmeans_figure
from probe.plots.segmentation import confusion_heatmap, segmentation_panel, training_history
from probe.plots.similarity import alignment_lines, similarity_heatmap, similarity_matrix
from probe.plots.synthesis import samples_figure, synthesis_preview

__all__ = [
    "DPI", "MatchPanel", "NO_STEP", "alignment_lines", "colorize", "confusion_heatmap", "correspondence_figure",
    "efficiency_lines", "feature_pca_figure", "grid_heatmap", "grid_lines", "grid_matrix", "kmeans_figure",
    "layer_depth_lines", "pca_rgb", "robustness_lines", "samples_figure", "seed_bars", "segmentation_panel",
    "similarity_heatmap", "similarity_matrix", "synthesis_preview", "training_history",
]
