"""Head scores and head sets.

Every score returns a :class:`~workbench.core.results.Result` with dims ``("layer", "head")`` and
values ``[n_layers, n_heads]`` (query heads; under grouped-query attention heads that share a KV
head still get their own score).

Attention-pattern scores read ``blocks.L.attn.hook_pattern`` and reduce it *inside the hook* to a
few numbers per head, so no ``[batch, head, pos, pos]`` pattern is kept after its layer has run:

* :func:`previous_token_scores`: mean attention from position ``i`` to ``i - 1``.
* :func:`duplicate_token_scores`: on ``[BOS] r r`` (random tokens ``r`` repeated, see
  :func:`repeated_tokens`), mean attention from the second copy of a token to its first copy.
* :func:`induction_scores`: same prompts, attention to the token *after* the first copy.
* :func:`attention_to` / :func:`bos_attention`: attention mass on chosen key positions.
* :func:`retrieval_scores`: the retrieval score of Wu et al. (2024), see its docstring.

:func:`copy_scores` reads weights only (the OV circuit), and :func:`induction_loss` gives the
logit-lens loss drop on the repeated half after each layer.

:class:`HeadSet` is a named frozen set of ``(layer, head)`` with set algebra, overlap measures,
construction from a score (:meth:`HeadSet.top`, :meth:`HeadSet.above`), a table and a grid plot;
:func:`overlap_table` compares several sets.

>>> from workbench.models import tiny_model
>>> from workbench import heads
>>> model = tiny_model()
>>> r = heads.induction_scores(model, seq_len=10, batch=2)
>>> r.values.shape
torch.Size([2, 4])
>>> s = heads.HeadSet.top(r, 3, name="induction")
>>> len(s)
3
"""

from __future__ import annotations

import time
import warnings
from typing import Callable, Literal, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench import models
from workbench.core import checks, runtime
from workbench.core.components import HeadSet, overlap_table
from workbench.core.readout import readout_of
from workbench.core.results import Result
from workbench.core.types import HookList, Model

__all__ = [
    "repeated_tokens",
    "repeated_token_scores",
    "previous_token_scores",
    "duplicate_token_scores",
    "induction_scores",
    "induction_loss",
    "copy_scores",
    "attention_to",
    "bos_attention",
    "retrieval_hits",
    "retrieval_scores",
    "HeadSet",
    "overlap_table",
]

PatternReducer = Callable[[Float[Tensor, "batch head pos pos"]], Float[Tensor, "head"]]


# --------------------------------------------------------------------------------------------
# Shared helpers


def _pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def _head_result(values: Tensor, metric: str, model: Model, **meta) -> Result:
    n_layers, n_heads = values.shape
    meta = dict(model=model.cfg.model_name, **meta)
    return Result(values.float(), ("layer", "head"), metric=metric, meta=meta)


