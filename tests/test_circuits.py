"""Tests for workbench.phenomena.ioi.circuits: head selection, attention split, circuit building, tables."""

import pytest
import torch

from workbench.core import checks
from workbench.core.metrics import LogitDiff
from workbench.core.results import Result
from workbench.phenomena.ioi.circuits import (
    build_circuit,
    head_table,
    kv_receivers,
    path_effect,
    select_heads,
    split_by_attention,
)
from workbench.techniques.heads import HeadSet
from workbench.techniques.path_patching import path_patch, path_patch_heads


def grid(rows) -> Result:
    return Result(torch.tensor(rows, dtype=torch.float32), ("layer", "head"), "score")


# ------------------------------------------------------------------------------ path_effect


def test_path_effect_matches_single_path_reference(tiny, random_tokens):
    clean = random_tokens
    corrupted = torch.roll(random_tokens, 1, dims=0)
    metric = LogitDiff(answers=[1, 2, 3], wrong=[4, 5, 6])
    r = path_patch_heads(tiny, clean, corrupted, metric, progress=False)
    eff = path_effect(r)
    assert eff.dims == ("layer", "head") and eff.shape == (2, 4)
    clean_value = metric(tiny(clean)).item()
    for layer, h in [(0, 1), (1, 3)]:
        value = path_patch(tiny, clean, corrupted, metric, senders=[(layer, h)]).item()
        assert eff.values[layer, h].item() == pytest.approx(clean_value - value, abs=1e-4)


def test_path_effect_errors():
    with pytest.raises(ValueError, match="meta\\['clean'\\]"):
        path_effect(grid([[1.0]]))
    with pytest.raises(ValueError, match="dims"):
        path_effect(Result(torch.zeros(3), ("pos",)))


# ------------------------------------------------------------------------------ select_heads


def test_select_heads_relative_to_largest_magnitude():
    effect = grid([[0.5, -0.2, 0.07], [0.04, -0.6, 0.0]])  # scale 0.6, threshold 0.06
    assert sorted(select_heads(effect, sign="positive", rel=0.1)) == [(0, 0), (0, 2)]
    assert sorted(select_heads(effect, sign="negative", rel=0.1)) == [(0, 1), (1, 1)]
    assert sorted(select_heads(effect, sign="negative", rel=0.5)) == [(1, 1)]
    assert sorted(select_heads(effect, rel=0.1, min_effect=0.1)) == [(0, 0)]
    assert select_heads(effect, name="movers").name == "movers"


def test_select_heads_selects_nothing_from_a_flat_sweep():
    assert len(select_heads(grid([[0.0, 0.0], [0.0, 0.0]]))) == 0
    assert len(select_heads(grid([[0.0, -1.0]]), sign="positive")) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(sign="both"), "sign"), (dict(rel=0), "rel"), (dict(rel=1.5), "rel"),
     (dict(min_effect=-1), "min_effect")],
)
def test_select_heads_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_heads(grid([[1.0]]), **kwargs)


# ------------------------------------------------------------------------------ receivers, masks


def test_kv_receivers(tiny, tiny_gqa):
    # tiny_gqa: 4 query heads share 2 key/value heads (query heads 0, 1 -> 0; 2, 3 -> 1).
    assert kv_receivers(tiny_gqa, [(1, 0), (1, 1), (1, 3), (0, 2)]) == [(0, 1), (1, 0), (1, 1)]
    assert kv_receivers(tiny, HeadSet([(1, 3), (1, 0)])) == [(1, 0), (1, 3)]
    with pytest.raises(ValueError, match="No heads"):
        kv_receivers(tiny, [])


def test_a_per_prompt_position_is_a_one_hot_mask():
    m = checks.position_mask(torch.tensor([2, 0]), 2, 4)
    assert m.dtype == torch.bool
    assert m.tolist() == [[False, False, True, False], [True, False, False, False]]
    with pytest.raises(ValueError, match="out of range for 4 positions"):
        checks.position_mask(torch.tensor([4]), 1, 4)
    with pytest.raises(ValueError, match="one position per prompt"):
        checks.position_mask(torch.tensor([[1]]), 1, 4)


# ------------------------------------------------------------------------------ split_by_attention


def test_split_by_attention():
    to_s1 = grid([[0.8, 0.0], [0.05, 0.3]])
    to_s1p1 = grid([[0.1, 0.7], [0.02, 0.4]])
    out = split_by_attention([(0, 0), (0, 1), (1, 0), (1, 1)],
                             {"duplicate": to_s1, "induction": to_s1p1}, min_attention=0.1)
    assert sorted(out["duplicate"]) == [(0, 0)]
    assert sorted(out["induction"]) == [(0, 1), (1, 1)]
    assert sorted(out["other"]) == [(1, 0)]  # attends to neither
    assert out["induction"].name == "induction"


