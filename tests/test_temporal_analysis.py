"""Tests for workbench.phenomena.temporal.analysis (analysis helpers of the temporal-heads notebook), on the tiny model."""

from types import SimpleNamespace

import pytest
import torch
from hooks import assert_no_hooks

from workbench import temporal as tp
from workbench.core.metrics import LogitDiff, normalise
from workbench.techniques.ablation import ablate
from workbench.techniques.patching import patch_heads


def make_ds(batch=6, seq=8, seed=0, end=None):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, 100, (batch, seq), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2:4] = torch.randint(1, 100, (batch, 2), generator=g)  # the "year" differs
    end = torch.full((batch,), seq - 1) if end is None else end
    return SimpleNamespace(
        clean_tokens=clean, corrupted_tokens=corrupted,
        answer_ids=torch.randint(0, 100, (batch,), generator=g),
        counterfactual_ids=torch.randint(0, 100, (batch,), generator=g),
        pos={"TIME_START": torch.full((batch,), 2), "TIME": torch.full((batch,), 3), "END": end},
        relations=["a"] * (batch // 2) + ["b"] * (batch - batch // 2),
    )


def test_score_matches_hand_computation(tiny):
    ds = make_ds(end=torch.tensor([7, 5, 6, 7, 3, 7]))
    logits = tiny(ds.clean_tokens)
    rows = torch.arange(6)
    last = logits[rows, ds.pos["END"]]
    diff = last[rows, ds.answer_ids] - last[rows, ds.counterfactual_ids]
    s = tp.score(tiny, ds, batch_size=4)
    assert torch.allclose(s["diff"], diff, atol=1e-5)
    assert s["logit_diff"] == pytest.approx(diff.mean().item(), abs=1e-5)
    assert s["accuracy"] == pytest.approx((diff > 0).float().mean().item())


def test_score_candidates_accuracy(tiny):
    ds = make_ds()
    last = tiny(ds.clean_tokens)[:, -1]
    ds.candidate_ids = [torch.tensor([int(a), 10, 11]) for a in ds.answer_ids]
    expected = [bool((last[i, ds.answer_ids[i]] >= last[i, c]).all()) for i, c in enumerate(ds.candidate_ids)]
    assert tp.score(tiny, ds)["accuracy"] == pytest.approx(sum(expected) / 6)


def test_patch_each_head_agrees_with_patch_heads(tiny):
    ds = make_ds()
    metric = normalise(tiny, ds.clean_tokens, ds.corrupted_tokens,
                       LogitDiff(ds.answer_ids, ds.counterfactual_ids, pos=ds.pos["END"]))
    ref = patch_heads(tiny, ds.clean_tokens, ds.corrupted_tokens, metric, progress=False)
    heads = [(0, 0), (0, 3), (1, 2)]
    got = tp.patch_each_head(tiny, ds, heads, batch_size=4, progress=False)
    for layer, h in heads:
        assert got.values[layer, h].item() == pytest.approx(ref.values[layer, h].item(), abs=1e-4)
    assert int(torch.isnan(got.values).sum()) == got.values.numel() - len(heads)


def test_edit_scale_one_equals_full_patch_of_every_head(tiny):
    ds = make_ds()
    every = [(l, h) for l in range(tiny.cfg.n_layers) for h in range(tiny.cfg.n_heads)]
    diff = tp.edit_heads(tiny, ds, every, scale=1.0)
    # every head's output from the corrupted run, MLPs recomputed: compare with a plain loop
    _, cache = tiny.run_with_cache(ds.corrupted_tokens)
    hooks = [(f"blocks.{l}.attn.hook_z", lambda z, hook, l=l: cache[f"blocks.{l}.attn.hook_z"])
             for l in range(tiny.cfg.n_layers)]
    logits = tiny.run_with_hooks(ds.clean_tokens, fwd_hooks=hooks)[:, -1]
    rows = torch.arange(6)
    expected = logits[rows, ds.answer_ids] - logits[rows, ds.counterfactual_ids]
    assert torch.allclose(diff, expected, atol=1e-4)
    assert torch.allclose(tp.edit_heads(tiny, ds, [(0, 1)], scale=0.0), tp.score(tiny, ds)["diff"], atol=1e-5)
    assert_no_hooks(tiny)


def test_time_attention_reference(tiny):
    ds = make_ds()
    _, cache = tiny.run_with_cache(ds.clean_tokens)
    got = tp.time_attention(tiny, ds).values
    for layer in range(tiny.cfg.n_layers):
        p = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, -1, 2:4].sum(-1).mean(0)
        assert torch.allclose(got[layer], p, atol=1e-5)


