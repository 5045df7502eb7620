"""Both TransformerLens backends give the same numbers through every technique.

Tiny random checkpoint folders of several architectures (built with ``transformers``, as in
test_sources.py) are loaded as a ``HookedTransformer`` (``load_model``) and as a TL 3.9
``TransformerBridge`` in compatibility mode without weight processing (``load_model(...,
backend="bridge")``); patching, attribution, path patching, the logit lens, DLA, head scores and
edge attribution must agree within 1e-4 of the logits' scale. A folder the HookedTransformer
cannot map (a Gemma-2 of a non-official size) loads as a bridge with Hugging Face's logits.
"""

import pytest
import torch
from test_sources import COMMON, make_checkpoint

from workbench import models, patching
from workbench.core.metrics import LogitDiff, normalise
from workbench.techniques import attribution, dla, heads, lens, path_patching
from workbench.techniques.edges import attribute_edges

transformers = pytest.importorskip("transformers")

ARCHS = ["llama", "gpt2", "qwen2"]
CLEAN = ["Mary met John; John gave", "Anna met Dave; Dave gave"]
CORRUPTED = ["Mary met John; Mary gave", "Anna met Dave; Anna gave"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module", params=ARCHS)
def pair(request, tmp_path_factory):
    """(HookedTransformer, bridge, clean tokens, corrupted tokens, logit scale) of one folder."""
    folder = tmp_path_factory.mktemp(request.param)
    make_checkpoint(folder, request.param)
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_CACHE", str(folder / "cache"))
    try:
        hooked = models.load_model(folder, verbose=False)
        bridge = models.load_model(folder, verbose=False, backend="bridge")
    finally:
        mp.undo()
    clean, corrupted = models.to_tokens(hooked, CLEAN), models.to_tokens(hooked, CORRUPTED)
    with torch.no_grad():
        scale = hooked(clean).abs().max().item()
    return hooked, bridge, clean, corrupted, scale


def metric_of(model, clean, corrupted):
    ld = LogitDiff(answers=clean[:, -1] * 0 + 40, wrong=clean[:, -1] * 0 + 41)
    return normalise(model, clean[:, :-1], corrupted[:, :-1], ld)


def close(a, b, scale):
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4 * max(scale, 1.0), (a - b).abs().max().item()


def test_load_model_chooses_the_backend(pair):
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

    hooked, bridge, clean, _, scale = pair
    assert isinstance(hooked, HookedTransformer) and isinstance(bridge, TransformerBridge)
    with torch.no_grad():
        close(bridge(clean), hooked(clean), scale)


def test_patching_agrees(pair):
    hooked, bridge, clean, corrupted, scale = pair
    c, x = clean[:, :-1], corrupted[:, :-1]
    for site, by_pos in (("z", False), ("z", True), ("resid_pre", True), ("v", False)):
        a = patching.patch(hooked, c, x, metric_of(hooked, clean, corrupted), site=site, by_pos=by_pos)
        b = patching.patch(bridge, c, x, metric_of(bridge, clean, corrupted), site=site, by_pos=by_pos)
        close(a.values, b.values, scale)


def test_attribution_agrees(pair):
    hooked, bridge, clean, corrupted, scale = pair
    c, x = clean[:, :-1], corrupted[:, :-1]
    a = attribution.attribute(hooked, c, x, metric_of(hooked, clean, corrupted), sites=("z", "resid_pre"))
    b = attribution.attribute(bridge, c, x, metric_of(bridge, clean, corrupted), sites=("z", "resid_pre"))
    close(a.heads.values, b.heads.values, scale)


@pytest.mark.xfail(raises=TypeError, strict=True,
                   reason="path patching starts runs mid-model (start_at_layer, key/value caches): HookedTransformer only")
def test_path_patching_agrees(pair):
    hooked, bridge, clean, corrupted, scale = pair
    c, x = clean[:, :-1], corrupted[:, :-1]
    a = path_patching.path_patch_heads(hooked, c, x, metric_of(hooked, clean, corrupted))
    b = path_patching.path_patch_heads(bridge, c, x, metric_of(bridge, clean, corrupted))
    close(a.values, b.values, scale)


def test_lens_dla_and_head_scores_agree(pair):
    hooked, bridge, clean, _, scale = pair
    a, b = lens.logit_lens(hooked, clean), lens.logit_lens(bridge, clean)
    close(a.logit.values, b.logit.values, scale)
    ld = LogitDiff(answers=clean[:, -1], wrong=clean[:, 1], per_prompt=True)
    close(dla.direct_logit_attribution(hooked, clean, ld).values,
          dla.direct_logit_attribution(bridge, clean, ld).values, scale)
    for score in (heads.induction_scores, heads.previous_token_scores):
        close(score(hooked, seq_len=8, batch=2).values, score(bridge, seq_len=8, batch=2).values, 1.0)


@pytest.mark.xfail(raises=TypeError, strict=True,
                   reason="edge attribution needs split q/k/v input hooks, switched on a HookedTransformer only")
def test_edge_attribution_agrees(pair):
    hooked, bridge, clean, corrupted, scale = pair
    c, x = clean[:, :-1], corrupted[:, :-1]
    a = attribute_edges(hooked, c, x, metric_of(hooked, clean, corrupted), method="eap")
    b = attribute_edges(bridge, c, x, metric_of(bridge, clean, corrupted), method="eap")
    close(a.matrix, b.matrix, scale)


def test_an_unmappable_gemma2_folder_loads_as_a_bridge_with_hf_logits(tmp_path):
    from transformer_lens.model_bridge import TransformerBridge

    cfg = transformers.Gemma2Config(**COMMON, num_key_value_heads=2, head_dim=16)
    hf = make_checkpoint(tmp_path / "g2", "gemma2", config=cfg)
    model = models.load_model(tmp_path / "g2", verbose=False)
    assert isinstance(model, TransformerBridge)
    tokens = models.to_tokens(model, CLEAN)
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max().item() < 1e-5
