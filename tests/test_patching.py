"""Exact activation patching: the batched engine against TransformerLens and a plain loop."""

import pytest
import torch
import transformer_lens.patching as tlp
from hooks import assert_no_hooks

from workbench import models, patching
from workbench.core import engine
from workbench.core.metrics import LogitDiff, normalise

SITES = ["resid_pre", "attn_out", "mlp_out", "z", "q", "k", "v", "pattern"]
TOL = 1e-4


@pytest.fixture
def tiny_rms():
    return models.tiny_model(normalization="RMS", positional="rotary")


@pytest.fixture
def pair():
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 100, (3, 6), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(0, 100, (3,), generator=gen)
    corrupted[:, 4] = torch.randint(0, 100, (3,), generator=gen)
    return clean, corrupted


@pytest.fixture
def metric():
    return LogitDiff(answers=[1, 2, 3], wrong=[4, 5, 6])


def tl_cache(model, tokens):
    return model.run_with_cache(tokens)[1]


# ------------------------------------------------------------------------------------ agreement


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gqa", "tiny_rms"])
def test_heads_equal_transformer_lens(fixture, request, pair, metric):
    model = request.getfixturevalue(fixture)
    clean, corrupted = pair
    cache = tl_cache(model, clean)
    ours = patching.patch_heads(model, clean, corrupted, metric, progress=False)
    theirs = tlp.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)
    assert ours.dims == ("layer", "head") and ours.shape == tuple(theirs.shape)
    assert (ours.values - theirs).abs().max() < TOL
    assert theirs.abs().max() > 1e-2  # the patch does something, so equality means something
    ours = patching.patch_heads(model, clean, corrupted, metric, by_pos=True, variants_per_pass=5, progress=False)
    theirs = tlp.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, metric)
    assert ours.dims == ("layer", "pos", "head") and ours.shape == tuple(theirs.shape)
    assert (ours.values - theirs).abs().max() < TOL


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gqa"])
def test_other_sites_equal_transformer_lens(fixture, request, pair, metric):
    model = request.getfixturevalue(fixture)
    clean, corrupted = pair
    cache = tl_cache(model, clean)
    cases = {
        ("resid_pre", True): tlp.get_act_patch_resid_pre,
        ("attn_out", True): tlp.get_act_patch_attn_out,
        ("mlp_out", True): tlp.get_act_patch_mlp_out,
        ("q", False): tlp.get_act_patch_attn_head_q_all_pos,
        ("k", False): tlp.get_act_patch_attn_head_k_all_pos,
        ("v", False): tlp.get_act_patch_attn_head_v_all_pos,
        ("pattern", False): tlp.get_act_patch_attn_head_pattern_all_pos,
        ("pattern", True): tlp.get_act_patch_attn_head_pattern_by_pos,
    }
    for (site, by_pos), fn in cases.items():
        ours = patching.patch(model, clean, corrupted, metric, site=site, by_pos=by_pos, progress=False)
        theirs = fn(model, corrupted, cache, metric)
        if site == "pattern" and by_pos:  # TL orders (layer, head, dest_pos)
            theirs = theirs.permute(0, 2, 1)
        assert ours.shape == tuple(theirs.shape), site
        assert (ours.values - theirs).abs().max() < TOL, (site, by_pos)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gqa"])
@pytest.mark.parametrize("site", SITES)
def test_fast_equals_reference_loop(fixture, site, request, pair, metric):
    model = request.getfixturevalue(fixture)
    clean, corrupted = pair
    for by_pos in (False, True):
        # positions 2 and 4 are the corrupted ones; 0 and 5 the ends (fewer forwards for the loop)
        opts = dict(site=site, by_pos=by_pos, positions=[0, 2, 4, 5] if by_pos else None)
        fast = patching.patch(model, clean, corrupted, metric, variants_per_pass=7, progress=False, **opts)
        ref = patching.patch_reference(model, clean, corrupted, metric, progress=False, **opts)
        assert fast.dims == ref.dims and fast.labels == ref.labels
        assert (fast.values - ref.values).abs().max() < TOL, (site, by_pos)
    assert_no_hooks(model)


