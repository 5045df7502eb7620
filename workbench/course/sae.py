"""Exercises 23-25: an SAE's encode and decode by hand, and attribution patching on its features.

Notebook ``course/06_sae``. The SAE is a SAELens ``TopKSAE`` with seeded random weights on the
tiny model's residual stream (:func:`course_sae`); the shipped SmolLM2 SAE has the same form.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.course.base import call, compare, register, tiny, tiny_gqa
from workbench.course.patching import patching_case

NOTEBOOK = "course/06_sae"
HOOK = "blocks.1.hook_resid_pre"


def course_sae(model, *, d_sae: int = 48, k: int = 6, seed: int = 0):
    """A SAELens TopK SAE with seeded random weights reading ``blocks.1.hook_resid_pre``.

    Not rescaled by decoder norm, BOS skipped (as the shipped SAEs are), no outlier cut.
    """
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    gen = torch.Generator().manual_seed(seed)
    cfg = TopKSAEConfig(
        d_in=model.cfg.d_model, d_sae=d_sae, k=k, rescale_acts_by_decoder_norm=False,
        metadata=SAEMetadata(hook_name=HOOK, model_name=model.cfg.model_name, skip_bos=True),
    )
    sae = TopKSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen) / model.cfg.d_model ** 0.5)
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=gen) / d_sae ** 0.5)
        sae.b_enc.copy_(0.1 * torch.randn(sae.b_enc.shape, generator=gen))
        sae.b_dec.copy_(0.1 * torch.randn(sae.b_dec.shape, generator=gen))
    sae.requires_grad_(False)
    return sae


def sae_input(model, tokens: Tensor) -> Tensor:
    """The activations the course SAE reads (``blocks.1.hook_resid_pre``)."""
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    return cache[HOOK]


# --------------------------------------------------------------------------------------------
# 23. Encode


def _check_encode(fn, solution):
    name = "sae_encode"
    tokens = torch.randint(1, 100, (2, 6), generator=torch.Generator().manual_seed(10))
    for make, label in ((tiny, "tiny model"), (tiny_gqa, "grouped-query model")):
        model = make()
        sae = course_sae(model)
        x = sae_input(model, tokens)
        expected = solution(sae, x)
        torch.testing.assert_close(expected, sae.encode(x))  # the reference is SAELens's encode
        got = call(name, fn, sae, x, case=label)
        compare(name, got, expected, dims=("batch", "pos", "feature"),
                what="the latents", case=label)


@register(notebook=NOTEBOOK, minutes=10, difficulty="core", checker=_check_encode,
          objective="Encode activations with a TopK SAE by hand: subtract the decoder bias, "
                    "project, keep the k largest, ReLU.",
          catches=("decoder bias not subtracted", "ReLU without the top-k",
                   "top-k over the wrong dim"))
def sae_encode(sae, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos feature"]:
    """Encode activations with a TopK SAE, by hand.

    Args:
        sae: a SAELens ``TopKSAE`` with ``W_enc [d_model, feature]``, ``b_enc [feature]``,
            ``b_dec [d_model]`` and ``cfg.k``.
        x: ``Float[Tensor, "batch pos d_model"]``, the activations the SAE reads.

    Returns:
        ``Float[Tensor, "batch pos feature"]``: the pre-activations ``(x - b_dec) @ W_enc + b_enc``;
        at each (batch, position) the ``k`` largest across features are kept and passed through a
        ReLU, every other feature is 0 (so at most ``k`` non-zero latents per position).

    Example: with ``k = 6`` and 48 features, each ``[b, p]`` row holds at most 6 positive values.
    """
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc  # [batch, pos, feature]
    top = pre.topk(sae.cfg.k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())


# --------------------------------------------------------------------------------------------
# 24. Decode


def _check_decode(fn, solution):
    name = "sae_decode"
    tokens = torch.randint(1, 100, (2, 6), generator=torch.Generator().manual_seed(11))
    for make, label in ((tiny, "tiny model"), (tiny_gqa, "grouped-query model")):
        model = make()
        sae = course_sae(model)
        latents = sae.encode(sae_input(model, tokens))
        expected = solution(sae, latents)
        torch.testing.assert_close(expected, sae.decode(latents))
        got = call(name, fn, sae, latents, case=label)
        compare(name, got, expected, dims=("batch", "pos", "d_model"),
                what="the reconstruction", case=label)


@register(notebook=NOTEBOOK, minutes=5, difficulty="intro", checker=_check_decode,
          objective="Reconstruct activations from SAE latents with the decoder and its bias.",
          catches=("decoder bias forgotten", "the encoder's transpose used as the decoder"))
def sae_decode(sae, latents: Float[Tensor, "batch pos feature"]) -> Float[Tensor, "batch pos d_model"]:
    """Reconstruct activations from SAE latents.

    Args:
        sae: a SAELens SAE with ``W_dec [feature, d_model]`` and ``b_dec [d_model]``.
        latents: ``Float[Tensor, "batch pos feature"]``.

    Returns:
        ``Float[Tensor, "batch pos d_model"]``: the reconstruction, latents through the decoder plus
        the decoder bias.

    Example: all-zero latents decode to ``b_dec`` at every position.
    """
    return latents @ sae.W_dec + sae.b_dec


# --------------------------------------------------------------------------------------------
# 25. Feature attribution


def _check_feature_attribution(fn, solution):
    name = "feature_attribution"
    clean, corrupted, metric = patching_case(12)
    clean[:, 0] = corrupted[:, 0] = 0  # position 0 is BOS
    for make, label in ((tiny, "tiny model"), (tiny_gqa, "grouped-query model")):
        model = make()
        sae = course_sae(model)
        expected = solution(model, sae, clean, corrupted, metric)
        got = call(name, fn, model, sae, clean, corrupted, metric, case=label)
        compare(name, got, expected, dims=("feature",),
                what="the first-order estimate of each feature's patch", case=label)


@register(notebook=NOTEBOOK, minutes=20, difficulty="advanced", checker=_check_feature_attribution,
          objective="Attribute a metric to SAE features: splice the SAE in with its error term and "
                    "take gradient times (clean - corrupted latents), BOS left out.",
          catches=("sign flipped", "error term left out (reconstruction spliced in)",
                   "gradient taken on the clean run"))
def feature_attribution(model, sae, clean: Int[Tensor, "batch pos"],
                        corrupted: Int[Tensor, "batch pos"], metric) -> Float[Tensor, " feature"]:
    """Attribution patching on SAE features: the estimated effect of patching each feature.

    Args:
        model: a ``HookedTransformer``.
        sae: the SAE reading ``blocks.1.hook_resid_pre`` (``HOOK``), with ``encode`` and ``decode``.
        clean, corrupted: ``Int[Tensor, "batch pos"]``, position 0 is BOS.
        metric: a callable ``logits -> 0-d tensor``; raw.

    Returns:
        ``Float[Tensor, " feature"]``: on the corrupted run with the SAE spliced in at ``HOOK`` *with
        its error term* (the model's output unchanged), the corrupted metric plus, for each feature,
        the sum over batch and positions ``1 ..`` (BOS left out) of the metric's gradient with
        respect to the feature's latent times ``clean latent - corrupted latent``. Raw.

    Example: with 48 features: shape ``[48]``; features that do not differ between the runs score
    the corrupted metric.
    """
    clean_latents = sae.encode(sae_input(model, clean))
    store = {}

    def splice(x, hook):
        latents = sae.encode(x).detach().requires_grad_(True)
        store["latents"] = latents
        recon = sae.decode(latents)
        return x + (recon - recon.detach())  # the same value as x; the gradient flows to latents

    with torch.enable_grad(), model.hooks(fwd_hooks=[(HOOK, splice)]):
        value = metric(model(corrupted))
        (grad,) = torch.autograd.grad(value, store["latents"])
    delta = grad * (clean_latents - store["latents"].detach())  # [batch, pos, feature]
    return value.detach() + delta[:, 1:].sum(dim=(0, 1))  # position 0 (BOS) is left out