def test_ablation_table_matches_ablate(tiny):
    ds = make_ds()
    table = tp.ablation_table(tiny, {"d": ds}, {"none": [], "x": [(1, 1)]}, batch_size=4,
                              progress=False)
    with ablate(tiny, heads=[(1, 1)], ablation="mean", reference=ds.corrupted_tokens,
                template_ids=tp.group_ids(ds)):
        expected = tp.score(tiny, ds)["logit_diff"]
    row = table.set_index("heads").loc["x"]
    assert row.logit_diff == pytest.approx(expected, abs=1e-5)
    assert table.set_index("heads").loc["none"].d_logit_diff == 0


def test_group_ids():
    ds = make_ds(end=torch.tensor([7, 7, 5, 7, 7, 5]))
    assert tp.group_ids(ds).tolist() == [1, 1, 0, 3, 3, 2]
    # Prompts differing in their subject are never averaged together (only the time may differ).
    ds.subjects = ["x", "y", "x", "z", "z", "z"]
    assert tp.group_ids(ds).tolist() == [1, 2, 0, 4, 4, 3]


def test_mean_ablation_keeps_the_subject(tiny):
    """With one prompt per subject, the mean over its other-year prompt is that prompt's own
    activation: mean ablation is then patching the other-year run's head output in."""
    ds = make_ds()
    ds.subjects = [f"s{i}" for i in range(6)]
    heads = [(0, 1), (1, 2)]
    table = tp.ablation_table(tiny, {"d": ds}, {"x": heads}, batch_size=4, progress=False)
    _, cache = tiny.run_with_cache(ds.corrupted_tokens)

    def other_year(z, hook):
        z = z.clone()
        hs = [h for layer, h in heads if layer == hook.layer()]
        z[:, :, hs] = cache[hook.name][:, :, hs]
        return z

    names = [f"blocks.{layer}.attn.hook_z" for layer in (0, 1)]
    with tiny.hooks(fwd_hooks=[(n, other_year) for n in names]):
        expected = tp.score(tiny, ds)["logit_diff"]
    assert table.logit_diff.iloc[0] == pytest.approx(expected, abs=1e-5)


def test_bad_input_and_no_hooks_left(tiny):
    ds = make_ds()
    with pytest.raises(ValueError, match="out of range"):
        tp.edit_heads(tiny, ds, [(0, 99)])
    with pytest.raises(TypeError, match="pair"):
        tp.patch_each_head(tiny, ds, [3])
    with pytest.raises(ValueError, match="empty"):
        tp.patch_each_head(tiny, ds, [])
    with pytest.raises(ValueError, match="batch_size"):
        tp.score(tiny, ds, batch_size=0)
    bad = make_ds()
    bad.answer_ids = torch.tensor([1000] * 6)  # out of vocabulary: fails inside the hooked run
    with pytest.raises(IndexError):
        tp.edit_heads(tiny, bad, [(0, 1)])
    assert_no_hooks(tiny)


def test_edit_table_matches_edit_heads(tiny):
    ds = make_ds()
    sets = {"a": [(0, 1), (1, 2)], "b": [(1, 0)]}
    table = tp.edit_table(tiny, ds, sets, [1.0, 3.0], progress=False)
    assert list(table.heads) == ["a", "a", "b", "b"]
    for row in table.itertuples():
        diff = tp.edit_heads(tiny, ds, sets[row.heads], scale=row.scale)
        assert row.logit_diff == pytest.approx(diff.mean().item(), abs=1e-5)
        assert row.flipped == pytest.approx((diff < 0).float().mean().item())


@pytest.mark.parametrize("kind", ["mean", "zero"])
def test_ablated_diffs_per_prompt_match_ablate(tiny, kind):
    ds = make_ds(end=torch.tensor([7, 7, 5, 7, 7, 5]))
    sets = [[], [(1, 1)], [(0, 2), (1, 3)]]
    got = tp.ablated_diffs(tiny, ds, sets, ablation=kind, batch_size=4)
    assert got.shape == (3, 6)
    torch.testing.assert_close(got[0], tp.score(tiny, ds)["diff"])
    for row, heads in zip(got[1:], sets[1:]):
        ref = None if kind == "zero" else ds.corrupted_tokens
        ids = None if kind == "zero" else tp.group_ids(ds)
        with ablate(tiny, heads=heads, ablation=kind, reference=ref, template_ids=ids):
            want = tp.score(tiny, ds)["diff"]
        torch.testing.assert_close(row, want)
        assert not torch.allclose(row, got[0])  # the ablation changes something
    with pytest.raises(ValueError, match="ablation must be"):
        tp.ablated_diffs(tiny, ds, sets, ablation="resample")