def test_shared_prefix_positions_need_no_forward(tiny, pair, metric, monkeypatch):
    clean, corrupted = pair  # positions 0 and 1 agree in every prompt, position 2 does not
    assert patching.shared_prefix(clean, corrupted) == 2
    assert patching.shared_prefix(clean, clean) == clean.shape[1]
    other = corrupted.clone()
    other[1, 0] += 1  # one prompt differs at position 0: nothing is shared
    assert patching.shared_prefix(clean, other) == 0
    ref = patching.patch_reference(tiny, clean, corrupted, metric, site="z", by_pos=True,
                                   positions=[0, 1], progress=False)
    assert (ref.values - ref.meta["corrupted"]).abs().max() < TOL  # the patches are no-ops

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass ran for a position the prompts share")

    monkeypatch.setattr(engine, "run_pass", no_forward)
    for site in ("z", "pattern", "k", "resid_pre"):
        fast = patching.patch(tiny, clean, corrupted, metric, site=site, by_pos=True,
                              positions=[0, 1], progress=False)
        assert (fast.values == fast.meta["corrupted"]).all(), site


def test_no_shared_prefix_equals_reference(tiny_gqa, pair, metric):
    clean, corrupted = pair
    corrupted = corrupted.clone()
    corrupted[0, 0] = (corrupted[0, 0] + 1) % 100
    opts = dict(site="z", by_pos=True, positions=[0, 1, 2])
    fast = patching.patch(tiny_gqa, clean, corrupted, metric, variants_per_pass=4, progress=False, **opts)
    ref = patching.patch_reference(tiny_gqa, clean, corrupted, metric, progress=False, **opts)
    assert (fast.values - ref.values).abs().max() < TOL
    assert (fast.values[:, 0] - fast.meta["corrupted"]).abs().max() > 1e-3  # position 0 does matter


def test_plain_callable_metric_takes_full_logit_path(tiny, pair, metric):
    clean, corrupted = pair

    def plain(logits):  # no readout: the engine must build full logits
        return metric(logits)

    for site in ("z", "resid_pre"):
        a = patching.patch(tiny, clean, corrupted, plain, site=site, by_pos=True, progress=False)
        b = patching.patch(tiny, clean, corrupted, metric, site=site, by_pos=True, progress=False)
        assert (a.values - b.values).abs().max() < TOL


def test_readout_before_last_position_and_per_prompt_positions(tiny, pair):
    clean, corrupted = pair
    for pos in (3, torch.tensor([2, 4, 5])):  # positions after the readout cannot matter
        m = LogitDiff(answers=[1, 2, 3], wrong=[4, 5, 6], pos=pos)
        opts = dict(by_pos=True, heads=[(0, 1), (0, 2), (1, 1), (1, 2)], progress=False)
        fast = patching.patch_heads(tiny, clean, corrupted, m, variants_per_pass=3, **opts)
        ref = patching.patch_reference(tiny, clean, corrupted, m, site="z", **opts)
        assert (fast.values - ref.values).abs().max() < TOL
    assert fast.values[:, 5].abs().max() > 0  # prompt 3 still reads position 5


def test_normalised_metric_baselines(tiny, pair, metric):
    clean, corrupted = pair
    nm = normalise(tiny, clean, corrupted, metric)
    r = patching.patch_resid(tiny, clean, corrupted, nm, progress=False)
    assert r.meta["clean"] == pytest.approx(1, abs=1e-5) and r.meta["corrupted"] == pytest.approx(0, abs=1e-5)
    # At layer 0 the residual depends only on the token and its position: where clean and
    # corrupted tokens agree, patching changes nothing and the normalised metric stays at 0.
    assert r.values[0, [0, 1, 3, 5]].abs().max() < 1e-5
    ref = patching.patch_reference(tiny, clean, corrupted, nm, site="resid_pre", progress=False)
    assert (r.values - ref.values).abs().max() < TOL


def test_variants_per_pass_does_not_change_values(tiny_gqa, pair, metric):
    clean, corrupted = pair
    runs = [patching.patch_heads(tiny_gqa, clean, corrupted, metric, by_pos=True, variants_per_pass=b,
                                 positions=[1, 2, 4], progress=False).values for b in (2, 5, 1000)]
    assert (runs[0] - runs[1]).abs().max() < TOL and (runs[0] - runs[2]).abs().max() < TOL


