"""The activation store: a backbone's activations, float16 on disk, memory-mapped, at native resolution, keyed by
the backbone's identity, the image and the cell (probe.features.sampler reads them back at chosen pixels).

A map holding a value beyond float16's range (|x| > 65504, which float16 would store as inf) is kept in float32
instead, and named in the store's FLOAT32_FILE; reading gives its values back, never an inf."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probe.backbones import identity_hash
from probe.data.layout import LabeledImage
from probe.utils.cache import FLOAT32_FILE, IDENTITY_FILE, activations_root
from probe.utils.outputs import atomic_write, write_json
from probe.utils.progress import progress_bar

log = logging.getLogger("probe")

STORED_DTYPES = (np.float16, np.float32)  # float32: a map that float16 would overflow (stored_array)


def image_key(image: LabeledImage) -> str:
    """The stem plus a hash of the preprocessed pixels, so a changed image never reads stale activations."""
    digest = hashlib.sha256(np.ascontiguousarray(image.image, dtype=np.float32).tobytes()).hexdigest()[:12]
    return f"{image.stem}-{digest}"


def stored_array(activation: np.ndarray) -> np.ndarray:
    """An activation map as the store keeps it: float16, or float32 when float16 would turn one of its finite values
    into inf (|x| >= 65520 rounds to inf; up to 65504 it is float16's largest value)."""
    with np.errstate(over="ignore"):  # the overflow is what is checked here
        array = activation.astype(np.float16)
    infinite = np.isinf(array)
    if infinite.any() and np.isfinite(activation[infinite]).any():
        return activation.astype(np.float32)
    return array


def readable(path: Path) -> bool:
    """Whether a stored activation file is whole: a (C, h, w) float16 (or float32) array whose data fills the file.
    A missing file is False; a damaged one (a killed writer of an older version, a full disk, a bad sector) is False with a
    one-line warning, and is deleted so that it is recomputed."""
    try:
        array = np.load(path, mmap_mode="r")
        if array.ndim == 3 and array.dtype in STORED_DTYPES:
            return True
        reason = f"a {array.dtype} array of shape {array.shape}"
    except FileNotFoundError:
        return False
    except (OSError, ValueError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    log.warning(f"cache file {path} is damaged ({reason}); recomputing it")
    path.unlink(missing_ok=True)
    return False


@dataclass
class Extracted:
    """What one `ActivationStore.fill` computed: (image, step) extractions, their seconds, and the files it wrote;
    `float32_maps`: the maps of its images ("<image key>/<cell>") the store keeps in float32, computed now or before
    (stored_array)."""

    image_steps: int = 0
    seconds: float = 0.0
    files: int = 0
    float32_maps: list[str] = field(default_factory=list)


class ActivationStore:
    """Activations keyed by (backbone identity, image, feature name), one float16 .npy file each (float32 where float16
    would overflow: stored_array, listed in FLOAT32_FILE).

    Safe for concurrent writers: each writes its own temporary file and renames it into place, so two processes
    extracting the same image and step into one folder both leave a whole file. `written` counts the files this
    store wrote (what an interrupted command names, probe.errors.counting_files); `fill` says what it computed."""

    def __init__(self, backbone, root: Path | None = None):
        self.backbone = backbone
        self.root = Path(root or activations_root()) / identity_hash(backbone.identity)
        self.written = 0

    def path(self, key: str, name: str) -> Path:
        return self.root / key / f"{name}.npy"

    def fill(self, images: list[LabeledImage], batch_size: int | None = None, progress: bool = True,
             steps: list[int] | None = None) -> Extracted:
        """Run the backbone on every batch of images with a missing activation, one step at a time.

        Batches are fixed runs of `images` (Backbone.batch_size: about 16k pixels per forward, 16 images at 32x32, 1
        at 256x256; the latent models 16k latent positions), and
        a batch with any missing file is computed whole: a run resumed after a kill computes exactly the batches
        an uninterrupted run computes. A shorter last batch is padded to the full batch size
        (Backbone.batch_features), so an image's activations do not depend on which command extracted it with which
        others, and every command reading the cache gets the same numbers to the last bit. Returns what it computed."""
        if not images:
            return Extracted()
        batch_size = batch_size or self.backbone.batch_size(images[0].image.shape[-1])
        keys = [image_key(im) for im in images]
        done = self._computed(images, keys, batch_size, progress, steps)
        done.float32_maps = self.float32_maps(keys)
        return done

    def _computed(self, images: list[LabeledImage], keys: list[str], batch_size: int, progress: bool,
                  steps: list[int] | None) -> Extracted:
        done = Extracted()
        chunks = [list(range(start, min(start + batch_size, len(images)))) for start in range(0, len(images), batch_size)]
        todo = [(t, chunk) for t in (steps if steps is not None else self.backbone.steps) for chunk in chunks
                if not all([readable(self.path(keys[i], n)) for i in chunk for n in self.backbone.names_for_step(t)])]
        if not todo:
            return done
        if not (self.root / IDENTITY_FILE).is_file():
            write_json(self.root / IDENTITY_FILE, self.backbone.identity)
        written, widened = self.written, []
        with progress_bar(progress) as bar:
            task = bar.add_task("extracting activations", total=sum(len(chunk) for _, chunk in todo))
            for t, chunk in todo:
                started = time.perf_counter()
                acts = self.backbone.batch_features([images[i].image for i in chunk], [images[i].stem for i in chunk],
                                                    t, batch_size)
                for j, i in enumerate(chunk):
                    for name, act in acts.items():
                        if self._write(keys[i], name, act[j].numpy()) == np.float32:
                            widened.append(f"{keys[i]}/{name}")
                done.image_steps += len(chunk)
                done.seconds += time.perf_counter() - started
                bar.advance(task, len(chunk))
        done.files = self.written - written
        if widened:
            maps = f"{len(widened)} activation map{'s' if len(widened) > 1 else ''}"
            log.warning(f"{maps} held values beyond float16's range (+-65504), e.g. {widened[0]}: kept in float32 "
                        f"(listed in {self.root / FLOAT32_FILE})")
        return done

    def _write(self, key: str, name: str, activation: np.ndarray) -> np.dtype:
        """Store one map (stored_array); a float32 one is also listed in FLOAT32_FILE. Returns the stored dtype."""
        array = stored_array(activation)
        atomic_write(self.path(key, name), lambda path: np.save(path, array))
        self.written += 1
        if array.dtype == np.float32:
            with open(self.root / FLOAT32_FILE, "a") as listing:  # one short appended line: safe beside other writers
                listing.write(f"{key}/{name}\n")
        return array.dtype

    def float32_maps(self, keys: list[str] | None = None) -> list[str]:
        """The maps ("<image key>/<cell>") kept in float32, sorted: all of the store's, or those of images `keys`."""
        try:
            entries = set((self.root / FLOAT32_FILE).read_text().split())
        except FileNotFoundError:
            return []
        wanted = None if keys is None else set(keys)
        return sorted(e for e in entries if wanted is None or e.split("/")[0] in wanted)

    def read(self, image: LabeledImage, name: str) -> np.ndarray:
        """(C, h, w) float16 (float32 for a map float16 would overflow), memory-mapped."""
        return np.load(self.path(image_key(image), name), mmap_mode="r")

