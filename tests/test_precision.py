"""bfloat16 against float32: every technique on the tiny model, the same seed in both precisions.

The stated tolerance: each result agrees with the float32 result to within ``TOL`` (5%) of the
float32 result's largest magnitude. bfloat16 keeps 8 bits of mantissa (a relative rounding step
of 0.4%) and a 2-layer model compounds a few such steps; the tests also check that every result
comes back in float32 (reductions and metrics are computed in float32) and that the bfloat16
model really ran in bfloat16.
"""

import pytest
import torch

from workbench import ablation, attribution, dla, heads, lens, models, patching, path_patching
from workbench.core.metrics import LogitDiff, normalise

TOL = 0.05


def pair(**kw):
    return models.tiny_model(**kw), models.tiny_model(dtype="bfloat16", **kw)


@pytest.fixture(scope="module")
def models_and_data():
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 100, (4, 10), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 1:-1] = torch.randint(0, 100, (4, 8), generator=gen)  # a large clean-corrupted gap
    full, half = pair(n_kv_heads=2, normalization="RMS", positional="rotary")
    # The answer and wrong tokens whose logits the corruption moves most: a clean-corrupted gap of
    # about 4 (a random model's near tokens differ by a few hundredths, which bf16 cannot resolve).
    moved = full(clean)[:, -1] - full(corrupted)[:, -1]
    answers, wrong = moved.argmax(-1), moved.argmin(-1)
    return full, half, clean, corrupted, LogitDiff(answers=answers, wrong=wrong)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == torch.float32 and b.dtype == torch.float32, (a.dtype, b.dtype)
    scale = a.abs().nan_to_num().max().item()
    assert scale > 0, "nothing measured"
    err = (a - b).abs().nan_to_num().max().item()
    assert err <= TOL * scale, f"bf16 differs by {err:.3g}, {err / scale:.1%} of the scale {scale:.3g}"


def test_the_half_model_runs_in_bfloat16(models_and_data):
    full, half, clean, *_ = models_and_data
    assert half.cfg.dtype == torch.bfloat16 and half(clean).dtype == torch.bfloat16
    close(full(clean), half(clean).float())


@pytest.mark.parametrize("technique", ["patch_heads", "patch_heads_by_pos", "patch_resid", "attribution",
                                       "path_patching"])
def test_patching_techniques_agree(models_and_data, technique):
    full, half, clean, corrupted, metric = models_and_data
    out = []
    for model in (full, half):
        nm = normalise(model, clean, corrupted, metric)
        if technique == "patch_heads":
            r = patching.patch_heads(model, clean, corrupted, nm, progress=False)
        elif technique == "patch_heads_by_pos":
            r = patching.patch_heads(model, clean, corrupted, nm, by_pos=True, progress=False)
        elif technique == "patch_resid":
            r = patching.patch_resid(model, clean, corrupted, nm, progress=False)
        elif technique == "attribution":
            r = attribution.attribute_heads(model, clean, corrupted, nm)
        else:
            r = path_patching.path_patch_heads(model, clean, corrupted, nm, progress=False)
        out.append(r.values)
    close(*out)


def test_ablation_agrees(models_and_data):
    full, half, clean, _, metric = models_and_data
    out = []
    for model in (full, half):
        with ablation.ablate(model, heads=[(0, 1), (1, 2)], mlps=[0], ablation="mean", reference=clean):
            out.append(metric(model(clean)).float()[None])
    close(*out)


def test_lens_and_direct_logit_attribution_agree(models_and_data):
    full, half, clean, _, metric = models_and_data
    # Follow the same tokens in both (a random model's own top-1 has near ties that bf16 can flip).
    targets = full(clean).argmax(-1)
    a, b = (lens.logit_lens(m, clean, targets, top_k=2) for m in (full, half))
    close(a.logit.values, b.logit.values)
    close(a.prob.values, b.prob.values)
    a, b = (dla.direct_logit_attribution(m, clean, metric) for m in (full, half))
    close(a.values, b.values)


def test_head_scores_agree(models_and_data):
    full, half, *_ = models_and_data
    for score in (heads.previous_token_scores, heads.induction_scores):
        a, b = (score(m, seq_len=20) for m in (full, half))
        close(a.values, b.values)
