"""The result protocol: ``to_frame()``, ``plot()``, ``_repr_html_()``, ``save(path)`` and ``load(path)``.

Every public result type inherits :class:`Persistent`, which gives it ``save`` / ``load`` (and a
default notebook view built from its ``to_frame()``); the type itself writes ``to_frame`` and
``plot`` (through :func:`workbench.core.results.render`).

A saved result is one file written by ``torch.save`` that holds only plain containers
(``dict``, ``list``, ``str``, numbers, ``None``) and tensors, so it loads with
``torch.load(weights_only=True)``: no pickled code runs. The file records the class name and
a format version, and ``load`` refuses a file of another class. Fields may hold tensors,
numpy arrays, pandas frames, tuples, sets, dicts with any keys, and other results (or the
value classes named with :func:`register_state_class`, such as a finding's ``Claim``); on
load, only registered classes are built.

A dataclass is saved field by field (its ``__init__`` arguments); another class writes
``to_state()`` (a dict) and ``from_state(state)`` (a classmethod).

>>> import os, tempfile, torch
>>> from workbench.core.results import Result
>>> r = Result(torch.arange(3.), ("layer",), metric="toy score", meta={"k": (1, 2)})
>>> path = r.save(os.path.join(tempfile.mkdtemp(), "r.pt"))
>>> back = Result.load(path)
>>> back == r, back.meta
(True, {'k': (1, 2)})
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

__all__ = ["FORMAT", "VERSION", "Persistent", "load_state", "register_state_class", "save_state"]

FORMAT = "workbench-result"
VERSION = 1
_TAG = "__wb__"

#: Classes that a saved file may name, by class name (so files survive a module moving).
_CLASSES: dict[str, type] = {}


def register_state_class(cls: type) -> type:
    """Allow instances of ``cls`` inside saved results (usable as a class decorator)."""
    known = _CLASSES.get(cls.__name__)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"Two saveable classes are named {cls.__name__!r}: {known} and {cls}.")
    _CLASSES[cls.__name__] = cls
    return cls


def _state_of(obj) -> dict[str, Any]:
    if hasattr(obj, "to_state"):
        return obj.to_state()
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}


def _from_state(cls: type, state: dict[str, Any]):
    return cls.from_state(state) if hasattr(cls, "from_state") else cls(**state)


def _tagged(kind: str, **parts) -> dict:
    return {_TAG: kind, **parts}


def _encode_frame(frame: pd.DataFrame, where: str) -> dict:
    index = None if isinstance(frame.index, pd.RangeIndex) else _encode(list(frame.index), where + ".index")
    return _tagged(
        "frame", columns=_encode(list(frame.columns), where), dtypes=[str(d) for d in frame.dtypes],
        data=[_encode(frame.iloc[:, i].tolist(), f"{where}[{c!r}]") for i, c in enumerate(frame.columns)],
        index=index, attrs=_encode(dict(frame.attrs), where + ".attrs"),
    )


def _decode_frame(node: dict) -> pd.DataFrame:
    columns = _decode(node["columns"])
    data = {i: pd.Series(_decode(v), dtype=d) for i, (v, d) in enumerate(zip(node["data"], node["dtypes"]))}
    frame = pd.DataFrame(data, columns=range(len(columns)))
    frame.columns = pd.Index(columns)
    if node["index"] is not None:
        frame.index = pd.Index(_decode(node["index"]))
    frame.attrs.update(_decode(node["attrs"]))
    return frame


def _encode(x, where: str = "result"):
    """``x`` as plain containers and tensors; ``where`` names the field in an error."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, Tensor):
        return x.detach().cpu().clone()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return _tagged("ndarray", data=torch.from_numpy(x.copy()))
    if isinstance(x, torch.dtype):
        return _tagged("dtype", name=str(x).removeprefix("torch."))
    if isinstance(x, pd.DataFrame):
        return _encode_frame(x, where)
    if type(x).__name__ in _CLASSES and _CLASSES[type(x).__name__] is type(x):
        return _tagged("object", cls=type(x).__name__, state=_encode(_state_of(x), f"{where}<{type(x).__name__}>"))
    if isinstance(x, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, tuple):
        return _tagged("tuple", items=[_encode(v, f"{where}[{i}]") for i, v in enumerate(x)])
    if isinstance(x, (set, frozenset)):
        try:
            items = sorted(x)
        except TypeError:
            items = list(x)
        return _tagged(type(x).__name__, items=[_encode(v, where) for v in items])
    if isinstance(x, dict):
        return _tagged("dict", items=[[_encode(k, where), _encode(v, f"{where}[{k!r}]")] for k, v in x.items()])
    raise TypeError(
        f"Cannot save {where}: a {type(x).__module__}.{type(x).__qualname__} is not a tensor, number, "
        "string, container, frame or registered result class (see register_state_class)."
    )


