"""The few-shot segmenter: features from the store, the DatasetGAN ensemble, majority vote, the authors' mIoU."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from probe import plots
from probe.backbones import Backbone, BackboneSpec, build_backbone
from probe.data.layout import SPLIT_NUMBER, LabeledImage
from probe.data.sources import Source, picture
from probe.ensemble import EARLY_BATCH_SIZE, PixelEnsemble, training_rule
from probe.errors import ProbeError, counting_files
from probe.features.sampler import PixelSampler, StorePixels
from probe.features.store import ActivationStore, Extracted
from probe.metrics import SegmentationScore
from probe.utils.outputs import output_dir, write_json
from probe.utils.progress import progress_bar
from probe.utils.runtime import runtime_info

log = logging.getLogger("probe")

PAPER_MIN_PIXELS = 20  # the authors drop a class from an image's training labels below 20 pixels at 256x256


def min_annotation_pixels(height: int, width: int | None = None) -> int:
    """The authors' 20-pixel small-annotation rule, scaled with the label map's area (20 at 256x256, 1 at 32x32)."""
    return max(1, round(PAPER_MIN_PIXELS * height * (height if width is None else width) / 256 ** 2))


def size_text(sizes) -> str:
    """"64x48" (width x height) of one (height, width), or the distinct ones of several, comma-separated."""
    return ", ".join(f"{w}x{h}" for h, w in sorted(set(map(tuple, sizes))))


def label_size(images: list[LabeledImage]) -> list:
    """The [height, width] of the images' label maps and predictions, or the distinct ones when they differ."""
    sizes = sorted({tuple(map(int, im.size)) for im in images})
    return list(sizes[0]) if len(sizes) == 1 else [list(size) for size in sizes]


def sizes_note(model_size: int, images: list[LabeledImage]) -> str | None:
    """"the model saw 32x32, predictions at 64x64" when the predictions are not at the model's input size."""
    sizes = [im.size for im in images]
    if all(size == (model_size, model_size) for size in sizes):
        return None
    return f"the model saw {model_size}x{model_size}, predictions at {size_text(sizes)} (width x height)"


def split_number(source: Source, split: str) -> int:
    """How many images of `split` a run takes when --train-number / --test-number are not given (fewer when the split
    holds fewer): the paper's split on a paper dataset (DatasetInfo.split_number: Table 1, the authors' configs), else
    SPLIT_NUMBER."""
    return source.info.split_number(split) if source.info is not None else SPLIT_NUMBER


def drop_small_annotations(labels: np.ndarray, ignore_label: int, min_pixels: int) -> np.ndarray:
    """A copy of a training label map where classes with fewer than `min_pixels` pixels become the ignore label."""
    counts = np.bincount(labels[labels != ignore_label].ravel(), minlength=1)
    small = [c for c, n in enumerate(counts) if 0 < n < min_pixels]
    return np.where(np.isin(labels, small), ignore_label, labels)


@dataclass
class Fitted:
    """A fitted ensemble and its predictions on the test images."""

    ensemble: PixelEnsemble
    predictions: list[np.ndarray]
    uncertainties: list[float]
    score: SegmentationScore
    training_pixels: int
    seconds: dict[str, float]


def fit_and_predict(store: ActivationStore, names: list[str], train: list[LabeledImage], test: list[LabeledImage],
                    num_classes: int, ignore_label: int, members: int, seed: int, batched: bool = True,
                    device: str = "cpu", progress: bool = True, precision: str = "float32",
                    early_batch_size: int | None = None) -> Fitted:
    """Train an ensemble on the named features of the train images, predict and score the test images. The
    features are upsampled to each label map's size (LabeledImage.grid) and every labelled pixel trains; the
    predictions are at each test image's label size."""
    started = time.perf_counter()
    ensemble, training_pixels = fit_ensemble(store, names, train, num_classes, ignore_label, members, seed, batched,
                                             device, progress, precision, early_batch_size)
    trained = time.perf_counter()
    score = SegmentationScore(num_classes, ignore_label)
    predictions, uncertainties = [], []
    for image in test:
        pred, uncertainty = predict_image(ensemble, PixelSampler.from_store(store, [image], names), size=image.size)
        predictions.append(pred)
        uncertainties.append(uncertainty)
        score.update(pred, image.labels)
    seconds = {"training": trained - started, "prediction": time.perf_counter() - trained}
    return Fitted(ensemble, predictions, uncertainties, score, training_pixels, seconds)


