"""Names to verified local paths: the paper's datasets, checkpoints and synthetic datasets, and the correspondence
benchmarks (pairs_dataset), downloaded into the cache on first use (hub models: probe.data.hub), and which of them a
command still needs (pending_downloads, for its plan). Nothing else in the toolkit downloads; the rest only ever sees
paths.

Under the cache root (probe.utils.cache.cache_root):
  downloads/<item path>        a downloaded file (checkpoints stay; an archive is deleted once unpacked), and
  downloads/<item path>.json   its record: the URL, the server's size, the SHA-256 of the first complete download
  downloads/.<file>.part       the bytes of an interrupted download; the next try asks for the rest (HTTP Range)
  datasets/<name>/             the labelled datasets, unpacked: the data root of `--dataset NAME`; and the
                               correspondence benchmarks (spair71k, pfpascal) in SPair-71k's layout
  synthetic/<name>/            the authors' synthetic datasets, unpacked

The authors (and the correspondence benchmarks) publish no hashes: the first complete download's SHA-256 is
recorded, a file whose size or modification time differs from its record is hashed again, and one whose content
changed is deleted and downloaded again, which must then match the record. One process fetches an item at a time (a
lock file beside it); the others wait for it and use its copy. Archives (.tar.gz, .zip) are unpacked into a
temporary folder that is renamed into place, and a member that would land outside it (an absolute path, `..`, a link
out, a device) stops the unpacking.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

from probe.data import proposal_flow
from probe.data.layout import IMAGE_SUFFIXES, find_split_dir, list_images
from probe.data.registry import (
    DATASETS,
    DATASETS_ITEM,
    PAIR_DATASETS,
    STORAGE_ROOT,
    DatasetInfo,
    Item,
    PairsDatasetInfo,
    lookup,
    publishes_checkpoint,
)
from probe.errors import DryRun, ProbeError
from probe.utils.cache import cache_root, publish_folder
from probe.utils.outputs import staging_folder, write_json

log = logging.getLogger("probe")

CHUNK = 1 << 20
READ = 64 * 1024
ATTEMPTS = 4  # tries of one download within a run; each after the first resumes where the last stopped
TIMEOUT = (15, 60)  # seconds to connect, and without a byte while reading
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def storage_root() -> str:
    """$PROBE_MIRROR (a mirror of the authors' storage with the same relative paths), else the authors' storage."""
    root = os.environ.get("PROBE_MIRROR") or STORAGE_ROOT
    return root if root.endswith("/") else root + "/"


def item_url(item: Item) -> str:
    """Where `item` is fetched from: under $PROBE_MIRROR at its path when a mirror is set, else where it is
    published (its own URL, or under the authors' storage)."""
    if item.url and not os.environ.get("PROBE_MIRROR"):
        return item.url
    return storage_root() + item.path


def download_path(item: Item) -> Path:
    return cache_root() / "downloads" / item.path


def datasets_root() -> Path:
    """The data root of the cached labelled datasets: <cache>/datasets/<name>/real/{train,test}."""
    return cache_root() / "datasets"


def synthetic_folder(info: DatasetInfo) -> Path:
    return cache_root() / "synthetic" / info.name


def record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.part")


def read_record(path: Path) -> dict:
    """A downloaded file's record ({} when there is none or it is unreadable)."""
    try:
        record = json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _update_record(path: Path, **fields) -> None:
    write_json(record_path(path), {**read_record(path), **fields})


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stat(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"


@contextlib.contextmanager
def _locked(path: Path, what: str) -> Iterator[None]:
    """One process at a time for `path` (a lock file beside it; released if the process dies)."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(f".{path.name}.lock")))
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        log.info(f"waiting for another probe process that is fetching {what}")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


class _Short(Exception):
    """The connection ended before the server's Content-Length."""


def _reason(error: Exception, requests) -> str:
    """A few words for a failed transfer: the system's reason (Connection refused, ...) where there is one."""
    if isinstance(error, (_Short, requests.exceptions.ChunkedEncodingError)):
        return "the connection ended early"
    if isinstance(error, requests.Timeout):
        return "no answer in time"
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(error))
    return found.group(1).strip() if found else type(error).__name__


class ResumingDownload:
    """A pooch downloader: streams into a partial file beside the target that outlives an interrupted run, and asks
    for the rest with an HTTP Range request on every later try (in this run after a dropped connection, or the
    next run). The complete bytes are moved to pooch's temporary file, which pooch renames into place."""

    def __init__(self, item: Item, target: Path, instead: str, progress: bool):
        self.item, self.target, self.instead, self.progress = item, target, instead, progress
        self.partial = partial_path(target)

    def __call__(self, url: str, output_file: str, pooch: object) -> None:
        import requests

        for attempt in range(ATTEMPTS):
            before = self._received()
            try:
                self._get(url, requests)
                break
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    _Short) as error:
                have = self._received()
                reason = _reason(error, requests)
                if attempt == ATTEMPTS - 1 or have <= before:  # a try that received nothing is not repeated
                    kept = f"; the {_megabytes(have)} received are kept and the next try resumes" if have else ""
                    raise ProbeError(f"cannot download {self.item.what} from {url} ({reason}){kept}: "
                                     f"{self.instead}") from None
                log.info(f"{self.item.name}: {reason} after {_megabytes(have)}; resuming")
                time.sleep(0.5 * (attempt + 1))
        os.replace(self.partial, output_file)

    def _received(self) -> int:
        return self.partial.stat().st_size if self.partial.exists() else 0

    def _get(self, url: str, requests) -> None:
        have = self._received()
        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
        with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT) as response:
            total = None
            if response.status_code == 206:
                match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
                if match is None or int(match.group(1)) != have:
                    raise ProbeError(f"{url} answered a Range request for bytes {have}- with Content-Range "
                                     f"{response.headers.get('Content-Range')!r}: delete {self.partial} and retry")
                total = int(match.group(2)) if match.group(2) != "*" else None
                mode = "ab"
            elif response.status_code == 200:
                length = response.headers.get("Content-Length")
                have, mode, total = 0, "wb", int(length) if length and length.isdigit() else None
            elif response.status_code == 416 and have:  # nothing past the partial bytes: fetch the file afresh
                self.partial.unlink()
                return self._get(url, requests)
            else:
                raise ProbeError(f"cannot download {self.item.what}: {url} answered HTTP {response.status_code} "
                                 f"{response.reason}: {self.instead}")
            if total is not None:
                _update_record(self.target, url=url, bytes=total)
            from probe.utils.progress import download_bar

            with download_bar(self.progress) as bar, open(self.partial, mode) as handle:
                task = bar.add_task(self.item.name, total=total, completed=have)
                for chunk in response.iter_content(READ):  # small reads: a dropped connection loses little
                    handle.write(chunk)
                    bar.advance(task, len(chunk))
        received = self.partial.stat().st_size
        if total is not None and received != total:
            raise _Short(f"received {received} of {total} bytes")


