"""Attention views: get_patterns, the static panels, and the widget explorer with its fallback."""

import matplotlib.pyplot as plt
import pytest
import torch
from hooks import assert_no_hooks
from matplotlib.figure import Figure

from workbench import lens, plot, widgets
from workbench.techniques.attention import get_patterns
from workbench.widgets import AttentionExplorer, attention_explorer


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.axison]


def test_get_patterns_matches_the_cache(tiny_gqa, random_tokens):
    heads = [(1, 3), (0, 0), (1, 0)]
    got = get_patterns(tiny_gqa, random_tokens, heads)
    assert list(got) == heads
    _, cache = tiny_gqa.run_with_cache(random_tokens)
    for l, h in heads:
        assert torch.equal(got[(l, h)], cache["pattern", l][:, h])
    assert tuple(got[(0, 0)].shape) == (3, 10, 10)
    every = get_patterns(tiny_gqa, random_tokens, None)
    assert set(every) == {(l, h) for l in (0, 1) for h in range(4)}


def test_get_patterns_hooks_only_the_layers_it_needs(tiny, random_tokens, monkeypatch):
    """Only layer 0 is hooked and the forward pass stops after it."""
    seen = []
    original = tiny.blocks[1].forward

    def spy(*args, **kwargs):
        seen.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny.blocks[1], "forward", spy)
    get_patterns(tiny, random_tokens, [(0, 2)])
    assert seen == []  # block 1 never ran


@pytest.mark.parametrize(
    "heads, message",
    [
        ([(2, 0)], "does not exist"),
        ([(0, 4)], "does not exist"),
        ([], "empty"),
    ],
)
def test_get_patterns_bad_heads(tiny, random_tokens, heads, message):
    with pytest.raises(ValueError, match=message):
        get_patterns(tiny, random_tokens, heads)


def test_get_patterns_takes_head_labels_and_rejects_non_heads(tiny, random_tokens):
    by_label = get_patterns(tiny, random_tokens, ["L0H1", "L1H3"])
    by_pair = get_patterns(tiny, random_tokens, [(0, 1), (1, 3)])
    assert list(by_label) == [(0, 1), (1, 3)]
    assert all(torch.equal(by_label[h], by_pair[h]) for h in by_pair)
    with pytest.raises(TypeError, match="pair"):
        get_patterns(tiny, random_tokens, [(0, 1, 2)])


def test_get_patterns_leaves_no_hooks_after_an_error(tiny, random_tokens, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(tiny.blocks[0].attn, "forward", broken)
    with pytest.raises(RuntimeError, match="boom"):
        get_patterns(tiny, random_tokens, [(1, 1)])
    assert_no_hooks(tiny)


def test_attention_patterns_figure(tiny, random_tokens):
    heads = [(0, 1), (1, 2), (1, 3)]
    patterns = get_patterns(tiny, random_tokens, heads)
    labels = [f"t{i}" for i in range(10)]
    fig = plot.attention_patterns(patterns, labels, batch=2, ncols=2)
    axes = visible_axes(fig)
    assert len(axes) == 3 and len(fig.axes) == 4  # a 2 x 2 grid, the spare panel hidden
    assert [ax.get_title() for ax in axes] == ["L0H1", "L1H2", "L1H3"]
    for ax in axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == labels
        assert [t.get_text() for t in ax.get_yticklabels()] == labels
    drawn = axes[1].images[0].get_array()
    assert torch.allclose(torch.as_tensor(drawn.data), patterns[(1, 2)][2])
    plt.close(fig)
    with pytest.raises(ValueError, match="No patterns"):
        plot.attention_patterns({})


def test_attention_patterns_long_context_has_no_tick_labels(tiny):
    tokens = torch.arange(64)[None]
    fig = plot.attention_patterns(get_patterns(tiny, tokens, [(0, 0)]), [str(i) for i in range(64)])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] != [str(i) for i in range(64)]
    plt.close(fig)