def test_split_by_attention_errors():
    with pytest.raises(ValueError, match="empty"):
        split_by_attention([(0, 0)], {})
    with pytest.raises(ValueError, match="rest"):
        split_by_attention([(0, 0)], {"other": grid([[1.0]])})
    with pytest.raises(ValueError, match="dims"):
        split_by_attention([(0, 0)], {"a": Result(torch.zeros(2), ("pos",))})


# ------------------------------------------------------------------------------ build_circuit


def test_build_circuit_union_cap_and_fill():
    effect_a = grid([[0.9, -0.8, 0.1], [0.05, 0.7, -0.3]])  # scale 0.9
    effect_b = grid([[0.0, 0.0, 0.2], [0.4, 0.0, 0.0]])  # scale 0.4
    classes = {"a": HeadSet([(0, 0), (0, 2)], "a"), "b": HeadSet([(1, 0), (0, 2)], "b"),
               "neg": HeadSet([(0, 1)], "neg")}
    effects = {"a": effect_a, "b": effect_b, "neg": effect_a}
    plain = build_circuit(classes, effects, max_heads=5)
    assert sorted(plain.heads) == [(0, 0), (0, 1), (0, 2), (1, 0)] and len(plain.filled) == 0
    # priority: (0,0) 1.0; (0,2) max(0.1/0.9, 0.2/0.4) = 0.5; (1,0) 0.4/0.4 = 1.0; (0,1) 0.8/0.9
    assert plain.priority.values[0, 2].item() == pytest.approx(0.5)
    assert plain.priority.values[0, 1].item() == pytest.approx(0.8 / 0.9)
    capped = build_circuit(classes, effects, max_heads=2)  # the two heads of priority 1.0
    assert sorted(capped.heads) == [(0, 0), (1, 0)]
    assert sorted(capped.dropped) == [(0, 1), (0, 2)]
    last = build_circuit(classes, effects, max_heads=3, last=["neg"])  # (0,1) goes before (0,2)
    assert sorted(last.heads) == [(0, 0), (0, 2), (1, 0)]
    assert sorted(build_circuit(classes, effects, max_heads=3).heads) == [(0, 0), (0, 1), (1, 0)]
    filled = build_circuit(classes, effects, max_heads=6, fill_from=effect_a)
    assert sorted(filled.filled) == [(1, 1), (1, 2)]  # 0.7 and |-0.3| beat 0.05
    assert len(filled.heads) == 6
    frame = filled.to_frame()
    assert dict(zip(zip(frame["layer"], frame["head"]), frame["class"])) == {
        (0, 0): "a", (0, 2): "a", (1, 0): "b", (0, 1): "neg", (1, 1): "fill", (1, 2): "fill"}
    top = build_circuit({}, {}, max_heads=2, fill_from=effect_a)  # no classes: top |fill_from|
    assert sorted(top.heads) == [(0, 0), (0, 1)]


def test_build_circuit_errors():
    effect = grid([[1.0, 0.0]])
    with pytest.raises(ValueError, match="max_heads"):
        build_circuit({}, {}, max_heads=0)
    with pytest.raises(ValueError, match="outside"):
        build_circuit({"a": HeadSet([(3, 0)])}, {"a": effect}, max_heads=2)
    with pytest.raises(ValueError, match="No effect"):
        build_circuit({"a": HeadSet([(0, 0)])}, {}, max_heads=2)
    with pytest.raises(ValueError, match="last"):
        build_circuit({"a": HeadSet([(0, 0)])}, {"a": effect}, max_heads=2, last=["b"])
    with pytest.raises(ValueError, match="dims"):
        build_circuit({"a": HeadSet([(0, 0)])}, {"a": Result(torch.zeros(2), ("pos",))}, max_heads=1)


def test_head_table():
    a, b = grid([[1.0, 2.0], [3.0, 4.0]]), grid([[-1.0, -2.0], [-3.0, -4.0]])
    t = head_table([(1, 1), (0, 1)], first=a, second=b)
    assert t.columns.tolist() == ["head_label", "layer", "head", "first", "second"]
    assert t.values.tolist() == [["L1H1", 1, 1, 4.0, -4.0], ["L0H1", 0, 1, 2.0, -2.0]]


def test_percentile_rank():
    from workbench.phenomena.ioi.circuits import percentile_rank

    r = percentile_rank(grid([[0.2, 0.9, 0.2], [0.5, float("nan"), -1.0]]))
    # order: nan < -1 < 0.2 = 0.2 < 0.5 < 0.9; ties share the mean of ranks 2 and 3
    assert torch.allclose(r.values, torch.tensor([[50.0, 100.0, 50.0], [80.0, 0.0, 20.0]]))
    with pytest.raises(ValueError, match="two heads"):
        percentile_rank(grid([[1.0]]))


