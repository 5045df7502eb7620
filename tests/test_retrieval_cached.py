"""The answer logits of a needle prompt longer than one prefill chunk come from the key/value cache;
they must equal one plain forward pass."""

import pytest
import torch

from workbench import models, retrieval


@pytest.mark.parametrize("kind", ["LN-standard", "RMS-rotary-gqa"])
def test_cached_answer_logits_equal_one_forward(kind):
    if kind == "LN-standard":
        model = models.tiny_model(n_ctx=400)
    else:
        model = models.tiny_model(n_ctx=400, normalization="RMS", positional="rotary", n_kv_heads=2)
    n_prompt, n_answer = models.PREFILL_CHUNK + 40, 3  # past one chunk: the cached branch
    full = torch.randint(1, 100, (2, n_prompt + n_answer), generator=torch.Generator().manual_seed(0))
    got = retrieval._answer_logits(model, full, n_prompt, n_answer)
    with torch.no_grad():
        want = model(full)[:, n_prompt - 1 : n_prompt - 1 + n_answer]
    assert got.shape == want.shape == (2, n_answer, model.cfg.d_vocab)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    short = full[:, :40]
    torch.testing.assert_close(
        retrieval._answer_logits(model, short, 37, 3), model(short)[:, 36:39].detach(), atol=1e-4, rtol=1e-4
    )
