"""Interactive views (workbench.viz.interactive): the HTML each view makes, and its fallbacks."""

import json
import re

import matplotlib.pyplot as plt
import nbformat
import pytest
import torch
from matplotlib.figure import Figure

from workbench.cli import export_html
from workbench.core.results import Result
from workbench.findings.claims import Claim, Finding, Scorecard
from workbench.techniques.edges.graph import Graph, Layout
from workbench.viz.interactive import View, attention_view, page
from workbench.viz.interactive_graph import graph_view

URL = re.compile(r"https?://|//cdn|src=[\"']//")


def payload(view_or_html) -> dict:
    text = view_or_html if isinstance(view_or_html, str) else view_or_html.to_html()
    found = re.search(r'<script type="application/json" class="wb-data">(.*?)</script>', text, re.S)
    return json.loads(found[1].replace("<\\/", "</"))


def head_result(seed=0):
    values = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed))
    return Result(values, ("layer", "head"), "head score")


def graph(n_layers=2, n_heads=4, seed=0):
    lay = Layout(n_layers, n_heads, n_heads, True)
    m = torch.randn(lay.n_forward, lay.n_backward, generator=torch.Generator().manual_seed(seed))
    return Graph(lay, m * lay.valid(), meta={"method": "EAP"})


def card():
    def finding(name, value, lo, hi, verdict):
        claim = Claim(name, f"{name} holds", "paper", "stat", threshold=0.5)
        return Finding(claim, value, lo, hi, 99.0, 200, 10, 20, verdict)

    c = Scorecard("tiny", "01_ioi")
    c.add(finding("name_movers", 0.8, 0.7, 0.9, "replicated"))
    c.add(finding("s_inhibition", 0.4, 0.2, 0.6, "inconclusive"))
    c.add(finding("backup", 0.1, 0.05, 0.2, "not replicated"))
    return c


def test_heatmap_view_has_labels_values_and_no_network():
    r = head_result()
    view = r.view()
    assert isinstance(view, View) and view.kind == "heatmap"
    html = view._repr_html_()
    assert not URL.search(html), URL.search(html)
    data = payload(html)
    assert data["head_grid"] and data["rows"] == ["0", "1", "2"] and data["cols"] == ["0", "1", "2", "3"]
    assert data["values"][2][1] == pytest.approx(r.values[2, 1].item(), rel=1e-4)
    assert data["title"] == "head score"
    assert "wbViews.boot" in html and "function heatmap" in html  # the script is inlined


def test_heatmap_labels_and_interval_from_meta():
    r = Result(torch.tensor([[1.0, float("nan")], [3.0, 4.0]]), ("layer", "pos"), "logit diff",
               labels={"pos": ["The", " cat"]},
               meta={"ci_low": torch.zeros(2, 2), "ci_high": torch.ones(2, 2) * 5})
    data = payload(r.view())
    assert not data["head_grid"] and data["cols"] == ["The", " cat"]
    assert data["values"][0][1] is None  # NaN
    assert data["low"][1][1] == 0 and data["high"][1][1] == 5
    one = payload(Result(torch.arange(3.0), ("k",)).view())
    assert one["values"] == [[0.0, 1.0, 2.0]] and one["coldim"] == "k"
    assert data["centre"] is False and one["centre"] is False  # non-negative: sequential colours
    assert payload(head_result().view())["centre"] is True


def test_ids_are_deterministic_and_depend_on_content():
    a, b, c = head_result(0).view(), head_result(0).view(), head_result(1).view()
    assert a.id == b.id and a.to_html() == b.to_html()
    assert a.id != c.id
    assert re.fullmatch(r"wb-[0-9a-f]{12}", a.id)
    assert f'id="{a.id}"' in a.to_html()


def test_json_cannot_close_its_script_tag():
    r = Result(torch.ones(1, 2), ("layer", "pos"), "x</script><b>", labels={"pos": ["</script>", "b"]})
    html = r.view().to_html()
    assert "x</script><b>" not in html
    assert payload(html)["cols"][0] == "</script>"


def test_bad_results_fall_back_to_the_static_figure():
    r = Result(torch.randn(2, 3, 4, 5), ("batch", "layer", "head", "pos"))
    with pytest.warns(UserWarning, match=r"view\(\) draws 1-d or 2-d .* result.sel\(batch=0, layer=0\)") as rec:
        fig = r.view()
    assert isinstance(fig, Figure) and len(rec) == 1 and "\n" not in str(rec[0].message)
    plt.close(fig)
    with pytest.warns(UserWarning, match="one number"):
        assert Result(torch.tensor(2.0), ()).view() is None


