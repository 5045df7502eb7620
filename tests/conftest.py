"""Shared fixtures. Unit tests use the tiny model; tests marked ``slow`` load an offline model.

Set ``WORKBENCH_SKIP_SLOW=1`` to skip the slow tests while iterating. Tests marked ``controls``
run a whole experiment per phenomenon on a control model; they run under ``make controls``
(``WORKBENCH_CONTROLS=1``), not under ``make test``.

The suite runs offline by construction: ``HF_HUB_OFFLINE=1``, and any socket connection to an
address other than loopback raises at once (so an accidental hub call fails instead of hanging).
"""

import ipaddress
import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

# WORKBENCH_TYPECHECK=1 enforces every jaxtyping annotation of the package (``Float[Tensor,
# "batch pos d_model"]``) and every other annotation with beartype across the whole suite. It is
# off by default: beartype's own check of a Literal option fires before the package's clearer
# ValueError, which the bad-input tests assert. tests/test_runtime_shapes.py always runs the
# techniques under the hook, in a process of its own.
if os.environ.get("WORKBENCH_TYPECHECK") == "1":
    from jaxtyping import install_import_hook

    install_import_hook("workbench", "beartype.beartype")

from workbench import models  # noqa: E402  (after the import hook)


class NetworkBlocked(RuntimeError):
    """Raised when test code tries to reach the network."""


_real_connect = socket.socket.connect


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple):  # unix sockets
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: resolving it is already a network call


def _guarded_connect(self, address):
    if not _is_loopback(address):
        raise NetworkBlocked(f"Tests run offline: connection to {address!r} refused.")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect


def pytest_configure(config):
    """With ``-n N`` (pytest-xdist): the controller converts the installed offline models before the
    workers start (they would each convert the same weights at once on a fresh machine), and each
    worker takes an equal share of the cores for torch (two workers with every core each run far
    slower than one after the other)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))
    elif getattr(config.option, "numprocesses", None) and os.environ.get("WORKBENCH_SKIP_SLOW") != "1":
        for spec in models.OFFLINE_MODELS.values():
            if spec.installed():
                models.prepare_cache(spec.name)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("WORKBENCH_CONTROLS") != "1":
        skip_control = pytest.mark.skip(reason="a control: run by `make controls` (WORKBENCH_CONTROLS=1)")
        for item in items:
            if "controls" in item.keywords:
                item.add_marker(skip_control)
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