def test_percentile_rank_equals_the_counting_formula():
    """scipy.stats.rankdata gives the same floats as counting heads below and tied (the formula it
    replaced), with ties, NaN and -inf."""
    from workbench.phenomena.ioi.circuits import percentile_rank

    def counted(values):
        v = values.double().flatten().nan_to_num(float("-inf"))
        below = (v[None, :] < v[:, None]).sum(1).double()
        equal = (v[None, :] == v[:, None]).sum(1).double() - 1
        return (100 * (below + equal / 2) / (v.numel() - 1)).float().reshape(values.shape)

    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        layers = int(torch.randint(1, 31, (1,), generator=gen))
        heads = int(torch.randint(2, 10, (1,), generator=gen))
        values = torch.randn(layers, heads, generator=gen)
        if trial % 2:
            values = (values * 2).round() / 2  # many ties
        values[torch.rand(layers, heads, generator=gen) < 0.1] = float("nan")
        values[torch.rand(layers, heads, generator=gen) < 0.05] = float("-inf")
        assert torch.equal(percentile_rank(grid(values.tolist())).values, counted(values))


def test_ablated_metric_matches_faithfulness_per_set(tiny_gqa):
    from workbench import ablation
    from workbench.phenomena.ioi.circuits import ablated_metric

    gen = torch.Generator().manual_seed(3)
    tokens, reference = torch.randint(0, 100, (2, 6, 7), generator=gen).unbind(0)
    templates = torch.tensor([0, 1, 0, 1, 2, 2])
    per_prompt = LogitDiff(answers=[1, 2, 3, 4, 5, 6], wrong=[7, 8, 9, 10, 11, 12], per_prompt=True)
    mean = LogitDiff(answers=[1, 2, 3, 4, 5, 6], wrong=[7, 8, 9, 10, 11, 12])
    sets = [[(0, 1), (1, 2)], [], [(1, 0), (1, 1), (1, 3)], [(layer, h) for layer in range(2) for h in range(4)],
            [(0, 0)]]
    fast = ablated_metric(tiny_gqa, tokens, reference, per_prompt, sets, template_ids=templates, chunk=2)
    assert fast.shape == (5, 6)
    for heads, row in zip(sets, fast):
        ref = ablation.faithfulness(tiny_gqa, tokens, mean, ablation.Circuit(heads), reference=reference,
                                    template_ids=templates, keep_mlps=True)
        assert abs(row.mean().item() - ref.circuit_value) < 1e-4
    # every head kept: the model itself
    assert torch.allclose(fast[3], per_prompt(tiny_gqa(tokens)), atol=1e-4)
    with pytest.raises(ValueError, match="outside"):
        ablated_metric(tiny_gqa, tokens, reference, per_prompt, [[(2, 0)]], template_ids=templates)


def test_attention_by_prompt_averages_to_attention_to(tiny):
    from workbench.phenomena.ioi.circuits import attention_by_prompt
    from workbench.techniques.heads import attention_to

    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, 100, (4, 9), generator=gen)
    query, key1, key2 = torch.tensor([8, 7, 8, 6]), torch.tensor([1, 2, 0, 3]), torch.tensor([4, 4, 5, 1])
    per = attention_by_prompt(tiny, tokens, query, [key1, key2])
    mask = lambda p: checks.position_mask(p, 4, 9)  # noqa: E731
    ref = attention_to(tiny, tokens, mask(key1) | mask(key2), mask(query))
    assert per.shape == (4, 2, 4)
    assert torch.allclose(per.mean(0), ref.values, atol=1e-5)


@pytest.mark.slow
def test_ioi_splits_are_disjoint(smollm2):
    from workbench.phenomena.ioi.circuits import ioi_splits

    sel, ev = ioi_splits(smollm2, 8, 24, seed=0)
    assert len(sel) == 8 and len(ev) == 24
    names_sel = {n for pair in sel.names for n in pair}
    names_ev = {n for pair in ev.names for n in pair}
    assert not names_sel & names_ev
    assert not set(sel.template_ids.tolist()) & set(ev.template_ids.tolist())
    assert not set(sel.prompts) & set(ev.prompts)


def test_ablated_metric_readout_path_matches_full_logits(tiny_gqa):
    from workbench.phenomena.ioi.circuits import ablated_metric

    gen = torch.Generator().manual_seed(5)
    tokens, reference = torch.randint(0, 100, (2, 4, 6), generator=gen).unbind(0)
    templates = torch.tensor([0, 0, 1, 1])
    metric = LogitDiff(answers=[1, 2, 3, 4], wrong=[5, 6, 7, 8], pos=torch.tensor([5, 4, 5, 3]), per_prompt=True)

    class NoReadout:  # the same metric without a readout: full logits
        def __call__(self, logits):
            return metric(logits)

    sets = [[(0, 1)], [(1, 2), (1, 3)], []]
    fast = ablated_metric(tiny_gqa, tokens, reference, metric, sets, template_ids=templates, chunk=2)
    slow = ablated_metric(tiny_gqa, tokens, reference, NoReadout(), sets, template_ids=templates, chunk=3)
    assert torch.allclose(fast, slow, atol=1e-5)
