"""Ablations and circuit evaluation, checked against hand-written hooks."""

import pytest
import torch
from hooks import assert_no_hooks

from workbench import models
from workbench.core.metrics import LogitDiff
from workbench.techniques.ablation import (
    Circuit,
    ablate,
    ablation_hooks,
    completeness,
    faithfulness,
    minimality,
)


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(2)
    tokens, reference = torch.randint(0, 100, (2, 6, 8), generator=gen).unbind(0)
    return tokens, reference, LogitDiff(answers=[1, 2, 3, 4, 5, 6], wrong=[7, 8, 9, 10, 11, 12])


def capture_z(model, tokens, layer):
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.attn.hook_z")
    return cache[f"blocks.{layer}.attn.hook_z"]


def test_zero_head_and_mlp_equal_hand_hooks(tiny, data):
    tokens, _, _ = data

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    def zero(out, hook):
        return torch.zeros_like(out)

    want = tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_head),
                                                  ("blocks.1.hook_mlp_out", zero)])
    with ablate(tiny, heads=[(0, 2)], mlps=[1], ablation="zero"):
        got = tiny(tokens)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, tiny(tokens), atol=1e-3)
    assert_no_hooks(tiny)


def test_mean_with_input_as_reference_keeps_per_position_mean(tiny, data):
    tokens, _, _ = data
    clean_z = capture_z(tiny, tokens, 1)
    with ablate(tiny, heads=[(1, 0), (1, 3)], ablation="mean", reference=tokens,
                template_ids=[0] * 6):
        z = capture_z(tiny, tokens, 1)
    mean = clean_z.mean(0)  # [pos, head, d_head]
    for h in (0, 3):
        assert torch.allclose(z[:, :, h], mean[None, :, h].expand(6, -1, -1), atol=1e-6)
        assert torch.allclose(z[:, :, h].mean(0), clean_z[:, :, h].mean(0), atol=1e-6)
    assert torch.equal(z[:, :, 1], clean_z[:, :, 1])  # other heads untouched
    # Without template ids the mean is the same (one template).
    with ablate(tiny, heads=[(1, 0)], ablation="mean", reference=tokens):
        z2 = capture_z(tiny, tokens, 1)
    assert torch.allclose(z2[:, :, 0], z[:, :, 0], atol=1e-6)


def test_mean_per_template(tiny, data):
    tokens, reference, _ = data
    ref_ids = torch.tensor([0, 1, 0, 1, 1, 0])
    ids = torch.tensor([1, 1, 0, 0, 1, 0])
    ref_z = capture_z(tiny, reference, 0)
    with ablate(tiny, heads=[(0, 1)], ablation="mean", reference=reference, template_ids=ids,
                reference_template_ids=ref_ids):
        z = capture_z(tiny, tokens, 0)
    for b in range(6):
        want = ref_z[ref_ids == ids[b], :, 1].mean(0)
        assert torch.allclose(z[b, :, 1], want, atol=1e-6)


def test_mean_mlp_per_position(tiny, data):
    tokens, reference, _ = data
    _, ref = tiny.run_with_cache(reference, names_filter="blocks.0.hook_mlp_out")
    with ablate(tiny, mlps=[0], ablation="mean", reference=reference):
        _, c = tiny.run_with_cache(tokens, names_filter="blocks.0.hook_mlp_out")
    want = ref["blocks.0.hook_mlp_out"].mean(0, keepdim=True).expand(6, -1, -1)
    assert torch.allclose(c["blocks.0.hook_mlp_out"], want, atol=1e-6)


def test_resample_is_seeded_and_uses_other_prompts(tiny, data):
    tokens, reference, _ = data
    clean_z = capture_z(tiny, tokens, 0)

    def run(seed, ref=tokens):
        with ablate(tiny, heads=[(0, 3)], ablation="resample", reference=ref, seed=seed):
            return capture_z(tiny, tokens, 0)[:, :, 3]

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    for i in range(6):  # each prompt got another prompt's activation, never its own
        match = [j for j in range(6) if torch.allclose(a[i], clean_z[j, :, 3])]
        assert len(match) == 1 and match[0] != i
    # Per template: the donor shares the template.
    ids = [0, 0, 0, 1, 1, 1]
    with ablate(tiny, heads=[(0, 3)], ablation="resample", reference=tokens, template_ids=ids):
        z = capture_z(tiny, tokens, 0)[:, :, 3]
    for i in range(6):
        j = next(j for j in range(6) if torch.allclose(z[i], clean_z[j, :, 3]))
        assert ids[j] == ids[i] and j != i


