"""Shared fixtures. Unit tests use the tiny model; tests marked ``slow`` load an offline model.

Set ``WORKBENCH_SKIP_SLOW=1`` to skip the slow tests while iterating.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

from workbench import models


def pytest_collection_modifyitems(config, items):
    if os.environ.get("WORKBENCH_SKIP_SLOW") == "1":
        skip = pytest.mark.skip(reason="WORKBENCH_SKIP_SLOW=1")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def tiny():
    """A fresh 2-layer, 4-head LayerNorm model (seeded) for each test."""
    return models.tiny_model()


@pytest.fixture
def tiny_gqa():
    """A 2-layer grouped-query model: 4 query heads sharing 2 key/value heads, RMSNorm, rotary."""
    return models.tiny_model(n_kv_heads=2, normalization="RMS", positional="rotary")


@pytest.fixture
def random_tokens():
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 100, (3, 10), generator=gen)


@pytest.fixture(scope="session")
def smollm2():
    return models.load_model("smollm2-135m", verbose=False)


@pytest.fixture(scope="session")
def gemma():
    return models.load_model("gemma-3-270m", verbose=False)
