"""The one tokenization rule that every workbench helper follows.

:func:`to_tokens` encodes the text with **no special tokens** from the tokenizer and puts
**exactly one BOS token** first. For SmolLM2 that BOS is ``<|im_start|>`` (its Hugging Face
tokenizer adds nothing by itself); for Gemma it is ``<bos>``. Position 0 is therefore always
BOS, which gives every model the same attention-sink position and keeps positions comparable
across models. Prompts of different token lengths are an error unless ``padding="right"`` is
asked for: nothing is silently padded or cut.

**A tokenizer with no BOS token** (Qwen2, for example) gets its **EOS token** in that place,
the rule TransformerLens applies when it is given such a tokenizer: the end-of-text token is the
separator these models saw between training documents, so it is the token that opens a document
for them. :func:`bos_token_id` says which id is used; a tokenizer with neither token raises
``ValueError`` (call with ``prepend_bos=False`` and put the start token in yourself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from workbench.core.types import Model

__all__ = ["to_tokens", "to_str_tokens", "position_labels", "tokenizer_of", "decode_token", "single_token_id", "bos_token_id", "bos_id"]


def bos_token_id(tokenizer) -> int:
    """The token put first by :func:`to_tokens`: the BOS token, else the EOS token."""
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError(
        "This tokenizer defines neither a BOS nor an EOS token; call with prepend_bos=False "
        "and put the start token in yourself."
    )


def bos_id(model: Model) -> int:
    """The id at position 0 of every prompt :func:`to_tokens` makes for ``model``.

    A model without a tokenizer (the tiny test models) reads raw ids; its BOS is id 0.
    """
    tok = getattr(model, "tokenizer", None)
    return 0 if tok is None else bos_token_id(tok)


def _tokenizer(model: Model):
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError(
            f"Model {model.cfg.model_name!r} has no tokenizer: pass token ids instead of text."
        )
    return tok


def to_tokens(
    model: Model,
    prompts: str | Sequence[str],
    *,
    prepend_bos: bool = True,
    padding: Literal["error", "right"] = "error",
) -> Tensor:
    """Tokenize text by the workbench rule: no special tokens from the tokenizer, one BOS first.

    Returns an int64 tensor ``[batch, pos]``. A single string gives batch 1. Prompts whose token
    lengths differ raise ``ValueError`` unless ``padding="right"`` (pads with the pad token).
    """
    tok = _tokenizer(model)
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("to_tokens got an empty list of prompts.")
    ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    if prepend_bos:
        bos = bos_token_id(tok)
        ids = [[bos, *row] for row in ids]
    lengths = {len(row) for row in ids}
    if len(lengths) > 1:
        if padding != "right":
            by_len = sorted({(len(r), p) for r, p in zip(ids, prompts)})
            raise ValueError(
                f"Prompts tokenize to different lengths ({min(lengths)}..{max(lengths)} tokens), "
                f"e.g. {by_len[0][1]!r} ({by_len[0][0]}) vs {by_len[-1][1]!r} ({by_len[-1][0]}). "
                "Use prompts of equal token length, or pass padding='right'."
            )
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(lengths)
        ids = [row + [pad] * (width - len(row)) for row in ids]
    return torch.tensor(ids, dtype=torch.long)


def to_str_tokens(model: Model, tokens: Tensor | Sequence[int]) -> list[str]:
    """The string of each token id in a 1-d sequence (for plot labels)."""
    tok = _tokenizer(model)
    if isinstance(tokens, Tensor):
        if tokens.ndim != 1:
            raise ValueError(f"to_str_tokens takes a 1-d sequence, got shape {tuple(tokens.shape)}")
        tokens = tokens.tolist()
    return [tok.decode([t]) for t in tokens]


def tokenizer_of(model) -> Any:
    """``model.tokenizer``; a model without one (e.g. ``tiny_model()``) is a ValueError that says
    text prompts need a tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("The model has no tokenizer: text datasets need one (load a model with load_model).")
    return tokenizer


def decode_token(model, token: int) -> str:
    """The text of one token id."""
    return str(tokenizer_of(model).decode([int(token)]))


def position_labels(model: Model, tokens: Tensor | Sequence[int], positions: Sequence[int] | None = None) -> list:
    """The ``pos`` labels of every result: ``"p:token"`` (e.g. ``"5: John"``) where the model has a
    tokenizer, the position ``p`` itself where it has none. ``tokens`` is one prompt (the first of
    the batch, for results over a batch); ``positions`` default to all."""
    tokens = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
    positions = list(range(len(tokens))) if positions is None else [int(p) for p in positions]
    if getattr(model, "tokenizer", None) is None:
        return positions
    strs = to_str_tokens(model, tokens)
    return [f"{p}:{strs[p]}" for p in positions]


def single_token_id(model: Model, text: str) -> int:
    """The id of ``text`` if it is exactly one token (no BOS); ``ValueError`` naming its pieces if not."""
    ids = _tokenizer(model).encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [_tokenizer(model).decode([i]) for i in ids]
        raise ValueError(
            f"{text!r} is {len(ids)} tokens for this model ({pieces}), not one. Answers must be "
            "single tokens: choose another word, or compare the first token explicitly."
        )
    return ids[0]