def fetch_file(item: Item, *, instead: str, check: Callable[[Path], None] | None = None,
               progress: bool = True) -> Path:
    """`item`'s file in the cache, downloaded on first use and verified: against its recorded SHA-256 when its size
    or modification time changed (a changed file is deleted and downloaded again), and by `check` (raising
    ProbeError) the first time its hash is recorded. `instead`: the ways out, for the error when it cannot be had."""
    import pooch

    target = download_path(item)
    with _locked(target, item.what):
        record = read_record(target)
        if target.is_file() and record.get("sha256") and record.get("local") == _stat(target):
            return target
        if target.is_file():
            digest = sha256(target)
            if record.get("sha256") not in (None, digest):
                log.warning(f"{target} is not the file first downloaded (SHA-256 {digest[:12]}..., recorded "
                            f"{record['sha256'][:12]}...): deleting it and downloading it again")
                target.unlink()
        if not target.is_file():
            log.info(f"downloading {item.what} from {item_url(item)}")
            pooch.get_logger().setLevel(logging.WARNING)
            known = f"sha256:{record['sha256']}" if record.get("sha256") else None
            try:
                pooch.retrieve(item_url(item), known_hash=known, fname=target.name, path=target.parent,
                               downloader=ResumingDownload(item, target, instead, progress))
            except ValueError:  # pooch: the hash differs from the record
                raise ProbeError(f"{item.what} downloaded again from {item_url(item)} differs from its first download "
                                 f"(SHA-256 {record['sha256'][:12]}... in {record_path(target)}): the published file "
                                 "changed or the transfer is corrupt; delete that record to accept the new file") from None
            digest = sha256(target)
        if record.get("sha256") is None and check is not None:
            try:
                check(target)
            except ProbeError as error:
                target.unlink()
                raise ProbeError(f"{item.what} from {item_url(item)} failed its check ({error}); the copy was "
                                 f"deleted: check PROBE_MIRROR or fetch it again ({instead})") from None
        _update_record(target, url=item_url(item), sha256=digest, local=_stat(target))
    return target


