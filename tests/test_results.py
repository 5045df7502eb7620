"""Result: construction checks, equality, selection by index and label, tables, HTML and plots."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from workbench.core.results import Result


def grid():
    return Result(torch.arange(6.0).reshape(2, 3), ("layer", "head"), metric="score")


def test_construction_checks():
    with pytest.raises(ValueError, match="2-d values"):
        Result(torch.zeros(2, 3), ("layer",))
    with pytest.raises(ValueError, match="Unknown axis"):
        Result(torch.zeros(2), ("layers",))
    with pytest.raises(ValueError, match="distinct"):
        Result(torch.zeros(2, 2), ("layer", "layer"))
    with pytest.raises(ValueError, match="3 labels"):
        Result(torch.zeros(2), ("pos",), labels={"pos": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="not in"):
        Result(torch.zeros(2), ("pos",), labels={"head": ["a", "b"]})


def test_caller_dicts_are_not_changed_and_values_detached():
    labels = {"pos": ("a", "b")}
    meta = {"model": "m"}
    x = torch.ones(2, requires_grad=True) * 2
    r = Result(x, ("pos",), labels=labels, meta=meta)
    r.meta["extra"] = 1
    assert labels == {"pos": ("a", "b")} and meta == {"model": "m"}
    assert not r.values.requires_grad


def test_equality_by_value():
    assert grid() == grid()
    other = grid()
    other.values[0, 0] = -1
    assert grid() != other
    assert grid() != Result(torch.arange(6.0).reshape(2, 3), ("layer", "head"), metric="other")
    nan = Result(torch.tensor([float("nan"), 1.0]), ("pos",))
    assert nan == Result(torch.tensor([float("nan"), 1.0]), ("pos",))
    assert nan != Result(torch.tensor([0.123456789, 1.0]), ("pos",))
    assert grid() != "score"


def test_sel_by_index_and_label():
    r = grid()
    assert r.sel(layer=1).values.tolist() == [3.0, 4.0, 5.0]
    assert r.sel(head="L1H2").values.item() == 5.0
    assert r.sel(layer=-1, head=0).values.item() == 3.0
    labelled = Result(torch.tensor([1.0, 2.0, 3.0]), ("component",), labels={"component": ["embed", "L0H1", "mlp0"]})
    assert labelled.sel(component="L0H1").values.item() == 2.0
    with pytest.raises(ValueError, match="No label 'L9H9'"):
        labelled.sel(component="L9H9")
    with pytest.raises(ValueError, match="out of range"):
        r.sel(layer=2)
    with pytest.raises(ValueError, match="No axis"):
        r.sel(pos=0)
    with pytest.raises(ValueError, match="looks like"):
        r.sel(head="head six")
    dup = Result(torch.zeros(2), ("pos",), labels={"pos": ["x", "x"]})
    with pytest.raises(ValueError, match="appears 2 times"):
        dup.sel(pos="x")


def test_to_frame_and_top():
    r = Result(torch.tensor([[1.0, -5.0], [3.0, 2.0]]), ("layer", "head"), labels={"head": ["a", "b"]})
    frame = r.to_frame()
    assert list(frame.columns) == ["layer", "head", "head_label", "value"]
    assert len(frame) == 4 and frame["value"].sum() == 1.0
    assert r.top(1)["value"].item() == 3.0
    assert r.top(1, by="abs")["value"].item() == -5.0
    assert r.top(1, by="-value")["head_label"].item() == "b"


def test_html_view_grid_and_long():
    html = grid()._repr_html_()
    assert "score" in html and "<table" in html
    long = Result(torch.arange(200.0), ("pos",))._repr_html_()
    assert "200 entries" in long and "199" in long


def test_plot_returns_a_figure_for_1d_and_2d():
    import matplotlib.figure

    assert isinstance(grid().plot(), matplotlib.figure.Figure)
    assert isinstance(Result(torch.arange(4.0), ("pos",)).plot(), matplotlib.figure.Figure)
