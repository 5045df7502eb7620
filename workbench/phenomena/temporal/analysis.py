"""Analysis helpers for temporal heads (Park et al. 2025, "Does Time Have Its Place?").

The notebook ``notebooks/03_temporal_heads.ipynb`` asks which attention heads carry the time
condition of a fact ("In 1995, the president of the United States was" -> " Bill"). These
helpers work on any dataset with the fields of
:class:`workbench.phenomena.temporal.dataset.TemporalFacts`: ``clean_tokens`` and ``corrupted_tokens``
(the same prompt with another year) ``[batch, pos]``, ``answer_ids`` and ``counterfactual_ids``
``[batch]``, ``pos`` with ``"END"`` (and ``"TIME_START"`` / ``"TIME"`` for
:func:`time_attention`), optionally ``candidate_ids``. Right-padded batches are fine: everything
is read at each prompt's own END.

- :func:`final_logits` / :func:`score`: logits at END, logit difference and accuracy, in
  chunks (Gemma's vocabulary is large), under whatever hooks are active.
- :func:`time_attention`: attention from END to the time tokens, per head.
- :func:`patch_each_head`: exact activation patching of chosen heads one at a time (a head's
  ``hook_z`` from the clean run into the corrupted run), normalised.
- :func:`edit_heads`: the value edit: ``z + scale * (z_source - z)`` for a set of heads at every
  position, the source being the other-year prompt.
- :func:`random_head_sets`, :func:`ablation_table`, :func:`edit_table`: top heads against
  seeded random heads.

>>> import torch
>>> from types import SimpleNamespace
>>> from workbench.models import tiny_model
>>> model = tiny_model()
>>> clean, corrupted = torch.randint(1, 100, (2, 3, 6)).unbind(0)
>>> ds = SimpleNamespace(clean_tokens=clean, corrupted_tokens=corrupted,
...                      answer_ids=torch.tensor([1, 2, 3]), counterfactual_ids=torch.tensor([4, 5, 6]),
...                      pos={"END": torch.tensor([5, 5, 5])})
>>> s = score(model, ds)
>>> sorted(s)
['accuracy', 'diff', 'logit_diff']
>>> same = edit_heads(model, ds, [(0, 1)], scale=0.0)      # scale 0: nothing changes
>>> bool(torch.allclose(same, s["diff"], atol=1e-5))
True
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench.core import checks
from workbench.core.results import Result
from workbench.core.runtime import logits_at, resid_to_logits, supports_fast_path
from workbench.core.types import HookList, Model
from workbench.techniques.ablation import ComponentAblation, ablate
from workbench.techniques.heads import attention_to

__all__ = [
    "final_logits",
    "score",
    "time_attention",
    "group_ids",
    "patch_each_head",
    "edit_heads",
    "ablation_table",
    "edit_table",
    "ablated_diffs",
]


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")


@torch.no_grad()
def final_logits(
    model: Model, tokens: Int[Tensor, "batch pos"], end: Int[Tensor, " batch"], *, batch_size: int = 64
) -> Float[Tensor, "batch d_vocab"]:
    """The logits at each prompt's END, computed ``batch_size`` prompts at a time.

    Hooks that are active on ``model`` (``with ablate(...)``, ``with model.hooks(...)``) apply.
    """
    _check_batch_size(batch_size)
    if tokens.ndim != 2 or len(end) != tokens.shape[0]:
        raise ValueError(
            f"tokens must be [batch, pos] with one END per prompt; got tokens "
            f"{tuple(tokens.shape)} and {len(end)} END positions."
        )
    return torch.cat([logits_at(model, tokens[s : s + batch_size], end[s : s + batch_size])
                      for s in range(0, tokens.shape[0], batch_size)])


def _scores_from_logits(ds, last: Tensor) -> dict:
    rows = torch.arange(last.shape[0])
    ans = last[rows, ds.answer_ids]
    diff = ans - last[rows, ds.counterfactual_ids]
    candidates = getattr(ds, "candidate_ids", None)
    if candidates:
        ok = torch.tensor([bool((ans[i] >= last[i, c]).all()) for i, c in enumerate(candidates)])
    else:  # no candidates: the answer must beat the counterfactual
        ok = diff > 0
    return dict(logit_diff=diff.mean().item(), accuracy=ok.float().mean().item(), diff=diff)


def score(model: Model, ds, tokens: Tensor | None = None, *, batch_size: int = 64) -> dict:
    """Logit difference and accuracy of ``model`` on ``ds`` (under any active hooks).

    Returns ``{"logit_diff": mean, "accuracy": fraction, "diff": [batch] per prompt}``. Accuracy
    is the "candidates" criterion of :func:`workbench.phenomena.answers.keep_correct` (the
    answer's first token beats every candidate object's; ties count as correct, so the answer
    never loses to itself) when ``ds`` has ``candidate_ids``, else answer beats counterfactual.
    ``tokens`` defaults to ``ds.clean_tokens``.
    """
    tokens = ds.clean_tokens if tokens is None else tokens
    return _scores_from_logits(ds, final_logits(model, tokens, ds.pos["END"], batch_size=batch_size))


def time_attention(model: Model, ds) -> Result:
    """Attention from each prompt's END to its time tokens (TIME_START..TIME), ``[layer, head]``.

    The mass each head puts on the year (or alias) tokens, averaged over prompts.
    """
    tokens = ds.clean_tokens
    n_pos = tokens.shape[1]
    ar = torch.arange(n_pos)
    keys = (ar >= ds.pos["TIME_START"][:, None]) & (ar <= ds.pos["TIME"][:, None])
    queries = ar == ds.pos["END"][:, None]
    r = attention_to(model, tokens, keys, queries)
    r.metric = "attention from END to the time tokens"
    return r


def group_ids(ds) -> Tensor:
    """One id per prompt for its (relation, subject, token length): prompts that differ only in the time.

    For mean ablation that removes only what a head read from the year
    (``ablate(..., reference=ds.corrupted_tokens, template_ids=group_ids(ds))``): a head's output
    is replaced by its mean over the *same* prompt at other years. Grouping by relation alone would
    be wrong for invariant facts, whose relations hold many subjects ("the capital of France / of
    Italy"): their mean would also erase the subject, so invariant facts would lose accuracy
    for a reason that has nothing to do with time. (Every temporal relation has one subject, so
    for temporal facts the two groupings agree.)
    """
    subjects = getattr(ds, "subjects", None) or [None] * len(ds.relations)
    keys = [(r, s or "", int(e)) for r, s, e in zip(ds.relations, subjects, ds.pos["END"])]
    index = {k: i for i, k in enumerate(sorted(set(keys)))}
    return torch.tensor([index[k] for k in keys])


@torch.no_grad()
def _cache(model: Model, tokens: Tensor, hook: str, layers: Sequence[int], batch_size: int) -> dict[int, Tensor]:
    """One activation (``hook``, e.g. ``"attn.hook_z"``) of the given layers: ``{layer: [batch, ...]}``."""
    names = {f"blocks.{layer}.{hook}" for layer in layers}
    parts: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    for s in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(
            tokens[s : s + batch_size], names_filter=lambda n: n in names, return_type=None
        )
        for layer in layers:
            parts[layer].append(cache[f"blocks.{layer}.{hook}"])
    return {layer: torch.cat(p) for layer, p in parts.items()}


def _z_cache(model: Model, tokens: Tensor, layers: Sequence[int], batch_size: int) -> dict[int, Tensor]:
    """``hook_z`` of the given layers: ``{layer: [batch, pos, head, d_head]}``."""
    return _cache(model, tokens, "attn.hook_z", layers, batch_size)


def _edit_hook(z: Tensor, hook, *, source: Tensor, heads: list[int], scale: float) -> Tensor:
    z = z.clone()
    z[:, :, heads] = z[:, :, heads] + scale * (source[:, :, heads] - z[:, :, heads])
    return z


@torch.no_grad()
def _edited_logits(model: Model, tokens, end, source_z: dict[int, Tensor], heads, scale: float,
                   batch_size: int, resid_pre: Tensor | None = None) -> Tensor:
    """Logits at END with ``z <- z + scale * (z_source - z)`` for ``heads`` at every position.

    ``resid_pre``: the residual stream of ``tokens`` before the lowest edited layer, if cached;
    the run then starts there (the layers below are not changed by the edit). Prompts are
    right-padded, so a run that starts mid-model needs no attention mask: END never reads the
    padding after it.
    """
    by_layer: dict[int, list[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(layer, []).append(h)
    start = min(by_layer)
    out = []
    for s in range(0, tokens.shape[0], batch_size):
        sl = slice(s, s + batch_size)
        hooks: HookList = [
            (f"blocks.{layer}.attn.hook_z",
             lambda z, hook, src=source_z[layer][sl], hs=hs: _edit_hook(
                 z, hook, source=src, heads=hs, scale=scale))
            for layer, hs in sorted(by_layer.items())
        ]
        with model.hooks(fwd_hooks=hooks):
            if resid_pre is None:
                out.append(final_logits(model, tokens[sl], end[sl], batch_size=batch_size))
            else:
                final = model(resid_pre[sl], start_at_layer=start, stop_at_layer=model.cfg.n_layers)
                rows = torch.arange(final.shape[0])
                out.append(resid_to_logits(model, final[rows, end[sl]][:, None])[:, 0])
    return torch.cat(out)


def patch_each_head(
    model: Model, ds, heads: Sequence[tuple[int, int]], *, batch_size: int = 64, progress: bool = False
) -> Result:
    """Exact activation patching of each head in ``heads`` alone, clean INTO corrupted.

    Each head's ``hook_z`` (every position) from the clean prompt replaces the corrupted
    prompt's; the value is the normalised logit difference
    ``(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)``: 0 = no effect, 1 = the whole
    clean behaviour restored. Same values as ``workbench.techniques.patching.patch_heads`` with the
    normalised ``ds.logit_diff()`` at those heads (a test checks it), at the cost of one forward
    per chosen head instead of every head.

    Returns a Result ``[layer, head]``, NaN for heads that were not patched; ``meta`` holds the
    clean and corrupted logit differences.
    """
    heads = checks.heads(model, heads)
    if not heads:
        raise ValueError("heads is empty: give the (layer, head) pairs to patch.")
    end = ds.pos["END"]
    clean = score(model, ds, ds.clean_tokens, batch_size=batch_size)["logit_diff"]
    corrupted = score(model, ds, ds.corrupted_tokens, batch_size=batch_size)["logit_diff"]
    if not abs(clean - corrupted) > 1e-6:
        raise ValueError("The clean and corrupted logit differences are equal: nothing to restore.")
    layers = sorted({l for l, _ in heads})
    source = _z_cache(model, ds.clean_tokens, layers, batch_size)
    # Each patched run starts at its head's layer, from the corrupted run's residual stream.
    resid = _cache(model, ds.corrupted_tokens, "hook_resid_pre", layers, batch_size)
    values = torch.full((model.cfg.n_layers, model.cfg.n_heads), float("nan"))
    for layer, h in tqdm(heads, desc="patching heads", disable=not progress):
        last = _edited_logits(model, ds.corrupted_tokens, end, source, [(layer, h)], 1.0, batch_size,
                              resid_pre=resid[layer] if supports_fast_path(model) else None)
        ld = _scores_from_logits(ds, last)["logit_diff"]
        values[layer, h] = (ld - corrupted) / (clean - corrupted)
    return Result(values, ("layer", "head"), "normalised logit difference after patching",
                  meta=dict(clean=clean, corrupted=corrupted, heads=heads,
                            method="exact patching of hook_z, clean into corrupted, one head at a time"))


def edit_heads(model: Model, ds, heads: Sequence[tuple[int, int]], *, scale: float = 1.0,
               batch_size: int = 64) -> Float[Tensor, " batch"]:
    """The value edit: per-prompt logit difference of the clean prompt with ``heads`` edited.

    For each head in ``heads``, at every position, ``z <- z + scale * (z_source - z)`` with the
    source the corrupted (other-year) prompt: ``scale=1`` is patching the other year's head
    outputs in, larger scales push further along that difference. Returns
    ``logit[answer] - logit[counterfactual]`` per prompt: below 0 the answer has moved to the
    other year's object.
    """
    heads = checks.heads(model, heads)
    source = _z_cache(model, ds.corrupted_tokens, sorted({l for l, _ in heads}), batch_size)
    last = _edited_logits(model, ds.clean_tokens, ds.pos["END"], source, heads, float(scale),
                          batch_size)
    return _scores_from_logits(ds, last)["diff"]


def ablation_table(
    model: Model, datasets: dict, head_sets: dict, *, ablation: ComponentAblation = "mean",
    batch_size: int = 64, progress: bool = False,
) -> pd.DataFrame:
    """Logit difference and accuracy of each dataset with each head set ablated.

    ``datasets``: ``{name: ds}``; ``head_sets``: ``{name: [(layer, head), ...]}`` (an empty list
    is the unablated model). Mean ablation replaces a head's ``hook_z`` by its mean over the
    dataset's corrupted-year prompts of the same relation, subject and length (:func:`group_ids`):
    the same prompt at other years, so the head keeps its output but loses what the specific
    year told it; zero ablation writes zeros (the head is removed altogether). One row per
    (dataset, head set) with the change from the unablated model.
    """
    rows = []
    for dname, ds in datasets.items():
        base = score(model, ds, batch_size=batch_size)
        items = tqdm(head_sets.items(), desc=f"ablating ({dname})", disable=not progress)
        for sname, heads in items:
            if heads:
                ref = None if ablation == "zero" else ds.corrupted_tokens
                ids = None if ablation == "zero" else group_ids(ds)
                # per-group means need the whole batch in one pass (template ids per prompt)
                size = batch_size if ablation == "zero" else len(ds.clean_tokens)
                with ablate(model, heads=heads, ablation=ablation, reference=ref, template_ids=ids):
                    s = score(model, ds, batch_size=size)
            else:
                s = base
            rows.append(dict(dataset=dname, heads=sname, logit_diff=s["logit_diff"],
                             accuracy=s["accuracy"],
                             d_logit_diff=s["logit_diff"] - base["logit_diff"],
                             d_accuracy=s["accuracy"] - base["accuracy"]))
    return pd.DataFrame(rows)


def edit_table(model: Model, ds, head_sets: dict, scales: Sequence[float], *, batch_size: int = 64,
               progress: bool = False) -> pd.DataFrame:
    """For each head set and scale, the mean logit difference after :func:`edit_heads` and the
    fraction of prompts whose answer moved to the other year's object (difference below 0)."""
    rows = []
    for name in tqdm(list(head_sets), desc="editing", disable=not progress):
        heads = checks.heads(model, head_sets[name])
        # the other-year head outputs, cached once for every scale
        source = _z_cache(model, ds.corrupted_tokens, sorted({l for l, _ in heads}), batch_size)
        for scale in scales:
            last = _edited_logits(model, ds.clean_tokens, ds.pos["END"], source, heads,
                                  float(scale), batch_size)
            diff = _scores_from_logits(ds, last)["diff"]
            rows.append(dict(heads=name, scale=float(scale), logit_diff=diff.mean().item(),
                             flipped=(diff < 0).float().mean().item()))
    return pd.DataFrame(rows)


def ablated_diffs(model: Model, ds, head_sets: Sequence[Sequence[tuple[int, int]]], *, ablation: ComponentAblation = "mean",
                  batch_size: int = 64) -> Float[Tensor, "head_set batch"]:
    """Per-prompt logit difference with each head set ablated, ``[set, prompt]`` (an empty set: none).

    The ablation of :func:`ablation_table` (mean: the head's mean over the same prompt at other
    times, :func:`group_ids`; zero: nothing written), kept per prompt for intervals and nulls.
    """
    if ablation not in ("mean", "zero"):
        raise ValueError(f"ablation must be 'mean' or 'zero', got {ablation!r}.")
    out = []
    for heads in head_sets:
        heads = checks.heads(model, heads) if heads else []
        if not heads:
            out.append(score(model, ds, batch_size=batch_size)["diff"])
            continue
        ref = None if ablation == "zero" else ds.corrupted_tokens
        ids = None if ablation == "zero" else group_ids(ds)
        size = batch_size if ablation == "zero" else len(ds.clean_tokens)
        with ablate(model, heads=heads, ablation=ablation, reference=ref, template_ids=ids):
            out.append(score(model, ds, batch_size=size)["diff"])
    return torch.stack(out)