def _unsafe_path(name: str) -> str | None:
    """Why an archive member called `name` would land outside the folder (None when it would not)."""
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "climbs out of the folder with '..'"
    return None


def _unsafe(member: tarfile.TarInfo) -> str | None:
    """Why a tar member must not be unpacked (None when it may)."""
    problem = _unsafe_path(member.name)
    if problem:
        return problem
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        if member.linkname.startswith("/") or ".." in link.parts:
            return f"links outside the folder ({member.linkname})"
    elif not (member.isfile() or member.isdir()):
        return "is a device or pipe"
    return None


class _ReadProgress:
    """A file object that reports how far it has been read (tarfile's stream mode reads through it)."""

    def __init__(self, handle, report: Callable[[int], None]):
        self.handle, self.report, self.reported = handle, report, 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        position = self.handle.tell()
        if position - self.reported >= CHUNK or not data:
            self.report(position)
            self.reported = position
        return data


def _refusal(archive: Path, name: str, problem: str) -> ProbeError:
    return ProbeError(f"{archive}: member {name!r} {problem}; refusing to unpack it (this is not the published "
                      "archive): delete the file and check PROBE_MIRROR")


def unpack(archive: Path, into: Path, *, progress: bool = True) -> None:
    """Unpack the .tar.gz (or .zip) `archive` into the folder `into` in one pass; a member that would land outside
    it is refused with a ProbeError naming it (the caller deletes `into`)."""
    from probe.utils.progress import download_bar

    if archive.name.endswith(".zip"):
        return _unzip(archive, into, progress)
    with open(archive, "rb") as handle, download_bar(progress) as bar:
        task = bar.add_task(f"unpacking {archive.name}", total=archive.stat().st_size)
        reader = _ReadProgress(handle, lambda position: bar.update(task, completed=position))
        try:
            with tarfile.open(fileobj=reader, mode="r|gz") as tar:
                for member in tar:
                    problem = _unsafe(member)
                    if problem:
                        raise _refusal(archive, member.name, problem)
                    tar.extract(member, into, **_TAR_FILTER)
        except (tarfile.TarError, OSError, EOFError) as error:
            raise ProbeError(f"{archive} cannot be unpacked ({error}): delete it and download it again") from None


def _unzip(archive: Path, into: Path, progress: bool) -> None:
    """`unpack` for a .zip (its links, if any, come out as small files, never as links)."""
    from probe.utils.progress import download_bar

    with download_bar(progress) as bar:
        task = bar.add_task(f"unpacking {archive.name}", total=archive.stat().st_size)
        try:
            with zipfile.ZipFile(archive) as zipped:
                for member in zipped.infolist():
                    problem = _unsafe_path(member.filename)
                    if problem:
                        raise _refusal(archive, member.filename, problem)
                    zipped.extract(member, into)
                    bar.advance(task, member.compress_size)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise ProbeError(f"{archive} cannot be unpacked ({error}): delete it and download it again") from None


