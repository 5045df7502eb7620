"""Interactive views in a real browser with the network blocked: a page saved to disk, opened from
``file://`` in headless Chromium (Playwright). Every request other than file/localhost is aborted
and counted (must be zero). Hovers a heatmap cell, moves the edge slider, picks an attention head,
sorts the scorecard; saves a screenshot of each view to ``reports/browser/`` and prints how long
each view took to draw.
"""

import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from test_browser import CHROMIUM, CHROMIUM_FLAGS

from workbench.core.results import Result
from workbench.findings.claims import Claim, Finding, Scorecard
from workbench.techniques.edges.graph import Graph, Layout
from workbench.viz.interactive import attention_view, page
from workbench.viz.interactive_graph import graph_view

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "reports" / "browser"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="Chromium is not installed (apt-get install chromium; `make test` does it as root)",
    ),
]


def views():
    g = torch.Generator().manual_seed(0)
    heads = Result(torch.randn(30, 9, generator=g), ("layer", "head"), "head attribution",
                   meta={"ci_low": torch.full((30, 9), -0.5), "ci_high": torch.full((30, 9), 0.5)})
    tokens = ["<s>", "When", " Mary", " and", " John", " went", " to", " the", " store"]
    n = len(tokens)
    scores = torch.randn(2, 3, n, n, generator=g).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -1e9)
    patterns = torch.softmax(scores * 3, -1)
    lay = Layout(30, 9, 3, True)  # SmolLM2's graph: 70,651 edges
    graph = Graph(lay, torch.randn(lay.n_forward, lay.n_backward, generator=g) * lay.valid(), meta={"method": "EAP"})
    card = Scorecard("tiny", "01_ioi")
    for name, value, lo, hi, verdict in [("name_movers", 0.8, 0.7, 0.9, "replicated"),
                                         ("s_inhibition", 0.45, 0.2, 0.6, "inconclusive"),
                                         ("backup", 0.1, 0.05, 0.2, "not replicated")]:
        card.add(Finding(Claim(name, f"{name} holds", "paper", "stat", 0.5), value, lo, hi, 99.0, 200, 10, 20, verdict))
    return {"heatmap": heads.view(), "attention": attention_view(patterns, tokens),
            "graph": graph_view(graph), "scorecard": card.view()}, heads, patterns


