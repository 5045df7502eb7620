"""Exercises 6-8: the logit difference, the logit lens, direct logit attribution with the final norm.

Notebook ``course/02_lens_and_attribution``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.course.base import call, check_scalar_out, compare, register, tiny, tiny_gqa

NOTEBOOK = "course/02_lens_and_attribution"


def lens_case(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded prompts ``[3, 7]`` and one answer and one wrong token per prompt."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 100, (3, 7), generator=gen)
    answers, wrong = torch.randint(0, 100, (2, 3), generator=gen)
    return tokens, answers, wrong


# --------------------------------------------------------------------------------------------
# 6. Logit difference


def _check_logit_diff(fn, solution):
    name = "logit_diff"
    gen = torch.Generator().manual_seed(3)
    for batch in (1, 4):
        logits = torch.randn(batch, 5, 20, generator=gen)
        answers, wrong = torch.randint(0, 20, (2, batch), generator=gen)
        case = f"batch of {batch}"
        expected = solution(logits, answers, wrong)
        got = check_scalar_out(name, call(name, fn, logits, answers, wrong, case=case), case)
        compare(name, got, expected, what="the logit difference", case=case)


@register(notebook=NOTEBOOK, minutes=5, difficulty="intro", checker=_check_logit_diff,
          objective="Measure a behaviour as the mean logit difference between the answer and a "
                    "wrong token at the last position.",
          catches=("sign flipped", "off-by-one position (second to last)",
                   "summed over the batch instead of averaged"))
def logit_diff(logits: Float[Tensor, "batch pos d_vocab"], answers: Int[Tensor, " batch"],
               wrong: Int[Tensor, " batch"]) -> Float[Tensor, ""]:
    """The mean logit difference between the answer and a wrong token, at the last position.

    Args:
        logits: ``Float[Tensor, "batch pos d_vocab"]``, raw logits (not log-probabilities).
        answers: ``Int[Tensor, " batch"]``, the right token of each prompt.
        wrong: ``Int[Tensor, " batch"]``, the wrong token of each prompt.

    Returns:
        ``Float[Tensor, ""]``: a 0-d tensor, the mean over the batch of
        ``logits[b, -1, answers[b]] - logits[b, -1, wrong[b]]``; raw (not normalised). Positive when
        the model prefers the answers.

    Example: one prompt whose last logits give the answer 2.5 and the wrong token 1.0:
    ``tensor(1.5)``.
    """
    last = logits[:, -1]  # [batch, d_vocab]
    rows = torch.arange(len(answers))
    return (last[rows, answers] - last[rows, wrong]).mean()


# --------------------------------------------------------------------------------------------
# 7. The logit lens


def _check_lens(fn, solution):
    name = "logit_lens"
    tokens, _, _ = lens_case(4)
    for make, label in ((tiny, "tiny LayerNorm model"), (tiny_gqa, "grouped-query RMSNorm model")):
        model = make()
        expected = solution(model, tokens)
        got = call(name, fn, model, tokens, case=label)
        compare(name, got, expected, dims=("layer", "batch", "d_vocab"),
                what="the lens logits at the last position", case=label)


@register(notebook=NOTEBOOK, minutes=12, difficulty="core", checker=_check_lens,
          objective="Decode the residual stream entering every layer (and the final one) through "
                    "the final norm and the unembedding.",
          catches=("forgetting the final norm", "off-by-one layer (resid_post of each layer)",
                   "forgetting the unembedding bias", "each block's ln1 instead of ln_final"))
def logit_lens(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer batch d_vocab"]:
    """The logit lens: each residual stream read as if it were the last, at the last position.

    Args:
        model: a ``HookedTransformer``.
        tokens: ``Int[Tensor, "batch pos"]``.

    Returns:
        ``Float[Tensor, "layer batch d_vocab"]`` with ``layer = n_layers + 1``: row ``i < n_layers``
        reads the residual stream *entering* block ``i`` (``hook_resid_pre``), the last row the stream
        leaving the last block; each goes through the model's *final* norm (``ln_final``, with its
        weight and bias) and the unembedding (with its bias). Raw logits, last position only.

    Example: on the tiny model (2 layers, ``d_vocab`` 100) with ``tokens`` of shape ``[3, 7]``: shape
    ``[3, 3, 100]``, and the last row equals ``model(tokens)[:, -1]``.
    """
    n = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n)]
    names.append(f"blocks.{n - 1}.hook_resid_post")
    _, cache = model.run_with_cache(tokens, names_filter=names)
    resid = torch.stack([cache[name][:, -1] for name in names])  # [layer + 1, batch, d_model]
    return model.unembed(model.ln_final(resid))  # the final norm normalises each vector alone


# --------------------------------------------------------------------------------------------
# 8. Direct logit attribution of each head, through the final norm


def _check_dla(fn, solution):
    name = "head_dla"
    tokens, answers, wrong = lens_case(5)
    for make, label in ((tiny, "tiny LayerNorm model"), (tiny_gqa, "grouped-query RMSNorm model")):
        model = make()
        expected = solution(model, tokens, answers, wrong)
        got = call(name, fn, model, tokens, answers, wrong, case=label)
        compare(name, got, expected, dims=("layer", "head"),
                what="each head's direct effect on the logit difference", case=label)


@register(notebook=NOTEBOOK, minutes=20, difficulty="advanced", checker=_check_dla,
          objective="Attribute the logit difference to each head's direct path, dividing by the "
                    "final norm's scale (and centring for LayerNorm).",
          catches=("forgetting the final norm", "sign flipped (wrong - answer)",
                   "forgetting to centre for LayerNorm",
                   "the final norm's weight ln_final.w forgotten"))
def head_dla(model, tokens: Int[Tensor, "batch pos"], answers: Int[Tensor, " batch"],
             wrong: Int[Tensor, " batch"]) -> Float[Tensor, "layer head"]:
    """Direct logit attribution of every head to the logit difference, at the last position.

    Args:
        model: a ``HookedTransformer`` (LayerNorm or RMSNorm).
        tokens: ``Int[Tensor, "batch pos"]``.
        answers, wrong: ``Int[Tensor, " batch"]``, the right and the wrong token of each prompt.

    Returns:
        ``Float[Tensor, "layer head"]``: entry ``[l, h]`` is the mean over the batch of head ``(l, h)``'s
        output at the last position (``z @ W_O``, no bias) carried to the logit difference
        ``answer - wrong`` *directly*: through the final norm as the model applies it (centred if it
        is a LayerNorm, divided by the run's final-norm scale, times ``ln_final.w``) and ``W_U``.
        Raw logit units. Heads in ``range(n_heads)`` order.

    Example: on the tiny model, shape ``[2, 4]``; a head whose output points towards ``answer`` has a
    positive entry.
    """
    _, cache = model.run_with_cache(tokens)
    scale = cache["ln_final.hook_scale"][:, -1]  # [batch, 1]: the final norm's divisor
    direction = (model.W_U[:, answers] - model.W_U[:, wrong]).T * model.ln_final.w  # [batch, d_model]
    out = []
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"][:, -1]  # [batch, head, d_head]
        head_out = torch.einsum("bhd,hdm->bhm", z, model.W_O[layer])  # [batch, head, d_model]
        if model.cfg.normalization_type == "LN":
            head_out = head_out - head_out.mean(-1, keepdim=True)  # LayerNorm centres first
        out.append(torch.einsum("bhm,bm->bh", head_out / scale[:, :, None], direction).mean(0))
    return torch.stack(out)
