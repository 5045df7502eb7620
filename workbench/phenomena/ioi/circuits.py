"""From sweeps to a circuit: select heads by effect, split them by attention, build a capped circuit.

The IOI analysis (Wang et al. 2022) names heads step by step: path patching from every head to
the logits finds the name movers, from every head to the name movers' queries the S-inhibition
heads, and so on. Each step here is the same small operation on a ``(layer, head)`` Result:

- :func:`path_effect` turns a :func:`~workbench.techniques.path_patching.path_patch_heads` result into the
  effect of each sender's path, ``meta["clean"] - value`` (positive: the path supports the clean
  behaviour);
- :func:`select_heads` keeps the heads whose effect has the wanted sign and is at least ``rel``
  times the largest effect in the sweep (and at least ``min_effect``), so the rule reads the same
  on any model;
- :func:`split_by_attention` splits heads by where they attend (e.g. S2 -> S1: duplicate-token
  heads, S2 -> S1+1: induction heads);
- :func:`build_circuit` takes the union of the classes, caps it at a number of heads (keeping
  each class's strongest heads first) and, if asked, fills it up with the heads that rank
  highest on another score (e.g. activation patching), recording which heads came from where;
- :func:`head_table` lines up several ``(layer, head)`` scores for a set of heads, and
  :func:`percentile_rank` says where a head stands among all heads on a score.

>>> import torch
>>> from workbench.core.results import Result
>>> effect = Result(torch.tensor([[0.5, -0.2], [0.04, 0.01]]), ("layer", "head"))
>>> sorted(select_heads(effect, sign="positive", rel=0.1))
[(0, 0)]
>>> sorted(select_heads(effect, sign="negative", rel=0.1))
[(0, 1)]
>>> choice = build_circuit({"movers": select_heads(effect)}, {"movers": effect}, max_heads=2,
...                        fill_from=effect)
>>> sorted(choice.heads), sorted(choice.filled)
([(0, 0), (0, 1)], [(0, 1)])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence, get_args

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from workbench.core import checks
from workbench.core.persist import Persistent
from workbench.core.results import Result, render
from workbench.core.runtime import logits_at
from workbench.core.types import HookList, Model
from workbench.techniques.heads import HeadSet

__all__ = [
    "Sign",
    "path_effect",
    "select_heads",
    "kv_receivers",
    "split_by_attention",
    "CircuitChoice",
    "build_circuit",
    "head_table",
    "percentile_rank",
    "ioi_splits",
    "ablated_metric",
    "attention_by_prompt",
    "IOIClasses",
    "find_ioi_classes",
    "threshold_margin",
]

Sign = Literal["positive", "negative"]


def _check_grid(result, what: str = "result") -> Result:
    if not isinstance(result, Result) or tuple(result.dims) != ("layer", "head"):
        got = result.dims if isinstance(result, Result) else type(result).__name__
        raise ValueError(f"The {what} must be a Result with dims ('layer', 'head'), got {got}.")
    return result


def path_effect(result: Result) -> Result:
    """The effect of each sender head's path: ``meta["clean"] - value``, dims ``(layer, head)``.

    ``result`` comes from :func:`workbench.techniques.path_patching.path_patch_heads`, which returns the
    metric of the clean run with one path corrupted; with a normalised metric the effect is the
    fraction of the clean-minus-corrupted gap that the path carries.
    """
    _check_grid(result, "path patching result")
    if "clean" not in result.meta:
        raise ValueError(
            "The result has no meta['clean'] (the clean metric); pass the Result of "
            "path_patch_heads itself."
        )
    meta = dict(result.meta, effect="meta['clean'] - value")
    return Result(result.meta["clean"] - result.values, ("layer", "head"),
                  f"path effect ({result.metric})", dict(result.labels), meta)


def select_heads(
    effect: Result,
    *,
    sign: Sign = "positive",
    rel: float = 0.1,
    min_effect: float = 0.0,
    name: str | None = None,
) -> HeadSet:
    """Heads whose effect has ``sign`` and a size of at least ``rel`` times the largest ``|effect|``.

    Args:
        effect: ``(layer, head)`` scores, e.g. from :func:`path_effect`.
        sign: ``"positive"`` keeps ``effect >= rel * max|effect|``; ``"negative"`` keeps
            ``effect <= -rel * max|effect|``. The scale is the largest magnitude of either sign,
            so a sweep dominated by negative heads selects few positive ones.
        rel: the threshold relative to the sweep's largest magnitude, in ``(0, 1]``.
        min_effect: an absolute floor on ``|effect|`` (in the effect's units), so that a sweep in
            which nothing matters selects nothing rather than its noise.
        name: the HeadSet's name (default: a description of the rule).
    """
    _check_grid(effect, "effect")
    if sign not in get_args(Sign):
        raise ValueError(f"sign must be one of {get_args(Sign)}, got {sign!r}.")
    if not (isinstance(rel, (int, float)) and 0 < rel <= 1):
        raise ValueError(f"rel must be a number in (0, 1], got {rel!r}.")
    if not (isinstance(min_effect, (int, float)) and min_effect >= 0):
        raise ValueError(f"min_effect must be a number >= 0, got {min_effect!r}.")
    v = effect.values.float()
    scale = v.nan_to_num(0.0).abs().max().item()
    signed = v if sign == "positive" else -v
    keep = (signed >= rel * scale) & (signed > 0) & (signed >= min_effect)
    label = name if name is not None else f"{sign} effect >= {rel:g} x max |effect|"
    return HeadSet(keep.nonzero().tolist(), label)


def kv_receivers(model: Model, heads) -> list[tuple[int, int]]:
    """The ``(layer, kv_head)`` pairs that query heads read keys and values from, sorted.

    Path patching to ``"k"``/``"v"`` takes key/value heads; on a model without grouped-query
    attention each query head is its own key/value head.
    """
    from workbench.techniques.path_patching import kv_head_of

    pairs = [tuple(int(i) for i in h) for h in heads]
    if not pairs:
        raise ValueError("No heads given: there is no receiver to patch.")
    return sorted({(layer, kv_head_of(model, h)) for layer, h in pairs})


def split_by_attention(
    heads,
    scores: Mapping[str, Result],
    *,
    min_attention: float = 0.1,
    rest: str = "other",
) -> dict[str, HeadSet]:
    """Split ``heads`` by which of several attention scores is largest for each head.

    Args:
        heads: the heads to split (a HeadSet or ``(layer, head)`` pairs).
        scores: ``{class name: (layer, head) Result}``, e.g. ``{"duplicate-token": attention from
            S2 to S1, "induction": attention from S2 to S1+1}``.
        min_attention: a head goes to the class of its largest score only if that score is at
            least this; otherwise to ``rest``.

    Returns:
        ``{name: HeadSet}`` for every name in ``scores`` and ``rest`` (possibly empty sets).
    """
    if not scores:
        raise ValueError("scores is empty: give at least one {name: (layer, head) Result}.")
    if rest in scores:
        raise ValueError(f"rest={rest!r} is also a name in scores; choose another name.")
    for key, r in scores.items():
        _check_grid(r, f"score {key!r}")
    names = list(scores)
    grid = torch.stack([scores[k].values.float() for k in names])  # [class, layer, head]
    out: dict[str, set] = {k: set() for k in [*names, rest]}
    for layer, h in (HeadSet(heads) if not isinstance(heads, HeadSet) else heads):
        col = grid[:, layer, h]
        best = int(col.argmax())
        out[names[best] if col[best] >= min_attention else rest].add((layer, h))
    return {k: HeadSet(v, k) for k, v in out.items()}


@dataclass
class CircuitChoice(Persistent):
    """A circuit of heads built from named classes, and where each head came from.

    Attributes:
        classes: the classes as given, ``{name: HeadSet}``.
        heads: the circuit.
        filled: heads added from ``fill_from`` (in no class).
        dropped: class heads left out because of the cap.
        max_heads: the cap.
        priority: ``(layer, head)``: each class head's ``|effect|`` relative to the largest
            ``|effect|`` of the sweep that found its class (0 outside the classes).
    """

    classes: dict[str, HeadSet]
    heads: HeadSet
    filled: HeadSet
    dropped: HeadSet
    max_heads: int
    priority: Result

    def class_of(self, head) -> str:
        """The first class that holds ``head``, "fill" for a filled head, "" if not in the circuit."""
        for name, hs in self.classes.items():
            if head in hs and head in self.heads:
                return name
        return "fill" if head in self.filled else ""

    def to_frame(self) -> pd.DataFrame:
        """One row per circuit head: layer, head, class (first matching), priority."""
        rows = [
            {"layer": layer, "head": h, "class": self.class_of((layer, h)),
             "priority": float(self.priority.values[layer, h])}
            for layer, h in self.heads
        ]
        return pd.DataFrame(rows, columns=["layer", "head", "class", "priority"])

    def plot(self, **kwargs):
        """The circuit's heads on a layers x heads grid, coloured by class (and "fill")."""
        sets = [HeadSet(hs.heads & self.heads.heads, name) for name, hs in self.classes.items()]
        sets = [s for s in [*sets, HeadSet(self.filled.heads, "fill")] if len(s)] or [self.heads]
        kwargs.setdefault("title", f"circuit of {len(self.heads)} heads (cap {self.max_heads})")
        return render("head_sets", sets, shape=tuple(self.priority.shape), **kwargs)


def _priority(classes: dict[str, HeadSet], effects: Mapping[str, Result]) -> Tensor:
    """Per head, the largest ``|effect| / max|effect|`` over the classes that hold it."""
    missing = [k for k in classes if k not in effects]
    if missing:
        raise ValueError(f"No effect given for class(es) {missing}; effects needs one Result per class.")
    shape = None
    for k in classes:
        _check_grid(effects[k], f"effect of class {k!r}")
        if shape is not None and effects[k].shape != shape:
            raise ValueError(f"The effects have different shapes ({shape} vs {effects[k].shape}).")
        shape = effects[k].shape
    out = torch.zeros(shape) if shape is not None else torch.zeros(0, 0)
    for k, hs in classes.items():
        v = effects[k].values.float().nan_to_num(0.0).abs()
        scale = v.max().item()
        for layer, h in hs:
            if not (layer < v.shape[0] and h < v.shape[1]):
                raise ValueError(f"Head L{layer}H{h} of class {k!r} lies outside the {tuple(v.shape)} grid.")
            out[layer, h] = max(out[layer, h].item(), v[layer, h].item() / scale if scale else 0.0)
    return out


def build_circuit(
    classes: Mapping[str, HeadSet],
    effects: Mapping[str, Result],
    *,
    max_heads: int,
    last: Sequence[str] = (),
    fill_from: Result | None = None,
) -> CircuitChoice:
    """The union of ``classes``, at most ``max_heads`` heads; optionally filled up to ``max_heads``.

    If the union has more than ``max_heads`` heads, heads are kept in this order: first those in
    no class named in ``last`` (e.g. the negative name movers, which work *against* the
    behaviour), then the rest; within each group by **priority**, a head's ``|effect|`` relative
    to the largest ``|effect|`` of the sweep that found its class, so every class keeps its
    strongest heads first. Ties keep the lower ``(layer, head)`` first.

    Args:
        classes: ``{name: HeadSet}``, e.g. name movers, S-inhibition heads, ...
        effects: ``{name: (layer, head) Result}``, the sweep that found each class.
        max_heads: the cap, e.g. ``int(0.15 * n_layers * n_heads)``.
        last: class names whose heads are the first to go under the cap.
        fill_from: if given, heads in no class with the largest ``|fill_from|`` (e.g. activation
            patching) are added until the circuit has ``max_heads`` heads.
    """
    if not isinstance(max_heads, int) or isinstance(max_heads, bool) or max_heads < 1:
        raise ValueError(f"max_heads must be a positive int, got {max_heads!r}.")
    unknown = [k for k in last if k not in classes]
    if unknown:
        raise ValueError(f"last names class(es) {unknown} that are not in classes {list(classes)}.")
    classes = {k: (v if isinstance(v, HeadSet) else HeadSet(v, k)) for k, v in classes.items()}
    priority = _priority(classes, effects)
    if fill_from is not None:
        _check_grid(fill_from, "fill_from")
        if classes and fill_from.shape != tuple(priority.shape):
            raise ValueError(f"fill_from has shape {fill_from.shape}, the effects {tuple(priority.shape)}.")
        if not classes:
            priority = torch.zeros(fill_from.shape)
    union = set().union(*[hs.heads for hs in classes.values()])
    late = set().union(*[classes[k].heads for k in last])
    early = union - {h for h in late if not any(h in classes[k] for k in classes if k not in last)}
    order = sorted(union, key=lambda x: (x not in early, -priority[x].item(), x))
    kept = order[:max_heads]
    added = []
    if fill_from is not None:
        score = fill_from.values.float().nan_to_num(0.0).abs()
        rest = [(layer, h) for layer in range(score.shape[0]) for h in range(score.shape[1])
                if (layer, h) not in union]
        added = sorted(rest, key=lambda x: (-score[x].item(), x))[: max_heads - len(kept)]
    return CircuitChoice(
        classes=classes,
        heads=HeadSet(kept + added, "circuit"),
        filled=HeadSet(added, "fill"),
        dropped=HeadSet(union - set(kept), "dropped by the cap"),
        max_heads=max_heads,
        priority=Result(priority, ("layer", "head"), "|effect| relative to its class's sweep"),
    )


def head_table(heads, **scores: Result) -> pd.DataFrame:
    """A table of ``heads`` (rows, in order) with one column per ``(layer, head)`` score.

    >>> import torch
    >>> r = Result(torch.arange(4.).reshape(2, 2), ("layer", "head"))
    >>> head_table([(1, 0)], score=r).values.tolist()
    [['L1H0', 1, 0, 2.0]]
    """
    for key, r in scores.items():
        _check_grid(r, f"score {key!r}")
    rows = []
    for item in heads:
        layer, h = (int(i) for i in item)
        row = {"head_label": f"L{layer}H{h}", "layer": layer, "head": h}
        row.update({k: float(r.values[layer, h]) for k, r in scores.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=["head_label", "layer", "head", *scores])


def percentile_rank(scores: Result) -> Result:
    """Each head's percentile among all heads on ``scores``: 0 the lowest, 100 the highest.

    Ties get the average of their ranks; NaN scores rank lowest.

    >>> import torch
    >>> percentile_rank(Result(torch.tensor([[0.1, 0.9], [0.5, 0.3]]), ("layer", "head"))).values
    tensor([[  0.0000, 100.0000],
            [ 66.6667,  33.3333]])
    """
    from scipy.stats import rankdata

    _check_grid(scores, "scores")
    v = scores.values.double().flatten().nan_to_num(float("-inf"))
    if v.numel() < 2:
        raise ValueError("percentile_rank needs at least two heads.")
    # rankdata's average rank minus one is (heads below) + (other heads tied) / 2, exactly (it is a
    # half-integer), so this is the same float as counting them (tests/test_circuits.py checks it).
    ranks = torch.from_numpy(rankdata(v.numpy(), method="average"))
    pct = 100 * (ranks - 1) / (v.numel() - 1)
    return Result(pct.float().reshape(scores.shape), ("layer", "head"),
                  f"percentile among heads ({scores.metric})", dict(scores.labels),
                  dict(scores.meta))


# --------------------------------------------------------------------------------------------
# Held-out evaluation: disjoint splits, batched mean ablation, per-prompt attention


def ioi_splits(
    model: Model,
    n_select: int,
    n_eval: int,
    *,
    seed: int = 0,
    select_templates: Sequence[int] = (0, 1, 2, 3, 4, 5, 6, 7),
    eval_templates: Sequence[int] = (8, 9, 10, 11, 12, 13, 14, 15),
):
    """A selection and an evaluation split of IOI prompts with different names and templates.

    The model's single-token names are split in two halves by a seeded permutation; a selection
    prompt has its IO and S from the first half and a selection template, an evaluation prompt
    from the second half and an evaluation template. Returns ``(select, evaluate)`` IOIDatasets.
    """
    from workbench.phenomena.ioi.dataset import NAMES, ioi_dataset, single_token_words

    if set(select_templates) & set(eval_templates):
        raise ValueError(f"select_templates {list(select_templates)} and eval_templates "
                         f"{list(eval_templates)} share templates; the splits must be disjoint.")
    names = sorted(single_token_words(model, NAMES))
    perm = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    halves = ({names[i] for i in perm[: len(names) // 2]}, {names[i] for i in perm[len(names) // 2:]})
    out = []
    for k, (n, templates, half) in enumerate(((n_select, select_templates, halves[0]),
                                              (n_eval, eval_templates, halves[1]))):
        ds = ioi_dataset(model, n=12 * n, seed=seed + 1000 * k, templates=list(templates))
        keep = [i for i, (io, s) in enumerate(ds.names) if io in half and s in half][:n]
        if len(keep) < n:
            raise RuntimeError(f"Only {len(keep)} of {n} prompts with names from one half; lower n.")
        out.append(ds.subset(keep))
    return out[0], out[1]


def _head_means(model: Model, reference: Tensor, template_ids: Tensor) -> dict[int, Tensor]:
    """Per layer, the mean ``hook_z`` over reference prompts of each prompt's template ``[batch, pos, head, d]``."""
    names = {f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)}
    _, cache = model.run_with_cache(reference, names_filter=lambda n: n in names, return_type=None)
    ids = torch.as_tensor(template_ids)
    out = {}
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        means = torch.stack([z[ids == t].mean(0) for t in ids.tolist()])
        out[layer] = means
    return out


@torch.no_grad()
def ablated_metric(model: Model, tokens: Int[Tensor, "batch pos"], reference: Int[Tensor, "batch pos"], metric,
                   kept: Sequence[Sequence[tuple[int, int]]], *, template_ids: Tensor, chunk: int = 4) -> Tensor:
    """``metric`` per prompt with every head outside each kept set mean-ablated: ``[set, batch]``.

    The IOI paper's evaluation: a head outside the circuit has its output (``hook_z``) replaced
    by its mean over the ``reference`` prompts (the ABC distribution) of the same template,
    position by position; MLPs are kept. ``metric`` maps logits to one value per prompt (e.g.
    ``ds.logit_diff(per_prompt=True)``; a metric with a ``readout``, like that one, has only the
    logits it reads unembedded). ``chunk`` kept sets run in one batched forward pass.
    The reference is :func:`workbench.techniques.ablation.faithfulness` with ``keep_mlps=True`` (tested).
    """
    if tokens.shape != reference.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and reference {tuple(reference.shape)} differ in shape.")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    masks = torch.ones(len(kept), n_layers, n_heads, dtype=torch.bool)  # True: ablated
    for i, heads in enumerate(kept):
        for layer, h in heads:
            if not (0 <= layer < n_layers and 0 <= h < n_heads):
                raise ValueError(f"Head L{layer}H{h} is outside the {n_layers} x {n_heads} grid.")
            masks[i, layer, h] = False
    means = _head_means(model, reference, template_ids)
    batch = tokens.shape[0]
    readout = metric.readout(batch, tokens.shape[1]) if hasattr(metric, "readout") else None
    values = []
    for start in range(0, len(kept), chunk):
        m = masks[start:start + chunk]  # [c, layer, head]
        c = m.shape[0]

        def hook(z, hook, m=m, c=c):
            layer = int(hook.name.split(".")[1])
            ablate = m[:, layer].repeat_interleave(batch, 0)[:, None, :, None]  # [c*batch, 1, head, 1]
            return torch.where(ablate, means[layer].repeat(c, 1, 1, 1), z)

        hooks: HookList = [(f"blocks.{layer}.attn.hook_z", hook) for layer in range(n_layers)]
        with model.hooks(fwd_hooks=hooks):
            if readout is None:
                logits = model(tokens.repeat(c, 1))
                values += [torch.as_tensor(metric(logits[i * batch:(i + 1) * batch])).float() for i in range(c)]
            else:  # unembed only the position and tokens the metric reads
                read = logits_at(model, tokens.repeat(c, 1), readout.pos.repeat(c))
                rows = torch.arange(c * batch)[:, None]
                x = read[rows, readout.tokens.repeat(c, 1)].reshape(c, batch, -1)
                values += [torch.as_tensor(metric.from_readout(x[i])).float() for i in range(c)]
    return torch.stack(values)


@torch.no_grad()
def attention_by_prompt(
    model: Model, tokens: Int[Tensor, "batch pos"], query_pos: Tensor, key_pos: Sequence[Tensor]
) -> Tensor:
    """Attention from one query position to a set of key positions, per prompt: ``[batch, layer, head]``.

    ``query_pos`` and each entry of ``key_pos`` hold one position per prompt; the attention to
    the keys is summed. :func:`workbench.techniques.heads.attention_to` is the mean over prompts (tested).
    """
    rows = torch.arange(tokens.shape[0])
    names = {f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names, return_type=None)
    out = []
    for layer in range(model.cfg.n_layers):
        p = cache[f"blocks.{layer}.attn.hook_pattern"][rows, :, torch.as_tensor(query_pos)]  # [batch, head, key]
        total = torch.zeros_like(p[rows, :, torch.as_tensor(key_pos[0])])
        for k in key_pos:  # summed in order, as the stored outputs were computed
            total = total + p[rows, :, torch.as_tensor(k)]
        out.append(total)
    return torch.stack(out, 1)



@dataclass
class IOIClasses(Persistent):
    """The head classes of the IOI circuit and the path patching sweeps that found them."""

    classes: dict[str, HeadSet]  # name mover, negative name mover, S-inhibition, duplicate-token, induction, other S2, previous-token
    effects: dict[str, Result]  # the sweep behind each class (for build_circuit's priority)
    sweeps: dict[str, Result]  # "a" .. "d"
    s2_heads: HeadSet

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"class": k, "heads": " ".join(f"L{l}H{h}" for l, h in v)} for k, v in self.classes.items()])

    def plot(self, **kwargs):
        """The classes' heads on a layers x heads grid (the grid of the sweeps)."""
        grids = [r.shape for r in self.sweeps.values() if r.dims == ("layer", "head")]
        sets = [s for s in self.classes.values() if len(s)] or [self.s2_heads]
        kwargs.setdefault("title", "IOI head classes")
        return render("head_sets", sets, shape=grids[0] if grids else None, **kwargs)


def find_ioi_classes(model: Model, ds, *, rel: float = 0.1, min_effect: float = 0.01) -> IOIClasses:
    """The paper's four path patching steps on ``ds`` (clean vs its ABC prompts), as in ``01_ioi_circuit``.

    (a) head -> logits at END: name movers (positive) and negative name movers; (b) head -> queries
    of the name movers at END: S-inhibition heads; (c) head -> values of the S-inhibition heads at
    S2: S2 heads, split by attention into duplicate-token (S2 -> S1), induction (S2 -> S1+1) and
    other; (d) head -> keys of the induction heads (or all S2 heads if none) at S1+1:
    previous-token heads. Each class by :func:`select_heads` with ``rel`` and ``min_effect``.
    """
    from workbench.core.metrics import normalise
    from workbench.techniques.heads import attention_to
    from workbench.techniques.path_patching import path_patch_heads

    clean, abc = ds.clean_tokens, ds.abc_tokens
    metric = normalise(model, clean, abc, ds.logit_diff())

    def sweep(**kw):
        return path_effect(path_patch_heads(model, clean, abc, metric, progress=False, **kw))

    def select(effect, sign="positive", name=None):
        return select_heads(effect, sign=sign, rel=rel, min_effect=min_effect, name=name)

    a = sweep(receiver_pos=ds.pos["END"])
    movers, negative = select(a, name="name mover"), select(a, "negative", name="negative name mover")
    zero = Result(torch.zeros_like(a.values), ("layer", "head"), "not run: the step before found no head")
    b = sweep(receivers=list(movers), receiver_input="q", receiver_pos=ds.pos["END"]) if len(movers) else zero
    inhibition = select(b, name="S-inhibition")
    c = (sweep(receivers=kv_receivers(model, inhibition), receiver_input="v", receiver_pos=ds.pos["S2"])
         if len(inhibition) else zero)
    s2 = select(c, name="S2 heads")
    mask = {k: checks.position_mask(ds.pos[k], *clean.shape) for k in ("S1", "S1+1", "S2")}
    split = split_by_attention(s2, {"duplicate-token": attention_to(model, clean, mask["S1"], mask["S2"]),
                                    "induction": attention_to(model, clean, mask["S1+1"], mask["S2"])},
                               rest="other S2")
    induction = split["induction"] if len(split["induction"]) else s2
    d = (sweep(receivers=kv_receivers(model, induction), receiver_input="k", receiver_pos=ds.pos["S1+1"])
         if len(induction) else zero)
    previous = select(d, name="previous-token")
    classes = {"name mover": movers, "negative name mover": negative, "S-inhibition": inhibition, **split,
               "previous-token": previous}
    effects = {"name mover": a, "negative name mover": a, "S-inhibition": b, **{k: c for k in split},
               "previous-token": d}
    return IOIClasses(classes, effects, {"a": a, "b": b, "c": c, "d": d}, s2)


def threshold_margin(effect: Result, *, rel: float, min_effect: float) -> float:
    """The smallest distance of any head's ``|effect|`` from the :func:`select_heads` bar of its sweep.

    A head closer to the bar than the differences between CPUs could join or leave a class on
    another machine; the notebook reports whether any head is that close.
    """
    v = effect.values.float().nan_to_num(0.0)
    bar = max(rel * v.abs().max().item(), min_effect)
    return (v.abs() - bar).abs().min().item()
