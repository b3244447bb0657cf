"""The pixel sampler: the features of chosen pixels, read from the activation store at native resolution and upsampled
only at those pixels. Nothing here ever builds the dense (images x features x H x W) tensor: the arithmetic is exactly
bilinear interpolation's (align_corners=False), so gathering equals full upsampling followed by indexing.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.nn import functional as F

from probe.data.layout import LabeledImage
from probe.features.store import ActivationStore
from probe.utils.runtime import Compiled


def bilinear_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output index: the two source indices and their weights, as torch's bilinear upsampling
    (align_corners=False) computes them in float32."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = (scale * (torch.arange(out_size, dtype=torch.float32) + 0.5) - 0.5).clamp(min=0)
    i0 = src.long()
    lam1 = (src - i0).clamp(0, 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, 1 - lam1, lam1


def output_size(size) -> tuple[int, int]:
    """(height, width) of an int (a square) or of a pair."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def joined_taps(in_size: int, out_sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """bilinear_taps from `in_size` to each of `out_sizes`, one after the other (one output size: its own taps)."""
    taps = [bilinear_taps(in_size, out) for out in out_sizes]
    return taps[0] if len(taps) == 1 else tuple(torch.cat(parts) for parts in zip(*taps))


class PixelSampler:
    """Features of chosen pixels: the named activations of a set of images, upsampled to each image's output size
    only at those pixels and concatenated. `gather` equals full bilinear upsampling followed by indexing."""

    def __init__(self, maps: list[torch.Tensor], size):
        """`maps`: one (N_images, C, h, w) tensor (or StoredMaps) per feature, at native resolution. Maps of one native size are
        kept together, channels-last and concatenated along the channels, so that each tap of a pixel reads the
        values of all of them from one contiguous run of memory; `columns` says where each group's channels go in
        a feature vector (the order of `maps`): (offset in the group, offset in the feature vector, channels) per map.
        `size`: the output size the features are upsampled to, an int (a square) or a (height, width) pair, or a list
        of one such per image (images of several sizes: each one's taps are found through its offsets)."""
        images = maps[0].shape[0]
        if isinstance(size, list):
            if len(size) != images:
                raise ValueError(f"{len(size)} output sizes for {images} images")
            self.canvases = [output_size(s) for s in size]
        else:
            self.canvases = [output_size(size)] * images
        uniform = len(set(self.canvases)) == 1
        self.height, self.width = self.canvases[0] if uniform else (None, None)  # None: the images' sizes differ
        out_heights = list(dict.fromkeys(h for h, _ in self.canvases))
        out_widths = list(dict.fromkeys(w for _, w in self.canvases))
        self.row_taps = {h: joined_taps(h, out_heights) for h in {m.shape[-2] for m in maps}}
        self.col_taps = {w: joined_taps(w, out_widths) for w in {m.shape[-1] for m in maps}}
        row_start = dict(zip(out_heights, np.cumsum([0] + out_heights).tolist()))
        col_start = dict(zip(out_widths, np.cumsum([0] + out_widths).tolist()))
        self.starts = [(row_start[h], col_start[w]) for h, w in self.canvases]  # each image's first taps
        self.row_offset = None if len(out_heights) == 1 else torch.tensor([r for r, _ in self.starts])
        self.col_offset = None if len(out_widths) == 1 else torch.tensor([c for _, c in self.starts])
        self.dim = sum(m.shape[1] for m in maps)
        starts = np.cumsum([0] + [m.shape[1] for m in maps])
        sizes = list(dict.fromkeys(tuple(m.shape[-2:]) for m in maps))
        members = [[i for i, m in enumerate(maps) if tuple(m.shape[-2:]) == hw] for hw in sizes]
        self.groups = [channels_last([maps[i] for i in group]) for group in members]
        self.columns = [[(int(offset), int(starts[i]), maps[i].shape[1])
                         for i, offset in zip(group, np.cumsum([0] + [maps[i].shape[1] for i in group]))]
                        for group in members]
        self.feature_slices = sorted((start, g, offset, channels) for g, group in enumerate(self.columns)
                                     for offset, start, channels in group)  # each map's columns, in feature order
        self._gather = self._gathered

    @classmethod
    def from_store(cls, store: ActivationStore, images: list[LabeledImage], names: list[str],
                   size=None) -> PixelSampler:
        """The named activations of `images`, read from the store (float16, small next to upsampled ones), upsampled
        to `size`, by default each image's own (LabeledImage.grid: its label map's size, or its padded canvas)."""
        return cls([StoredMaps(store, images, n) for n in names], [im.grid for im in images] if size is None else size)

    def gather(self, image_index: np.ndarray, ys: np.ndarray, xs: np.ndarray,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, dim) features of pixels (image_index[k], ys[k], xs[k]), computed in float32 and returned as `dtype`
        (bfloat16: rounded once, as casting the float32 features would)."""
        return self._gather(*(torch.as_tensor(a, dtype=torch.long) for a in (image_index, ys, xs)), dtype)

    def compile(self) -> None:
        """Gather through torch.compile from now on (for the number of pixels of the next call; other numbers run as
        they are): each group's taps, their weights and the placing of its columns become one loop, 2.1-2.6x as fast as
        running them one by one (`bench/bench_ensemble_step.py --split` times it). The same arithmetic, up to float
        rounding."""
        self._gather = Compiled(self._gathered, True, "gathering features")

    def _gathered(self, img: torch.Tensor, y: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        values = []
        ty = y if self.row_offset is None else y + self.row_offset[img]  # where each pixel's taps are
        tx = x if self.col_offset is None else x + self.col_offset[img]
        for native, columns in zip(self.groups, self.columns):
            _, height, width, channels = native.shape
            y0, y1, hy0, hy1 = (a[ty, None] for a in self.row_taps[height])
            x0, x1, wx0, wx1 = (a[tx, None] for a in self.col_taps[width])
            pixels = native.view(-1, channels)

            def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
                return pixels.index_select(0, (img * height + yy[:, 0]) * width + xx[:, 0]).float()  # (N, C)

            top = at(y0, x0) * wx0 + at(y0, x1) * wx1
            bottom = at(y1, x0) * wx0 + at(y1, x1) * wx1
            values.append(top.mul_(hy0).add_(bottom.mul_(hy1)))
        if torch.compiler.is_compiling():  # compiled, the maps' columns are written in place as one loop
            return torch.cat([values[g][:, offset:offset + channels].to(dtype)
                              for _, g, offset, channels in self.feature_slices], 1)
        features = torch.empty(len(img), self.dim, dtype=dtype)  # eagerly, copying each map's columns into place is faster
        for group, columns in zip(values, self.columns):
            place(features, columns, group)
        return features

    def image_taps(self, index: int) -> tuple[int, int, dict, dict]:
        """Image `index`'s output (height, width) and its taps: per native height, per native width."""
        (height, width), (row, col) = self.canvases[index], self.starts[index]
        return (height, width, {h: tuple(a[row:row + height] for a in taps) for h, taps in self.row_taps.items()},
                {w: tuple(a[col:col + width] for a in taps) for w, taps in self.col_taps.items()})

    def image_features(self, index: int, rows: slice) -> torch.Tensor:
        """(len(rows) * width, dim) features of a band of rows of one image, in row-major pixel order.

        Equal to `gather` on those pixels, bit for bit (the same products and sums), but each source row is
        interpolated across the columns once and shared by every output row that reads it."""
        height, width, row_taps, col_taps = self.image_taps(index)
        ys = torch.arange(height)[rows]
        features = torch.empty(len(ys), width, self.dim)
        for native, columns in zip(self.groups, self.columns):
            y0, y1, hy0, hy1 = (a[ys] for a in row_taps[native.shape[1]])
            x0, x1, wx0, wx1 = col_taps[native.shape[2]]
            sources, position = torch.unique(torch.cat([y0, y1]), return_inverse=True)
            for offset, start, channels in columns:  # one map at a time, written straight into its columns
                lines = native[index, sources, :, offset:offset + channels].float()  # (S, w, C)
                across = lines[:, x0] * wx0[:, None] + lines[:, x1] * wx1[:, None]  # (S, width, C)
                top, bottom = across[position[: len(ys)]], across[position[len(ys):]]
                torch.add(top * hy0[:, None, None], bottom * hy1[:, None, None], out=features[..., start:start + channels])
        return features.view(-1, self.dim)

    def projected(self, index: int, weight: torch.Tensor, products: torch.dtype = torch.float32) -> ProjectedImage:
        """Image `index`'s features times `weight` (dim, out), computed at native resolution (ProjectedImage.rows).

        Bilinear upsampling is linear, so `image_features(index, rows) @ weight` equals the upsampled products of
        each native map with its rows of `weight`; maps of one native size share their upsampling, so they are
        multiplied as one. Each native pixel is multiplied about once instead of each output pixel, and only `out`
        values per output pixel are upsampled per native size instead of `dim`. The products run in `products`
        (float32 or bfloat16, summing in float32) on `weight`'s device."""
        parts = {}
        for native, columns in zip(self.groups, self.columns):
            rows = torch.cat([weight[start:start + channels] for _, start, channels in columns]).to(products)
            parts[tuple(native.shape[1:3])] = (native[index], rows)
        height, width, row_taps, _ = self.image_taps(index)
        return ProjectedImage(parts, {h: row_taps[h] for h, _ in parts}, (height, width))


class StoredMaps:
    """One feature's maps of several images as the store holds them, (N_images, C, h, w) float16 in memory-mapped
    files: PixelSampler copies them image by image into its channels-last groups, so that no stack of them is ever
    made (at the paper's shape with 20 training images, the stacks and the concatenation of the groups held 600 MB
    at once beside the 240 MB of groups). `dtype` is float32 when the store kept one of them in float32 (a map
    float16 would overflow), so that the values come back as stored."""

    def __init__(self, store: ActivationStore, images: list[LabeledImage], name: str) -> None:
        self.store, self.images, self.name = store, images, name
        arrays = [store.read(image, name) for image in images]
        self.shape = (len(images), *arrays[0].shape)
        self.dtype = torch.float32 if any(a.dtype == np.float32 for a in arrays) else torch.float16

    def copy_into(self, channels_last: torch.Tensor) -> None:
        """Write the maps into (N_images, h, w, C) `channels_last`, one image at a time."""
        for index, image in enumerate(self.images):
            channels_last[index].numpy()[...] = self.store.read(image, self.name).transpose(1, 2, 0)


def channels_last(maps: list[torch.Tensor | StoredMaps]) -> torch.Tensor:
    """(N, C_1 + C_2 + ..., h, w) of maps of one native size concatenated along the channels, as one channels-last
    (N, h, w, C) tensor of the widest of their dtypes, each written straight into its channels."""
    images, _, height, width = maps[0].shape
    dtype = functools.reduce(torch.promote_types, [m.dtype for m in maps])
    group = torch.empty(images, height, width, sum(m.shape[1] for m in maps), dtype=dtype)
    start = 0
    for m in maps:
        channels = group[..., start:start + m.shape[1]]
        if isinstance(m, StoredMaps):
            m.copy_into(channels)
        else:
            channels.copy_(m.permute(0, 2, 3, 1))
        start += m.shape[1]
    return group


def place(features: torch.Tensor, columns: list[tuple[int, int, int]], values: torch.Tensor) -> None:
    """Copy a group's (N, C_group) values into their columns of (N, dim) features, one map's slice at a time."""
    for offset, start, channels in columns:
        features[:, start:start + channels] = values[:, offset:offset + channels]


class ProjectedImage:
    """One image's first-layer products (PixelSampler.projected): per native size, the (h, w, C) features of the
    maps of that size and their (C, out) rows of the weight. `rows` multiplies only the native rows a band of
    output rows reads, so memory holds a band's products, never the image's. `taps`: the row taps per native
    height; `size`: the output (height, width)."""

    def __init__(self, parts: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]], taps: dict,
                 size: tuple[int, int]):
        self.parts = parts
        self.height, self.width = size
        self.device = next(iter(parts.values()))[1].device
        self.taps = {s: tuple(t.to(self.device) for t in taps[s]) for s in taps}

    def rows(self, rows: slice) -> torch.Tensor:
        """(len(rows) * width, out) float32: the products of those output pixels' upsampled features, in row-major
        order. Each native size's products are computed for the native rows the band reads, interpolated between
        their two source rows at native width (the taps of PixelSampler.image_features), then across the columns
        by torch's bilinear kernel, which vectorises over the `out` values of a pixel; both steps are bilinear
        interpolation (align_corners=False)."""
        ys = torch.arange(self.height, device=self.device)[rows]
        total = None
        for (height, width), (native, weight) in self.parts.items():
            y0, y1, hy0, hy1 = (a[ys] for a in self.taps[height])
            first, last = int(y0.min()), int(y1.max())
            pixels = native[first:last + 1].to(self.device, weight.dtype).view(-1, native.shape[-1])
            products = (pixels @ weight).float().view(last + 1 - first, width, -1)
            down = products[y0 - first] * hy0[:, None, None] + products[y1 - first] * hy1[:, None, None]  # (R, w, out)
            across = F.interpolate(down[None].permute(0, 3, 1, 2), size=(len(ys), self.width), mode="bilinear",
                                   align_corners=False)  # rows map to themselves; columns are interpolated
            band = across[0].permute(1, 2, 0)  # (R, width, out), a view of channels-last memory
            total = band.contiguous() if total is None else total.add_(band)
        return total.view(len(ys) * self.width, -1)


class StorePixels:
    """Training pixels for the ensemble (its TrainingPixels protocol): labelled pixels (ignore label dropped) read
    through a sampler."""

    def __init__(self, sampler: PixelSampler, labels: list[np.ndarray], ignore_label: int):
        image_index, ys, xs = [], [], []
        kept = []
        for i, lab in enumerate(labels):
            y, x = np.nonzero(lab != ignore_label)
            image_index.append(np.full(len(y), i))
            ys.append(y)
            xs.append(x)
            kept.append(lab[y, x])
        self.sampler = sampler
        self.dim = sampler.dim
        # int32 coordinates: 12 bytes a pixel instead of 24 (31 MB less at the paper's shape with 20 training images)
        self.image_index, self.ys, self.xs = (np.concatenate(a).astype(np.int32) for a in (image_index, ys, xs))
        self.labels = np.concatenate(kept).astype(np.int64)

    def features(self, idx: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.sampler.gather(self.image_index[idx], self.ys[idx], self.xs[idx], dtype)

    def compile(self) -> None:
        self.sampler.compile()
