"""Reading features: activations per token, top contexts, logit effects."""


from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.core.persist import Persistent
from workbench.core.results import Result, render
from workbench.core.types import Model
from workbench.techniques.sae.core import (
    Corpus,
    as_token_rows,
    check_feature,
    check_sae,
    corpus_tokens,
    encode_flat,
    feature_direction,
    flat_acts,
    hook_acts,
    masked,
    str_tokens,
    token_mask,
)


def feature_activations(model: Model, sae, prompts_or_tokens, *, top_k: int = 5) -> pd.DataFrame:
    """The strongest latents at every token: one row per (prompt, position, active feature).

    Columns: ``prompt`` (index), ``pos``, ``token`` (string), ``rank`` (0 = strongest),
    ``feature``, ``activation``. Only active latents (> 0) among the ``top_k`` strongest are
    listed; position 0 (BOS) and massive-activation tokens are left out (see the module notes).
    """
    check_sae(model, sae)
    rows = []
    index = 0
    for tokens in as_token_rows(model, prompts_or_tokens):
        x = flat_acts(hook_acts(model, sae.cfg.metadata.hook_name, tokens))
        latents = encode_flat(sae, x).detach()  # a table of numbers: no graph (SAEs in training have one)
        mask = token_mask(sae, x)
        values, feats = latents.topk(min(top_k, sae.cfg.d_sae), dim=-1)
        for b in range(tokens.shape[0]):
            strs = str_tokens(model, tokens[b])
            for p in mask[b].nonzero()[:, 0].tolist():
                for r in range(values.shape[-1]):
                    if values[b, p, r] > 0:
                        rows.append((index + b, p, strs[p], r, int(feats[b, p, r]), float(values[b, p, r])))
        index += tokens.shape[0]
    return pd.DataFrame(rows, columns=["prompt", "pos", "token", "rank", "feature", "activation"])


@torch.no_grad()
def top_contexts(
    model: Model,
    sae,
    feature: int,
    corpus: Corpus,
    *,
    k: int = 10,
    window: int = 8,
    context: int = 64,
    batch_size: int = 16,
    progress: bool = False,
) -> pd.DataFrame:
    """The ``k`` corpus tokens where ``feature`` fires most, each with ``window`` tokens either side.

    Columns: ``rank``, ``row``/``pos`` (in :func:`corpus_tokens` layout), ``activation``,
    ``token``, ``word`` (the whole word the max token is part of, see :func:`word_at`) and
    ``context`` (the window as text with the max token in «guillemets»), plus ``tokens`` and
    ``activations`` (lists over the window, for :func:`contexts_html`) and ``center`` (the max
    token's index in them).
    """
    hook_name = check_sae(model, sae)
    feature = check_feature(sae, feature)
    tokens = corpus_tokens(model, corpus, context=context)
    acts = torch.empty(tokens.shape)
    for b in tqdm(range(0, len(tokens), batch_size), desc="top contexts", disable=not progress):
        x = flat_acts(hook_acts(model, hook_name, tokens[b : b + batch_size]))
        acts[b : b + batch_size] = masked(sae, x, encode_flat(sae, x))[..., feature].float()
    flat = acts.flatten()
    order = flat.argsort(descending=True, stable=True)[:k]
    rows = []
    for rank, i in enumerate(order.tolist()):
        if flat[i] <= 0:
            break
        r, p = divmod(i, tokens.shape[1])
        lo, hi = max(0, p - window), min(tokens.shape[1], p + window + 1)
        strs = str_tokens(model, tokens[r, lo:hi])
        marked = [f"«{s}»" if j == p - lo else s for j, s in enumerate(strs)]
        rows.append(dict(
            rank=rank, row=r, pos=p, activation=float(flat[i]), token=strs[p - lo],
            word=word_at(strs, p - lo),
            context="".join(marked) if model.tokenizer is not None else " ".join(marked),
            tokens=strs, activations=acts[r, lo:hi].tolist(), center=p - lo,
        ))
    columns = ["rank", "row", "pos", "activation", "token", "word", "context", "tokens", "activations",
               "center"]
    frame = pd.DataFrame(rows, columns=columns)
    frame.attrs.update(feature=feature, hook_name=hook_name)
    return frame