def test_hooks_removed_on_exit_and_error(tiny, data):
    tokens, reference, _ = data
    with ablate(tiny, heads=[(0, 0)], mlps=[0], ablation="mean", reference=reference):
        assert tiny.hook_dict["blocks.0.attn.hook_z"].fwd_hooks
    assert_no_hooks(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with ablate(tiny, heads=[(0, 0)], ablation="resample", reference=reference):
            tiny(tokens)
            raise RuntimeError("boom")
    assert_no_hooks(tiny)
    # An error raised by the ablation itself, inside the forward pass.
    with pytest.raises(ValueError, match="sequence length"):
        with ablate(tiny, heads=[(0, 0)], ablation="mean", reference=reference[:, :5]):
            tiny(tokens)
    assert_no_hooks(tiny)


def test_ablation_hooks_for_run_with_hooks(tiny, data):
    tokens, reference, _ = data
    hooks = ablation_hooks(tiny, heads=[(1, 1)], ablation="mean", reference=reference)
    with ablate(tiny, heads=[(1, 1)], ablation="mean", reference=reference):
        want = tiny(tokens)
    assert torch.allclose(tiny.run_with_hooks(tokens, fwd_hooks=hooks), want, atol=1e-6)


def test_faithfulness_full_and_empty(tiny, data):
    tokens, reference, metric = data
    full = faithfulness(tiny, tokens, metric, Circuit.full(tiny), reference=reference)
    assert full.faithfulness == pytest.approx(1.0, abs=1e-7)
    assert full.model_value == pytest.approx(metric(tiny(tokens)).item(), abs=1e-6)
    empty = faithfulness(tiny, tokens, metric, [], reference=reference)
    everything = Circuit.full(tiny)
    with ablate(tiny, heads=everything.heads, mlps=everything.mlps, ablation="mean",
                reference=reference):
        want = metric(tiny(tokens)).item()
    assert empty.circuit_value == pytest.approx(want, abs=1e-6)
    assert empty.empty_value == pytest.approx(want, abs=1e-6)
    # A partial circuit equals ablating its complement by hand.
    c = Circuit([(0, 1), (1, 2)]).with_all_mlps(tiny)
    f = faithfulness(tiny, tokens, metric, c, reference=reference)
    rest = [(i, h) for i in range(2) for h in range(4) if (i, h) not in c]
    with ablate(tiny, heads=rest, ablation="mean", reference=reference):
        want = metric(tiny(tokens)).item()
    assert f.circuit_value == pytest.approx(want, abs=1e-6)
    assert f.faithfulness == pytest.approx(want / f.model_value, rel=1e-6)
    frame = f.to_frame()
    assert frame.loc[0, "n_components"] == 4 and frame.loc[0, "faithfulness"] == f.faithfulness
    assert_no_hooks(tiny)


def test_completeness(tiny, data):
    tokens, reference, metric = data
    c = Circuit([(0, 1), (1, 2), (1, 3)], mlps=[0])
    res = completeness(tiny, tokens, metric, c, reference=reference,
                       subsets=[[], [(1, 2)], c], progress=False)
    f = faithfulness(tiny, tokens, metric, c, reference=reference)
    assert res.circuit_values[0] == pytest.approx(f.circuit_value, abs=1e-6)  # K empty: F(C)
    assert res.model_values[0] == pytest.approx(f.model_value, abs=1e-6)  # K empty: F(M)
    assert res.circuit_values[2] == pytest.approx(f.empty_value, abs=1e-6)  # K = C: F(empty)
    with ablate(tiny, heads=[(1, 2)], ablation="mean", reference=reference):
        want = metric(tiny(tokens)).item()
    assert res.model_values[1] == pytest.approx(want, abs=1e-6)
    assert torch.allclose(res.incompleteness, (res.circuit_values - res.model_values).abs())
    assert len(res.to_frame()) == 3
    fig = res.plot()
    dots = fig.axes[0].collections[0].get_offsets()
    assert dots.shape == (3, 2) and abs(dots[1][0] - res.model_values[1].item()) < 1e-6
    a = completeness(tiny, tokens, metric, c, reference=reference, n_draws=4, seed=3,
                     progress=False)
    b = completeness(tiny, tokens, metric, c, reference=reference, n_draws=4, seed=3,
                     progress=False)
    assert a.subsets == b.subsets and torch.equal(a.circuit_values, b.circuit_values)
    assert all(not (k - c) for k in a.subsets)


def test_minimality(tiny, data):
    tokens, reference, metric = data
    c = Circuit([(0, 1), (1, 2)], mlps=[1])
    res = minimality(tiny, tokens, metric, c, reference=reference, k={(1, 2): [1]},
                     progress=False)
    def F(kept):
        return faithfulness(tiny, tokens, metric, kept, reference=reference).circuit_value

    assert res.without_k[0] == pytest.approx(F(c), abs=1e-6)  # L0H1, K empty
    assert res.without_k_and_v[0] == pytest.approx(F(c - [(0, 1)]), abs=1e-6)
    assert res.without_k[1] == pytest.approx(F(c - [1]), abs=1e-6)  # L1H2, K = {mlp1}
    assert res.without_k_and_v[1] == pytest.approx(F(c - [1, (1, 2)]), abs=1e-6)
    scores = res.scores
    assert scores.dims == ("component",) and scores.labels["component"] == ["L0H1", "L1H2", "mlp1"]
    assert torch.allclose(scores.values, (res.without_k - res.without_k_and_v).abs())
    assert list(res.to_frame()["K"]) == ["", "mlp1", ""]
    shared = minimality(tiny, tokens, metric, c, reference=reference, k=[(0, 1)], progress=False)
    assert shared.ks[0] == Circuit() and shared.ks[1] == Circuit([(0, 1)])


def test_keep_mlps(tiny, data):
    tokens, reference, metric = data
    heads = Circuit([(0, 1), (1, 2), (1, 0)])
    kept = faithfulness(tiny, tokens, metric, heads, reference=reference, keep_mlps=True)
    withm = faithfulness(tiny, tokens, metric, heads.with_all_mlps(tiny), reference=reference)
    assert kept.circuit_value == pytest.approx(withm.circuit_value, abs=1e-6)
    assert kept.circuit == heads  # MLPs are not part of the evaluated circuit
    with ablate(tiny, heads=Circuit.full(tiny).heads, ablation="mean", reference=reference):
        assert kept.empty_value == pytest.approx(metric(tiny(tokens)).item(), abs=1e-6)
    comp = completeness(tiny, tokens, metric, heads | [0, 1], reference=reference, n_draws=6,
                        keep_mlps=True, progress=False)
    assert all(not k.mlps for k in comp.subsets)
    mini = minimality(tiny, tokens, metric, heads | [1], reference=reference, keep_mlps=True,
                      progress=False)
    assert mini.scores.labels["component"] == ["L0H1", "L1H0", "L1H2"]
    with pytest.raises(ValueError, match="empty"):
        minimality(tiny, tokens, metric, [0, 1], reference=reference, keep_mlps=True)


def test_errors(tiny, data):
    tokens, reference, metric = data
    with pytest.raises(ValueError, match="Unknown ablation"):
        with ablate(tiny, heads=[(0, 0)], ablation="gaussian", reference=reference):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with ablate(tiny, heads=[(0, 4)], ablation="zero"):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with ablate(tiny, heads=[(2, 0)], ablation="zero"):
            pass
    with pytest.raises(ValueError, match="MLP 7 is out of range"):
        with ablate(tiny, mlps=[7], ablation="zero"):
            pass
    with pytest.raises(TypeError, match="pair"):
        Circuit([3])
    with pytest.raises(TypeError, match="ambiguous"):
        Circuit([(0, 1)]) - (0, 1)
    with pytest.raises(ValueError, match="needs reference"):
        with ablate(tiny, heads=[(0, 0)], ablation="mean"):
            pass
    with pytest.raises(ValueError, match="sequence length"):
        faithfulness(tiny, tokens, metric, [(0, 0)], reference=reference[:, :6])
    with pytest.raises(ValueError, match="template ids for a reference batch"):
        with ablate(tiny, heads=[(0, 0)], reference=reference, template_ids=[0, 1]):
            pass
    with pytest.raises(ValueError, match="template_ids has 3 entries"):
        faithfulness(tiny, tokens, metric, [(0, 0)], reference=reference[:3],
                     template_ids=[0, 0, 1])
    with pytest.raises(ValueError, match="template_ids has 2 entries"):
        with ablate(tiny, heads=[(0, 0)], reference=reference[:2], template_ids=[0, 1]):
            tiny(tokens)
    with pytest.raises(ValueError, match="no prompt in the reference"):
        faithfulness(tiny, tokens, metric, [(0, 0)], reference=reference,
                     template_ids=[0, 0, 0, 1, 1, 2], reference_template_ids=[0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        completeness(tiny, tokens, metric, [], reference=reference)
    with pytest.raises(ValueError, match="empty"):
        minimality(tiny, tokens, metric, Circuit(), reference=reference)
    with pytest.raises(ValueError, match="outside the circuit"):
        completeness(tiny, tokens, metric, [(0, 0)], reference=reference, subsets=[[(0, 1)]])
    with pytest.raises(ValueError, match="outside the circuit"):
        minimality(tiny, tokens, metric, [(0, 0), (1, 1)], reference=reference, k=[(0, 1)])
    with pytest.raises(ValueError, match="attention-only"):
        faithfulness(models.tiny_model(attn_only=True), tokens, metric, [0], reference=reference)
    assert_no_hooks(tiny)


@pytest.mark.slow
def test_smollm2_ioi_mean_ablation_by_template(smollm2):
    from workbench.phenomena.ioi.dataset import ioi_dataset

    ds = ioi_dataset(smollm2, n=8, seed=0, templates=[0, 2])
    metric = ds.logit_diff()
    full = Circuit.full(smollm2)
    f = faithfulness(smollm2, ds.clean_tokens, metric, full, reference=ds.abc_tokens,
                     template_ids=ds.template_ids)
    assert f.faithfulness == pytest.approx(1.0)
    assert f.model_value > 1  # the model does IOI
    # Mean-ablating every head of the last 2 layers changes the logit difference.
    late = Circuit.full(smollm2) - [(i, h) for i in (28, 29) for h in range(9)]
    g = faithfulness(smollm2, ds.clean_tokens, metric, late, reference=ds.abc_tokens,
                     template_ids=ds.template_ids)
    assert g.circuit_value != pytest.approx(f.model_value, abs=1e-3)
    assert_no_hooks(smollm2)


# ----------------------------------------------------------------------------- attention masking
def test_mask_attention_makes_patterns_uniform_and_leaves_other_heads(tiny_gqa, random_tokens):
    from workbench.techniques.ablation import mask_attention

    _, clean = tiny_gqa.run_with_cache(random_tokens)
    with mask_attention(tiny_gqa, [(1, 2), (0, 0)]):
        _, masked = tiny_gqa.run_with_cache(random_tokens)
    seq = random_tokens.shape[1]
    uniform = torch.tril(torch.ones(seq, seq)) / torch.arange(1, seq + 1)[:, None]
    for layer, h in [(1, 2), (0, 0)]:
        got = masked[f"blocks.{layer}.attn.hook_pattern"][:, h]
        assert torch.allclose(got, uniform.expand_as(got), atol=1e-6)
    # Layer 0's other heads see the same input, so their patterns are untouched.
    assert torch.allclose(
        masked["blocks.0.attn.hook_pattern"][:, 1:], clean["blocks.0.attn.hook_pattern"][:, 1:]
    )
    assert not torch.allclose(
        masked["blocks.0.attn.hook_pattern"][:, 0], clean["blocks.0.attn.hook_pattern"][:, 0]
    )
    assert_no_hooks(tiny_gqa)


def test_mask_attention_checks_heads_and_cleans_up_on_error(tiny, random_tokens):
    from workbench.techniques.ablation import mask_attention

    with pytest.raises(ValueError, match="out of range"):
        with mask_attention(tiny, [(5, 0)]):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with mask_attention(tiny, [(0, 1)]):
            tiny(random_tokens)
            raise RuntimeError("boom")
    assert_no_hooks(tiny)