def _decode(x):
    if isinstance(x, list):
        return [_decode(v) for v in x]
    if not isinstance(x, dict):
        return x
    kind = x.get(_TAG)
    if kind == "tuple":
        return tuple(_decode(v) for v in x["items"])
    if kind in ("set", "frozenset"):
        return {"set": set, "frozenset": frozenset}[kind](_decode(v) for v in x["items"])
    if kind == "dict":
        return {_decode(k): _decode(v) for k, v in x["items"]}
    if kind == "ndarray":
        return x["data"].numpy()
    if kind == "dtype":
        dtype = getattr(torch, x["name"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"Unknown dtype {x['name']!r} in a saved result.")
        return dtype
    if kind == "frame":
        return _decode_frame(x)
    if kind == "object":
        cls = _CLASSES.get(x["cls"])
        if cls is None:
            raise ValueError(f"A saved result holds a {x['cls']!r}, which is not a saveable class here.")
        return _from_state(cls, _decode(x["state"]))
    raise ValueError(f"Not a saved result node: {sorted(x)}.")


def save_state(obj, path: str | Path) -> Path:
    """Write ``obj`` (an instance of a registered class) to ``path``; return the path."""
    name = type(obj).__name__
    if _CLASSES.get(name) is not type(obj):
        raise TypeError(f"{type(obj).__qualname__} is not a saveable class (see register_state_class).")
    payload = {"format": FORMAT, "version": VERSION, "class": name, "state": _encode(_state_of(obj), name)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def load_state(cls: type, path: str | Path):
    """Read a file written by :func:`save_state` for a ``cls``; refuses any other class."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a saved workbench result ({type(e).__name__}: {e}).") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a saved workbench result (no {FORMAT!r} header).")
    if payload["version"] > VERSION:
        raise ValueError(f"{path} has format version {payload['version']}; this workbench reads up to {VERSION}.")
    if payload["class"] != cls.__name__:
        raise ValueError(f"{path} holds a {payload['class']}, not a {cls.__name__}; use {payload['class']}.load.")
    return _from_state(cls, _decode(payload["state"]))


class Persistent:
    """Mixin of every result type: ``save`` / ``load`` and a default ``_repr_html_``.

    Subclasses are registered by class name, so they can be saved and nested in other results.
    """

    if TYPE_CHECKING:  # each result type writes its own (tests/test_result_protocol.py checks)

        def to_frame(self) -> pd.DataFrame: ...

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        register_state_class(cls)

    def save(self, path: str | Path) -> Path:
        """Write the result to one file (see :mod:`workbench.core.persist`); returns the path."""
        return save_state(self, path)

    @classmethod
    def load(cls, path: str | Path):
        """Read a result written by :meth:`save`; a file of another class raises ValueError."""
        return load_state(cls, path)

    def _repr_html_(self) -> str:
        """The notebook view: the class name, then ``to_frame()`` (its first 50 rows)."""
        frame = self.to_frame()
        head = f"<p><b>{html.escape(type(self).__name__)}</b> &middot; {len(frame)} rows</p>"
        return head + frame.head(50).to_html(index=False, float_format=lambda v: f"{v:.4g}")