def test_selection_is_a_slice_of_the_full_sweep(tiny, pair, metric):
    clean, corrupted = pair
    full = patching.patch_heads(tiny, clean, corrupted, metric, by_pos=True, progress=False)
    part = patching.patch_heads(tiny, clean, corrupted, metric, by_pos=True,
                                heads=[(1, 3), "L1H0"], positions=[-1, 2], progress=False)
    assert part.labels["layer"] == [1] and part.labels["head"] == [3, 0] and part.labels["pos"] == [5, 2]
    expected = full.values[1][[5, 2]][:, [3, 0]]
    assert (part.values[0] - expected).abs().max() < TOL


def test_gqa_keys_and_values_are_per_kv_head(tiny_gqa, pair, metric):
    clean, corrupted = pair
    for site in ("k", "v"):
        r = patching.patch_heads(tiny_gqa, clean, corrupted, metric, site=site, progress=False)
        assert r.dims == ("layer", "kv_head") and r.shape == (2, 2)
        assert r.meta["query_heads"] == {0: [0, 1], 1: [2, 3]}
        assert r.labels["kv_head"] == ["kv0:q0-q1", "kv1:q2-q3"]
    q = patching.patch_heads(tiny_gqa, clean, corrupted, metric, site="q", progress=False)
    assert q.dims == ("layer", "head") and q.shape == (2, 4)


def test_processed_model_without_final_norm_weight(pair, metric):
    model = models.tiny_model()
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    clean, corrupted = pair
    assert not hasattr(model.ln_final, "w")
    cache = tl_cache(model, clean)
    ours = patching.patch_heads(model, clean, corrupted, metric, progress=False)
    theirs = tlp.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)
    assert (ours.values - theirs).abs().max() < TOL
    ours = patching.patch_resid(model, clean, corrupted, metric, progress=False)
    theirs = tlp.get_act_patch_resid_pre(model, corrupted, cache, metric)
    assert (ours.values - theirs).abs().max() < TOL


def test_full_forward_fallback_equals_fast_path(tiny_gqa, pair, metric, monkeypatch):
    """The path a TransformerBridge takes (no start_at_layer): batched full forwards."""
    clean, corrupted = pair
    fast = patching.patch_heads(tiny_gqa, clean, corrupted, metric, by_pos=True, progress=False)
    monkeypatch.setattr(engine, "supports_fast_path", lambda model: False)
    slow = patching.patch_heads(tiny_gqa, clean, corrupted, metric, by_pos=True, variants_per_pass=6,
                                progress=False)
    assert (fast.values - slow.values).abs().max() < TOL


def test_result_frame_and_plot(tiny, pair, metric):
    clean, corrupted = pair
    r = patching.patch_heads(tiny, clean, corrupted, metric, progress=False)
    frame = r.to_frame()
    assert len(frame) == 8 and set(frame.columns) >= {"layer", "head", "value"}
    assert r.meta["direction"].startswith("clean activation patched into the corrupted")
    assert r.plot() is not None


# ------------------------------------------------------------------------------------ errors


def _raises(model, exc, match, *args, **kwargs):
    with pytest.raises(exc, match=match):
        patching.patch(model, *args, **kwargs)
    assert_no_hooks(model)


def test_bad_tokens(tiny, pair, metric):
    clean, corrupted = pair
    opts = dict(site="z", progress=False)
    _raises(tiny, ValueError, "same token length", clean, corrupted[:, :5], metric, **opts)
    _raises(tiny, ValueError, "same batch size", clean, corrupted[:2], metric, **opts)
    _raises(tiny, ValueError, "is empty", clean[:0], corrupted[:0], metric, **opts)
    _raises(tiny, ValueError, "2-d", clean[0], corrupted[0], metric, **opts)
    _raises(tiny, TypeError, "integer tensor", clean.float(), corrupted, metric, **opts)


