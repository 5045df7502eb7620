"""Runtime helpers on a loaded model: logits from the final residual stream, chunked prefill.

The readout itself (final norm, unembedding, soft cap, key/value heads) is
:class:`workbench.core.readout.ModelReadout`; the functions here are its short forms.

- :func:`resid_to_logits`: the final norm, the unembedding and the output soft cap, as the
  model's own forward applies them; :func:`logits_at`: the logits at one position per prompt.
- :func:`prefill`, :func:`run_cached`, :func:`cache_prefix`: run a long context in chunks into a
  key/value cache, continue from it, and share a frozen prefix between variants of a run.

Every tensor made here goes to the device of the tensors it meets, so a model on a GPU (or split
across several) works as one on the CPU.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.core.readout import readout_of
from workbench.core.types import Model

__all__ = [
    "PREFILL_CHUNK",
    "cache_prefix",
    "logits_at",
    "prefill",
    "readout_logits",
    "resid_to_logits",
    "run_cached",
    "softcap",
    "softcap_value",
    "supports_fast_path",
]


def softcap_value(model: Model) -> float:
    """The model's output logit soft cap (Gemma-2 style ``output_logits_soft_cap``), 0.0 when none."""
    return readout_of(model).softcap_value


def softcap(model: Model, logits: Tensor) -> Tensor:
    """``cap * tanh(logits / cap)`` when the model soft-caps its logits, else ``logits`` unchanged."""
    return readout_of(model).softcap(logits)


def supports_fast_path(model: Model) -> bool:
    """Whether runs may start mid-model from a cached residual (``start_at_layer``) and reuse a
    key/value cache: a ``HookedTransformer`` (not a bridge), without shortformer embeddings, whose
    tokenizer does not pad on the left (a mid-model start would lose the attention mask)."""
    from transformer_lens import HookedTransformer

    tokenizer = getattr(model, "tokenizer", None)
    return (
        isinstance(model, HookedTransformer)
        and model.cfg.positional_embedding_type != "shortformer"
        and getattr(tokenizer, "padding_side", "right") != "left"
    )


def readout_logits(
    model: Model, final_resid: Float[Tensor, "k batch d_model"], tokens: Int[Tensor, "batch target"]
) -> Float[Tensor, "k batch target"]:
    """Logits of only ``tokens`` from final residuals (before ``ln_final``), as the model computes
    them; in float32 whatever the model's dtype (see :meth:`ModelReadout.read`)."""
    return readout_of(model).read(final_resid, tokens)


def resid_to_logits(model: Model, resid: Float[Tensor, "... pos d_model"]) -> Float[Tensor, "... pos d_vocab"]:
    """Logits of final-residual vectors, as the model's own forward computes them.

    The final norm (``ln_final``, when the model has one), the unembedding and the output soft
    cap (Gemma-2 style ``output_logits_soft_cap``, when set); see :meth:`ModelReadout.logits`.
    """
    return readout_of(model).logits(resid)


def logits_at(
    model: Model, tokens: Int[Tensor, "batch pos"], pos: Int[Tensor, " batch"]
) -> Float[Tensor, "batch d_vocab"]:
    """The logits at one position per prompt (e.g. each prompt's last real token).

    Equal to ``model(tokens)[arange(batch), pos]``, but only those rows are unembedded, which
    is most of the cost of a short prompt on a large vocabulary. Hooks active on ``model``
    apply (the run stops before the final norm; ``ln_final`` then sees ``[batch, 1, d_model]``).
    """
    pos = torch.as_tensor(pos, dtype=torch.long).reshape(-1)
    if tokens.ndim != 2 or len(pos) != tokens.shape[0]:
        raise ValueError(
            f"tokens must be [batch, pos] with one position per prompt; got tokens "
            f"{tuple(tokens.shape)} and {len(pos)} positions."
        )
    if len(pos) and not (0 <= int(pos.min()) and int(pos.max()) < tokens.shape[1]):
        raise ValueError(f"positions {pos.tolist()} out of range for {tokens.shape[1]} tokens.")
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    rows = torch.arange(tokens.shape[0], device=resid.device)
    return resid_to_logits(model, resid[rows, pos.to(resid.device)][:, None])[:, 0]


#: Positions per chunk in :func:`prefill`.
PREFILL_CHUNK = 256


def prefill(model: Model, tokens: Int[Tensor, "batch pos"], *, chunk: int = PREFILL_CHUNK):
    """Run ``tokens`` through a ``HookedTransformer`` ``chunk`` positions at a time; return the
    filled key/value cache, to continue with :func:`run_cached`.

    The same values as one pass, to float rounding, and faster on long contexts:
    TransformerLens materialises the whole ``[batch, head, query, key]`` score matrix of every
    layer and makes several elementwise passes over it, so a 2,000-token SmolLM2 pass spends
    most of its time there (measured: 30 s in one pass, 19 s in chunks of 256). Hooks active on
    ``model`` apply to every chunk (a hook then sees ``chunk`` query positions at a time).
    """
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}.")
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, tokens.shape[0])
    for start in range(0, tokens.shape[1], chunk):
        run_cached(model, tokens[:, start : start + chunk], cache, return_type=None)
    return cache


def run_cached(model: Model, tokens: Int[Tensor, "batch pos"], cache, **kwargs):
    """``model(tokens, past_kv_cache=cache)``: the tokens continue the ones already in ``cache``.

    Every position is attended (no padding inside a cached context), so no tokenizer is needed
    to build an attention mask.
    """
    return model(tokens, past_kv_cache=cache, attention_mask=torch.ones_like(tokens), **kwargs)


def cache_prefix(cache, *, end: int, times: int = 1, from_layer: int = 0):
    """A frozen copy of a key/value cache's first ``end`` positions, for layers ``from_layer`` on.

    Each prompt is repeated ``times`` (row ``i * batch + b`` is prompt ``b``, as
    ``tensor.repeat(times, ...)`` stacks a batch), so ``times`` variants of a run can continue
    from one shared prefix in a single forward pass (``start_at_layer=from_layer``); being
    frozen, the copy is not extended by them.
    """
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    entries = [
        TransformerLensKeyValueCacheEntry(
            e.past_keys[:, :end].repeat(times, 1, 1, 1), e.past_values[:, :end].repeat(times, 1, 1, 1),
            frozen=True,
        ) if i >= from_layer else None
        for i, e in enumerate(cache.entries)
    ]
    batch = cache.entries[from_layer].past_keys.shape[0]
    mask = torch.ones(times * batch, end, dtype=torch.long, device=cache.entries[from_layer].past_keys.device)
    # The entries of layers before from_layer stay None: a run from there never reads them, but
    # TransformerLens types the list as holding entries only.
    return TransformerLensKeyValueCache(entries, mask, frozen=True)  # type: ignore[arg-type]
