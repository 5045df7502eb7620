"""Path patching: checked against a literal hook-by-hook reference and against hand computations."""

import pytest
import torch
from hooks import assert_no_hooks

from workbench import models
from workbench.core.checks import position_mask
from workbench.core.components import Circuit
from workbench.core.metrics import LogitDiff, normalise
from workbench.techniques.path_patching import kv_head_of, path_patch, path_patch_heads


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(1)
    clean, corrupted = torch.randint(0, 100, (2, 3, 9), generator=gen).unbind(0)
    return clean, corrupted, LogitDiff(answers=[1, 2, 3], wrong=[4, 5, 6])


def reference_path_patch(model, clean, corrupted, metric, senders, receivers, kind, mask,
                         freeze_mlps=True):
    """The algorithm written out literally: full forward passes, one hook per hook point."""
    heads = {s for s in senders if isinstance(s, tuple)}
    mlps = {s for s in senders if isinstance(s, int)}
    _, cc = model.run_with_cache(clean)
    _, xc = model.run_with_cache(corrupted)
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"

    def freeze_z(z, hook):
        new = cc[hook.name].clone()
        for layer, h in heads:
            if layer == hook.layer():
                new[:, :, h] = xc[hook.name][:, :, h]
        return new

    def freeze_mlp(out, hook):
        if hook.layer() in mlps:
            return xc[hook.name]
        return cc[hook.name] if freeze_mlps else out

    recorded = {}

    def record(act, hook):
        recorded[hook.name] = act.clone()

    hooks = [(lambda n: n.endswith("hook_z"), freeze_z)]
    if not model.cfg.attn_only:
        hooks.append((lambda n: n.endswith("hook_mlp_out"), freeze_mlp))
    site = last if kind == "resid" else None
    hooks.append((lambda n: n == last or n.endswith(f"hook_{kind}"), record))
    model.run_with_hooks(clean, fwd_hooks=hooks)

    def patch(act, hook):
        act = act.clone()
        new = recorded[hook.name]
        if kind == "resid":
            return torch.where(mask[..., None], new, act)
        for layer, h in receivers:
            if layer == hook.layer():
                act[:, :, h] = torch.where(mask[..., None], new[:, :, h], act[:, :, h])
        return act

    if site:
        names = [last]
    else:
        names = sorted({f"blocks.{layer}.attn.hook_{kind}" for layer, _ in receivers})
    logits = model.run_with_hooks(clean, fwd_hooks=[(n, patch) for n in names])
    return metric(logits)


