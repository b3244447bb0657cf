"""Shared test data: the authors' fixture model and a tiny labelled domain made by the project's own generator."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# The authors' reference activations and model (tests/fixtures/README.md says how they were made).
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The fixtures' agreement with the authors' float32 features (their README): the largest absolute difference is at most
# PARITY of the reference's mean absolute value, measured by parity_error.
PARITY = 1e-4


def parity_error(got, reference) -> float:
    """max |got - reference| / mean |reference|: how far features are from the authors' (the fixtures' measure)."""
    got, reference = np.asarray(got, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.abs(got - reference).max() / np.abs(reference).mean())


@pytest.fixture(scope="session")
def fixture_model() -> tuple[Path, Path]:
    """(checkpoint, flags JSON) of the fixture's random-weight 32x32 ADM (9 decoder blocks)."""
    return FIXTURES / "adm_tiny32.pt", FIXTURES / "adm_tiny32.json"


@pytest.fixture(scope="session")
def tiny_domain(tmp_path_factory) -> Path:
    """A 32x32 face-parts dataset in the authors' layout: 4 train and 3 test images, 10 classes."""
    from probe.data.default_domain import write_default_domain

    return write_default_domain(tmp_path_factory.mktemp("data") / "faces", size=32, pool=0, train=4, test=3,
                                seed=0, progress=False)


@pytest.fixture()
def images(tmp_path) -> Path:
    """Six random 16x16 training images in a folder (for the trainers)."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The tests' networks are tiny: one thread is fastest and keeps CI's two cores from contending."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing answers, nothing leaves the machine


def offline(patch: pytest.MonkeyPatch, cache: Path, hf_home: Path) -> None:
    """The environment every test starts in: the probe cache `cache` and the Hugging Face home `hf_home` (never the
    user's ~/.cache/probe or ~/.cache/huggingface, which a running job of theirs may be using), downloads to a
    closed loopback port, the hub offline. Subprocesses inherit it; huggingface_hub's constants, read once at its
    import, are patched too."""
    patch.setenv("PROBE_CACHE", str(cache))
    patch.setenv("HF_HOME", str(hf_home))
    patch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    patch.setenv("PROBE_MIRROR", f"{NOWHERE}/")
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setenv("HF_ENDPOINT", NOWHERE)
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    for name, value in (("HF_HUB_OFFLINE", True), ("ENDPOINT", NOWHERE), ("HF_HOME", str(hf_home)),
                        ("HF_HUB_CACHE", str(hf_home / "hub"))):
        patch.setattr(constants, name, value)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """Session and module fixtures run before any test's own cache exists (isolated_cache): they get one cache of
    the session's, in its temporary folder."""
    root = tmp_path_factory.mktemp("session_cache")
    with pytest.MonkeyPatch.context() as patch:
        offline(patch, root / "probe", root / "huggingface")
        yield root


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache and Hugging Face home (a test may set its own after), so no test reads another's
    stored features or downloads, nor the user's cache (tests/utils/test_cache.py checks it)."""
    offline(monkeypatch, tmp_path / "cache", tmp_path / "hf")


def read_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def label_maps(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted(folder.glob("*.npy"))}


@pytest.fixture()
def mirror(storage, monkeypatch):
    """A server on 127.0.0.1 serving the requesting module's `storage` folder (the download tests), named by
    PROBE_MIRROR."""
    from http_mirror import Mirror

    server = Mirror(storage)
    monkeypatch.setenv("PROBE_MIRROR", server.url)
    yield server
    server.close()
