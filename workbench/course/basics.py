"""Exercises 1-5: tokens, hooks, an attention pattern by hand, previous-token and induction scores.

Notebook ``course/01_hooks_and_attention``.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench import models as wb_models
from workbench.course.base import call, compare, fail, register, tiny, tiny_gqa
from workbench.techniques import heads as wb_heads

NOTEBOOK = "course/01_hooks_and_attention"


class LetterTokenizer:
    """A tokenizer of letters (one token per character) with a BOS token, for the first exercise.

    ``adds_bos=True`` behaves like Gemma's Hugging Face tokenizer (``encode`` puts BOS first unless
    ``add_special_tokens=False``); ``adds_bos=False`` like SmolLM2's, which never adds one.
    """

    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = 0

    def __init__(self, adds_bos: bool):
        self.adds_bos = adds_bos

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [3 + ord(c) % 97 for c in text]
        return [self.bos_token_id, *ids] if (self.adds_bos and add_special_tokens) else ids

    def decode(self, ids) -> str:
        return "".join("<bos>" if i == 1 else chr(i - 3) for i in ids)


# --------------------------------------------------------------------------------------------
# 1. Tokens with exactly one BOS


def _check_tokens(fn, solution):
    name = "tokens_with_bos"
    for adds in (False, True):
        tok = LetterTokenizer(adds_bos=adds)
        case = f"a tokenizer that {'adds' if adds else 'does not add'} BOS by itself"
        for text in ("When Mary and John", "ab"):
            expected = solution(tok, text)
            got = call(name, fn, tok, text, case=case)
            if isinstance(got, Tensor) and got.ndim == 2 and got.shape[1] and expected.shape == got.shape:
                n_bos = int((got[0] == tok.bos_token_id).sum())
                if n_bos != 1:
                    fail(name, f"{n_bos} BOS tokens in {got.tolist()}; there must be exactly one, "
                         "at position 0.", case=case)
                    continue
            compare(name, got, expected, dims=("batch", "pos"), what="the token ids", case=case,
                    exact=True)


@register(notebook=NOTEBOOK, minutes=5, difficulty="intro", checker=_check_tokens,
          objective="Turn text into token ids with exactly one BOS token first, whatever the "
                    "tokenizer adds by itself.",
          catches=("missing BOS", "doubled BOS", "1-d tensor instead of [1, pos]"))
def tokens_with_bos(tokenizer, text: str) -> Int[Tensor, "1 pos"]:
    """Token ids of ``text`` with exactly one BOS token, first.

    Args:
        tokenizer: a Hugging Face-like tokenizer with ``encode(text, add_special_tokens=...)`` and
            ``bos_token_id``. Some tokenizers put BOS first by themselves (Gemma's), some never do
            (SmolLM2's).
        text: the prompt.

    Returns:
        ``Int[Tensor, "1 pos"]``: a batch of one row, ``pos = 1 + len(ids of text)``; position 0 is
        the BOS id and no other position holds it.

    Example: with ``bos_token_id = 1`` and ``text = "ab"`` encoded as ``[4, 5]``, the result is
    ``tensor([[1, 4, 5]])`` whichever the tokenizer.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    return torch.tensor([[tokenizer.bos_token_id, *ids]])


# --------------------------------------------------------------------------------------------
# 2. Reading an activation with a hook


def _check_resid(fn, solution):
    name = "resid_with_hook"
    tokens = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    for make, label in ((tiny, "tiny model"), (tiny_gqa, "grouped-query model")):
        for layer in (0, 1):
            model = make()
            case = f"{label}, layer {layer}"
            expected = solution(model, tokens, layer)
            got = call(name, fn, model, tokens, layer, case=case)
            compare(name, got, expected, dims=("batch", "pos", "d_model"),
                    what=f"the residual stream entering layer {layer}", case=case)


@register(notebook=NOTEBOOK, minutes=8, difficulty="intro", checker=_check_resid,
          objective="Read the residual stream entering a layer with a hook you write, attached "
                    "only inside `with model.hooks(...)`.",
          catches=("off-by-one layer (resid_post)", "hook left attached"))
def resid_with_hook(model, tokens: Int[Tensor, "batch pos"], layer: int
                    ) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream entering block ``layer``, read with a hook you attach yourself.

    Args:
        model: a ``HookedTransformer``.
        tokens: ``Int[Tensor, "batch pos"]``, token ids.
        layer: the block, ``0 <= layer < model.cfg.n_layers``.

    Returns:
        ``Float[Tensor, "batch pos d_model"]``: the activation at ``blocks.{layer}.hook_resid_pre``,
        every position, detached (a copy, not a view the next run overwrites). No hook may stay
        attached to the model after the function returns.

    Example: on the tiny model (``d_model`` 64), ``tokens`` of shape ``[2, 7]`` and ``layer=1`` give a
    tensor of shape ``[2, 7, 64]``; ``layer=0`` gives the embeddings (token plus position).
    """
    stored = {}

    def keep(activation, hook):
        stored["resid"] = activation.detach().clone()

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", keep)]):
        model(tokens, stop_at_layer=layer + 1)
    return stored["resid"]


# --------------------------------------------------------------------------------------------
# 3. An attention pattern by hand


def qk_of(model, tokens: Tensor, layer: int) -> tuple[Tensor, Tensor, Tensor]:
    """Queries and keys as the attention scores read them (after rotary), and the model's pattern."""
    rot = model.cfg.positional_embedding_type == "rotary"
    names = [f"blocks.{layer}.attn.hook_{'rot_' if rot else ''}{x}" for x in ("q", "k")]
    names.append(f"blocks.{layer}.attn.hook_pattern")
    _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=layer + 1)
    return tuple(cache[n] for n in names)


def _check_pattern(fn, solution):
    name = "attention_pattern"
    tokens = torch.randint(1, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    for make, label in ((tiny, "tiny model"), (tiny_gqa, "grouped-query model")):
        model = make()
        for layer in range(model.cfg.n_layers):
            q, k, pattern = qk_of(model, tokens, layer)
            case = f"{label}, layer {layer}"
            expected = solution(q, k)
            # The reference must be the model's own pattern: a check on the checker.
            torch.testing.assert_close(expected, pattern, atol=1e-5, rtol=1e-4)
            got = call(name, fn, q, k, case=case)
            compare(name, got, expected, dims=("batch", "head", "query_pos", "key_pos"),
                    what="the attention pattern", case=case)


@register(notebook=NOTEBOOK, minutes=15, difficulty="core", checker=_check_pattern,
          objective="Compute an attention pattern from queries and keys: scaled dot products, "
                    "the causal mask, a softmax over keys, and shared key heads.",
          catches=("softmax over the query dim", "no causal mask", "no 1/sqrt(d_head) scale",
                   "wrong head axis on a grouped-query model (repeat, not repeat_interleave)"))
def attention_pattern(q: Float[Tensor, "batch pos head d_head"],
                      k: Float[Tensor, "batch pos kv_head d_head"]
                      ) -> Float[Tensor, "batch head query_pos key_pos"]:
    """The attention pattern of one layer from its queries and keys.

    Args:
        q: ``Float[Tensor, "batch pos head d_head"]``, the queries (after rotary, if any).
        k: ``Float[Tensor, "batch pos kv_head d_head"]``, the keys. ``kv_head`` divides ``head``; on a
            grouped-query model (``kv_head < head``) query heads ``g * group .. (g + 1) * group - 1``
            share key head ``g``, where ``group = head // kv_head``.

    Returns:
        ``Float[Tensor, "batch head query_pos key_pos"]``: the softmax probabilities of the scaled
        dot products (divided by ``sqrt(d_head)``); a query attends only to itself and earlier
        positions, and each row (one query) sums to 1.

    Example: for one head and two positions whose scaled scores are ``[[s00, s01], [s10, s11]]``,
    the pattern is ``[[1, 0], [softmax(s10, s11)]]``: position 0 can only read itself.
    """
    group = q.shape[2] // k.shape[2]  # query heads per key head (1 unless grouped-query)
    k = k.repeat_interleave(group, dim=2)  # query head h reads key head h // group
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    n = q.shape[1]
    future = torch.ones(n, n, dtype=torch.bool).triu(1)  # key after query
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


# --------------------------------------------------------------------------------------------
# 4-5. Previous-token and induction scores


def patterns_of(model, tokens: Tensor) -> list[Tensor]:
    """Every layer's attention pattern ``[batch, head, query_pos, key_pos]``."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return [cache[n] for n in names]


def _check_prev(fn, solution):
    name = "previous_token_score"
    tokens = torch.randint(1, 100, (3, 9), generator=torch.Generator().manual_seed(2))
    for make, label in ((tiny, "tiny model"), (tiny_gqa, "grouped-query model")):
        model = make()
        for layer, pattern in enumerate(patterns_of(model, tokens)):
            case = f"{label}, layer {layer}"
            expected = solution(pattern)
            got = call(name, fn, pattern, case=case)
            compare(name, got, expected, dims=("head",), what="the score of each head",
                    case=case)


@register(notebook=NOTEBOOK, minutes=8, difficulty="intro", checker=_check_prev,
          objective="Score each head by its mean attention from every position to the one before.",
          catches=("off-by-one (attention to itself)", "query and key swapped",
                   "mean taken over every position, BOS query included"))
def previous_token_score(pattern: Float[Tensor, "batch head query_pos key_pos"]
                         ) -> Float[Tensor, " head"]:
    """How much each head attends from every position to the position just before it.

    Args:
        pattern: ``Float[Tensor, "batch head query_pos key_pos"]``, one layer's attention pattern.

    Returns:
        ``Float[Tensor, " head"]``: for each head, the mean over the batch and over the queries
        ``1 .. pos - 1`` of ``pattern[b, h, query, query - 1]`` (query 0 has no previous token and is
        left out). Heads in the order of the pattern's head axis; values in ``[0, 1]``.

    Example: a head that always reads the previous token scores 1.0; a head that always reads BOS
    scores ``1 / (pos - 1)`` (only query 1 reads its previous token, BOS).
    """
    # pattern[b, h, q, q - 1] for q = 1 .. n - 1: the first diagonal below the main one.
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2))


def _check_induction(fn, solution):
    name = "induction_score"
    for make, label in ((tiny, "tiny model"), (tiny_gqa, "grouped-query model")):
        model = make()
        for seq_len in (6, 9):
            tokens = wb_heads.repeated_tokens(model, seq_len=seq_len, batch=2, seed=seq_len)
            for layer, pattern in enumerate(patterns_of(model, tokens)):
                case = f"{label}, layer {layer}, [BOS] r r with len(r) = {seq_len}"
                expected = solution(pattern, seq_len)
                got = call(name, fn, pattern, seq_len, case=case)
                compare(name, got, expected, dims=("head",),
                        what="the induction score of each head", case=case)


@register(notebook=NOTEBOOK, minutes=10, difficulty="core", checker=_check_induction,
          objective="Score induction heads on [BOS] r r: attention from the second copy of a "
                    "token to the token after its first copy.",
          catches=("duplicate-token offset (the earlier copy itself)", "BOS forgotten in the offset",
                   "mean over every query instead of the second copy"))
def induction_score(pattern: Float[Tensor, "batch head query_pos key_pos"], seq_len: int
                    ) -> Float[Tensor, " head"]:
    """Each head's induction score on ``[BOS] r r``, where ``r`` is a random sequence.

    Args:
        pattern: ``Float[Tensor, "batch head query_pos key_pos"]``, one layer's pattern on tokens of
            length ``1 + 2 * seq_len``: BOS at 0, the first copy of ``r`` at ``1 .. seq_len``, the
            second at ``seq_len + 1 .. 2 * seq_len``.
        seq_len: the length of ``r``.

    Returns:
        ``Float[Tensor, " head"]``: for each head, the mean over the batch and over the queries of
        the second copy of the attention paid to the token *after* the first copy of the query's
        token. Heads in the order of the pattern's head axis; values in ``[0, 1]``.

    Example: with ``seq_len = 3`` the query at position 5 (``r[1]`` again) should read position 3
    (``r[2]``, the token that followed ``r[1]`` the first time); a perfect induction head scores 1.0.
    """
    # Query 1 + seq_len + j holds the second copy of r[j]; the token after its first copy is at
    # 2 + j, i.e. seq_len - 1 positions back.
    diag = pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1)  # query q = i + seq_len - 1
    return diag[..., 2:].mean(dim=(0, 2))  # queries seq_len + 1 .. 2 * seq_len


def tokens_model(tokenizer) -> SimpleNamespace:
    """A stand-in model carrying only a tokenizer, for ``workbench.models.to_tokens``."""
    return SimpleNamespace(tokenizer=tokenizer)


def to_tokens_reference(tokenizer, text: str) -> Tensor:
    """The package's own rule (``workbench.models.to_tokens``) on a bare tokenizer."""
    return wb_models.to_tokens(tokens_model(tokenizer), text)  # type: ignore[arg-type]  # a stand-in with only the tokenizer to_tokens reads
