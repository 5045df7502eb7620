"""Every matplotlib figure the workbench draws.

Functions return the ``matplotlib.figure.Figure`` they drew (and do not call ``plt.show()``), so
notebooks display it and tests can inspect it without a display. The backend is whatever
matplotlib chose; under no display that is ``Agg``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Patch, Rectangle

if TYPE_CHECKING:
    from workbench.core.results import Result

__all__ = [
    "attention_patterns",
    "bars",
    "completeness_scatter",
    "dose_response",
    "head_sets",
    "heatmap",
    "lines",
    "logit_effects",
    "logit_lens_heatmap",
    "patching_scatter",
    "plot_result",
    "scorecard_chart",
]

# Diverging colour map centred on zero: patching and attribution values have a sign.
DIVERGING = "RdBu_r"


class _HeadStripe(Rectangle):
    """A stripe of the :func:`head_sets` grid; ``_head`` is the head ``(layer, head)`` it shows."""

    _head: tuple[int, int]


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


def bars(labels: Sequence[str], values: Sequence[float], *, ylabel: str = "", title: str = "", ax=None):
    """One bar per label: a handful of named numbers (losses of runs, metric values of circuits)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(labels), 3.5))
    else:
        fig = ax.figure
    ax.bar(range(len(labels)), [float(v) for v in values], color=[f"C{i % 10}" for i in range(len(labels))])
    ax.set_xticks(range(len(labels)), [str(x) for x in labels], fontsize=8)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_result(result: "Result", *, title: str | None = None, ax=None, **kwargs):
    """Default figure of a :class:`~workbench.core.results.Result`.

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

# --- patching, attribution, path patching, ablation (patching.py, attribution.py, ...) ---


def patching_scatter(exact: "Result", estimate: "Result", *, top: int = 5, ax=None, title: str | None = None):
    """Attribution-patching estimates (y) against exact patching (x), one dot per patched index.

    Both Results must have the same dims and shape (e.g. ``patch_heads`` and ``attribute(...).heads``).
    The diagonal is perfect agreement; the ``top`` largest exact effects are labelled.
    """
    if exact.dims != estimate.dims or exact.shape != estimate.shape:
        raise ValueError(f"Results differ in layout: {exact.dims}{exact.shape} vs {estimate.dims}{estimate.shape}.")
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
    else:
        fig = ax.figure
    x, y = exact.values.flatten().double(), estimate.values.flatten().double()
    r = torch.corrcoef(torch.stack([x, y]))[0, 1].item() if x.numel() > 1 else float("nan")
    ax.scatter(x.numpy(), y.numpy(), s=12, alpha=0.7)
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1)
    frame = exact.to_frame()
    for i in x.abs().argsort(descending=True)[:top].tolist():
        name = " ".join(f"{d[0].upper()}{frame[d].iloc[i]}" for d in exact.dims)
        ax.annotate(name, (x[i].item(), y[i].item()), fontsize=7)
    ax.set_xlabel(f"exact: {exact.metric}")
    ax.set_ylabel("attribution estimate")
    ax.set_title(title or f"attribution vs exact patching (r = {r:.2f})")
    fig.tight_layout()
    return fig


def completeness_scatter(completeness, *, ax=None, title: str | None = None):
    """IOI-style completeness plot: ``F(M \\ K)`` (x) against ``F(C \\ K)`` (y), one dot per K.

    A complete circuit puts every dot on the diagonal. ``completeness`` is an
    :class:`workbench.techniques.ablation.Completeness`.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
    else:
        fig = ax.figure
    x, y = completeness.model_values.numpy(), completeness.circuit_values.numpy()
    sizes = [len(k) for k in completeness.subsets]
    points = ax.scatter(x, y, c=sizes, cmap="viridis")
    fig.colorbar(points, ax=ax, label="|K|")
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("F(M \\ K): model without K")
    ax.set_ylabel("F(C \\ K): circuit without K")
    ax.set_title(title or f"Completeness of {len(completeness.circuit)} components")
    fig.tight_layout()
    return fig


# --- lens, direct logit attribution, attention views (lens.py, widgets.py) ---

#: Beyond this many cells a lens heatmap is not annotated with top-1 tokens, and beyond this
#: many positions the tick labels of an attention panel are left out (they would overlap).
LENS_ANNOTATE_MAX_CELLS = 400
ATTENTION_MAX_LABELS = 60


