"""The labelled result type every technique returns.

A :class:`Result` is a tensor with a name for each axis (from one closed vocabulary, so that
``"layer"`` always means the same thing), optional labels along any axis (token strings for
``pos``, component names for ``component``), and a sentence saying what the numbers are.

>>> import torch
>>> from workbench.core.results import Result
>>> r = Result(torch.arange(6.).reshape(2, 3), dims=("layer", "head"), metric="toy score")
>>> r.to_frame().shape
(6, 3)
>>> r.top(2)[["layer", "head"]].values.tolist(), r.top(2)["value"].tolist()
([[1, 2], [1, 1]], [5.0, 4.0])
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from workbench.core.persist import Persistent

__all__ = ["AXES", "Result", "register_renderer", "render"]

#: Figures by name, filled by :mod:`workbench.viz` (the package imports it first), so that a
#: result's ``plot()`` can draw itself while nothing below ``viz`` imports it.
_RENDERERS: dict[str, Callable[..., Any]] = {}


def register_renderer(name: str, function: Callable[..., Any]) -> None:
    """Make ``function`` the figure drawn by ``render(name, ...)``."""
    _RENDERERS[name] = function


def render(name: str, *args: Any, **kwargs: Any) -> Any:
    """Draw the figure registered as ``name`` (see :mod:`workbench.viz`)."""
    try:
        function = _RENDERERS[name]
    except KeyError:
        raise LookupError(
            f"No figure {name!r} is registered; known: {sorted(_RENDERERS)}. Figures are registered "
            "by importing workbench.viz (import workbench does it)."
        ) from None
    return function(*args, **kwargs)

#: The closed set of axis names. Results, docstrings and jaxtyping annotations use only these.
AXES = frozenset(
    {
        "batch",  # prompts
        "pos",  # token position
        "query_pos",  # attention patterns: the attending position
        "key_pos",  # attention patterns: the attended-to position
        "layer",
        "head",  # query head
        "kv_head",  # key/value head of a grouped-query model
        "component",  # a labelled list of model parts (embed, L3H2, mlp4, ...)
        "feature",  # SAE latent
        "token",  # vocabulary entries, e.g. top-k tokens
        "target",  # chosen answer tokens
        "rank",  # 0..k-1 in a top-k list
        "d_model",
        "d_vocab",
        "scale",  # intervention strength (steering, dose-response)
        "k",  # a count being swept (number of heads ablated, ...)
    }
)


@dataclass(eq=False)
class Result(Persistent):
    """Values with named dims.

    Attributes:
        values: float tensor, detached, on the CPU.
        dims: one axis name from :data:`AXES` per dimension of ``values``.
        metric: what a value means, e.g. ``"normalised logit difference"``.
        labels: optional per-axis labels, ``{axis: [label for each index]}``.
        meta: free-form provenance (model name, method, options).
    """

    values: Tensor
    dims: tuple[str, ...]
    metric: str = "value"
    labels: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels: dict[str, Sequence[Any]] = dict(self.labels)  # never change the caller's dicts
        self.labels = labels
        self.meta = dict(self.meta)
        if not isinstance(self.values, Tensor):
            self.values = torch.as_tensor(self.values)
        self.values = self.values.detach().cpu()
        self.dims = tuple(self.dims)
        if len(self.dims) != self.values.ndim:
            raise ValueError(
                f"Result has {self.values.ndim}-d values of shape {tuple(self.values.shape)} "
                f"but {len(self.dims)} dims {self.dims}."
            )
        unknown = [d for d in self.dims if d not in AXES]
        if unknown:
            raise ValueError(f"Unknown axis name(s) {unknown}; use one of {sorted(AXES)}.")
        if len(set(self.dims)) != len(self.dims):
            raise ValueError(f"Axis names must be distinct, got {self.dims}.")
        for axis, axis_labels in labels.items():
            if axis not in self.dims:
                raise ValueError(f"Labels given for axis {axis!r}, which is not in {self.dims}.")
            size = self.values.shape[self.dims.index(axis)]
            if len(axis_labels) != size:
                raise ValueError(f"{len(axis_labels)} labels for axis {axis!r} of size {size}.")
            labels[axis] = list(axis_labels)

    # ------------------------------------------------------------------ views
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def __repr__(self) -> str:
        dims = ", ".join(f"{d}={n}" for d, n in zip(self.dims, self.shape))
        return f"Result({self.metric!r}, {dims})"

    def __eq__(self, other: object) -> bool:
        """Equal dims, metric, labels and values (exactly; NaN equals NaN); ``meta`` is ignored."""
        if not isinstance(other, Result):
            return NotImplemented
        return (
            self.dims == other.dims
            and self.metric == other.metric
            and self.labels == other.labels
            and self.values.shape == other.values.shape
            and bool(torch.equal(self.values.nan_to_num(0.123456789), other.values.nan_to_num(0.123456789)))
            and bool((self.values.isnan() == other.values.isnan()).all())
        )

    # No __hash__: a class that defines __eq__ alone is unhashable (mutable, compared by value).

    def _repr_html_(self) -> str:
        """The notebook view: what the numbers are, then a table (a grid for 2-d results)."""
        head = f"<p><b>{html.escape(self.metric)}</b> &middot; {html.escape(repr(self))}</p>"
        if self.values.ndim == 2 and self.values.numel() <= 4096:
            rows, cols = (self.labels.get(d) or list(range(n)) for d, n in zip(self.dims, self.shape))
            frame = pd.DataFrame(self.values.double().numpy(), index=pd.Index(rows, name=self.dims[0]),
                                 columns=pd.Index(cols, name=self.dims[1]))
        else:
            frame = self.to_frame()
            if len(frame) > 50:
                head += f"<p>{len(frame)} entries; the 20 largest:</p>"
                frame = self.top(20)
        return head + frame.to_html(float_format=lambda x: f"{x:.4g}")

    def to_frame(self) -> pd.DataFrame:
        """Long-form table: one row per entry, an integer column per axis, ``value`` last.

        Axes with labels get an extra ``<axis>_label`` column.
        """
        grids = torch.meshgrid(*[torch.arange(n) for n in self.shape], indexing="ij")
        data: dict[str, Any] = {d: g.reshape(-1).numpy() for d, g in zip(self.dims, grids)}
        for axis, labels in self.labels.items():
            data[f"{axis}_label"] = [labels[i] for i in data[axis]]
        data["value"] = self.values.reshape(-1).double().numpy()
        return pd.DataFrame(data)

    def top(self, k: int = 10, *, by: Literal["value", "abs", "-value"] = "value") -> pd.DataFrame:
        """The k entries with the largest value (``by="abs"``: magnitude; ``"-value"``: smallest)."""
        frame = self.to_frame()
        key = {"value": frame["value"], "abs": frame["value"].abs(), "-value": -frame["value"]}[by]
        return frame.loc[key.sort_values(ascending=False, kind="stable").index[:k]].reset_index(
            drop=True
        )

    def sel(self, **index: int | str) -> "Result":
        """Index axes by integer or by label, keeping the rest labelled.

        ``r.sel(layer=3)``; ``r.sel(component="L3H2")`` (a label of that axis); on a
        ``[layer, head]`` result, ``r.sel(head="L18H6")`` selects layer 18, head 6.

        >>> r = Result(torch.arange(6.).reshape(2, 3), ("layer", "head"))
        >>> r.sel(head="L1H2").values.item(), r.sel(layer=0).shape
        (5.0, (3,))
        """
        resolved = self._resolve_labels(index)
        values, dims = self.values, list(self.dims)
        labels = dict(self.labels)
        for axis, i in resolved.items():
            if axis not in dims:
                raise ValueError(f"No axis {axis!r} in {tuple(dims)}.")
            j = dims.index(axis)
            values = values.select(j, i)
            dims.pop(j)
            labels.pop(axis, None)
        return Result(values, tuple(dims), self.metric, labels, dict(self.meta))

    def _resolve_labels(self, index: dict[str, int | str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for axis, i in index.items():
            if isinstance(i, str) and axis == "head" and axis not in self.labels and "layer" in self.dims:
                match = re.fullmatch(r"L(\d+)H(\d+)", i)
                if not match:
                    raise ValueError(f"A head label looks like 'L18H6', got {i!r}.")
                out["layer"], out["head"] = int(match[1]), int(match[2])
            elif isinstance(i, str):
                labels = [str(x) for x in self.labels.get(axis, [])]
                if i not in labels:
                    shown = labels[:10] + (["..."] if len(labels) > 10 else [])
                    raise ValueError(f"No label {i!r} on axis {axis!r}; its labels: {shown}.")
                if labels.count(i) > 1:
                    raise ValueError(f"Label {i!r} appears {labels.count(i)} times on axis {axis!r}; select by index.")
                out[axis] = labels.index(i)
            else:
                out[axis] = int(i)
        for axis, i in out.items():
            if axis in self.dims and not -self.shape[self.dims.index(axis)] <= i < self.shape[self.dims.index(axis)]:
                raise ValueError(f"Index {i} is out of range for axis {axis!r} of size {self.shape[self.dims.index(axis)]}.")
        return out

    def plot(self, **kwargs):
        """A matplotlib figure of the values (heatmap for 2-d, bars/lines for 1-d)."""

        return render("plot_result", self, **kwargs)

    def view(self, **kwargs):
        """An interactive heatmap (self-contained HTML, no network) of a 1-d or 2-d result; for
        other shapes, a one-line warning and the static figure (see :mod:`workbench.viz.interactive`)."""
        return render("view_result", self, **kwargs)
