"""Files shipped inside the package: SAEs, the SAE corpus, haystack filler, temporal facts, toy weights.

They live in ``workbench/data/`` and are found through :mod:`importlib.resources`, so an installed
wheel finds them wherever it is installed, not only in a checkout. Each folder has a README of
its provenance.

>>> data_path("temporal", "facts.json").is_file()
True
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["data_path"]


def data_path(*parts: str) -> Path:
    """The path of a shipped data file or folder, e.g. ``data_path("haystack", "filler.txt")``."""
    return Path(str(files("workbench").joinpath("data", *parts)))
