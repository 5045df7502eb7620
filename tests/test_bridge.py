"""The helpers use only hook API that HookedTransformer and TransformerBridge share.

A TransformerBridge wraps the Hugging Face model of SmolLM2; the workbench's HookedTransformer
conversion of the same weights must give the same answers through the same helpers.
"""

import pytest
import torch

from workbench import attention, models, patching
from workbench.core.metrics import normalise
from workbench.phenomena import ioi_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bridge():
    return models.load_bridge("smollm2-135m")


def test_bridge_is_a_bridge_with_the_same_logits(bridge, smollm2):
    from transformer_lens.model_bridge import TransformerBridge

    assert isinstance(bridge, TransformerBridge)
    tokens = models.to_tokens(smollm2, "When Mary and John went to the store, John gave a drink to")
    assert torch.equal(models.to_tokens(bridge, "When Mary and John went to the store, John gave a drink to"), tokens)
    with torch.no_grad():
        assert (bridge(tokens) - smollm2(tokens)).abs().max() < 1e-3


def test_patch_heads_agrees_on_bridge_and_hooked_transformer(bridge, smollm2):
    ds = ioi_dataset(smollm2, n=2, seed=0, templates=[0])
    results = []
    for model in (smollm2, bridge):
        metric = normalise(model, ds.clean_tokens, ds.corrupted_tokens, ds.logit_diff())
        results.append(
            patching.patch_heads(model, ds.clean_tokens, ds.corrupted_tokens, metric,
                                 layers=[22, 23], progress=False)
        )
    hooked, bridged = results
    assert hooked.shape == bridged.shape == (2, 9)
    assert (hooked.values - bridged.values).abs().max() < 1e-3
    assert hooked.values.abs().max() > 0.05  # something is being measured


def test_attention_patterns_agree_on_bridge_and_hooked_transformer(bridge, smollm2):
    tokens = models.to_tokens(smollm2, "The cat sat on the mat because the cat was tired")
    a = attention.get_patterns(smollm2, tokens, [(17, 3), (18, 6)])
    b = attention.get_patterns(bridge, tokens, [(17, 3), (18, 6)])
    for head in a:
        assert torch.allclose(a[head], b[head], atol=1e-4)