def test_attention_view_from_tensor_and_dict():
    p = torch.softmax(torch.randn(2, 3, 4, 4), -1).tril()
    tokens = ["<s>", "When", " Mary", " and"]
    view = attention_view(p, tokens)
    data = payload(view)
    assert data["tokens"] == tokens and len(data["keys"]) == 6 and data["keys"][4] == [1, 1]
    assert data["patterns"][4][3][2] == pytest.approx(p[1, 1, 3, 2].item(), abs=5e-4)
    assert not URL.search(view.to_html())
    as_dict = attention_view({(1, 1): p[1, 1][None].repeat(2, 1, 1), (0, 2): p[0, 2][None].repeat(2, 1, 1)},
                             tokens, batch=1)
    assert payload(as_dict)["keys"] == [[0, 2], [1, 1]]  # sorted by layer, head
    with pytest.raises(ValueError, match="3 tokens for patterns over 4"):
        attention_view(p, tokens[:3])
    with pytest.raises(ValueError, match=r"\[layer, head, query, key\]"):
        attention_view(p[0], tokens)


def test_attention_view_of_real_patterns(tiny, random_tokens):
    from workbench.techniques.attention import get_patterns

    patterns = get_patterns(tiny, random_tokens, None)
    data = payload(attention_view(patterns, [f"t{i}" for i in range(10)], batch=2))
    assert len(data["keys"]) == 8 and len(data["patterns"][0]) == 10
    assert data["patterns"][7][9][0] == pytest.approx(patterns[(1, 3)][2, 9, 0].item(), abs=5e-4)


def test_graph_view_embeds_at_most_max_edges_largest_first():
    g = graph()
    view = g.view()
    data = payload(view)
    assert data["n_total"] == g.n_edges and len(data["edges"]) == g.n_edges  # fewer than 5,000
    small = graph_view(g, max_edges=7)
    edges = small.data["edges"]
    assert len(edges) == 7
    top = g.to_frame().assign(a=lambda f: f["score"].abs()).nlargest(7, "a")
    assert [abs(e[2]) for e in edges] == pytest.approx(top["a"].tolist(), rel=1e-4)
    u, b, s = edges[0]
    assert (data["nodes"][u][0], data["inputs"][b]) == tuple(top.iloc[0][["source", "target"]])
    assert not URL.search(small.to_html())


def test_graph_view_of_a_large_graph_is_capped():
    lay = Layout(30, 9, 3, True)  # SmolLM2's shape
    assert lay.n_edges == 70651
    g = Graph(lay, torch.randn(lay.n_forward, lay.n_backward) * lay.valid())
    view = graph_view(g)
    assert len(view.data["edges"]) == 5000 and view.data["n_total"] == 70651
    assert view.size < 150_000
    assert len(graph_view(g, max_edges=None).data["edges"]) == 70651


def test_graph_view_of_a_circuit_and_of_an_empty_graph():
    g = graph().top_n(5)
    assert len(payload(g.view())["edges"]) == 5
    empty = Graph(Layout(2, 4, 4, True), torch.zeros(Layout(2, 4, 4, True).n_forward, Layout(2, 4, 4, True).n_backward))
    with pytest.warns(UserWarning, match="no edges to draw"):
        fig = empty.view()
    assert isinstance(fig, Figure)
    plt.close(fig)


def test_scorecard_view():
    c = card()
    view = c.view()
    html = view.to_html()
    assert not URL.search(html)
    rows = payload(html)["rows"]
    assert [r["claim"] for r in rows] == ["name_movers", "s_inhibition", "backup"]
    assert rows[1]["ci_low"] == 0.2 and rows[1]["verdict"] == "inconclusive"
    with pytest.warns(UserWarning, match="no findings"):
        fig = Scorecard("tiny", "01_ioi").view()
    assert isinstance(fig, Figure)
    plt.close(fig)


def test_page_inlines_the_script_once(tmp_path):
    views = [head_result().view(), card().view(), graph_view(graph())]
    path = page(views, tmp_path / "views.html")
    text = path.read_text()
    assert text.count("window.wbViews = {boot") == 1 and text.count("wbViews.boot(") == 3
    assert not URL.search(text)


def test_exported_report_references_no_cdn():
    nb = nbformat.v4.new_notebook(metadata={"widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2, "version_minor": 0}}})
    view = head_result().view()
    nb.cells = [nbformat.v4.new_markdown_cell("# Report $x^2$"), nbformat.v4.new_code_cell(
        "r.view()", outputs=[nbformat.v4.new_output("execute_result", {"text/html": view.to_html()}, execution_count=1)])]
    html = export_html(nb)
    sources = re.findall(r"<(?:script|link)[^>]*(?:src|href)=[\"']([^\"']+)", html)
    assert sources == []
    assert "cdnjs" not in html and "unpkg" not in html and "require.min.js" not in html
    assert view.id in html and "wbViews.boot" in html


@pytest.mark.slow
def test_attention_view_of_every_smollm2_head(smollm2):
    from workbench.models import to_str_tokens, to_tokens
    from workbench.techniques.attention import get_patterns

    tokens = to_tokens(smollm2, "When Mary and John went to the store, John gave a drink to")
    patterns = get_patterns(smollm2, tokens, None)
    view = attention_view(patterns, to_str_tokens(smollm2, tokens[0]))
    data = payload(view)
    assert len(data["keys"]) == 270 and data["tokens"][:2] == ["<|im_start|>", "When"]
    assert data["patterns"][-1][-1][0] == pytest.approx(patterns[(29, 8)][0, -1, 0].item(), abs=5e-4)
    assert view.size < 300_000  # 3 decimal places: about 245 kB