def fit_ensemble(store: ActivationStore, names: list[str], train: list[LabeledImage], num_classes: int,
                 ignore_label: int, members: int, seed: int, batched: bool = True, device: str = "cpu",
                 progress: bool = True, precision: str = "float32",
                 early_batch_size: int | None = None) -> tuple[PixelEnsemble, int]:
    """An ensemble trained on every labelled pixel of the train images (the authors' small-annotation rule applied)
    through the store's sampler, and the number of training pixels. The training images' activations leave memory
    when it returns, before the test images' arrive."""
    labels = [drop_small_annotations(im.labels, ignore_label, min_annotation_pixels(*im.labels.shape))
              for im in train]
    pixels = StorePixels(PixelSampler.from_store(store, train, names), labels, ignore_label)
    if len(pixels.labels) == 0:
        raise ProbeError("the training label maps hold no labelled pixel (all ignore label): check the label maps")
    ensemble = PixelEnsemble(num_classes, members=members, seed=seed, batched=batched, device=device,
                             progress=progress, precision=precision, early_batch_size=early_batch_size).fit(pixels)
    return ensemble, len(pixels.labels)


def predict_image(ensemble: PixelEnsemble, sampler: PixelSampler, band_pixels: int = 2048,
                  size: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
    """(H, W) labels and the uncertainty of the image of a one-image sampler, predicted in bands of rows
    (about `band_pixels` pixels) so that memory holds a band's products, never the image's. The ensemble's first layer
    multiplies the features at their native resolution and its products are upsampled (PixelSampler.projected):
    the same numbers as upsampling the features first, up to float rounding, for a fraction of the products.
    `size`: the (H, W) predicted, the top-left of the sampler's output size (smaller for a padded image)."""
    height, width = sampler.canvases[0]
    out_height, out_width = size or (height, width)
    rows = max(1, band_pixels // width)
    projected = sampler.projected(0, *ensemble.first_layer(sampler.dim))

    def band(start: int) -> tuple[np.ndarray, np.ndarray]:
        products = projected.rows(slice(start, min(start + rows, out_height)))
        if out_width < width:  # a padded image: its padding's columns are not predicted
            products = products.view(-1, width, products.shape[-1])[:, :out_width].reshape(-1, products.shape[-1])
        return ensemble.predict_products(products)

    parts = [band(r) for r in range(0, out_height, rows)]
    pred = np.concatenate([p for p, _ in parts]).reshape(out_height, out_width)
    return pred, PixelEnsemble.uncertainty(np.concatenate([j for _, j in parts]))


@dataclass
class SegmentOptions:
    backbone: BackboneSpec = field(default_factory=BackboneSpec)  # its seed is replaced by each run's seed
    train_number: int | None = None  # None: up to split_number's
    test_number: int | None = None
    members: int = 10
    batched: bool = True
    precision: str = "auto"
    early_batch_size: int = EARLY_BATCH_SIZE  # pixels per step of epochs 0-3 (unchecked); 64: the authors' rule
    train_draw: bool = False  # draw the training images with the run's seed instead of taking the first by name
    train_data: str | None = None  # a dataset folder whose train split trains (e.g. synthesized images); None: the source's

    def to_dict(self) -> dict:
        return {**asdict(self), "backbone": self.backbone.to_dict()}


def resolved_spec(spec: BackboneSpec, backbone: Backbone) -> BackboneSpec:
    """`spec` with the cells `backbone` chose written out, so that it rebuilds exactly that backbone."""
    steps = [t for t in backbone.steps if t is not None]
    return replace(spec, layers=",".join(backbone.layers), steps=",".join(map(str, steps)) or None)


@dataclass
class Evaluation:
    """One fit and score: the metrics (JSON-ready), what produced them, and what its extraction computed."""

    metrics: dict
    fitted: Fitted
    backbone: Backbone
    spec: BackboneSpec
    train: list[LabeledImage]
    test: list[LabeledImage]
    extraction: Extracted


def training_images(source: Source, options: SegmentOptions, resolution: int, seed: int) -> list[LabeledImage]:
    """The first `train_number` images of the train split by name (the authors' choice; by default split_number's),
    or with `train_draw` that many drawn without replacement by a generator seeded by `seed` (in name order). The
    train split is the source's, or that of the `train_data` folder."""
    root = Path(options.train_data) if options.train_data else None
    default = split_number(source, "train")
    if not options.train_draw:
        return source.split("train", resolution, options.train_number, default, root=root, option="--train-number")
    pool = source.split("train", resolution, None, root=root)
    number = options.train_number or min(default, len(pool))
    if not 1 <= number <= len(pool):
        raise ProbeError(f"--train-number {number}: the train split of {root or source.name} holds {len(pool)} "
                         f"images; give --train-number 1..{len(pool)}")
    chosen = np.sort(np.random.default_rng(seed).choice(len(pool), size=number, replace=False))
    return [pool[i] for i in chosen]


def scored_images(source: Source, options: SegmentOptions, resolution: int) -> list[LabeledImage]:
    """The first `test_number` images of the test split by name (by default split_number's)."""
    return source.split("test", resolution, options.test_number, split_number(source, "test"),
                        option="--test-number")


def evaluate(source: Source, options: SegmentOptions, seed: int, cache: Path | None = None, progress: bool = True,
             backbone: Backbone | None = None, release: bool = False) -> Evaluation:
    """Extract, fit the ensemble on the train images and score it on the test images, with one seed. `backbone`:
    an already built one (a sweep's worker keeps its models), else built from `options.backbone` and `seed`.
    `release`: free the backbone's networks once the features are extracted (a run that extracts nothing more).
    A Ctrl-C names the activation files it cached (probe.errors.Interrupted)."""
    spec = replace(options.backbone, seed=seed)
    backbone = backbone or build_backbone(spec, "segment", source.native_size)
    resolution = backbone.image_size
    train = training_images(source, options, resolution, seed)
    test = scored_images(source, options, resolution)
    store = ActivationStore(backbone, cache)
    with counting_files(lambda: store.written):
        started = time.perf_counter()
        extracted = store.fill(train + test, progress=progress)
        extraction = time.perf_counter() - started
        if release:
            backbone.release()
        fitted = fit_and_predict(store, backbone.names, train, test, source.num_classes, source.ignore_label,
                                 options.members, seed, options.batched, spec.device, progress, options.precision,
                                 options.early_batch_size)
    iou = dict(zip(fitted.score.class_ids, fitted.score.iou))
    per_class = {source.class_names[c]: 100 * v for c, v in iou.items()}
    metrics = {
        "miou": 100 * fitted.score.miou,
        "per_class": per_class,
        "uncertainty": float(np.mean(fitted.uncertainties)),
        "seconds": {"extraction": extraction, **fitted.seconds},
        "extraction": asdict(extracted),  # what the fill computed, and the maps stored in float32 (never inf)
        "training_pixels": fitted.training_pixels,
        "ensemble_iterations": fitted.ensemble.iterations_.tolist(),
        "precision": fitted.ensemble.precision,
        "runtime": runtime_info(spec.device),
        "dataset": source.name,
        "trained_on": options.train_data or source.name,
        "train_number": len(train),
        "test_number": len(test),
        "model_input_size": [resolution, resolution],
        "label_size": label_size(train + test),
        "fit": source.fit,
        "seed": seed,
        "features": {"names": backbone.names, "dim": int(sum(store.read(train[0], n).shape[0] for n in backbone.names)),
                     **backbone.identity},
        "options": options.to_dict(),
        "training_rule": training_rule(fitted.ensemble.early_batch_size_),  # the rule the fit followed
        "train_images": [im.stem for im in train],
        "test_images": [im.stem for im in test],
    }
    return Evaluation(metrics, fitted, backbone, spec, train, test, extracted)


def disagreement_title(stem: str, uncertainty: float) -> str:
    """A visualisation's title: the image and its uncertainty, named for what it is."""
    return f"{stem}: ensemble disagreement {uncertainty:.3f} (Jensen-Shannon, mean of the top 10 % of pixels)"


def confusion_table(score: SegmentationScore, class_names: Sequence[str]) -> pd.DataFrame:
    """`score`'s confusion matrix in pixels, rows the true labels and columns the predicted ones, labelled by class
    name; an ignore label outside the classes gets the last row and column ("ignore label 255"), one inside them is
    its class's row."""
    k = score.num_classes
    labels = [str(name) for name in class_names[:k]]
    if score.ignore_label < k:
        return pd.DataFrame(score.confusion[:k, :k], index=labels, columns=labels)
    labels.append(f"ignore label {score.ignore_label}")
    return pd.DataFrame(score.confusion, index=labels, columns=labels)


def per_image_table(test: list[LabeledImage], predictions: list[np.ndarray], num_classes: int, ignore_label: int,
                    class_names: Sequence[str]) -> pd.DataFrame:
    """IoU per test image and scored class (%), as probe.metrics computes it on that image alone, with its
    intersection and union in pixels (summed over the images they give per_class.csv's IoU) and the class's true
    and predicted pixels; `iou` is empty where the class is neither in the image's labels nor in its prediction."""
    rows = []
    for image, pred in zip(test, predictions):
        score = SegmentationScore(num_classes, ignore_label)
        score.update(pred, image.labels)
        for c, iou in zip(score.class_ids, score.iou):
            union = int(score.union[c])
            rows.append({"image": image.stem, "class": class_names[c], "iou": 100 * iou if union else np.nan,
                         "intersection": int(score.intersection[c]), "union": union,
                         "true_pixels": int(score.confusion[c].sum()),
                         "predicted_pixels": int(score.confusion[:, c].sum())})
    return pd.DataFrame(rows, columns=["image", "class", "iou", "intersection", "union", "true_pixels",
                                       "predicted_pixels"])


def write_evaluation(evaluation: Evaluation, source: Source, out: Path) -> None:
    """Every output of one fit into the folder `out`: metrics.json, per_class.csv, per_image.csv, confusion.csv
    and confusion.png, predictions/, visualizations/ and the ensemble/ that `probe predict` loads."""
    metrics, fitted, backbone, spec = evaluation.metrics, evaluation.fitted, evaluation.backbone, evaluation.spec
    test, per_class = evaluation.test, metrics["per_class"]
    write_json(out / "metrics.json", metrics)
    pd.DataFrame({"class": list(per_class), "iou": list(per_class.values())}).to_csv(out / "per_class.csv", index=False)
    per_image_table(test, fitted.predictions, source.num_classes, source.ignore_label,
                    source.class_names).to_csv(out / "per_image.csv", index=False)
    confusion = confusion_table(fitted.score, source.class_names)
    confusion.to_csv(out / "confusion.csv", index_label="true \\ predicted")
    scored = [source.class_names[c] for c in fitted.score.class_ids]
    plots.confusion_heatmap(confusion.loc[scored, confusion.columns[:source.num_classes]], out / "confusion.png",
                            title=f"confusion on the {len(test)} test images, % of each true class's pixels")
    (out / "predictions").mkdir()
    (out / "visualizations").mkdir()
    for image, pred, unc in zip(test, fitted.predictions, fitted.uncertainties):
        np.save(out / "predictions" / f"{image.stem}.npy", pred.astype(np.uint8))
        plots.segmentation_panel(picture(image), image.labels, pred, source.class_names, source.palette,
                                 out / "visualizations" / f"{image.stem}.png", source.ignore_label,
                                 title=disagreement_title(image.stem, unc))
    fitted.ensemble.save(out / "ensemble", ensemble_manifest(source.class_names, source.palette, source.ignore_label,
                                                             backbone, spec))


def ensemble_manifest(class_names: list[str], palette, ignore_label: int, backbone: Backbone,
                      spec: BackboneSpec) -> dict:
    """What a saved ensemble's manifest holds beside the ensemble, so that `load_predictor` rebuilds its features
    and `probe predict` draws its classes."""
    return {"class_names": list(class_names), "palette": np.asarray(palette).tolist(), "ignore_label": ignore_label,
            "resolution": backbone.image_size, "feature_names": backbone.names,
            "backbone": resolved_spec(spec, backbone).to_dict(), "identity": backbone.identity}


def run_segment(source: Source, options: SegmentOptions, seed: int, out: Path, cache: Path | None = None,
                progress: bool = True, overwrite: bool = False, dry_run: bool = False,
                downloads: Sequence[str] = ()) -> dict:
    """Fit and evaluate with one seed; write every output to `out` (as one result, swapped in at the end) and
    return the metrics. Several seeds are a sweep: probe.experiments.seeds. The plan is printed first with `progress`
    (probe.sweeps.plan: refused when the activations would not fit on the cache's disk; `dry_run`: only the plan, then
    DryRun; `downloads`: what the command downloaded first, named on it)."""
    from probe.sweeps.plan import Extraction, announce, make_plan

    backbone = build_backbone(replace(options.backbone, seed=seed), "segment", source.native_size)
    train = training_images(source, options, backbone.image_size, seed)
    test = scored_images(source, options, backbone.image_size)
    extraction = Extraction(backbone, train + test, cache, split=(len(train), len(test)))
    announce(make_plan("segment", 1, 1, [extraction], downloads=downloads), dry_run, show=progress)
    del train, test, extraction
    inputs = [*source.inputs, cache, options.train_data]
    with output_dir(out, command="segment", overwrite=overwrite, inputs=inputs) as tmp:
        evaluation = evaluate(source, options, seed, cache, progress, backbone=backbone, release=True)
        with counting_files(lambda: evaluation.extraction.files):
            note = sizes_note(evaluation.backbone.image_size, evaluation.train + evaluation.test)
            if note:
                log.info(note)
            write_evaluation(evaluation, source, tmp)
        return evaluation.metrics


def load_predictor(ensemble_dir: Path, device: str) -> tuple[PixelEnsemble, dict, Backbone]:
    """A saved ensemble, its manifest, and the backbone that rebuilds its features (refused when its identity is
    no longer the manifest's: a changed checkpoint or flags)."""
    ensemble, manifest = PixelEnsemble.load(ensemble_dir, device)
    spec = BackboneSpec.from_dict(manifest["backbone"], device=device)
    backbone = build_backbone(spec, "segment", manifest["resolution"])
    if json.loads(json.dumps(backbone.identity)) != manifest["identity"]:
        raise ProbeError(f"the features of {ensemble_dir} cannot be rebuilt: the {spec.kind} checkpoint "
                         f"{spec.checkpoint or '(the shipped default)'} or its flags changed since the ensemble was "
                         "trained; retrain with probe segment")
    return ensemble, manifest, backbone


def run_predict(ensemble_dir: Path, images: list[LabeledImage], out: Path, cache: Path | None, device: str,
                progress: bool, overwrite: bool = False, inputs: list[Path] = ()) -> pd.DataFrame:
    """Segment new images with a saved ensemble; writes predictions/, visualizations/ and uncertainty.csv, each at
    the image's own size (LabeledImage.size; the model sees the image at the manifest's resolution).
    `inputs`: the files the images came from (an output folder must not hold them)."""
    ensemble, manifest, backbone = load_predictor(ensemble_dir, device)
    class_names, palette = manifest["class_names"], np.asarray(manifest["palette"], dtype=np.uint8)
    size = manifest["resolution"]
    wrong = [im.stem for im in images if im.image.shape[-1] != size]
    if wrong:
        raise ProbeError(f"image {wrong[0]} is not {size}x{size} after loading: check --images")
    note = sizes_note(size, images)
    if note:
        log.info(note)
    store = ActivationStore(backbone, cache)
    records = []
    with counting_files(lambda: store.written), \
            output_dir(out, command="predict", overwrite=overwrite, inputs=[ensemble_dir, *inputs, cache]) as tmp:
        store.fill(images, progress=progress)
        (tmp / "predictions").mkdir()
        (tmp / "visualizations").mkdir()
        with progress_bar(progress) as bar:
            task = bar.add_task("segmenting", total=len(images))
            for image in images:
                sampler = PixelSampler.from_store(store, [image], manifest["feature_names"])
                pred, unc = predict_image(ensemble, sampler, size=image.size)
                np.save(tmp / "predictions" / f"{image.stem}.npy", pred.astype(np.uint8))
                plots.segmentation_panel(picture(image), None, pred, class_names, palette,
                                         tmp / "visualizations" / f"{image.stem}.png", manifest["ignore_label"],
                                         title=disagreement_title(image.stem, unc))
                records.append({"image": image.stem, "uncertainty": unc})
                bar.advance(task)
        table = pd.DataFrame(records)
        table.to_csv(tmp / "uncertainty.csv", index=False)
    return table