def blocked_browser(pw):
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    outside = []

    def route(r):
        url = urlparse(r.request.url)
        if url.scheme in ("file", "data", "blob", "about") or url.hostname in ("localhost", "127.0.0.1"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    return browser, context, outside


def test_views_work_from_disk_with_the_network_blocked(tmp_path):
    from playwright.sync_api import sync_playwright

    made, heads, patterns = views()
    path = page(list(made.values()), tmp_path / "views.html", title="workbench views")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser, context, outside = blocked_browser(pw)
        try:
            pg = context.new_page()
            errors = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            start = time.perf_counter()
            pg.goto(path.as_uri())
            pg.wait_for_function("document.querySelectorAll('.wb-view[data-ready]').length == 4", timeout=60_000)
            load = time.perf_counter() - start
            view = {k: pg.locator(f"#{v.id}") for k, v in made.items()}
            ms = {k: float(v.get_attribute("data-render-ms")) for k, v in view.items()}
            print(f"\npage {path.stat().st_size / 1e3:.0f} kB loaded and drawn in {load:.2f} s; render ms: {ms}; "
                  f"bytes per view: { {k: v.size for k, v in made.items()} }")

            # Heatmap: hover L16H5 and read the tooltip.
            cell = view["heatmap"].locator("rect.wb-cell").nth(16 * 9 + 5)
            cell.hover()
            tip = view["heatmap"].locator(".wb-tip")
            text = tip.inner_text()
            assert text.startswith("L16H5: ") and f"{heads.values[16, 5].item():.3f}"[:4] in text, text
            assert "[-0.5, 0.5]" in text
            view["heatmap"].screenshot(path=str(SHOTS / "views-heatmap.png"))

            # Edge graph: move the slider, count the drawn edges, hover one, click a node.
            g = view["graph"]
            assert g.locator("line.wb-edge").count() == 200
            for k in (50, 5000):
                t0 = time.perf_counter()
                g.locator(".wb-slider").fill(str(k))
                assert g.locator("line.wb-edge").count() == k
                print(f"slider to {k} edges: drawn in {g.get_attribute('data-draw-ms')} ms "
                      f"({time.perf_counter() - t0:.2f} s with Playwright's round trips)")
            g.locator(".wb-slider").fill("300")
            assert g.locator("line.wb-edge").count() == 300
            g.locator("line.wb-edge").first.hover(force=True)
            assert " \u2192 " in g.locator(".wb-tip").inner_text()
            g.screenshot(path=str(SHOTS / "views-graph.png"))
            first = made["graph"].data["edges"][0][0]
            g.locator(f"circle.wb-node[data-node='{first}']").click(force=True)
            focused = g.locator("line.wb-edge").count()
            assert 0 < focused < 300, focused
            assert "only edges of" in g.locator(".wb-count").inner_text()
            g.screenshot(path=str(SHOTS / "views-graph-node.png"))

            # Attention: pick another head, see the pattern change; hover a query token.
            a = view["attention"]
            fills = "el => Array.from(el.querySelectorAll('.wb-grid rect')).map(r => r.getAttribute('fill')).join()"
            before = a.evaluate(fills)
            assert a.get_attribute("data-head") == "L0H0"
            a.locator("select.wb-layer").select_option("1")
            a.locator("select.wb-head").select_option(label="2")
            assert a.get_attribute("data-head") == "L1H2"
            assert a.evaluate(fills) != before
            a.locator(".wb-tok").nth(8).hover()
            shade = a.locator(".wb-tok").nth(4).evaluate("el => getComputedStyle(el).backgroundColor")
            assert shade.startswith("rgba(33, 102, 172"), shade
            expected = patterns[1, 2, 8, 4].item()
            assert abs(float(shade.split(",")[-1].rstrip(")")) - expected) < 0.01, (shade, expected)
            a.screenshot(path=str(SHOTS / "views-attention.png"))

            # Scorecard: filter by verdict, sort by value.
            s = view["scorecard"]
            s.locator("select.wb-filter").select_option("inconclusive")
            assert s.locator("tbody tr").count() == 1
            s.locator("select.wb-filter").select_option("")
            s.locator("th[data-key='value']").click()
            assert s.locator("tbody tr td:first-child").all_inner_texts() == ["backup", "s_inhibition", "name_movers"]
            s.screenshot(path=str(SHOTS / "views-scorecard.png"))
            assert errors == [], errors
            assert outside == [], f"requests outside file/localhost: {outside}"
        finally:
            browser.close()


NOTEBOOK_CELLS = [
    "import json\nimport torch\nfrom workbench.core.results import Result\n"
    "from workbench.viz.interactive import attention_view",
    'Result(torch.load("heads.pt"), ("layer", "head"), "head score").view()',
    'attention_view(torch.load("patterns.pt"), json.load(open("tokens.json")))',
]


def test_views_in_jupyterlab_from_saved_tensors(tmp_path):
    """A short notebook builds the views from small saved tensors; run in JupyterLab with every
    request outside localhost blocked, its views draw and the heatmap's tooltip shows."""
    import json

    import nbformat
    from playwright.sync_api import sync_playwright
    from test_browser import jupyterlab_server, open_notebook

    heads = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    torch.save(heads, tmp_path / "heads.pt")
    torch.save(torch.softmax(torch.randn(2, 2, 5, 5), -1), tmp_path / "patterns.pt")
    (tmp_path / "tokens.json").write_text(json.dumps(["a", "b", "c", "d", "e"]))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in NOTEBOOK_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "views.ipynb")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with jupyterlab_server(tmp_path) as (base, token), sync_playwright() as pw:
        browser, context, outside = blocked_browser(pw)
        try:
            pg = context.new_page()
            open_notebook(pg, base, token, "views.ipynb")
            pg.click("text=Run", timeout=30_000)
            pg.click("text=Run All Cells", timeout=30_000)
            try:
                pg.wait_for_function("document.querySelectorAll('.wb-view[data-ready]').length == 2",
                                     timeout=180_000)
            finally:
                pg.screenshot(path=str(SHOTS / "views-jupyterlab.png"))
            heatmap = pg.locator(".wb-view.wb-heatmap")
            heatmap.locator("rect.wb-cell").nth(2 * 3 + 1).hover()
            text = heatmap.locator(".wb-tip").inner_text()
            pg.screenshot(path=str(SHOTS / "views-jupyterlab.png"))
            assert text.startswith("L2H1: ") and f"{heads[2, 1].item():.2f}"[:3] in text, text
            att = pg.locator(".wb-view.wb-attention")
            att.locator("select.wb-head").select_option(label="1")
            assert att.get_attribute("data-head") == "L0H1"
            assert outside == [], f"requests outside localhost: {outside}"
        finally:
            browser.close()


def test_exported_report_draws_its_views_offline(tmp_path):
    """`workbench run`'s HTML export of a notebook with views, opened from disk: the views draw
    and nothing is requested from outside."""
    import nbformat
    from playwright.sync_api import sync_playwright

    from workbench.cli import export_html

    made, _, _ = views()
    kinds = ["heatmap", "graph", "attention"]
    outputs = [nbformat.v4.new_output("execute_result", {"text/html": made[k].to_html(), "text/plain": k},
                                      execution_count=i + 1) for i, k in enumerate(kinds)]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Report\n$x^2$")] + [
        nbformat.v4.new_code_cell("view", outputs=[o], execution_count=o["execution_count"]) for o in outputs])
    path = tmp_path / "report.html"
    path.write_text(export_html(nb))
    with sync_playwright() as pw:
        browser, context, outside = blocked_browser(pw)
        try:
            pg = context.new_page()
            pg.goto(path.as_uri())
            pg.wait_for_function("document.querySelectorAll('.wb-view[data-ready]').length == 3", timeout=60_000)
            pg.locator(".wb-heatmap rect.wb-cell").nth(16 * 9 + 5).hover()
            assert pg.locator(".wb-heatmap .wb-tip").inner_text().startswith("L16H5: ")
            g = pg.locator(".wb-graph")
            g.locator(".wb-slider").fill("50")
            assert g.locator("line.wb-edge").count() == 50
            a = pg.locator(".wb-attention")
            fills = "el => Array.from(el.querySelectorAll('.wb-grid rect')).map(r => r.getAttribute('fill')).join()"
            before = a.evaluate(fills)
            a.locator("select.wb-layer").select_option("1")
            a.locator("select.wb-head").select_option(label="2")
            assert a.get_attribute("data-head") == "L1H2" and a.evaluate(fills) != before
            pg.screenshot(path=str(SHOTS / "views-exported-report.png"))
            print(f"\nexported report with three views: {path.stat().st_size / 1e3:.0f} kB")
            assert outside == [], f"requests outside file/localhost: {outside}"
        finally:
            browser.close()
