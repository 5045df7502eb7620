"""The batched engine (core/engine.py) against its one-forward-per-variant reference, and the
readout (core/readout.py) against the model's own forward."""

import pytest
import torch
from hooks import assert_no_hooks

from workbench import models
from workbench.core import engine
from workbench.core.metrics import LogitDiff, normalise
from workbench.core.readout import n_kv_heads, readout_of

TOL = 1e-5
CLEAN = torch.tensor([[1, 5, 7, 9, 3, 11, 4], [1, 8, 2, 6, 3, 12, 4]])
OTHER = torch.tensor([[1, 5, 7, 2, 3, 11, 4], [1, 8, 2, 9, 3, 12, 4]])


@pytest.fixture(params=["ln", "gqa_rotary"])
def model(request):
    if request.param == "ln":
        return models.tiny_model()
    return models.tiny_model(n_kv_heads=2, normalization="RMS", positional="rotary")


def metrics(model):
    ld = LogitDiff(answers=[2, 3], wrong=[4, 5])
    plain = lambda logits: logits[:, -1, 2].mean() - logits[:, -1, 5].mean()  # noqa: E731 (no readout)
    return [ld, normalise(model, CLEAN, OTHER, ld), plain]


def mask(shape, positions, head=None):
    """``[1, pos, *shape]``: ``positions`` (and ``head``, on a head axis) set."""
    m = torch.zeros(1, 7, *shape, dtype=torch.bool)
    if head is None:
        m[:, positions] = True
    else:
        m[:, positions, head] = True
    return m


def variants_of_every_kind(model):
    cfg = model.cfg
    _, cache = model.run_with_cache(OTHER)
    z0, z1 = cache["blocks.0.attn.hook_z"], cache["blocks.1.attn.hook_z"]
    resid = cache["blocks.1.hook_resid_pre"]
    zshape = (cfg.n_heads, 1)
    return [
        (engine.patch_from("blocks.0.attn.hook_z", mask(zshape, [3], 1), z0),),
        (engine.patch_from("blocks.1.attn.hook_z", mask(zshape, slice(2, None), 2), z1),),
        (engine.zero("blocks.0.hook_attn_out", mask((1,), [4, 5])),),
        (engine.mean("blocks.1.attn.hook_z", mask(zshape, [6], 0), z1),),
        (engine.resample("blocks.1.hook_resid_pre", mask((1,), [6]), resid, [1, 0]),),
        (engine.add("blocks.0.hook_resid_pre", mask((1,), [2]), torch.randn(cfg.d_model)),),
        (engine.zero_query(1, 3, [5, 6], n_heads=cfg.n_heads, seq=7),),
        # two edits at two layers in one variant; a pattern edit (position axis 2)
        (engine.zero("blocks.0.hook_mlp_out", mask((1,), [6])),
         engine.add("blocks.1.hook_resid_pre", mask((1,), [4]), torch.ones(cfg.d_model))),
        (engine.zero("blocks.1.attn.hook_pattern",
                     torch.zeros(1, cfg.n_heads, 7, 7, dtype=torch.bool).index_fill_(2, torch.tensor([6]), True)),),
    ]


def test_every_kind_equals_the_reference(model):
    torch.manual_seed(0)
    variants = variants_of_every_kind(model)
    for metric in metrics(model):
        for vpp in (1, 3, 64):
            fast = engine.run_variants(model, CLEAN, variants, metric, variants_per_pass=vpp)
            slow = engine.run_variants_reference(model, CLEAN, variants, metric)
            assert (fast - slow).abs().max() < TOL, (metric, vpp, fast, slow)
        base = engine.base_run(model, CLEAN, metric, [0]).value
        assert ((slow - base).abs() > 1e-5).all()  # every edit changes the metric
    assert_no_hooks(model)


