"""The helpers use only hook API that HookedTransformer and TransformerBridge share.

A TransformerBridge in compatibility mode (no weight processing) wraps the Hugging Face model of
SmolLM2; the workbench's HookedTransformer conversion of the same weights must give the same
answers through the same helpers, within 1e-4 of the logits' scale (tiny folders of several
architectures: tests/test_backends.py).
"""

import pytest
import torch

from workbench import attention, models, patching
from workbench.core.metrics import normalise
from workbench.phenomena import ioi_dataset
from workbench.techniques import attribution, dla, lens

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
        assert (bridge(tokens) - smollm2(tokens)).abs().max() < 1e-4 * smollm2(tokens).abs().max()


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
    assert (hooked.values - bridged.values).abs().max() < 1e-4 * SCALE
    assert hooked.values.abs().max() > 0.05  # something is being measured


SCALE = 30.0  # SmolLM2's logits on these prompts are of this order


def test_attribution_lens_and_dla_agree_on_bridge_and_hooked_transformer(bridge, smollm2):
    ds = ioi_dataset(smollm2, n=2, seed=0, templates=[0])
    out = []
    for model in (smollm2, bridge):
        metric = normalise(model, ds.clean_tokens, ds.corrupted_tokens, ds.logit_diff())
        a = attribution.attribute(model, ds.clean_tokens, ds.corrupted_tokens, metric, sites=("z",)).heads.values
        lg = lens.logit_lens(model, ds.clean_tokens, positions=[-1]).logit.values
        d = dla.direct_logit_attribution(model, ds.clean_tokens, ds.logit_diff()).values
        out.append((a, lg, d))
    for x, y in zip(*out):
        assert (x - y).abs().max() < 1e-4 * SCALE


def test_attention_patterns_agree_on_bridge_and_hooked_transformer(bridge, smollm2):
    tokens = models.to_tokens(smollm2, "The cat sat on the mat because the cat was tired")
    a = attention.get_patterns(smollm2, tokens, [(17, 3), (18, 6)])
    b = attention.get_patterns(bridge, tokens, [(17, 3), (18, 6)])
    for head in a:
        assert torch.allclose(a[head], b[head], atol=1e-4)