def dataset_problem(folder: Path, info: DatasetInfo) -> str | None:
    """What keeps `folder` from being the paper's `info` dataset in the authors' layout (None when complete): the
    split folders, at least the paper's number of images in each, a label map beside every image."""
    for split, wanted in (("train", info.train), ("test", info.test)):
        split_dir = folder / "real" / split
        if not split_dir.is_dir():
            return f"{split_dir} is missing"
        names = os.listdir(split_dir)
        images = [n for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
        if len(images) < wanted:
            return f"{split_dir} holds {len(images)} images, the paper's split {wanted}"
        labels = {n for n in names if n.endswith(".npy")}
        unlabelled = [n for n in images if f"{Path(n).stem}.npy" not in labels]
        if unlabelled:
            return f"{split_dir / unlabelled[0]} has no label map {Path(unlabelled[0]).stem}.npy"
    return None


def _download_hint(info: DatasetInfo, what: str) -> str:
    return f"run `probe download {info.name} --what {what}` on a machine with internet and copy {cache_root()} here"


def dataset_root(info: DatasetInfo, *, progress: bool = True) -> Path:
    """The data root holding `info.name/` in the authors' layout: the cache's datasets/, where the authors'
    datasets.tar.gz is unpacked on first use (all six datasets at once)."""
    root = datasets_root()
    if dataset_problem(root / info.name, info) is None:
        return root
    instead = f"pass --data-root DIR holding your copy of {info.name}/, or {_download_hint(info, 'data')}"
    with _locked(root / "datasets", "the datasets"):
        if dataset_problem(root / info.name, info) is None:
            return root
        archive = fetch_file(DATASETS_ITEM, instead=instead, progress=progress)
        unpacked = staging_folder(root / "datasets")
        try:
            unpack(archive, unpacked, progress=progress)
            problems = _publish_datasets(unpacked, root)
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)
        archive.unlink()  # the unpacked datasets are what is used; the record keeps the archive's hash
        if info.name in problems:
            _update_record(archive, sha256=None, local=None)  # a fixed archive may be fetched
            raise ProbeError(f"{DATASETS_ITEM.what} from {item_url(DATASETS_ITEM)} does not hold {info.name} as "
                             f"the paper has it ({problems[info.name]}); the archive was deleted: check PROBE_MIRROR")
    return root


def _publish_datasets(unpacked: Path, root: Path) -> dict[str, str]:
    """Move each complete dataset folder of the unpacked archive (at its top or one level down) to root; what keeps
    the others from being complete, by name."""
    problems = {}
    for info in DATASETS.values():
        found = next((f for f in (unpacked / info.name, *unpacked.glob(f"*/{info.name}")) if f.is_dir()), None)
        problem = dataset_problem(found, info) if found else f"no {info.name}/ folder in it"
        if problem:
            problems[info.name] = problem.replace(str(unpacked) + "/", "")
            continue
        publish_folder(root / info.name, lambda staging, found=found: os.replace(found, staging),
                       lambda path, info=info: dataset_problem(path, info) is None)
    return problems


def synthetic_problem(folder: Path) -> str | None:
    """The authors' synthetic datasets are .npz files of images, labels and uncertainty scores."""
    if not folder.is_dir():
        return f"{folder} is missing"
    return None if any(folder.rglob("*.npz")) else f"{folder} holds no .npz file"


def synthetic_dataset(info: DatasetInfo, *, progress: bool = True) -> Path:
    """The folder of the authors' synthetic dataset for `info` (its .npz), unpacked into the cache on first use."""
    item = info.synthetic_item()
    target = synthetic_folder(info)
    if synthetic_problem(target) is None:
        return target
    with _locked(target, item.what):
        if synthetic_problem(target) is None:
            return target
        archive = fetch_file(item, instead=_download_hint(info, "synthetic"), progress=progress)
        publish_folder(target, lambda staging: unpack(archive, staging, progress=progress),
                       lambda path: synthetic_problem(path) is None)
        problem = synthetic_problem(target)
        archive.unlink()
        if problem:
            shutil.rmtree(target, ignore_errors=True)
            raise ProbeError(f"{item.what} from {item_url(item)}: {problem}; check PROBE_MIRROR")
    return target


def pairs_folder(info: PairsDatasetInfo) -> Path:
    """Where the correspondence benchmark `info` is kept, in SPair-71k's layout: <cache>/datasets/<name>/."""
    return datasets_root() / info.name


def pairs_problem(folder: Path) -> str | None:
    """What keeps `folder` from being a correspondence set in SPair-71k's layout (None when it is one): JPEGImages/
    and at least one PairAnnotation/test/*.json."""
    if not (folder / "JPEGImages").is_dir():
        return f"{folder / 'JPEGImages'} is missing"
    test = folder / "PairAnnotation" / "test"
    if not test.is_dir() or next(test.glob("*.json"), None) is None:
        return f"{test} holds no pair annotation (.json)"
    return None