def _reduce_patterns(
    model: Model, tokens: Tensor, reducers: dict[str, PatternReducer]
) -> dict[str, Float[Tensor, "layer head"]]:
    """One forward pass; each layer's pattern is reduced by every reducer to ``[head]`` at once."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    out = {k: torch.full((n_layers, n_heads), float("nan")) for k in reducers}

    def reduce_pattern(pattern: Tensor, hook) -> None:
        layer = hook.layer()
        for k, fn in reducers.items():
            out[k][layer] = fn(pattern.detach()).float().cpu()

    hooks: HookList = [(_pattern_name(layer), reduce_pattern) for layer in range(n_layers)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens, return_type=None)
    return out


# --------------------------------------------------------------------------------------------
# Repeated random tokens: previous-token, duplicate-token and induction scores


def _ordinary_token_ids(model: Model) -> Tensor:
    """Vocabulary ids that are not special or added tokens (all ids for a model with no tokenizer)."""
    d_vocab = model.cfg.d_vocab
    keep = torch.ones(d_vocab, dtype=torch.bool)
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        keep[models.bos_id(model)] = False
    else:
        special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
        keep[[i for i in special if 0 <= i < d_vocab]] = False
        keep[len(tok):] = False  # padded vocabulary rows with no token
    return keep.nonzero().squeeze(-1)


def repeated_tokens(model: Model, seq_len: int = 50, batch: int = 4, seed: int = 0) -> Int[Tensor, "batch pos"]:
    """``[BOS] + r + r`` with ``r`` seeded random tokens, shape ``[batch, 1 + 2 * seq_len]``.

    Tokens are drawn uniformly (with replacement) from the vocabulary without special or added
    tokens. BOS is the tokenizer's; a model without a tokenizer uses id 0 (and never draws it).

    >>> from workbench.models import tiny_model
    >>> t = repeated_tokens(tiny_model(), seq_len=5, batch=2)
    >>> t.shape, bool((t[:, 1:6] == t[:, 6:]).all())
    (torch.Size([2, 11]), True)
    """
    if seq_len < 2 or batch < 1:
        raise ValueError(f"repeated_tokens needs seq_len >= 2 and batch >= 1, got {seq_len}, {batch}.")
    if 1 + 2 * seq_len > model.cfg.n_ctx:
        raise ValueError(
            f"1 + 2 * seq_len = {1 + 2 * seq_len} positions exceed the model's n_ctx={model.cfg.n_ctx}; "
            "use a smaller seq_len."
        )
    pool = _ordinary_token_ids(model)
    gen = torch.Generator().manual_seed(seed)
    r = pool[torch.randint(0, len(pool), (batch, seq_len), generator=gen)]
    bos = torch.full((batch, 1), models.bos_id(model), dtype=torch.long)
    return torch.cat([bos, r, r], dim=1)


def _offset_mean(pattern: Tensor, offset: int, first_query: int, last_query: int) -> Tensor:
    """Mean over batch and queries ``first..last`` (inclusive) of ``pattern[b, h, q, q - offset]``."""
    diag = pattern.diagonal(offset=-offset, dim1=-2, dim2=-1)  # [batch, head, pos - offset], q = i + offset
    return diag[..., first_query - offset : last_query - offset + 1].mean(dim=(0, 2))


def _repeat_reducers(seq_len: int) -> dict[str, PatternReducer]:
    L = seq_len
    return {
        # every query from 1 on (1..2L) looks one back
        "previous_token": lambda p: _offset_mean(p, 1, 1, 2 * L),
        # query L+1+j (second copy of r[j]) looks at 1+j: offset L
        "duplicate_token": lambda p: _offset_mean(p, L, L + 1, 2 * L),
        # ... and at 2+j, the token after the first copy: offset L-1
        "induction": lambda p: _offset_mean(p, L - 1, L + 1, 2 * L),
    }


_REPEAT_METRICS = {
    "previous_token": "previous-token score (mean attention to i-1)",
    "duplicate_token": "duplicate-token score (attention to the earlier copy)",
    "induction": "induction score (attention to the token after the earlier copy)",
}


def repeated_token_scores(
    model: Model, *, seq_len: int = 50, batch: int = 4, seed: int = 0
) -> dict[str, Result]:
    """Previous-token, duplicate-token and induction scores from one forward pass on repeated tokens.

    On ``[BOS] r r`` (:func:`repeated_tokens`), for each head, averaged over the batch:

    * ``"previous_token"``: mean of ``pattern[q, q-1]`` over queries ``q = 1 .. 2L``.
    * ``"duplicate_token"``: mean of ``pattern[q, q-L]`` over the second copy ``q = L+1 .. 2L``.
    * ``"induction"``: mean of ``pattern[q, q-L+1]`` over the second copy.

    Returns a dict of three Results ``[layer, head]``; ``meta`` records seq_len, batch, seed and the
    time taken.

    >>> from workbench.models import tiny_model
    >>> sorted(repeated_token_scores(tiny_model(), seq_len=8, batch=2))
    ['duplicate_token', 'induction', 'previous_token']
    """
    start = time.perf_counter()
    tokens = repeated_tokens(model, seq_len, batch, seed)
    values = _reduce_patterns(model, tokens, _repeat_reducers(seq_len))
    seconds = time.perf_counter() - start
    return {
        k: _head_result(v, _REPEAT_METRICS[k], model, seq_len=seq_len, batch=batch, seed=seed, seconds=seconds)
        for k, v in values.items()
    }


def previous_token_scores(
    model: Model, tokens: Int[Tensor, "batch pos"] | None = None, *, seq_len: int = 50, batch: int = 4, seed: int = 0
) -> Result:
    """Mean attention from each position ``i >= 1`` to ``i - 1``, ``[layer, head]``.

    On ``tokens`` if given (any text), else on :func:`repeated_tokens` ``(seq_len, batch, seed)``.

    >>> from workbench.models import tiny_model
    >>> previous_token_scores(tiny_model(), seq_len=8).values.shape
    torch.Size([2, 4])
    """
    if tokens is None:
        return repeated_token_scores(model, seq_len=seq_len, batch=batch, seed=seed)["previous_token"]
    tokens = checks.tokens(model, tokens)
    if tokens.shape[1] < 2:
        raise ValueError("previous_token_scores needs at least 2 positions.")
    start = time.perf_counter()
    n = tokens.shape[1]
    v = _reduce_patterns(model, tokens, {"p": lambda p: _offset_mean(p, 1, 1, n - 1)})["p"]
    return _head_result(v, _REPEAT_METRICS["previous_token"], model, seconds=time.perf_counter() - start)


def duplicate_token_scores(model: Model, *, seq_len: int = 50, batch: int = 4, seed: int = 0) -> Result:
    """Attention from the second copy of each token to its first copy on ``[BOS] r r``, ``[layer, head]``."""
    return repeated_token_scores(model, seq_len=seq_len, batch=batch, seed=seed)["duplicate_token"]


def induction_scores(model: Model, *, seq_len: int = 50, batch: int = 4, seed: int = 0) -> Result:
    """Attention from the second copy of each token to the token after its first copy, ``[layer, head]``."""
    return repeated_token_scores(model, seq_len=seq_len, batch=batch, seed=seed)["induction"]


def induction_loss(
    model: Model, *, seq_len: int = 50, batch: int = 4, seed: int = 0, progress: bool = False
) -> Result:
    """Logit-lens loss drop on repeated tokens after each layer, ``[layer]``.

    After layer ``l`` the residual stream (``hook_resid_post``) is read out with ``ln_final`` and
    ``W_U`` (+ ``b_U``), and the mean next-token loss on the first copy (predicting ``r[1:]``) minus
    that on the second copy (predicting ``r[1:]`` again) is the value. The last layer's value is
    the model's own loss drop (unless the model transforms logits after ``W_U``, e.g. soft-capping).
    ``meta`` holds both losses per layer. Costs one unembedding per layer.
    """
    L = seq_len
    tokens = repeated_tokens(model, seq_len, batch, seed)
    n_layers = model.cfg.n_layers
    first = torch.zeros(n_layers)
    second = torch.zeros(n_layers)
    bar = tqdm(total=n_layers, disable=not progress, desc="induction loss")

    def lens_loss(resid: Tensor, hook) -> None:
        layer = hook.layer()
        logits = readout_of(model).logits(resid, cap=False)  # [batch, pos, d_vocab]
        logp = logits.log_softmax(-1)
        nll = -logp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]  # predicts position q+1 at q
        first[layer] = nll[:, 1:L].mean()  # q = 1..L-1 predict r[1..L-1]
        second[layer] = nll[:, L + 1 : 2 * L].mean()  # q = L+1..2L-1 predict r[1..L-1] again
        bar.update()

    hooks: HookList = [(f"blocks.{layer}.hook_resid_post", lens_loss) for layer in range(n_layers)]
    try:
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(tokens, return_type=None)
    finally:
        bar.close()
    return Result(
        first - second,
        ("layer",),
        metric="logit-lens loss drop on the repeated half (nats)",
        meta=dict(model=model.cfg.model_name, loss_first=first, loss_second=second, seq_len=L, batch=batch, seed=seed),
    )


# --------------------------------------------------------------------------------------------
# Copy (OV circuit) score


def _sample_tokens(model: Model, n_tokens: int, seed: int) -> Tensor:
    pool = _ordinary_token_ids(model)
    gen = torch.Generator().manual_seed(seed)
    n = min(n_tokens, len(pool))
    return pool[torch.randperm(len(pool), generator=gen)[:n]].sort().values


def _embedding_input(model: Model, tokens: Tensor, embedding: str) -> Float[Tensor, "token d_model"]:
    """What a head in any layer is taken to read for token t: ``embed(t)``, optionally + MLP0."""
    e = model.embed(tokens[None])  # [1, n, d_model], with any embedding scale the model applies
    if embedding == "mlp0":
        block = model.blocks[0]
        if getattr(block, "mlp", None) is None or model.cfg.attn_only:
            raise ValueError("embedding='mlp0' needs a model with MLPs; this one is attention-only.")
        out = block.mlp(block.ln2(e))
        if hasattr(block, "ln2_post"):
            out = block.ln2_post(out)
        e = e + out
    return e[0]


def _ov_logits(
    model: Model, layer: int, x: Tensor, heads: Sequence[int] | None = None, vocab: Tensor | None = None
) -> Float[Tensor, "head token d_vocab"]:
    """Direct-path logits of each head's OV circuit for inputs ``x`` ``[token, d_model]``
    (only the columns ``vocab`` of the unembedding if given)."""
    block = model.blocks[layer]
    xn = block.ln1(x[None])[0]  # the head reads the normalised residual stream
    W_V = block.attn.W_V  # [head, d_model, d_head], expanded per query head under GQA
    W_O = block.attn.W_O  # [head, d_head, d_model]
    if heads is not None:
        W_V, W_O = W_V[list(heads)], W_O[list(heads)]
    out = torch.einsum("td,hde,hem->htm", xn, W_V, W_O)
    if hasattr(block, "ln1_post"):  # Gemma normalises the attention output again
        out = block.ln1_post(out)
    W_U = model.W_U if vocab is None else model.W_U[:, vocab]
    return readout_of(model).norm_without_bias(out) @ W_U


def copy_scores(
    model: Model,
    *,
    n_tokens: int = 100,
    k: int = 5,
    method: Literal["top_k", "eigen"] = "top_k",
    embedding: Literal["embed", "mlp0"] = "embed",
    seed: int = 0,
    progress: bool = False,
) -> Result:
    """Does each head's OV circuit map a token to itself? ``[layer, head]``, in [0, 1] or [-1, 1].

    For a seeded sample of ``n_tokens`` ordinary tokens ``t`` (no special tokens), the input is
    ``x_t = embed(t)`` (``embedding="embed"``), or ``embed(t) + MLP0(embed(t))``
    (``embedding="mlp0"``, the "effective embedding" used for GPT-2, whose first MLP acts as an
    extended embedding; the layer-0 attention is skipped). Head ``(l, h)`` then gives::

        logits_t = final_norm(post_norm(ln1_l(x_t) @ W_V[l, h] @ W_O[l, h])) @ W_U

    where ``ln1_l`` is the layer's input norm (the head reads a normalised stream),
    ``post_norm`` is Gemma's post-attention norm (absent elsewhere), ``final_norm`` is
    ``ln_final`` *without* its bias, and biases ``b_V``, ``b_O``, ``b_U`` are left out: they do not
    depend on ``t``, so they are no part of the map. Under grouped-query attention ``W_V`` is the
    key/value head shared by the query head (``attn.W_V`` expands ``attn._W_V`` per query head).

    * ``method="top_k"``: the fraction of sampled tokens whose own logit is among the ``k``
      largest of the full vocabulary (ties count against the token). Random maps give about
      ``k / d_vocab``; a copying head gives close to 1.
    * ``method="eigen"``: restricted to the sample, ``A[t, s] = logits_t[s]``; the score is
      ``sum(eig(A)) / sum(|eig(A)|)`` (real parts over moduli), the "positive eigenvalue" copying
      measure: near 1 for copying, near -1 for copy suppression. With the final norm's weight
      in the map this is lenient: on SmolLM2 most late-layer heads score above 0.9, so prefer
      ``top_k`` to rank heads.

    Cost: ``top_k`` unembeds ``n_tokens`` rows per head (SmolLM2, 100 tokens: about 20 s of CPU;
    Gemma's 262k vocabulary is about 3x that); ``eigen`` only needs the sampled columns.

    >>> from workbench.models import tiny_model
    >>> copy_scores(tiny_model(), n_tokens=20).values.shape
    torch.Size([2, 4])
    """
    if method not in ("top_k", "eigen"):
        raise ValueError(f"method must be 'top_k' or 'eigen', got {method!r}.")
    if embedding not in ("embed", "mlp0"):
        raise ValueError(f"embedding must be 'embed' or 'mlp0', got {embedding!r}.")
    if n_tokens < 2 or k < 1:
        raise ValueError(f"copy_scores needs n_tokens >= 2 and k >= 1, got n_tokens={n_tokens}, k={k}.")
    start = time.perf_counter()
    toks = _sample_tokens(model, n_tokens, seed)
    idx = torch.arange(len(toks))
    values = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    with torch.no_grad():
        x = _embedding_input(model, toks, embedding)
        for layer in tqdm(range(model.cfg.n_layers), disable=not progress, desc="copy scores"):
            if method == "top_k":
                # as many heads per matmul as fit in about 2**26 logits (256 MB)
                per = max(1, (1 << 26) // (len(toks) * model.cfg.d_vocab))
                for h0 in range(0, model.cfg.n_heads, per):
                    hs = list(range(h0, min(h0 + per, model.cfg.n_heads)))
                    logits = _ov_logits(model, layer, x, hs)  # [head, token, d_vocab]
                    own = logits[:, idx, toks]  # [head, token]
                    rank = (logits >= own[..., None]).sum(-1) - 1  # others at least as large
                    values[layer, hs] = (rank < k).float().mean(-1)
            else:
                A = _ov_logits(model, layer, x, vocab=toks)  # [head, token, token]
                eig = torch.linalg.eigvals(A.double())  # [head, token]
                values[layer] = (eig.real.sum(-1) / eig.abs().sum(-1)).float()
    metric = (
        f"copy score (own token in top-{k} of the OV circuit's logits)"
        if method == "top_k"
        else "copy score (positive eigenvalue ratio of the OV circuit)"
    )
    return _head_result(
        values, metric, model, method=method, k=k, n_tokens=len(toks), embedding=embedding, seed=seed,
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------------------------
# Attention to chosen positions


def attention_to(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    key_positions,
    query_positions=None,
) -> Result:
    """Mean attention mass from query positions to a set of key positions, ``[layer, head]``.

    ``value[l, h] = mean over (prompt b, query q in Q_b) of sum over k in K_b of pattern[b, h, q, k]``.

    Args:
        tokens: ``[batch, pos]``.
        key_positions: ints (the same for every prompt; negative ints count from the end), a
            ``range``, or a boolean mask ``[batch, pos]`` / ``[pos]``. E.g. a needle span
            ``range(start, end)``.
        query_positions: same forms; default: the last position.

    >>> import torch
    >>> from workbench.models import tiny_model
    >>> r = attention_to(tiny_model(), torch.randint(0, 100, (2, 8)), [0], query_positions=[7])
    >>> bool(((r.values >= 0) & (r.values <= 1)).all())
    True
    """
    tokens = checks.tokens(model, tokens)
    batch, n_pos = tokens.shape
    keys = checks.position_mask(key_positions, batch, n_pos, name="key_positions").float()
    queries = checks.position_mask(query_positions if query_positions is not None else [-1], batch, n_pos, name="query_positions")
    qw = queries.float() / queries.sum()  # weights over (b, q) summing to 1

    def mass(p: Tensor) -> Tensor:  # [batch, head, q, k] -> [head]
        return torch.einsum("bhqk,bk,bq->h", p, keys, qw)

    start = time.perf_counter()
    v = _reduce_patterns(model, tokens, {"m": mass})["m"]
    return _head_result(v, "attention mass on the key positions", model, seconds=time.perf_counter() - start)


def bos_attention(model: Model, tokens: Int[Tensor, "batch pos"], query_positions=None) -> Result:
    """Attention-sink score: mean attention to position 0, by default from every position from 1 on."""
    n_pos = checks.tokens(model, tokens).shape[1]
    if query_positions is None:
        if n_pos < 2:
            raise ValueError("bos_attention needs at least 2 positions.")
        query_positions = list(range(1, n_pos))
    r = attention_to(model, tokens, [0], query_positions)
    r.metric = "attention to position 0 (BOS)"
    return r


# --------------------------------------------------------------------------------------------
# Retrieval score (Wu et al. 2024)


def _check_haystack(h) -> None:
    for attr in ("tokens", "needle_span", "answer_ids", "full_tokens"):
        if not hasattr(h, attr):
            raise TypeError(
                f"Expected a workbench.phenomena.retrieval.dataset.Haystack, got {type(h).__name__} without {attr!r}; "
                "build haystacks with workbench.phenomena.needle_haystacks(model)."
            )


def retrieval_hits(model: Model, haystack) -> tuple[Int[Tensor, "layer head"], bool]:
    """Per-head retrieval hits on one haystack, by teacher forcing, and whether the model answers it.

    One forward pass over ``prompt + answer``. The query at position ``n - 1 + j`` (``n`` prompt
    tokens) is the one that produces answer token ``j``. A head *hits* at step ``j`` if the argmax
    of its attention row there lies inside ``needle_span`` and the token at that position equals
    answer token ``j``. The model *answers* if the argmax logit at every one of those queries is
    the answer token; then teacher forcing sees exactly what greedy decoding would, so the hits
    are those of greedy decoding. Only the ``n_answer`` answer rows of each pattern are kept, and
    only those rows of the final residual stream are unembedded (``ln_final`` then ``unembed``,
    outside the hooks: hooks on ``ln_final``/``unembed`` do not reach this check).

    On a ``HookedTransformer`` the prompt before the answer queries is run first in chunks
    (:func:`workbench.core.runtime.prefill`, faster on long contexts) and the answer queries then
    read its keys and values from the cache; the patterns are those of one pass.

    Returns ``(hits [layer, head] int, answered)``.
    """
    _check_haystack(haystack)
    full = haystack.full_tokens
    n, m = haystack.tokens.shape[1], len(haystack.answer_ids)
    checks.context(model, full.shape[1], "The haystack with its answer")
    queries = torch.arange(n - 1, n - 1 + m)
    start, end = haystack.needle_span
    answer = haystack.answer_ids
    hits = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.long)

    def count_hits(pattern: Tensor, hook) -> None:  # keys are absolute positions, cached or not
        top = pattern[0, :, queries - offset, :].argmax(-1)  # [head, answer step]
        inside = (top >= start) & (top < end)
        same = full[0, top] == answer[None, :]
        hits[hook.layer()] = (inside & same).sum(-1)

    kept: dict[str, Tensor] = {}

    def keep_answer_rows(resid: Tensor, hook) -> None:  # final residual stream at the answer queries
        kept["x"] = resid[:, queries - offset].detach()

    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    hooks: HookList = [
        (_pattern_name(layer), count_hits) for layer in range(model.cfg.n_layers)
    ]
    hooks.append((last, keep_answer_rows))
    with torch.no_grad():
        if runtime.supports_fast_path(model) and n - 1 > runtime.PREFILL_CHUNK:
            offset = n - 1  # the prompt before the first answer query goes into the cache
            cache = runtime.prefill(model, full[:, :offset])
            with model.hooks(fwd_hooks=hooks):
                runtime.run_cached(model, full[:, offset : offset + m], cache, return_type=None)
        else:
            offset = 0
            with model.hooks(fwd_hooks=hooks):
                model(full, return_type=None)
        logits = readout_of(model).logits(kept["x"], cap=False)[0]  # [answer step, d_vocab]: these rows only
    answered = bool((logits.argmax(-1) == answer).all())
    return hits, answered


def retrieval_scores(model: Model, haystacks: Sequence, *, progress: bool = False) -> Result:
    """Retrieval score of every head (Wu et al. 2024), ``[layer, head]``, in [0, 1].

    For each haystack the model answers (its greedy continuation is the answer, checked at every
    answer token, see :func:`retrieval_hits`), a head's score is ``hits / n_answer``: the fraction
    of answer tokens it copied by attending (argmax) to that very token inside the needle. The
    result is the mean over answered haystacks. ``meta``: ``n_answered``, ``n_total``, ``answered``
    (one bool per haystack) and ``per_haystack`` (``[haystack, layer, head]`` scores, NaN where
    not answered). If no haystack is answered every value is NaN.

    >>> from workbench.models import tiny_model
    >>> from workbench.phenomena.retrieval.dataset import Haystack
    >>> import torch
    >>> h = Haystack(tokens=torch.arange(1, 13)[None], needle_span=(3, 7), answer_span=(4, 6),
    ...              answer_ids=torch.tensor([5, 6]))
    >>> r = retrieval_scores(tiny_model(), [h], progress=False)  # warns: a random model answers nothing
    >>> r.meta["n_answered"], r.meta["n_total"], r.values.shape
    (0, 1, torch.Size([2, 4]))
    """
    haystacks = list(haystacks)
    if not haystacks:
        raise ValueError("retrieval_scores got no haystacks; build them with workbench.phenomena.needle_haystacks.")
    for h in haystacks:
        _check_haystack(h)
    t0 = time.perf_counter()
    per = torch.full((len(haystacks), model.cfg.n_layers, model.cfg.n_heads), float("nan"))
    answered = []
    for i, h in enumerate(tqdm(haystacks, disable=not progress, desc="retrieval scores")):
        hits, ok = retrieval_hits(model, h)
        answered.append(ok)
        if ok:
            per[i] = hits.float() / len(h.answer_ids)
    n_answered = sum(answered)
    if not n_answered:
        warnings.warn(
            f"The model answered none of the {len(haystacks)} haystacks, so every retrieval score is NaN. "
            "Check the needle and question (e.g. with a shorter context).", stacklevel=2
        )
    values = per[torch.tensor(answered)].mean(0) if n_answered else torch.full(per.shape[1:], float("nan"))
    return _head_result(
        values,
        "retrieval score (Wu et al. 2024)",
        model,
        n_answered=n_answered,
        n_total=len(haystacks),
        answered=answered,
        per_haystack=per,
        seconds=time.perf_counter() - t0,
    )