def logit_lens_heatmap(
    lens,
    kind: str = "rank",
    *,
    batch: int = 0,
    annotate: bool | None = None,
    ax=None,
    title: str | None = None,
):
    """Layers down, positions across: the target's rank, probability or logit at each layer.

    ``lens`` is a :class:`workbench.techniques.lens.LensResult`. Rank uses a log colour scale (rank 0 is
    bright); cells are annotated with each layer's top-1 token when the grid is small
    (``annotate=None``: automatic). Position tick labels are the prompt's tokens.
    """
    from matplotlib.colors import LogNorm

    if kind not in ("rank", "prob", "logit"):
        raise ValueError(f"kind must be 'rank', 'prob' or 'logit', got {kind!r}.")
    res = getattr(lens, kind)
    values = res.values if "batch" not in res.dims else res.values[:, batch]
    values = values.float()
    n_layers, n_pos = values.shape
    if ax is None:
        size = (min(2.5 + 0.55 * n_pos, 18), min(1.5 + 0.32 * n_layers, 12))
        fig, ax = plt.subplots(figsize=size)
    else:
        fig = ax.figure
    if kind == "rank":
        shown = values + 1
        top = float(torch.nan_to_num(shown, nan=1.0).max())
        norm = LogNorm(vmin=1, vmax=max(top, 2.0))
        im = ax.imshow(
            shown.numpy(), aspect="auto", interpolation="nearest", cmap="viridis_r", norm=norm
        )
        cb_label = "target rank + 1 (log scale)"
    else:
        kw = dict(vmin=0.0, vmax=1.0) if kind == "prob" else {}
        im = ax.imshow(values.numpy(), aspect="auto", interpolation="nearest", cmap="viridis", **kw)
        cb_label = f"target {'probability' if kind == 'prob' else 'logit'}"
    fig.colorbar(im, ax=ax).set_label(cb_label)
    ax.set_yticks(range(n_layers), res.labels["layer"], fontsize=8)
    xlabels = [repr(t)[1:-1] for t in lens.str_tokens[batch]]
    ax.set_xticks(range(n_pos), xlabels, rotation=90, fontsize=8)
    ax.set_xlabel("position (input token)")
    ax.set_ylabel("layer (residual decoded)")
    if annotate is None:
        annotate = n_layers * n_pos <= LENS_ANNOTATE_MAX_CELLS
    if annotate:
        frame = lens.top_tokens
        top1 = frame[(frame["batch"] == batch) & (frame["rank"] == 0)]
        for layer, pos, text in zip(top1["layer"], top1["pos"], top1["token_str"]):
            colour = "black" if kind == "rank" else "white"
            short = repr(text)[1:-1][:8]
            ax.text(pos, layer, short, ha="center", va="center", fontsize=6, color=colour)
    if title is None:
        what = {"final": "the final top-1", "next": "the next token"}.get(
            lens.meta.get("targets"), "the targets"
        )
        method = str(lens.meta.get("method", "logit lens"))
        title = f"{method[:1].upper()}{method[1:]}: {kind} of {what}"
        if "batch" in res.dims:
            title += f" (prompt {batch})"
    ax.set_title(title)
    fig.tight_layout()
    return fig


