"""workbench.phenomena.sae_features.analysis: batched single-feature ablations against ablate_features, one at a time."""

import pytest
import torch
from hooks import assert_no_hooks
from test_sae import random_sae

from workbench import sae as wsae
from workbench.phenomena.sae_features.analysis import active_features, feature_ablations


def last_token_logit(logits):  # one value per prompt
    return logits[:, -1, 7] - logits[:, -1, 3]


def test_feature_ablations_match_ablate_features_one_by_one(tiny):
    sae = random_sae(tiny, "blocks.1.hook_resid_pre")
    tokens = torch.randint(1, 100, (5, 9), generator=torch.Generator().manual_seed(2))
    tokens[:, 0] = 0
    feats = active_features(tiny, sae, tokens, min_share=0.2)[:6]
    assert feats, "the random SAE should have active features"
    got = feature_ablations(tiny, sae, tokens, last_token_logit, [-1, *feats], per_pass=3)
    torch.testing.assert_close(got[0], last_token_logit(tiny(tokens)), atol=1e-4, rtol=1e-4)
    for row, f in zip(got[1:], feats):
        with wsae.ablate_features(tiny, sae, [f]):
            want = last_token_logit(tiny(tokens))
        torch.testing.assert_close(row, want, atol=1e-4, rtol=1e-4)
    assert (got[1:] - got[0]).abs().max() > 1e-4  # some ablation changes the metric
    assert_no_hooks(tiny)


def test_feature_ablations_errors(tiny):
    sae = random_sae(tiny, "blocks.1.hook_resid_pre")
    tokens = torch.randint(1, 100, (2, 5))
    with pytest.raises(ValueError, match="features is empty"):
        feature_ablations(tiny, sae, tokens, last_token_logit, [])
    with pytest.raises(ValueError, match="per_pass"):
        feature_ablations(tiny, sae, tokens, last_token_logit, [1], per_pass=0)
