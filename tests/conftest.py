"""Shared test data: the authors' fixture model and a tiny labelled domain made by the project's own generator."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# The authors' reference activations and model (tests/fixtures/README.md says how they were made).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


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


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache, so no test reads another's stored features or downloads; downloads go to a
    closed loopback port and the hub is offline unless a test serves them itself (nothing leaves 127.0.0.1)."""
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PROBE_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    try:  # huggingface_hub reads both once, at import
        from huggingface_hub import constants
    except ImportError:
        return
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")


def read_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def label_maps(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted(folder.glob("*.npy"))}