def test_full_forward_path_equals_the_fast_one(model, monkeypatch):
    torch.manual_seed(0)
    variants = variants_of_every_kind(model)
    metric = metrics(model)[1]
    fast = engine.run_variants(model, CLEAN, variants, metric)
    monkeypatch.setattr(engine, "supports_fast_path", lambda model: False)
    slow = engine.run_variants(model, CLEAN, variants, metric, variants_per_pass=4)
    assert (fast - slow).abs().max() < TOL


def test_passes_start_late_where_exact(model, monkeypatch):
    """A variant whose first edit is at position p starts there, no later than the read position."""
    calls = []
    real = engine.run_pass

    def spy(model, base, layer, chunk, start, metric):
        calls.append((layer, start, len(chunk)))
        return real(model, base, layer, chunk, start, metric)

    monkeypatch.setattr(engine, "run_pass", spy)
    variants = variants_of_every_kind(model)
    engine.run_variants(model, CLEAN, variants[:3], metrics(model)[0])
    assert sorted(calls) == [(0, 3, 2), (1, 2, 1)]  # layer 0: positions 3 and 4 share a pass


def test_bad_edits_raise_and_leave_no_hook(model):
    with pytest.raises(ValueError, match="inside a block"):
        engine.zero("hook_embed", mask((1,), [1]))
    with pytest.raises(ValueError, match="bool"):
        engine.Edit("blocks.0.hook_resid_pre", torch.zeros(1, 7, 1), torch.zeros(()))
    with pytest.raises(ValueError, match="variants_per_pass"):
        engine.run_variants(model, CLEAN, [], metrics(model)[0], variants_per_pass=0)
    with pytest.raises(ValueError, match="at least one edit"):
        engine.run_variants(model, CLEAN, [()], metrics(model)[0])
    wrong_dims = (engine.zero("blocks.1.attn.hook_z", mask((1,), [3])),)  # z has a head axis
    with pytest.raises(ValueError, match="dims"):
        engine.run_variants(model, CLEAN, [wrong_dims], metrics(model)[0])
    assert_no_hooks(model)


def test_readout_equals_the_models_forward(model):
    r = readout_of(model)
    with torch.no_grad():
        logits, cache = model.run_with_cache(CLEAN)
        final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
        assert torch.equal(r.logits(final), logits)
        tokens = torch.tensor([[2, 4], [3, 5]])
        read = r.read(final[None, torch.arange(2), -1], tokens)[0]
        assert (read - logits[:, -1].gather(1, tokens)).abs().max() < TOL
        direction, bias = r.answer_direction(tokens[:, 0], tokens[:, 1])
        via = (r.norm(final[:, -1:])[:, 0] * direction).sum(-1) + bias
        assert (via - (logits[:, -1, tokens[:, 0]].diagonal() - logits[:, -1, tokens[:, 1]].diagonal())).abs().max() < 1e-4


def test_kv_head_count_honours_ungrouping():
    gqa = models.tiny_model(n_kv_heads=2, normalization="RMS", positional="rotary")
    assert n_kv_heads(gqa) == 2 and readout_of(gqa).kv_group == 2
    gqa.cfg.ungroup_grouped_query_attention = True
    assert n_kv_heads(gqa) == gqa.cfg.n_heads and readout_of(gqa).kv_group == 1
    assert n_kv_heads(models.tiny_model()) == 4


def test_final_residuals_equal_the_hooked_forward(model):
    torch.manual_seed(0)
    variants = variants_of_every_kind(model)
    n = model.cfg.n_layers
    got = engine.final_residuals(model, CLEAN, variants, [5, 6], variants_per_pass=4)
    for i, v in enumerate(variants):
        with model.hooks(fwd_hooks=engine._hooks([v], 0)):
            _, cache = model.run_with_cache(CLEAN, names_filter=f"blocks.{n - 1}.hook_resid_post")
        want = cache[f"blocks.{n - 1}.hook_resid_post"][:, 5:7]
        assert (got[i] - want).abs().max() < TOL
    assert_no_hooks(model)