def word_at(tokens: Sequence[str], i: int) -> str:
    """The word that token ``i`` is part of: neighbours joined while letters touch across a boundary.

    Names are often split into pieces (``" J" "or" "ica"``) and a feature may fire on a middle
    piece; this gives the whole word, without its leading space.

    >>> word_at([" J", "or", "ica", " said"], 1)
    'Jorica'
    """
    start, end = i, i + 1
    while start > 0 and tokens[start][:1].isalpha() and tokens[start - 1][-1:].isalpha():
        start -= 1
    while end < len(tokens) and tokens[end][:1].isalpha() and tokens[end - 1][-1:].isalpha():
        end += 1
    return "".join(tokens[start:end]).strip()


class HTML(str):
    """A string that notebooks display as HTML."""

    def _repr_html_(self) -> str:
        return str(self)


def contexts_html(frame: pd.DataFrame) -> HTML:
    """Render :func:`top_contexts` as HTML: each token shaded by activation, the max token boxed."""
    if frame.empty:
        return HTML("<p>(the feature never fires on this corpus)</p>")
    top = max(float(frame["activation"].max()), 1e-12)
    lines = []
    for _, row in frame.iterrows():
        spans = []
        for j, (s, a) in enumerate(zip(row["tokens"], row["activations"])):
            alpha = max(0.0, min(1.0, a / top))
            style = f"background: rgba(255, 80, 0, {alpha:.2f});"
            if j == row["center"]:
                style += " border: 1px solid black; font-weight: bold;"
            text = html.escape(s).replace("\n", "⏎")
            spans.append(f'<span title="{a:.3g}" style="{style}">{text}</span>')
        lines.append(
            f'<div style="font-family: monospace; white-space: pre;">{row["activation"]:7.2f}  '
            + "".join(spans) + "</div>"
        )
    feature = frame.attrs.get("feature", "?")
    return HTML(f"<div><b>feature {feature}</b>" + "".join(lines) + "</div>")


@dataclass
class LogitEffects(Persistent):
    """Direct effect of a feature's decoder direction on the logits (through ln_final's weight).

    Attributes:
        effects: Result over ``d_vocab`` (labels: token strings): logit change per unit activation.
        k: how many tokens :attr:`promoted` / :attr:`suppressed` list.
    """

    effects: Result
    k: int = 10

    @property
    def promoted(self) -> pd.DataFrame:
        return self.effects.top(self.k)

    @property
    def suppressed(self) -> pd.DataFrame:
        return self.effects.top(self.k, by="-value")

    def to_frame(self) -> pd.DataFrame:
        return pd.concat([self.promoted.assign(kind="promoted"), self.suppressed.assign(kind="suppressed")],
                         ignore_index=True)

    def plot(self, **kwargs):

        return render("logit_effects", self, **kwargs)


def feature_logit_effects(model: Model, sae, feature: int, k: int = 10) -> LogitEffects:
    """Which tokens the feature's decoder direction promotes and suppresses, read off directly.

    The direction ``d`` (:func:`feature_direction`) goes through the final norm's linear part and
    the unembedding: ``(centre(d) * ln_final.w) @ W_U`` (centring only for LayerNorm; no weight
    on a processed model, where it is folded into ``W_U``). This is the usual linear readout: it
    ignores the norm's scale, so compare tokens within a feature, not magnitudes across layers.
    """
    check_sae(model, sae)
    feature = check_feature(sae, feature)
    d = feature_direction(sae, feature)
    if d.shape[-1] != model.cfg.d_model:
        raise ValueError(
            f"The SAE writes {d.shape[-1]}-d activations at {sae.cfg.metadata.hook_name!r}, not the "
            f"residual stream (d_model={model.cfg.d_model}); logit effects need a residual, "
            "attn_out or mlp_out SAE."
        )
    if model.cfg.normalization_type in ("LN", "LNPre"):
        d = d - d.mean()
    w = getattr(model.ln_final, "w", None)
    if w is not None:
        d = d * w.detach()
    values = (d @ model.W_U.detach()).float()
    labels = str_tokens(model, range(model.cfg.d_vocab))
    result = Result(values, ("d_vocab",), f"logit effect of feature {feature} (per unit activation)",
                    {"d_vocab": labels}, {"feature": feature, "hook_name": sae.cfg.metadata.hook_name})
    return LogitEffects(result, k)
