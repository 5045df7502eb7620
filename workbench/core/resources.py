"""Files shipped with the package: SAEs, the SAE corpus, haystack filler, temporal facts, toy weights.

They live in ``data/`` at the top of the repository, which pyproject.toml maps to the package
``workbench.data``: a wheel carries them as ``workbench/data/`` and an editable install maps
``workbench.data`` to the checkout's ``data/``. Outside a checkout they are found through
:mod:`importlib.resources`, so an installed wheel finds them wherever it is installed. In a
checkout (``pyproject.toml`` and ``data/`` beside the ``workbench/`` being imported) the
checkout's own ``data/`` is read: the folder an editable install maps, and the right one even when
the interpreter's editable install belongs to another checkout of the repository (worktrees
sharing one virtual environment). Each folder has a README of its provenance.

>>> data_path("temporal", "facts.json").is_file()
True
>>> data_path().name == "data" and (data_path() / "__init__.py").is_file()
True
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["data_path"]

#: ``data/`` of the checkout this ``workbench/`` sits in, if it does (not in an installed wheel).
_CHECKOUT = Path(__file__).resolve().parents[2]


def _data_root() -> Path:
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "data" / "__init__.py").is_file():
        return _CHECKOUT / "data"
    return Path(str(files("workbench.data")))


def data_path(*parts: str) -> Path:
    """The path of a shipped data file or folder, e.g. ``data_path("haystack", "filler.txt")``."""
    return _data_root().joinpath(*parts)
