"""Interactive views that need no network: self-contained HTML with inline SVG and JavaScript.

Each view is a :class:`View`: a ``<div>`` holding its data as JSON, the small hand-written
drawing script shipped in ``data/views/views.js`` (``workbench/data/views/`` in a wheel) (inlined, never fetched), and one
line that draws it. It shows in JupyterLab (``_repr_html_``) and in an HTML file opened from disk
with the network off (:meth:`View.save`, :func:`page`). Nothing is loaded from a CDN.

- :func:`heatmap_view`: every 1-d or 2-d :class:`~workbench.core.results.Result` (``result.view()``);
  hovering a cell shows its label (``L16H5`` on a layer x head grid), its value and, when
  ``result.meta`` holds ``ci_low`` / ``ci_high`` of the same shape, its interval.
- :func:`attention_view`: a prompt's tokens; hovering a query token shades its attention over the
  keys; a layer and head picker; patterns computed beforehand, so no model is needed.
- :func:`scorecard_view`: the scorecard as a sortable table, filtered by verdict, each row's
  interval drawn (``card.view()``).
- :func:`workbench.viz.interactive_graph.graph_view`: the edge-graph explorer (``graph.view()``).

A view asked for something it cannot draw (a 3-d or larger result, an empty graph) says so in
one line (a ``UserWarning``) and returns the static matplotlib figure instead.

**Ids are deterministic**: a view's element id is ``wb-`` and the first 12 hex digits of the
SHA-1 of its data, so re-running a notebook produces the same HTML (nbval compares it as is). The
script finds its view by position (the element before it), so a view shown twice still works.

>>> import torch
>>> from workbench.core.results import Result
>>> v = heatmap_view(Result(torch.arange(6.).reshape(2, 3), ("layer", "head"), "score"))
>>> v.id == heatmap_view(Result(torch.arange(6.).reshape(2, 3), ("layer", "head"), "score")).id
True
>>> "http" in v.to_html(), '"head_grid":true' in v.to_html()
(False, True)
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import Tensor

from workbench.core.resources import data_path
from workbench.core.results import render

if TYPE_CHECKING:
    from workbench.core.results import Result

__all__ = [
    "MAX_ATTENTION_ENTRIES",
    "MAX_CELLS",
    "View",
    "attention_view",
    "fallback",
    "heatmap_view",
    "page",
    "scorecard_view",
    "script",
    "view_result",
    "view_scorecard",
]

#: A heatmap of more cells than this falls back to the static figure (SVG of 40,000 rects is slow).
MAX_CELLS = 40_000
#: An attention view embeds at most this many pattern entries (layers x heads x query x key).
MAX_ATTENTION_ENTRIES = 2_000_000
#: Significant digits kept in the embedded data (keeps pages small and the HTML stable).
DIGITS = 5


def script() -> str:
    """The drawing script and its style sheet, as inline ``<style>`` and ``<script>`` tags."""
    js = data_path("views", "views.js").read_text()
    css = data_path("views", "views.css").read_text()
    return f"<style>{css}</style>\n<script>{js}</script>\n"


def number(x: float) -> float | None:
    """A JSON-safe number rounded to :data:`DIGITS` significant digits (NaN and inf: None)."""
    x = float(x)
    return float(f"{x:.{DIGITS}g}") if math.isfinite(x) else None


def grid(values: Tensor, decimals: int | None = None) -> list:
    """A tensor as nested lists of :func:`number`, or rounded to ``decimals`` places (whole
    numbers written as integers: an attention pattern at 3 places is a third the size)."""

    def fixed(x: float) -> float | int | None:
        if not math.isfinite(x):
            return None
        x = round(x, decimals)
        return int(x) if x == int(x) else x

    scalar = number if decimals is None else fixed

    def convert(x):
        return [convert(y) for y in x] if isinstance(x, list) else scalar(x)

    return convert(values.double().tolist())


@dataclass(frozen=True)
class View:
    """An interactive view: its kind, its data, and the HTML that draws it.

    ``to_html()`` is the notebook fragment (script included, so that each output stands alone);
    ``save(path)`` writes a whole page; :func:`page` puts several views on one page with the
    script inlined once.
    """

    kind: str
    data: dict[str, Any]

    def __repr__(self) -> str:  # the data are in the HTML; a notebook's text shows just what it is
        return f"View({self.kind!r})"

    @property
    def payload(self) -> str:
        text = json.dumps({"kind": self.kind, **self.data}, separators=(",", ":"), allow_nan=False)
        return text.replace("</", "<\\/")  # cannot close the <script> it sits in

    @property
    def id(self) -> str:
        return "wb-" + hashlib.sha1(self.payload.encode()).hexdigest()[:12]

    def body(self) -> str:
        """The view without the drawing script (which must precede it on the page)."""
        return (
            f'<div class="wb-view wb-{self.kind}" id="{self.id}">'
            '<p class="wb-placeholder">Interactive view: it draws when the output is trusted '
            "(run the cell, or trust the notebook).</p>"
            f'<script type="application/json" class="wb-data">{self.payload}</script></div>'
            f'<script>window.wbViews && wbViews.boot("{self.id}", document.currentScript);</script>\n'
        )

    def to_html(self) -> str:
        return script() + self.body()

    def _repr_html_(self) -> str:
        return self.to_html()

    def save(self, path: str | Path, *, title: str = "workbench view") -> Path:
        written = page([self], path, title=title)
        assert isinstance(written, Path)  # a page written to a path returns the path
        return written

    @property
    def size(self) -> int:
        """Bytes this view adds to a page that already holds the script."""
        return len(self.body().encode())


def page(views: Sequence[View], path: str | Path | None = None, *, title: str = "workbench views") -> str | Path:
    """A whole HTML page of ``views``, the script inlined once; written to ``path`` if given."""
    text = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
        f"{script()}</head><body>\n" + "".join(v.body() for v in views) + "</body></html>\n"
    )
    if path is None:
        return text
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def fallback(message: str, figure: Any) -> Any:
    """Say in one line why there is no interactive view, and return the static ``figure``."""
    warnings.warn(message.replace("\n", " "), UserWarning, stacklevel=3)
    return figure


# --------------------------------------------------------------------------------- heatmaps


def heatmap_view(result: "Result", *, title: str | None = None) -> View:
    """A hoverable heatmap of a 1-d or 2-d result (1-d: one row).

    Hover shows the cell's label (``L{layer}H{head}`` when the dims are ``(layer, head)``,
    otherwise ``"<dim> <label>, <dim> <label>"``), its value, and its interval when
    ``result.meta["ci_low"]`` and ``result.meta["ci_high"]`` hold tensors of the result's shape.
    Signed values get a diverging scale centred on 0 (blue negative, red positive, like ``plot()``);
    non-negative ones (ranks, probabilities) white to blue. Raises ``ValueError`` for other shapes
    (:func:`view_result` falls back instead).
    """
    values = result.values.float()
    dims = list(result.dims)
    if values.ndim == 1:
        values, dims = values[None], ["", dims[0]]
    if values.ndim != 2:
        raise ValueError(f"heatmap_view draws 1-d or 2-d results; this one has dims {result.dims}.")
    rows, cols = ([str(x) for x in result.labels.get(d) or range(n)] for d, n in zip(dims, values.shape))
    data: dict[str, Any] = {
        "title": title if title is not None else result.metric,
        "rowdim": dims[0], "coldim": dims[1], "rows": rows, "cols": cols,
        "head_grid": tuple(dims) == ("layer", "head") and not result.labels, "values": grid(values),
        "centre": bool((values.nan_to_num(0.0) < 0).any()),  # signed: diverging colours around 0
    }
    low, high = result.meta.get("ci_low"), result.meta.get("ci_high")
    if low is not None and high is not None:
        low, high = (torch.as_tensor(x).float().reshape(values.shape) for x in (low, high))
        data["low"], data["high"] = grid(low), grid(high)
    return View("heatmap", data)


def view_result(result: "Result", *, title: str | None = None):
    """``Result.view()``: the heatmap view, or (with a one-line warning) the static figure."""
    if result.values.ndim == 0:
        return fallback(f"view(): a 0-d result is one number ({result.values.item():.4g}); nothing to draw.", None)
    if result.values.ndim > 2:
        first = {d: 0 for d in result.dims[:-2]}
        shown = ", ".join(f"{d}=0" for d in first)
        return fallback(
            f"view() draws 1-d or 2-d results; this one has dims {result.dims}: showing the static "
            f"figure of result.sel({shown}) instead.", render("plot_result", result.sel(**first), title=title))
    if result.values.numel() > MAX_CELLS:
        return fallback(f"view(): {result.values.numel()} cells are more than MAX_CELLS={MAX_CELLS}; "
                        "showing the static figure instead.", render("plot_result", result, title=title))
    return heatmap_view(result, title=title)


# -------------------------------------------------------------------------------- attention


def _pattern_items(patterns, batch: int) -> list[tuple[tuple[int, int], Tensor]]:
    if isinstance(patterns, Mapping):
        items = []
        for key, p in patterns.items():
            layer, head = (int(x) for x in key)
            p = torch.as_tensor(p).detach().float().cpu()
            items.append(((layer, head), p[batch] if p.ndim == 3 else p))
        return items
    values = patterns if isinstance(patterns, Tensor) else getattr(patterns, "values", patterns)  # or a Result
    p = torch.as_tensor(values).detach().float().cpu()
    if p.ndim != 4:
        raise ValueError(f"Attention patterns as a tensor are [layer, head, query, key]; got shape {tuple(p.shape)}.")
    return [((l, h), p[l, h]) for l in range(p.shape[0]) for h in range(p.shape[1])]


def attention_view(patterns, tokens: Sequence[str] | None = None, *, batch: int = 0,
                   title: str = "attention") -> View:
    """Explore attention patterns over a prompt's tokens, one head at a time.

    Args:
        patterns: a ``[layer, head, query, key]`` tensor (or Result), or a dict
            ``{(layer, head): [query, key] or [batch, query, key]}`` as returned by
            :func:`workbench.techniques.attention.get_patterns`.
        tokens: the prompt's token strings (default: positions ``0..n-1``).
        batch: the prompt drawn when the patterns have a batch axis.

    Hovering a token shades every token by the attention the hovered (query) token pays it; the
    grid below shows the whole pattern; the pickers choose the layer and head. Weights are
    embedded to 3 decimal places (SmolLM2, all 270 heads on 15 tokens: 245 kB, 421 kB at 5 significant digits).
    """
    items = _pattern_items(patterns, batch)
    if not items:
        raise ValueError("No patterns to draw: pass at least one (layer, head).")
    n = items[0][1].shape[-1]
    bad = [f"L{l}H{h}" for (l, h), p in items if tuple(p.shape) != (n, n)]
    if bad:
        raise ValueError(f"Every pattern must be [query, key] of the same size {n}; these differ: {bad[:5]}.")
    tokens = [str(i) for i in range(n)] if tokens is None else [str(t) for t in tokens]
    if len(tokens) != n:
        raise ValueError(f"{len(tokens)} tokens for patterns over {n} positions.")
    if len(items) * n * n > MAX_ATTENTION_ENTRIES:
        raise ValueError(f"{len(items)} heads x {n} x {n} entries are more than MAX_ATTENTION_ENTRIES="
                         f"{MAX_ATTENTION_ENTRIES}; pass fewer heads or a shorter prompt.")
    items.sort(key=lambda kv: kv[0])
    return View("attention", {"title": title, "tokens": tokens, "keys": [list(k) for k, _ in items],
                              "patterns": [grid(p, decimals=3) for _, p in items]})


# -------------------------------------------------------------------------------- scorecard


def scorecard_view(card, *, title: str | None = None) -> View:
    """A :class:`workbench.findings.claims.Scorecard` as a table: click a header to sort, pick a
    verdict to filter; each row draws its interval (line), value (dot) and threshold (tick)."""
    rows, ends = [], []
    for f in card.findings:
        row = {"claim": f.claim.name, "statement": f.claim.claim, "value": number(f.value),
               "ci_low": number(f.ci_low), "ci_high": number(f.ci_high), "threshold": number(f.claim.threshold),
               "direction": f.claim.direction, "verdict": f.verdict,
               "null_percentile": None if f.null_percentile is None else number(f.null_percentile)}
        rows.append(row)
        ends += [x for x in (row["value"], row["ci_low"], row["ci_high"], row["threshold"]) if x is not None]
    lo, hi = (min(ends), max(ends)) if ends else (0.0, 1.0)
    pad = 0.05 * (hi - lo) or 0.5
    return View("scorecard", {"title": title or f"{card.notebook} on {card.model}", "rows": rows,
                              "range": [number(lo - pad), number(hi + pad)]})


def view_scorecard(card, *, title: str | None = None):
    """``Scorecard.view()``: the table view, or (no findings) the static forest plot."""
    if not card.findings:
        return fallback("view(): the scorecard has no findings; showing the static figure instead.",
                        render("scorecard_chart", card, title=title))
    return scorecard_view(card, title=title)