def test_bad_selection_and_options(tiny, tiny_gqa, pair, metric):
    clean, corrupted = pair
    args = (clean, corrupted, metric)
    _raises(tiny, ValueError, "layer 2 is out of range", *args, site="z", layers=[0, 2], progress=False)
    _raises(tiny, ValueError, "L0H4 does not exist", *args, site="z", heads=[(0, 4)], progress=False)
    _raises(tiny_gqa, ValueError, "L0H2 does not exist", *args, site="k", heads=[(0, 2)], progress=False)
    _raises(tiny, TypeError, "pair \\(layer, head\\)", *args, site="z", heads=[1], progress=False)
    _raises(tiny, ValueError, "not both", *args, site="z", layers=[0], heads=[(0, 1)], progress=False)
    _raises(tiny, ValueError, "position 6 is out of range", *args, site="resid_pre", positions=[6],
            progress=False)
    _raises(tiny, ValueError, "empty", *args, site="z", layers=[], progress=False)
    _raises(tiny, ValueError, "needs by_pos=True", *args, site="z", by_pos=False, positions=[1],
            progress=False)
    _raises(tiny, ValueError, "has no heads", *args, site="attn_out", heads=[(0, 0)], progress=False)
    _raises(tiny, ValueError, "Unknown site", *args, site="resid_mid", progress=False)
    _raises(tiny, ValueError, "variants_per_pass", *args, site="z", variants_per_pass=0, progress=False)
    with pytest.raises(ValueError, match="patch_heads site"):
        patching.patch_heads(tiny, *args, site="resid_pre")
    attn_only = models.tiny_model(attn_only=True)
    with pytest.raises(ValueError, match="attention-only"):
        patching.patch_mlp_out(attn_only, *args, progress=False)
    assert_no_hooks(attn_only)


def test_bad_metrics(tiny, pair, metric):
    clean, corrupted = pair
    opts = dict(site="z", progress=False)
    _raises(tiny, ValueError, "must return a scalar", clean, corrupted,
            lambda logits: logits[:, -1, 0], **opts)
    _raises(tiny, ValueError, "not finite", clean, corrupted,
            lambda logits: logits[0, -1, 0] * float("nan"), **opts)
    per_prompt = LogitDiff(answers=[1, 2, 3], wrong=[4, 5, 6], per_prompt=True)
    _raises(tiny, ValueError, "must return a scalar", clean, corrupted, per_prompt, **opts)
    wrong_batch = LogitDiff(answers=[1, 2], wrong=[4, 5])
    _raises(tiny, ValueError, "built for 2 prompts", clean, corrupted, wrong_batch, **opts)
    with pytest.raises(ValueError, match="single tokens"):
        LogitDiff(answers=[[1, 2], [3, 4], [5, 6]], wrong=[4, 5, 6])  # several-token answers


@pytest.mark.parametrize("readout", [True, False])
def test_error_in_the_middle_of_a_sweep_leaves_no_hooks(tiny_gqa, pair, metric, readout):
    clean, corrupted = pair

    class Flaky:
        """Fine for the two baseline runs and a few patched runs, then NaN."""

        def __init__(self):
            self.calls = 0

        def __call__(self, logits):
            self.calls += 1
            return metric(logits) * (float("nan") if self.calls > 4 else 1.0)

    class FlakyReadout(Flaky):
        reads = 0

        def readout(self, batch, seq_len):
            return metric.readout(batch, seq_len)

        def from_readout(self, x):  # first read is the engine's self-check, then patched chunks
            self.reads += 1
            out = metric.from_readout(x)
            return out * float("nan") if self.reads > 2 else out

    bad = FlakyReadout() if readout else Flaky()
    with pytest.raises(ValueError, match="finite"):
        patching.patch_heads(tiny_gqa, clean, corrupted, bad, by_pos=True, variants_per_pass=4, progress=False)
    assert_no_hooks(tiny_gqa)


def test_exception_from_metric_mid_sweep_leaves_no_hooks(tiny, pair, metric):
    clean, corrupted = pair
    calls = []

    def boom(logits):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("boom")
        return metric(logits)

    with pytest.raises(RuntimeError, match="boom"):
        patching.patch_heads(tiny, clean, corrupted, boom, by_pos=True, progress=False)
    assert_no_hooks(tiny)
    calls.clear()
    with pytest.raises(RuntimeError, match="boom"):
        patching.patch_reference(tiny, clean, corrupted, boom, site="z", progress=False)
    assert_no_hooks(tiny)


