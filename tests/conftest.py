"""Shared fixtures: reference data from EfficientAT and small random-weight models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"


def reference(name: str) -> dict[str, np.ndarray]:
    with np.load(DATA / name) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["meta"] = json.loads(str(arrays.pop("meta_json")))
    return arrays


@pytest.fixture(scope="session")
def dymn04_checkpoint() -> Path:
    return DATA / "dymn04_random_weights.pt"


@pytest.fixture(scope="session")
def mn04_checkpoint() -> Path:
    return DATA / "mn04_random_weights.pt"


@pytest.fixture(scope="session")
def hear_model(dymn04_checkpoint):
    from hear_dymn import load_model

    return load_model(str(dymn04_checkpoint))


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torch hub cache and no network: released weights are unavailable."""
    import urllib.error

    def no_network(url, dst, progress=True):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