def attention_patterns(
    patterns,
    str_tokens=None,
    *,
    batch: int = 0,
    ncols: int = 4,
    title: str | None = None,
    axes=None,
):
    """One panel per head: queries down, keys across, with the tokens as tick labels.

    ``patterns`` maps ``(layer, head)`` to ``[batch, query, key]`` (or ``[query, key]``), as
    returned by :func:`workbench.techniques.attention.get_patterns`; ``str_tokens`` labels the positions of
    prompt ``batch`` (omitted beyond ``ATTENTION_MAX_LABELS`` positions).
    """
    if not patterns:
        raise ValueError("No patterns to draw: pass at least one (layer, head).")
    keys = list(patterns)
    n = len(keys)
    if axes is None:
        cols = min(ncols, n)
        rows = -(-n // cols)
        fig, grid = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
        axes = list(grid.reshape(-1))
        for extra in axes[n:]:
            extra.set_axis_off()
    else:
        axes = list(axes)
        fig = axes[0].figure
    for ax, (layer, head) in zip(axes, keys):
        p = torch.as_tensor(patterns[(layer, head)]).detach().float().cpu()
        if p.ndim == 3:
            p = p[batch]
        ax.imshow(p.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"L{layer}H{head}", fontsize=9)
        if str_tokens is not None and len(str_tokens) <= ATTENTION_MAX_LABELS:
            labels = [repr(t)[1:-1] for t in str_tokens]
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

# --- head scores and head sets (heads.py) ---


def head_sets(
    sets,
    *,
    shape: tuple[int, int] | None = None,
    title: str = "",
    colors: Sequence[str] | None = None,
    ax=None,
):
    """Layers (down) x heads (across) grid with the heads of each :class:`~workbench.techniques.heads.HeadSet`
    coloured; a head in several sets is split into vertical stripes, one colour per set.

    ``shape = (n_layers, n_heads)`` (e.g. ``(model.cfg.n_layers, model.cfg.n_heads)``); by default
    the smallest grid that holds every head. Each stripe is a ``Rectangle`` whose ``_head`` is
    ``(layer, head)``, so tests can count them.
    """
    sets = list(sets)
    if not sets:
        raise ValueError("head_sets needs at least one HeadSet.")
    all_heads = set().union(*(s.heads for s in sets))
    if shape is None:
        shape = (
            max((layer for layer, _ in all_heads), default=0) + 1,
            max((h for _, h in all_heads), default=0) + 1,
        )
    n_layers, n_heads = shape
    outside = sorted(x for x in all_heads if x[0] >= n_layers or x[1] >= n_heads)
    if outside:
        raise ValueError(f"Heads {outside} are outside a {n_layers} x {n_heads} grid; pass a larger shape.")
    colors = list(colors) if colors is not None else [f"C{i % 10}" for i in range(len(sets))]
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(2.5 + 0.35 * n_heads, 14), min(1.5 + 0.28 * n_layers, 12)))
    else:
        fig = ax.figure
    for head in sorted(all_heads):
        members = [i for i, s in enumerate(sets) if head in s.heads]
        width = 1.0 / len(members)
        layer, h = head
        for j, i in enumerate(members):
            patch = _HeadStripe((h - 0.5 + j * width, layer - 0.5), width, 1.0, color=colors[i], lw=0)
            patch._head = head
            ax.add_patch(patch)
    ax.set_xlim(-0.5, n_heads - 0.5)
    ax.set_ylim(n_layers - 0.5, -0.5)  # layer 0 at the top, like a heatmap
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.tick_params(labelsize=7)
    ax.set_xticks([x - 0.5 for x in range(1, n_heads)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, n_layers)], minor=True)
    ax.grid(which="minor", color="0.85", lw=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    handles = [Patch(color=colors[i], label=s.name or f"set{i}") for i, s in enumerate(sets)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


# --- SAE features (sae.py) ---


def dose_response(result: "Result", *, title: str | None = None, ax=None):
    """A steering curve: the metric against the scale added along a feature's direction."""
    scales = result.labels.get("scale", list(range(result.values.shape[0])))
    feature = result.meta.get("feature")
    fig = lines(
        scales,
        {result.metric: result.values.tolist()},
        xlabel="scale (units of the feature's activation)",
        ylabel=result.metric,
        title=title if title is not None else f"steering feature {feature}",
        ax=ax,
    )
    fig.axes[0].axvline(0, color="black", lw=0.5)
    return fig


def logit_effects(effects, *, title: str | None = None, ax=None):
    """Horizontal bars: the tokens a feature promotes most (red) and suppresses most (blue)."""
    frame = effects.to_frame()
    frame = frame.iloc[::-1]  # promoted at the top
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 0.25 * len(frame) + 1.2))
    else:
        fig = ax.figure
    colours = ["tab:red" if v > 0 else "tab:blue" for v in frame["value"]]
    ax.barh(range(len(frame)), frame["value"], color=colours)
    ax.set_yticks(range(len(frame)), [repr(t) for t in frame["d_vocab_label"]], fontsize=8)
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel("logit effect per unit activation")
    feature = effects.effects.meta.get("feature")
    ax.set_title(title if title is not None else f"feature {feature}: direct logit effects")
    fig.tight_layout()
    return fig



#: One colour per verdict (the six of :mod:`workbench.findings.claims`), here and in every report.
VERDICT_COLOURS = {"replicated": "tab:green", "at chance": "tab:olive", "below the paper's bar": "tab:orange",
                   "not replicated": "tab:red", "inconclusive": "tab:gray", "not measured": "tab:purple"}


def scorecard_chart(card, *, ax=None, title: str | None = None):
    """A forest plot of a :class:`workbench.findings.claims.Scorecard`: each finding's value, its 95%
    interval, and its threshold, one row per claim, coloured by verdict."""
    colours = VERDICT_COLOURS
    findings = card.findings
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 0.5 + 0.45 * max(1, len(findings))))
    for i, f in enumerate(findings):
        c = colours[f.verdict]
        ax.plot([f.ci_low, f.ci_high], [i, i], color=c, lw=2)
        ax.plot([f.value], [i], "o", color=c)
        ax.plot([f.claim.threshold], [i], "|", color="black", ms=14)
    ax.set_yticks(range(len(findings)), [f"{f.claim.name} ({f.verdict})" for f in findings])
    ax.invert_yaxis()
    ax.set_xlabel("value [95% CI]; black tick: threshold")
    ax.set_title(title or f"{card.notebook} on {card.model}")
    fig.tight_layout()
    return fig