# ------------------------------------------------------------------------------------ real model


def _ioi(model, n):
    ioi = pytest.importorskip("workbench.phenomena.ioi.dataset")
    ds = ioi.ioi_dataset(model, n=n, seed=0, templates=[0])
    return ds, normalise(model, ds.clean_tokens, ds.corrupted_tokens, ds.logit_diff())


@pytest.mark.slow
def test_smollm2_ioi_heads_equal_transformer_lens(smollm2):
    ds, metric = _ioi(smollm2, 3)
    clean, corrupted = ds.clean_tokens, ds.corrupted_tokens
    cache = tl_cache(smollm2, clean)
    layers = [0, 14, 29]
    index = tlp.make_df_from_ranges([30, 9], ["layer", "head"])
    index = index[index.layer.isin(layers)]
    theirs = tlp.generic_activation_patch(smollm2, corrupted, cache, metric,
                                          patch_setter=tlp.layer_head_vector_patch_setter,
                                          activation_name="z", index_df=index).reshape(3, 9)
    ours = patching.patch_heads(smollm2, clean, corrupted, metric, layers=layers, progress=False)
    assert (ours.values - theirs).abs().max() < TOL
    # by position, at a few positions that matter in IOI (S2, END) and one that does not
    s2, end = int(ds.pos["S2"][0]), int(ds.pos["END"][0])
    rows = [(L, p, h) for L in (9, 24) for p in (3, s2, end) for h in (0, 4, 8)]
    import pandas as pd

    theirs = tlp.generic_activation_patch(smollm2, corrupted, cache, metric,
                                          patch_setter=tlp.layer_pos_head_vector_patch_setter,
                                          activation_name="z",
                                          index_df=pd.DataFrame(rows, columns=["layer", "pos", "head"]))
    ours = patching.patch_heads(smollm2, clean, corrupted, metric, by_pos=True, positions=[3, s2, end],
                                heads=[(L, h) for L in (9, 24) for h in (0, 4, 8)], progress=False)
    assert (ours.values.flatten() - theirs).abs().max() < TOL
    assert_no_hooks(smollm2)


@pytest.mark.slow
def test_smollm2_gqa_values_match_reference(smollm2):
    ds, metric = _ioi(smollm2, 2)
    clean, corrupted = ds.clean_tokens, ds.corrupted_tokens
    opts = dict(site="v", by_pos=True, layers=[20], positions=[int(ds.pos["S2"][0]), -1], progress=False)
    fast = patching.patch(smollm2, clean, corrupted, metric, **opts)
    ref = patching.patch_reference(smollm2, clean, corrupted, metric, **opts)
    assert fast.dims == ("layer", "pos", "kv_head") and fast.meta["query_heads"][1] == [3, 4, 5]
    assert (fast.values - ref.values).abs().max() < TOL


def test_heads_are_layer_head_pairs_and_only_they_are_patched(tiny, pair, metric):
    clean, corrupted = pair
    full = patching.patch_heads(tiny, clean, corrupted, metric, progress=False)
    some = patching.patch_heads(tiny, clean, corrupted, metric, heads=["L0H1", (1, 3)], progress=False)
    assert some.labels["layer"] == [0, 1] and some.labels["head"] == [1, 3]
    assert some.values[0, 0] == pytest.approx(full.values[0, 1].item(), abs=TOL)
    assert some.values[1, 1] == pytest.approx(full.values[1, 3].item(), abs=TOL)
    assert torch.isnan(some.values[0, 1]) and torch.isnan(some.values[1, 0])  # not asked for
    ref = patching.patch_reference(tiny, clean, corrupted, metric, site="z", by_pos=False,
                                   heads=["L0H1", (1, 3)])
    assert torch.equal(ref.values.isnan(), some.values.isnan())
    assert (ref.values - some.values).nan_to_num().abs().max() < TOL