def pairs_dataset(info: PairsDatasetInfo, *, progress: bool = True) -> Path:
    """The root of the correspondence benchmark `info` in SPair-71k's layout (JPEGImages/<category>/,
    PairAnnotation/test/*.json: what `probe correspond --dataset` reads): <cache>/datasets/<name>/, downloaded,
    unpacked and (PF-PASCAL) converted on first use. For SPair-71k it is the archive's own SPair-71k/ folder."""
    folder = pairs_folder(info)
    if pairs_problem(folder) is None:
        return folder
    archive = info.items[0]
    instead = (f"pass --data DIR holding a copy in SPair-71k's layout, or run `probe download {info.name}` on a "
               f"machine with internet and copy {cache_root()} here")
    with _locked(folder, archive.what):
        if pairs_problem(folder) is None:
            return folder
        files = [fetch_file(item, instead=instead, progress=progress) for item in info.items]
        try:
            publish_folder(folder, lambda staging: _prepare_pairs(info, files, staging, progress),
                           lambda path: pairs_problem(path) is None)
        except ProbeError as error:
            files[0].unlink()
            _update_record(files[0], sha256=None, local=None)  # a fixed archive may be fetched
            raise ProbeError(f"{archive.what} from {item_url(archive)}: {error}; the archive was deleted and the "
                             "next use downloads it again (check PROBE_MIRROR)") from None
        files[0].unlink()  # the prepared folder is what is used; the record keeps the archive's hash
    return folder


def _prepare_pairs(info: PairsDatasetInfo, files: list[Path], into: Path, progress: bool) -> None:
    """Unpack `info`'s archive (files[0]) and lay its test pairs out in SPair-71k's layout in the empty folder
    `into`: SPair-71k's own folder moved there, PF-PASCAL's converted (with its pair list, files[1])."""
    unpacked = staging_folder(into)
    try:
        unpack(files[0], unpacked, progress=progress)
        wanted = ("JPEGImages", "PairAnnotation") if info.layout == "spair" else ("JPEGImages", "Annotations")
        root = next((folder for folder in (unpacked, *sorted(unpacked.iterdir()))
                     if all((folder / name).is_dir() for name in wanted)), None)
        if root is None:
            raise ProbeError(f"it holds no folder with {' and '.join(wanted)} (at its top or one level down)")
        if info.layout == "spair":
            os.replace(root, into)
        else:
            proposal_flow.convert(root, files[1], into)
        problem = pairs_problem(into)
        if problem:
            raise ProbeError(problem)
    except ProbeError as error:  # name files as the archive has them, not by the temporary folders
        raise ProbeError(str(error).replace(f"{unpacked}/", "").replace(f"{into}/", f"{info.name}/")) from None
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def paper_checkpoint(backbone: str, info: DatasetInfo, *, model_flags=None, progress: bool = True) -> Path:
    """The paper's `backbone` checkpoint for `info`, downloaded into the cache on first use; on its first download
    it must load strictly into its network (`model_flags`: the user's, else the dataset's for ddpm)."""
    item = info.checkpoint_item(backbone)
    flags = model_flags or (info.model_flags if backbone == "ddpm" else None)
    instead = (f"pass --checkpoint FILE with your copy of {Path(item.path).name}, or "
               f"{_download_hint(info, 'checkpoints --backbones ' + backbone)}")
    return fetch_file(item, instead=instead, progress=progress,
                      check=lambda path: _loads_strictly(backbone, path, flags))


def _loads_strictly(backbone: str, path: Path, model_flags) -> None:
    """Build the backbone's network from the checkpoint (strict keys and shapes; ProbeError otherwise), then free it."""
    from probe.backbones import BackboneSpec, build_backbone

    build_backbone(BackboneSpec(kind=backbone, checkpoint=path, model_flags=model_flags), "features", 256).release()


