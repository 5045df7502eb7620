"""The replication's HTML page and figure (both drawn from :meth:`Replication.table`).

The page is one self-contained file: inline CSS, no script, no font or image fetched from
anywhere. Verdict colours are those of :data:`workbench.viz.plot.VERDICT_COLOURS`.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.replicate.report import Replication

__all__ = ["html_report", "replication_figure"]

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table.replication { border-collapse: collapse; font-size: 13px; }
table.replication th, table.replication td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }
table.replication th.model { background: #f3f3f3; }
table.replication th.control { background: #fafafa; font-weight: normal; font-style: italic; }
table.replication td.cell { min-width: 9em; }
td.cell .verdict { font-weight: 600; }
td.cell .seeds, td.cell .stale { font-size: 11px; color: #333; }
td.cell .stale { color: #a00; }
.legend span { display: inline-block; padding: 2px 8px; margin-right: 6px; border-radius: 3px; }
.notes li { font-size: 13px; }
"""


def _tint(hex_colour: str, amount: float = 0.55) -> str:
    """``hex_colour`` mixed with white (so black text stays readable)."""
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    mix = [round(c + (255 - c) * amount) for c in (r, g, b)]
    return "#" + "".join(f"{c:02x}" for c in mix)


def _header(cols: list[tuple[str, str]]) -> str:
    models = list(dict.fromkeys(m for m, _ in cols))
    top = "".join(f'<th class="model" colspan="{sum(1 for mm, _ in cols if mm == m)}">{html.escape(m)}</th>'
                  for m in models)
    sub = "".join(f'<th class="control">{"model" if c == "none" else html.escape(c)}</th>' for _, c in cols)
    return (f'<tr><th rowspan="2">phenomenon</th><th rowspan="2">claim</th>{top}</tr>'
            f"<tr>{sub}</tr>")


def _cell_html(cell: dict | None) -> str:
    if cell is None:
        return '<td class="cell"></td>'
    colour = _tint(cell["colour"]) if cell["verdict"] else cell["colour"]
    parts = [f'<div class="verdict">{html.escape(cell["verdict"])}</div>' if cell["verdict"] else "",
             f'<div class="value">{html.escape(cell["text"])}</div>',
             f'<div class="seeds">{html.escape(cell["seeds"])}</div>' if cell["seeds"] else "",
             '<div class="stale">computed by other code</div>' if cell.get("stale") else ""]
    return f'<td class="cell" style="background:{colour}">{"".join(parts)}</td>'


def html_report(rep: "Replication", *, standalone: bool = True) -> str:
    """The claims x models table with the legend, the failures and the notes."""
    from workbench.viz.plot import VERDICT_COLOURS

    keys, cols, cells = rep.table()
    body = [_header(cols)]
    for ph, claim in keys:
        tds = "".join(_cell_html(cells.get(((ph, claim), col))) for col in cols)
        body.append(f"<tr><td>{html.escape(ph)}</td><td>{html.escape(claim) or '&mdash;'}</td>{tds}</tr>")
    from matplotlib.colors import to_hex

    legend = "".join(f'<span style="background:{_tint(to_hex(c))}">{html.escape(v)}</span>'
                     for v, c in VERDICT_COLOURS.items())
    failed = rep.frame[rep.frame["status"] == "failed"]
    failures = "".join(f"<li>{html.escape(r.phenomenon)} on {html.escape(r.model)} ({html.escape(r.control)}, "
                       f"seed {r.seed}): <code>{html.escape(r.error)}</code></li>" for r in failed.itertuples())
    summary = (f"{rep.computed} jobs computed, {rep.reused} reused from the store, {rep.failed} failed, "
               f"in {rep.seconds:.0f} s.")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in rep.notes)
    table = (f"<h1>Replication across models</h1><p>{html.escape(summary)}</p>"
             f'<p class="legend">{legend}</p><table class="replication">{"".join(body)}</table>'
             + (f"<h2>Failed jobs</h2><ul>{failures}</ul>" if failures else "")
             + (f'<h2>Notes</h2><ul class="notes">{notes}</ul>' if notes else ""))
    if not standalone:
        return f"<style>{CSS}</style>{table}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Replication</title>'
            f"<style>{CSS}</style></head><body>{table}</body></html>\n")


def replication_figure(rep: "Replication", ax=None, *, title: str | None = None):
    """Claims (rows) x model and control (columns), each cell coloured by its verdict and labelled
    with its value; returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    from workbench.viz.plot import VERDICT_COLOURS

    keys, cols, cells = rep.table()
    n_rows, n_cols = max(1, len(keys)), max(1, len(cols))
    if ax is None:
        fig, ax = plt.subplots(figsize=(2.0 + 1.6 * n_cols, 1.2 + 0.42 * n_rows))
    fig = ax.figure
    for i, key in enumerate(keys):
        for j, col in enumerate(cols):
            cell = cells.get((key, col))
            if cell is None:
                continue
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor=cell["colour"], alpha=0.75 if cell["verdict"] else 0.4,
                                   edgecolor="white"))
            label = cell["text"].split(" [")[0] if cell["verdict"] else cell["text"].split(":")[0]
            ax.text(j + 0.5, i + 0.5, label + (f"\n{cell['seeds'].removesuffix(' agree')}" if cell["seeds"] else ""),
                    ha="center", va="center", fontsize=7)
    ax.set_xlim(0, n_cols)
    ax.set_ylim(n_rows, 0)
    ax.set_xticks([j + 0.5 for j in range(len(cols))],
                  [m if c == "none" else f"{m}\n{c}" for m, c in cols], rotation=30, ha="right", fontsize=8)
    ax.set_yticks([i + 0.5 for i in range(len(keys))], [f"{p}: {c or '-'}" for p, c in keys], fontsize=8)
    ax.tick_params(length=0)
    handles = [Patch(color=c, alpha=0.75, label=v) for v, c in VERDICT_COLOURS.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    ax.set_title(title or "Replication across models: verdict per claim (cell: value)", fontsize=10)
    return fig