def test_explorer_builds_widgets_and_redraws(tiny, random_tokens):
    ex = attention_explorer(tiny, random_tokens, mode="widget")
    assert isinstance(ex, AttentionExplorer)
    assert (ex.layer.min, ex.layer.max, ex.head.max) == (0, 1, 3)
    assert [v for _, v in ex.prompt.options] == [0, 1, 2]
    assert ex.n_draws == 1 and visible_axes(ex.figure)[0].get_title() == "L0H0"
    assert len(ex.patterns) == 8  # recorded once, every head
    ex.layer.value = 1  # the observer calls the handler
    assert ex.n_draws == 2 and visible_axes(ex.figure)[0].get_title() == "L1H0"
    ex.head.value = 2
    ex.prompt.value = 1
    ex.on_change({"name": "value", "new": 1})  # the handler, called directly
    assert ex.n_draws == 5
    ax = visible_axes(ex.figure)[0]
    assert ax.get_title() == "L1H2"
    expected = get_patterns(tiny, random_tokens, [(1, 2)])[(1, 2)][1]
    assert torch.allclose(torch.as_tensor(ax.images[0].get_array().data), expected)
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(int(t)) for t in random_tokens[1]]
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()


def test_explorer_falls_back_without_ipywidgets(tiny, random_tokens, monkeypatch):
    def missing():
        raise ImportError("No module named 'ipywidgets'")

    monkeypatch.setattr(widgets, "_import_ipywidgets", missing)
    with pytest.warns(UserWarning, match="ipywidgets is not installed"):
        fig = attention_explorer(tiny, random_tokens)
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in visible_axes(fig)] == ["L0H0", "L0H1", "L0H2", "L0H3"]
    plt.close(fig)
    with pytest.raises(ImportError, match="needs ipywidgets"):
        attention_explorer(tiny, random_tokens, mode="widget")
    assert not widgets.widgets_available()


def test_explorer_falls_back_without_a_kernel(tiny, random_tokens, monkeypatch):
    monkeypatch.setattr(widgets, "_in_kernel", lambda: False)
    with pytest.warns(UserWarning, match="no Jupyter kernel"):
        fig = attention_explorer(tiny, random_tokens, mode="auto")
    assert isinstance(fig, Figure)
    plt.close(fig)
    fig = attention_explorer(tiny, random_tokens, mode="static")  # asked for: no warning
    assert isinstance(fig, Figure)
    plt.close(fig)


def test_explorer_bad_input(tiny, random_tokens, monkeypatch):
    with pytest.raises(ValueError, match="mode must be"):
        attention_explorer(tiny, random_tokens, mode="html")
    with pytest.raises(ValueError, match="no tokenizer"):
        attention_explorer(tiny, "some text")
    monkeypatch.setattr(widgets, "MAX_CACHED_ENTRIES", 100)
    with pytest.raises(ValueError, match="Use fewer or shorter prompts"):
        attention_explorer(tiny, random_tokens, mode="widget")


@pytest.mark.slow
def test_attention_views_on_smollm2(smollm2):
    from workbench.models import to_str_tokens, to_tokens

    tokens = to_tokens(smollm2, "When Mary and John went to the store, John gave a drink to")
    fig = plot.attention_patterns(
        get_patterns(smollm2, tokens, [(0, 0), (29, 8)]), to_str_tokens(smollm2, tokens[0])
    )
    ax = visible_axes(fig)[1]
    assert ax.get_title() == "L29H8"
    assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["<|im_start|>", "When", " Mary"]
    plt.close(fig)
    ex = attention_explorer(smollm2, ["When Mary and John went to the store"], mode="widget")
    ex.layer.value = 29
    assert visible_axes(ex.figure)[0].get_title() == "L29H0"
    assert lens.layer_labels(smollm2)[-2:] == ["L29 pre", "final"]