def pending_downloads(dataset: str | None, data_root: Path | None, backbones: Iterable[tuple[str, bool]]) -> list[str]:
    """The paper's items a command still has to download: the datasets archive when --dataset has no cached copy
    (and no --data-root), and the paper checkpoint of each (kind, has its own checkpoint) without one. Hub models
    (diffusers, sd, transformers by hub name) are fetched on first use and not listed."""
    if not dataset:
        return []
    info = lookup(dataset)
    items = []
    if data_root is None and dataset_problem(datasets_root() / info.name, info) is not None:
        items.append(DATASETS_ITEM.path)
    for backbone in dict.fromkeys(b for b, given in backbones if not given and publishes_checkpoint(b)):
        item = info.checkpoint_item(backbone)
        if not download_path(item).is_file():
            items.append(item.path)
    return items


def held_images(info: DatasetInfo, data_root: Path | None = None) -> tuple[int, int]:
    """(train, test) images in the splits of `info`'s copy under `data_root` (None: the cache's), or, for a split not
    there yet, Table 1's number, which the authors' archive holds."""
    folder = (Path(data_root) if data_root is not None else datasets_root()) / info.name
    counts = []
    for split, table in (("train", info.train), ("test", info.test)):
        try:
            counts.append(len(list_images(find_split_dir(folder, split))))
        except ProbeError:
            counts.append(table)
    return counts[0], counts[1]


def dry_run_before_downloads(command: str, items: list[str], dataset: str, images: str | None = None) -> None:
    """A --dry-run that would need downloads to plan further: print them (and `images`, what the run will take from
    each split) and stop (nothing is downloaded)."""
    log.info(f"plan: probe {command} needs these downloads first: {', '.join(items)}")
    if images:
        log.info(f"plan: {images} images")
    log.info(f"plan: cells, passes and cache size are known once they are here: probe download {dataset} "
             "--what data,checkpoints (or pass --data-root / --checkpoint)")
    raise DryRun()


def item_status(item: Item) -> dict:
    """What `probe download --list` shows of an item: where it is cached, its state, its size once known."""
    target = download_path(item)
    record = read_record(target)
    partial = partial_path(target)
    benchmark = next((info for info in PAIR_DATASETS.values() if info.items[0] == item), None)
    if item == DATASETS_ITEM:
        where = datasets_root()
        present = [i.name for i in DATASETS.values() if dataset_problem(where / i.name, i) is None]
        state = f"unpacked: {', '.join(present)}" if present else "not downloaded"
    elif benchmark is not None:
        where = pairs_folder(benchmark)
        state = "unpacked" if pairs_problem(where) is None else "not downloaded"
    elif item.archive:
        where = synthetic_folder(lookup(Path(item.path).name.removesuffix(".tar.gz")))
        state = "unpacked" if synthetic_problem(where) is None else "not downloaded"
    else:
        where = target
        state = "downloaded" if target.is_file() and record.get("sha256") else "not downloaded"
    if state == "not downloaded" and partial.is_file():
        state = f"partial: {_megabytes(partial.stat().st_size)} received"
    return {"item": item.name, "state": state, "bytes": record.get("bytes"), "path": str(where),
            "url": item_url(item), "sha256": record.get("sha256")}


def verify_downloads() -> list[dict]:
    """Hash every downloaded file again against its record, and check every unpacked dataset; a file that differs
    is deleted (the next use downloads it again). One row per item checked: item, path, problem (None: fine)."""
    rows = []
    downloads = cache_root() / "downloads"
    for record_file in sorted(downloads.rglob("*.json")) if downloads.is_dir() else []:
        target = record_file.with_name(record_file.name.removesuffix(".json"))
        record = read_record(target)
        if not target.is_file() or not record.get("sha256"):
            continue
        with _locked(target, target.name):
            digest = sha256(target)
            problem = None
            if digest != record["sha256"]:
                problem = (f"SHA-256 {digest[:12]}... differs from the first download's {record['sha256'][:12]}...: "
                           "deleted; the next use downloads it again")
                target.unlink()
            else:
                _update_record(target, local=_stat(target))
        rows.append({"item": str(target.relative_to(downloads)), "path": str(target), "problem": problem})
    for info in DATASETS.values():
        folder = datasets_root() / info.name
        if folder.exists():
            rows.append({"item": info.name, "path": str(folder), "problem": dataset_problem(folder, info)})
    for benchmark in PAIR_DATASETS.values():
        folder = pairs_folder(benchmark)
        if folder.exists():
            rows.append({"item": benchmark.name, "path": str(folder), "problem": pairs_problem(folder)})
    return rows
