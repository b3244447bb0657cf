"""The activation store (float16 on disk, memory-mapped, at native resolution) and the pixel sampler.

Nothing here ever builds the dense (images x features x H x W) tensor: the sampler upsamples only the
pixels it is asked for, with the exact arithmetic of bilinear interpolation (align_corners=False).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from probe.cache import IDENTITY_FILE, activations_root
from probe.data.layout import LabeledImage
from probe.backbones import identity_hash
from probe.outputs import atomic_write, write_json
from probe.progress import progress_bar
from probe.runtime import Compiled

log = logging.getLogger("probe")


def image_key(image: LabeledImage) -> str:
    """The stem plus a hash of the preprocessed pixels, so a changed image never reads stale activations."""
    digest = hashlib.sha256(np.ascontiguousarray(image.image, dtype=np.float32).tobytes()).hexdigest()[:12]
    return f"{image.stem}-{digest}"


def readable(path: Path) -> bool:
    """Whether a stored activation file is whole: a (C, h, w) float16 array whose data fills the file. A missing
    file is False; a damaged one (a killed writer of an older version, a full disk, a bad sector) is False with a
    one-line warning, and is deleted so that it is recomputed."""
    try:
        array = np.load(path, mmap_mode="r")
        if array.ndim == 3 and array.dtype == np.float16:
            return True
        reason = f"a {array.dtype} array of shape {array.shape}"
    except FileNotFoundError:
        return False
    except (OSError, ValueError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    log.warning(f"cache file {path} is damaged ({reason}); recomputing it")
    path.unlink(missing_ok=True)
    return False


class ActivationStore:
    """Activations keyed by (backbone identity, image, feature name), one float16 .npy file each.

    Safe for concurrent writers: each writes its own temporary file and renames it into place, so two processes
    extracting the same image and step into one folder both leave a whole file. `written` counts the files this
    process wrote (reported when a run is interrupted); `extracted` the (image, step) extractions it computed and
    `extraction_seconds` their time (a sweep's estimate of the time left, probe.plan.time_left)."""

    written = 0
    extracted = 0
    extraction_seconds = 0.0

    def __init__(self, backbone, root: Path | None = None):
        self.backbone = backbone
        self.root = Path(root or activations_root()) / identity_hash(backbone.identity)

    def path(self, key: str, name: str) -> Path:
        return self.root / key / f"{name}.npy"

    def fill(self, images: list[LabeledImage], batch_size: int | None = None, progress: bool = True,
             steps: list[int] | None = None) -> None:
        """Run the backbone on every batch of images with a missing activation, one step at a time.

        Batches are fixed runs of `images` (Backbone.batch_size: about 16k pixels per forward, 16 images at 32x32, 1
        at 256x256; the latent models 16k latent positions), and
        a batch with any missing file is computed whole: a run resumed after a kill computes exactly the batches
        an uninterrupted run computes. A shorter last batch is padded to the full batch size
        (Backbone.batch_features), so an image's activations do not depend on which command extracted it with which
        others, and every command reading the cache gets the same numbers to the last bit."""
        if not images:
            return
        batch_size = batch_size or self.backbone.batch_size(images[0].image.shape[-1])
        keys = [image_key(im) for im in images]
        chunks = [list(range(start, min(start + batch_size, len(images)))) for start in range(0, len(images), batch_size)]
        todo = [(t, chunk) for t in (steps if steps is not None else self.backbone.steps) for chunk in chunks
                if not all([readable(self.path(keys[i], n)) for i in chunk for n in self.backbone.names_for_step(t)])]
        if not todo:
            return
        if not (self.root / IDENTITY_FILE).is_file():
            write_json(self.root / IDENTITY_FILE, self.backbone.identity)
        with progress_bar(progress) as bar:
            task = bar.add_task("extracting activations", total=sum(len(chunk) for _, chunk in todo))
            for t, chunk in todo:
                started = time.perf_counter()
                acts = self.backbone.batch_features([images[i].image for i in chunk], [images[i].stem for i in chunk],
                                                    t, batch_size)
                for j, i in enumerate(chunk):
                    for name, act in acts.items():
                        self._write(keys[i], name, act[j].numpy())
                ActivationStore.extracted += len(chunk)
                ActivationStore.extraction_seconds += time.perf_counter() - started
                bar.advance(task, len(chunk))

    def _write(self, key: str, name: str, activation: np.ndarray) -> None:
        array = activation.astype(np.float16)
        atomic_write(self.path(key, name), lambda path: np.save(path, array))
        ActivationStore.written += 1

    def read(self, image: LabeledImage, name: str) -> np.ndarray:
        """(C, h, w) float16, memory-mapped."""
        return np.load(self.path(image_key(image), name), mmap_mode="r")


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
        in_groups = torch.cat([torch.arange(start, start + channels) for group in self.columns
                               for _, start, channels in group])  # feature index of each group column, in order
        self.group_columns = torch.argsort(in_groups)  # the group column of each feature
        self._gather = self._gathered

    @classmethod
    def from_store(cls, store: ActivationStore, images: list[LabeledImage], names: list[str],
                   size=None) -> PixelSampler:
        """The named activations of `images`, read from the store (float16, small next to upsampled ones), upsampled
        to `size`, by default each image's own (LabeledImage.grid: its label map's size, or its padded canvas)."""
        return cls([StoredMaps(store, images, n) for n in names], [im.grid for im in images] if size is None else size)

    def gather(self, image_index: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> torch.Tensor:
        """(N, dim) float32 features of pixels (image_index[k], ys[k], xs[k])."""
        return self._gather(*(torch.as_tensor(a, dtype=torch.long) for a in (image_index, ys, xs)))

    def compile(self) -> None:
        """Gather through torch.compile from now on (for the number of pixels of the next call; other numbers run as
        they are): each group's taps, their weights and the placing of its columns become one loop, 2.1-2.6x as fast as
        running them one by one (`bench/bench_ensemble_step.py --split` times it). The same arithmetic, up to float
        rounding."""
        self._gather = Compiled(self._gathered, True, "gathering features")

    def _gathered(self, img: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
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
        if torch.compiler.is_compiling():  # compiled, one loop writes each feature from its group's column
            return torch.cat(values, 1)[:, self.group_columns]
        features = torch.empty(len(img), self.dim)  # eagerly, copying each map's columns into place is faster
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
    at once beside the 240 MB of groups)."""

    def __init__(self, store: ActivationStore, images: list[LabeledImage], name: str) -> None:
        self.store, self.images, self.name = store, images, name
        self.shape = (len(images), *store.read(images[0], name).shape)
        self.dtype = torch.float16

    def copy_into(self, channels_last: torch.Tensor) -> None:
        """Write the maps into (N_images, h, w, C) `channels_last`, one image at a time."""
        for index, image in enumerate(self.images):
            channels_last[index].numpy()[...] = self.store.read(image, self.name).transpose(1, 2, 0)


def channels_last(maps: list[torch.Tensor | StoredMaps]) -> torch.Tensor:
    """(N, C_1 + C_2 + ..., h, w) of maps of one native size concatenated along the channels, as one channels-last
    (N, h, w, C) tensor, each written straight into its channels."""
    images, _, height, width = maps[0].shape
    group = torch.empty(images, height, width, sum(m.shape[1] for m in maps), dtype=maps[0].dtype)
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


class StorePixelSource:
    """Training pixels for the ensemble: labelled pixels (ignore label dropped) read through a sampler."""

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

    def features(self, idx: np.ndarray) -> torch.Tensor:
        return self.sampler.gather(self.image_index[idx], self.ys[idx], self.xs[idx])

    def compile(self) -> None:
        self.sampler.compile()