def direct_effect(model, clean, corrupted, metric, senders):
    """Final residual + sum over senders of (corrupted - clean) output, then ln_final + unembed."""
    _, cc = model.run_with_cache(clean)
    _, xc = model.run_with_cache(corrupted)
    resid = cc[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"].clone()
    for s in senders:
        if isinstance(s, tuple):
            layer, h = s
            z = f"blocks.{layer}.attn.hook_z"
            resid += (xc[z][:, :, h] - cc[z][:, :, h]) @ model.W_O[layer, h]
        else:
            resid += xc[f"blocks.{s}.hook_mlp_out"] - cc[f"blocks.{s}.hook_mlp_out"]
    return metric(model.unembed(model.ln_final(resid)))


def all_positions(clean):
    return torch.ones(clean.shape, dtype=torch.bool)


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("senders", [[(0, 1)], [(0, 2), (1, 3)], [(1, 0), 0], [0, 1]])
@pytest.mark.parametrize("make", [models.tiny_model, lambda: models.tiny_model(
    n_kv_heads=2, normalization="RMS", positional="rotary")])
def test_to_logits_equals_direct_effect(make, senders, data):
    model = make()
    clean, corrupted, metric = data
    got = path_patch(model, clean, corrupted, metric, senders=senders)
    want = direct_effect(model, clean, corrupted, metric, senders)
    assert abs(got - want) < 1e-5
    assert abs(got - metric(model(clean))) > 1e-3  # the senders do matter here
    assert_no_hooks(model)


@pytest.mark.parametrize("senders", [[(0, 1)], [(0, 2), (1, 3)], [(1, 0), 0], [0, 1]])
def test_to_logits_without_a_forward_pass_on_a_post_norm_model(senders, data):
    """Gemma-style post-attention norms mix a layer's heads: the direct path recomputes the whole
    layer's write; it must equal the literal reference and the frozen forward pass."""
    model = models.tiny_model(n_kv_heads=2, normalization="RMS", positional="rotary", post_norm=True)
    clean, corrupted, metric = data
    for pos in (None, [8], torch.tensor([8, 6, 2])):
        mask = position_mask(pos, *clean.shape)
        got = path_patch(model, clean, corrupted, metric, senders=senders, receiver_pos=pos)
        want = reference_path_patch(model, clean, corrupted, metric, senders, None, "resid", mask)
        assert abs(got - want) < 1e-5, pos
    sweep = path_patch_heads(model, clean, corrupted, metric, progress=False)
    for layer, h in [(0, 0), (1, 3)]:
        want = reference_path_patch(model, clean, corrupted, metric, [(layer, h)], None, "resid",
                                    all_positions(clean))
        assert abs(sweep.values[layer, h] - want) < 1e-5
    assert_no_hooks(model)


def test_direct_and_forward_paths_agree(data):
    from workbench import path_patching as pp

    clean, corrupted, metric = data
    model = models.tiny_model(n_layers=3, n_kv_heads=2, normalization="RMS", positional="rotary")
    cache = pp._Cache(model, clean, corrupted, {}, "resid")
    sets = [Circuit([(0, 1)]), Circuit([(1, 0), (2, 3)], [1])]
    mask = all_positions(clean)
    a = pp._run_sets(model, cache, sets, metric, {}, "resid", mask, True, direct=True)
    b = pp._run_sets(model, cache, sets, metric, {}, "resid", mask, True, direct=False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_last_layer_heads_equal_activation_patching(data):
    clean, corrupted, metric = data
    last = [(1, h) for h in range(4)]

    def act_patch(model):
        _, xc = model.run_with_cache(corrupted)

        def put(z, hook):
            return xc["blocks.1.attn.hook_z"]

        return metric(model.run_with_hooks(clean, fwd_hooks=[("blocks.1.attn.hook_z", put)]))

    # Attention-only: nothing downstream of the last layer's heads.
    attn_only = models.tiny_model(attn_only=True)
    got = path_patch(attn_only, clean, corrupted, metric, senders=last)
    assert abs(got - act_patch(attn_only)) < 1e-5
    # With an MLP after them: equal when MLPs may recompute.
    model = models.tiny_model()
    got = path_patch(model, clean, corrupted, metric, senders=last, freeze_mlps=False)
    assert abs(got - act_patch(model)) < 1e-5
    frozen = path_patch(model, clean, corrupted, metric, senders=last)
    assert abs(frozen - got) > 1e-4  # freezing the last MLP is a different question


@pytest.mark.parametrize(
    "kind,receivers", [("q", [(1, 0), (1, 3)]), ("k", [(1, 1)]), ("v", [(1, 0), (1, 1)])]
)
def test_qkv_matches_reference(tiny_gqa, data, kind, receivers):
    clean, corrupted, metric = data
    for senders in ([(0, 1)], [(0, 0), (0, 3), 0]):
        for pos in (None, [2, 8], torch.tensor([8, 7, 5])):
            got = path_patch(tiny_gqa, clean, corrupted, metric, senders=senders,
                             receivers=receivers, receiver_input=kind, receiver_pos=pos)
            mask = position_mask(pos, *clean.shape)
            want = reference_path_patch(tiny_gqa, clean, corrupted, metric, senders, receivers,
                                        kind, mask)
            assert abs(got - want) < 1e-5, (senders, pos)
    assert_no_hooks(tiny_gqa)


def test_deeper_model_receivers_between_and_above_senders(data):
    """Receivers inside the sender layers and above them, with frozen layers in between."""
    clean, corrupted, metric = data
    model = models.tiny_model(n_layers=4, n_kv_heads=2, normalization="RMS", positional="rotary")
    mask = torch.ones(clean.shape, dtype=torch.bool)
    for kind, receivers in (("q", [(1, 2), (3, 0)]), ("k", [(2, 1), (3, 0)])):
        for senders in ([(0, 3)], [(0, 1), (2, 2), 1], [1], [(3, 1)]):
            for freeze_mlps in (True, False):
                got = path_patch(model, clean, corrupted, metric, senders=senders,
                                 receivers=receivers, receiver_input=kind, freeze_mlps=freeze_mlps)
                want = reference_path_patch(model, clean, corrupted, metric, senders,
                                            receivers, kind, mask, freeze_mlps)
                assert abs(got - want) < 1e-5, (kind, senders, freeze_mlps)
        r = path_patch_heads(model, clean, corrupted, metric, receivers=receivers,
                             receiver_input=kind, progress=False, variants_per_pass=1)
        for layer, h in [(0, 0), (1, 3), (2, 1)]:
            one = path_patch(model, clean, corrupted, metric, senders=[(layer, h)],
                             receivers=receivers, receiver_input=kind)
            assert abs(r.values[layer, h] - one) < 1e-5


def test_resid_with_positions_matches_reference(tiny, data):
    clean, corrupted, metric = data
    for pos in ([8], [3], torch.tensor([8, 8, 2])):
        got = path_patch(tiny, clean, corrupted, metric, senders=[(0, 2), 1], receiver_pos=pos)
        mask = position_mask(pos, *clean.shape)
        want = reference_path_patch(tiny, clean, corrupted, metric, [(0, 2), 1], None, "resid",
                                    mask)
        assert abs(got - want) < 1e-5


@pytest.mark.parametrize("kind,receivers", [("resid", None), ("q", [(1, 2)]), ("v", [(1, 0)])])
@pytest.mark.parametrize("freeze_mlps", [True, False])
def test_sweep_matches_loop_and_reference(tiny_gqa, data, kind, receivers, freeze_mlps):
    clean, corrupted, metric = data
    r = path_patch_heads(tiny_gqa, clean, corrupted, metric, receivers=receivers,
                         receiver_input=kind, receiver_pos=[8], freeze_mlps=freeze_mlps,
                         variants_per_pass=2, progress=False)
    assert r.dims == ("layer", "head") and r.shape == (2, 4)
    mask = torch.zeros(clean.shape, dtype=torch.bool)
    mask[:, 8] = True
    for layer in range(2):
        for h in range(4):
            loop = path_patch(tiny_gqa, clean, corrupted, metric, senders=[(layer, h)],
                              receivers=receivers, receiver_input=kind, receiver_pos=[8],
                              freeze_mlps=freeze_mlps)
            assert abs(r.values[layer, h] - loop) < 1e-5
            ref = reference_path_patch(tiny_gqa, clean, corrupted, metric, [(layer, h)],
                                       receivers, kind, mask, freeze_mlps)
            assert abs(r.values[layer, h] - ref) < 1e-5
    clean_value = metric(tiny_gqa(clean))
    assert abs(r.meta["clean"] - clean_value) < 1e-5
    if kind != "resid":  # layer-1 senders cannot reach layer-1 receivers
        assert torch.allclose(r.values[1], torch.tensor(r.meta["clean"]))
    assert_no_hooks(tiny_gqa)


def test_metric_without_readout_matches(tiny, data):
    clean, corrupted, metric = data

    def plain(logits):  # no .readout: goes through full logits
        return metric(logits)

    for kind, rec in (("resid", None), ("q", [(1, 1)])):
        a = path_patch_heads(tiny, clean, corrupted, metric, receivers=rec, receiver_input=kind,
                             progress=False)
        b = path_patch_heads(tiny, clean, corrupted, plain, receivers=rec, receiver_input=kind,
                             progress=False)
        assert torch.allclose(a.values, b.values, atol=1e-5)


def test_normalised_metric_and_frame(tiny, data):
    clean, corrupted, metric = data
    normed = normalise(tiny, clean, corrupted, metric)
    r = path_patch_heads(tiny, clean, corrupted, normed, progress=False)
    assert abs(r.meta["clean"] - 1) < 1e-5 and abs(r.meta["corrupted"]) < 1e-5
    frame = r.to_frame()
    assert list(frame.columns) == ["layer", "head", "value"] and len(frame) == 8
    raw = path_patch_heads(tiny, clean, corrupted, metric, progress=False)
    c, x = normed.clean_value, normed.corrupted_value
    assert torch.allclose(r.values, (raw.values - x) / (c - x), atol=1e-5)


def test_kv_head_of(tiny_gqa, tiny):
    assert [kv_head_of(tiny_gqa, h) for h in range(4)] == [0, 0, 1, 1]
    assert [kv_head_of(tiny, h) for h in range(4)] == [0, 1, 2, 3]


def test_errors_and_no_hooks_left(tiny_gqa, data):
    clean, corrupted, metric = data
    m = tiny_gqa
    cases = [
        (dict(senders=[]), ValueError, "empty"),
        (dict(senders=(0, 1)), TypeError, "ambiguous"),
        (dict(senders=[(0, 4)]), ValueError, "out of range"),
        (dict(senders=[(2, 0)]), ValueError, "out of range"),
        (dict(senders=[5]), ValueError, "MLP sender 5"),
        (dict(senders=[(0, 1, 2)]), TypeError, "pair"),
        (dict(senders=[(0, 1)], receiver_input="z"), ValueError, "receiver_input"),
        (dict(senders=[(0, 1)], receivers=[(1, 0)]), ValueError, "no receiver heads"),
        (dict(senders=[(0, 1)], receiver_input="q"), ValueError, "needs receiver heads"),
        (dict(senders=[(0, 1)], receivers=[(1, 2)], receiver_input="k"), ValueError, "key/value"),
        (dict(senders=[(0, 1)], receiver_pos=[9]), ValueError, "receiver_pos"),
        (dict(senders=[(0, 1)], receiver_pos=torch.tensor([1, 2])), ValueError, "one position"),
    ]
    for kwargs, err, msg in cases:
        with pytest.raises(err, match=msg):
            path_patch(m, clean, corrupted, metric, **kwargs)
    with pytest.raises(ValueError, match="same token length"):
        path_patch(m, clean, corrupted[:, :5], metric, senders=[(0, 1)])
    with pytest.raises(ValueError, match="attention-only"):
        path_patch(models.tiny_model(attn_only=True), clean, corrupted, metric, senders=[0])
    with pytest.raises(TypeError, match="HookedTransformer"):
        path_patch(object(), clean, corrupted, metric, senders=[(0, 1)])
    with pytest.raises(ValueError, match="variants_per_pass"):
        path_patch_heads(m, clean, corrupted, metric, variants_per_pass=0)
    per_prompt = LogitDiff(answers=[1, 2, 3], wrong=[4, 5, 6], per_prompt=True)
    with pytest.raises(ValueError, match="scalar"):
        path_patch(m, clean, corrupted, per_prompt, senders=[(0, 1)])

    def broken(logits):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        path_patch(m, clean, corrupted, broken, senders=[(0, 1)], receivers=[(1, 0)],
                   receiver_input="q")
    assert_no_hooks(m)
    assert not m.cfg.use_attn_result


@pytest.mark.slow
def test_smollm2_ioi_kv_receiver_matches_reference(smollm2):
    from workbench.phenomena.ioi.dataset import ioi_dataset

    ds = ioi_dataset(smollm2, n=4, seed=0, templates=[0])
    metric = ds.logit_diff()
    end = ds.pos["END"]
    senders, receivers = [(3, 0), (5, 4)], [(8, kv_head_of(smollm2, 7))]
    got = path_patch(smollm2, ds.clean_tokens, ds.corrupted_tokens, metric, senders=senders,
                     receivers=receivers, receiver_input="k", receiver_pos=None)
    mask = torch.ones(ds.clean_tokens.shape, dtype=torch.bool)
    want = reference_path_patch(smollm2, ds.clean_tokens, ds.corrupted_tokens, metric, senders,
                                receivers, "k", mask)
    assert abs(got - want) < 1e-4
    got = path_patch(smollm2, ds.clean_tokens, ds.corrupted_tokens, metric, senders=senders)
    want = direct_effect(smollm2, ds.clean_tokens, ds.corrupted_tokens, metric, senders)
    assert abs(got - want) < 1e-4
    assert end.shape == (4,)
    assert_no_hooks(smollm2)


@pytest.mark.slow
def test_gemma_direct_path_to_logits_equals_the_frozen_forward(gemma):
    """Gemma-3 normalises each attention output again; the forward-free path must still agree."""
    from workbench import path_patching as pp
    from workbench.phenomena.ioi.dataset import ioi_dataset

    gemma.tokenizer.padding_side = "right"
    ds = ioi_dataset(gemma, n=4, seed=0, templates=[0])
    metric = normalise(gemma, ds.clean_tokens, ds.abc_tokens, ds.logit_diff())
    cache = pp._Cache(gemma, ds.clean_tokens, ds.abc_tokens, {}, "resid")
    sets = [Circuit([(layer, h)]) for layer, h in [(3, 1), (9, 0), (15, 2)]]
    sets.append(Circuit([(9, 0), (9, 3)], [12]))
    mask = position_mask(ds.pos["END"], *ds.clean_tokens.shape)
    a = pp._run_sets(gemma, cache, sets, metric, {}, "resid", mask, True, direct=True)
    b = pp._run_sets(gemma, cache, sets, metric, {}, "resid", mask, True, direct=False)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert (a - metric.clean_value).abs().max() > 1e-3  # some of these senders matter
