"""Every matplotlib figure the workbench draws.

Functions return the ``matplotlib.figure.Figure`` they drew (and do not call ``plt.show()``), so
notebooks display it and tests can inspect it without a display. The backend is whatever
matplotlib chose; under no display that is ``Agg``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence


import matplotlib.pyplot as plt
import torch

if TYPE_CHECKING:
    from .results import Result

__all__ = ["plot_result", "heatmap", "lines"]

# Diverging colour map centred on zero: patching and attribution values have a sign.
DIVERGING = "RdBu_r"


def _axis_ticks(result: "Result", axis: str) -> list[str] | None:
    labels = result.labels.get(axis)
    return None if labels is None else [str(x) for x in labels]


def heatmap(
    values: torch.Tensor,
    *,
    xlabel: str = "",
    ylabel: str = "",
    xticks: Sequence[str] | None = None,
    yticks: Sequence[str] | None = None,
    title: str = "",
    colorbar_label: str = "",
    centre: bool = True,
    cmap: str | None = None,
    ax=None,
):
    """A 2-d heatmap, rows down, columns across; centred on 0 with a diverging map by default."""
    values = torch.as_tensor(values).detach().float().cpu()
    if values.ndim != 2:
        raise ValueError(f"heatmap needs 2-d values, got shape {tuple(values.shape)}")
    if ax is None:
        rows, cols = values.shape
        fig, ax = plt.subplots(figsize=(min(2 + 0.45 * cols, 16), min(1.5 + 0.3 * rows, 12)))
    else:
        fig = ax.figure
    finite = values[torch.isfinite(values)]
    vmax = float(finite.abs().max()) if finite.numel() else 1.0
    vmax = vmax or 1.0
    kwargs = dict(vmin=-vmax, vmax=vmax, cmap=cmap or DIVERGING) if centre else dict(cmap=cmap or "viridis")
    im = ax.imshow(values.numpy(), aspect="auto", interpolation="nearest", **kwargs)
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(colorbar_label)
    if xticks is not None:
        ax.set_xticks(range(len(xticks)), xticks, rotation=90, fontsize=8)
    if yticks is not None:
        ax.set_yticks(range(len(yticks)), yticks, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def lines(
    x: Sequence,
    ys: dict[str, Sequence[float]],
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    ax=None,
):
    """One line per entry of ``ys`` against ``x``, with a legend."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    for label, y in ys.items():
        ax.plot(list(x), [float(v) for v in y], marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(ys) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_result(result: "Result", *, title: str | None = None, ax=None, **kwargs):
    """Default figure of a :class:`~workbench.results.Result`.

    2-d: heatmap with the first axis down (e.g. layer) and the second across (head or pos).
    1-d: bar chart. Higher dimensions: pass ``result.sel(...)`` first.
    """
    title = result.metric if title is None else title
    v = result.values
    if v.ndim == 2:
        d0, d1 = result.dims
        return heatmap(
            v,
            ylabel=d0,
            xlabel=d1,
            yticks=_axis_ticks(result, d0),
            xticks=_axis_ticks(result, d1),
            title=title,
            colorbar_label=result.metric,
            ax=ax,
            **kwargs,
        )
    if v.ndim == 1:
        (d0,) = result.dims
        if ax is None:
            fig, ax = plt.subplots(figsize=(min(2 + 0.3 * len(v), 14), 3.5))
        else:
            fig = ax.figure
        ticks = _axis_ticks(result, d0) or [str(i) for i in range(len(v))]
        ax.bar(range(len(v)), v.float().numpy(), color=["tab:red" if x > 0 else "tab:blue" for x in v])
        ax.set_xticks(range(len(v)), ticks, rotation=90, fontsize=8)
        ax.set_xlabel(d0)
        ax.set_ylabel(result.metric)
        ax.set_title(title)
        ax.axhline(0, color="black", lw=0.5)
        fig.tight_layout()
        return fig
    raise ValueError(
        f"plot() draws 1-d or 2-d results; this one has dims {result.dims}. "
        f"Select along an axis first, e.g. result.sel({result.dims[0]}=0).plot()."
    )


# ---------------------------------------------------------------------------------------------
# Technique-specific figures are added below, one section per module that uses them.
