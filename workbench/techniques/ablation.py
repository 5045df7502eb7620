"""Zero, mean and resample ablation of heads and MLPs, and circuit evaluation (Wang et al. 2022).

Ablating a head replaces its ``hook_z`` (its output before ``W_O``) for every position; ablating
an MLP replaces its ``hook_mlp_out``. What replaces it depends on ``ablation``:

- ``"zero"``: zeros (the layer's bias ``b_O``, shared by its heads, is kept);
- ``"mean"``: the mean over a reference batch of prompts, **per position**, and per template if
  template ids are given (the IOI paper's mean over the ABC distribution, template by template);
- ``"resample"``: the activation of another prompt of the reference batch, drawn with a seeded
  generator (the same draw for every ablated component of one forward pass; from the same
  template if template ids are given; when the reference batch has as many prompts as the
  ablated batch, prompt ``b`` never receives reference prompt ``b``, so the input batch itself
  can serve as the reference).

Replacing ``hook_z`` is exact also on models that normalise the attention output again
(Gemma-3): the norm is applied to the sum of the heads, after the replacement.

Inside ``with ablate(model, heads=..., mlps=..., ablation=..., reference=...):`` every forward pass is
ablated; the hooks are removed on exit, also when the block raises.

Circuit evaluation as in the IOI paper, with ``F(X)`` the metric of the model in which every
component not in ``X`` is ablated (mean ablation by default):

- :func:`faithfulness`: ``F(C) / F(M)``, the circuit against the full model;
- :func:`completeness`: for subsets ``K`` of the circuit, ``F(C \\ K)`` against ``F(M \\ K)``;
- :func:`minimality`: for each ``v`` in the circuit, ``|F(C \\ (K ∪ {v})) - F(C \\ K)|``.

A component is a head ``(layer, head)`` or an MLP (its ``int`` layer). The IOI circuit is a set of
heads with every MLP kept: pass ``keep_mlps=True`` (never ablate an MLP), or, for faithfulness
alone, the circuit ``Circuit(heads).with_all_mlps(model)``.

>>> import torch
>>> from workbench.models import tiny_model
>>> from workbench.core.metrics import LogitDiff
>>> model = tiny_model()
>>> tokens, abc = torch.randint(0, 100, (2, 4, 8)).unbind(0)
>>> metric = LogitDiff(answers=[1, 2, 3, 4], wrong=[5, 6, 7, 8])
>>> with ablate(model, heads=[(0, 1)], ablation="mean", reference=abc):
...     ablated = metric(model(tokens))
>>> circuit = Circuit([(0, 1), (1, 2)]).with_all_mlps(model)
>>> f = faithfulness(model, tokens, metric, circuit, reference=abc)
>>> f.to_frame().columns.tolist()
['circuit', 'n_components', 'F(C)', 'F(M)', 'F(empty)', 'faithfulness']
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Sequence, get_args

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench.core.components import Circuit
from workbench.core.metrics import Metric, check_scalar
from workbench.core.persist import Persistent
from workbench.core.results import Result, render
from workbench.core.types import HookList, Model

__all__ = [
    "ComponentAblation",
    "Circuit",
    "ablate",
    "ablation_hooks",
    "mask_attention",
    "faithfulness",
    "completeness",
    "minimality",
    "Faithfulness",
    "Completeness",
    "Minimality",
]

#: The ablations of whole components this module runs (a subset of :data:`workbench.core.checks.Ablation`).
ComponentAblation = Literal["zero", "mean", "resample"]


# --------------------------------------------------------------------------------------------
# The engine: replacement values from a reference batch, and the hooks that use them


def _as_ids(ids, name: str) -> Tensor:
    t = torch.as_tensor(ids, dtype=torch.long).cpu()
    if t.ndim != 1:
        raise ValueError(
            f"{name} must be one template id per prompt (1-d), got shape {tuple(t.shape)}."
        )
    return t


class _Ablator:
    """Replacement activations for every component that may be ablated, built once."""

    def __init__(self, model: Model, ablation, components: Circuit, reference, template_ids,
                 reference_template_ids, seed: int):
        if ablation not in get_args(ComponentAblation):
            raise ValueError(
                f"Unknown ablation {ablation!r}; choose one of {get_args(ComponentAblation)}."
            )
        self.ablation, self.seed = ablation, seed
        self.template_ids = None if template_ids is None else _as_ids(template_ids, "template_ids")
        self.seq: int | None = None
        self._rows: dict[int, Tensor] = {}
        self.stats: dict[str, Tensor] = {}
        if ablation == "zero":
            return
        if not isinstance(reference, Tensor) or reference.ndim != 2:
            raise ValueError(
                f"ablation={ablation!r} needs reference=tokens [batch, pos], a batch of prompts to take "
                "activations from (for IOI: the ABC distribution, ds.abc_tokens)."
            )
        self.n_ref, self.seq = reference.shape
        ref_ids = reference_template_ids if reference_template_ids is not None else template_ids
        self.ref_ids: Tensor | None = None
        if ref_ids is not None:
            self.ref_ids = _as_ids(ref_ids, "reference_template_ids")
            if len(self.ref_ids) != self.n_ref:
                raise ValueError(
                    f"{len(self.ref_ids)} template ids for a reference batch of {self.n_ref} "
                    "prompts. "
                    "Pass reference_template_ids (one per reference prompt) when the reference "
                    "batch differs from the ablated batch."
                )
        if self.ref_ids is not None:
            self.templates = self.ref_ids.unique()  # sorted
        names = {f"blocks.{layer}.attn.hook_z" for layer, _ in components.heads}
        names |= {f"blocks.{layer}.hook_mlp_out" for layer in components.mlps}
        _, cache = model.run_with_cache(
            reference, names_filter=lambda n: n in names, return_type=None
        )
        for name in names:
            acts = cache[name]
            if ablation == "mean" and self.ref_ids is None:
                self.stats[name] = acts.mean(0, keepdim=True)  # [1, pos, ...]
            elif ablation == "mean":
                self.stats[name] = torch.stack(
                    [acts[self.ref_ids == t].mean(0) for t in self.templates]
                )  # [template, pos, ...]
            else:
                self.stats[name] = acts

    def _input_ids(self, batch: int) -> Tensor:
        ids, ref_ids = self.template_ids, self.ref_ids
        assert ids is not None and ref_ids is not None  # called only when template ids were given
        if len(ids) != batch:
            raise ValueError(
                f"template_ids has {len(ids)} entries but the ablated batch has {batch} prompts; "
                "give one template id per prompt."
            )
        missing = sorted(set(ids.tolist()) - set(ref_ids.tolist()))
        if missing:
            raise ValueError(f"Templates {missing} have no prompt in the reference batch.")
        return ids

    def _resample_rows(self, batch: int) -> Tensor:
        """For each prompt, a reference prompt (same template if given; not itself if same size)."""
        if batch not in self._rows:
            gen = torch.Generator().manual_seed(self.seed)
            ids = self._input_ids(batch) if self.template_ids is not None else None
            rows = []
            for b in range(batch):
                cand = torch.arange(self.n_ref)
                if ids is not None:
                    cand = cand[self.ref_ids == ids[b]]
                if self.n_ref == batch and len(cand) > 1:
                    cand = cand[cand != b]
                rows.append(cand[torch.randint(len(cand), (1,), generator=gen)])
            self._rows[batch] = torch.cat(rows)
        return self._rows[batch]

    def replacement(self, name: str, act: Tensor) -> Tensor:
        """What replaces ``act`` (``[batch, pos, ...]``) at hook ``name``, broadcastable to it."""
        if self.ablation == "zero":
            return torch.zeros_like(act)
        batch, seq = act.shape[:2]
        if seq != self.seq:
            raise ValueError(
                f"The reference batch has sequence length {self.seq} but the ablated prompts have "
                f"{seq}; per-position ablation needs prompts of the same length."
            )
        stats = self.stats[name]
        if self.ablation == "resample":
            return stats[self._resample_rows(batch)]
        if self.template_ids is None:
            return stats.expand_as(act)
        rows = torch.searchsorted(self.templates, self._input_ids(batch))
        return stats[rows]

    def hooks(self, ablated: Circuit) -> HookList:
        hooks: HookList = []
        by_layer: dict[int, list[int]] = {}
        for layer, h in sorted(ablated.heads):
            by_layer.setdefault(layer, []).append(h)
        for layer, heads in by_layer.items():

            def ablate_heads(z, hook, heads=heads):
                z = z.clone()
                z[:, :, heads] = self.replacement(hook.name, z)[:, :, heads]
                return z

            hooks.append((f"blocks.{layer}.attn.hook_z", ablate_heads))

        def ablate_mlp(out, hook):
            return self.replacement(hook.name, out).clone()

        hooks += [(f"blocks.{layer}.hook_mlp_out", ablate_mlp) for layer in sorted(ablated.mlps)]
        return hooks


def ablation_hooks(model: Model, *, heads=(), mlps=(), ablation: ComponentAblation = "mean", reference=None,
                   template_ids=None, reference_template_ids=None, seed: int = 0):
    """The ``(hook_name, fn)`` pairs that :func:`ablate` attaches, for ``run_with_hooks``."""
    circuit = Circuit(heads, mlps).validate(model)
    ablator = _Ablator(model, ablation, circuit, reference, template_ids, reference_template_ids, seed)
    return ablator.hooks(circuit)


@contextmanager
def ablate(
    model: Model,
    *,
    heads: Iterable[tuple[int, int]] = (),
    mlps: Iterable[int] = (),
    ablation: ComponentAblation = "mean",
    reference: Int[Tensor, "batch pos"] | None = None,
    template_ids=None,
    reference_template_ids=None,
    seed: int = 0,
):
    """Within the block, every forward pass of ``model`` runs with these components ablated.

    Args:
        heads, mlps: what to ablate: heads ``(layer, head)`` and MLP layers.
        ablation: ``"zero"``, ``"mean"`` or ``"resample"`` (see the module docstring).
        reference: ``[batch, pos]`` prompts whose activations give the means or the resamples
            (not needed for ``"zero"``); the ablated prompts must have the same length ``pos``.
        template_ids: ``[batch]`` one template id per ablated prompt: means (and resamples) are
            then taken over reference prompts of the same template.
        reference_template_ids: the reference prompts' template ids; by default
            ``template_ids`` (right when the reference is aligned with the input, as IOI's
            ``ds.abc_tokens`` is with ``ds.clean_tokens``).
        seed: the resampling seed; the same seed gives the same draw.
    """
    hooks = ablation_hooks(model, heads=heads, mlps=mlps, ablation=ablation, reference=reference,
                           template_ids=template_ids,
                           reference_template_ids=reference_template_ids, seed=seed)
    with model.hooks(fwd_hooks=hooks):
        yield


@contextmanager
def mask_attention(model: Model, heads: Iterable[tuple[int, int]]):
    """Within the block, each head's query is zero, so it attends uniformly to what it can see.

    The masking of Wu et al. 2024 (retrieval heads): with ``q = 0`` every attention score is 0,
    so the head's pattern is uniform over the positions its mask allows (all earlier positions,
    or the sliding window of a local-attention layer) and it can no longer pick out a token.
    Unlike ablating ``hook_z`` this keeps the head's value path: it still writes an average.

    >>> import torch
    >>> from workbench.models import tiny_model
    >>> model = tiny_model()
    >>> with mask_attention(model, [(1, 2)]):
    ...     _, cache = model.run_with_cache(torch.arange(5)[None])
    >>> [round(p, 3) for p in cache["blocks.1.attn.hook_pattern"][0, 2, 4].tolist()]
    [0.2, 0.2, 0.2, 0.2, 0.2]
    """
    circuit = Circuit(heads).validate(model)
    by_layer: dict[int, list[int]] = {}
    for layer, h in sorted(circuit.heads):
        by_layer.setdefault(layer, []).append(h)

    def zero_queries(q: Tensor, hook) -> Tensor:  # [batch, pos, head, d_head]
        q = q.clone()
        q[:, :, by_layer[int(hook.name.split(".")[1])]] = 0.0
        return q

    hooks: HookList = [(f"blocks.{layer}.attn.hook_q", zero_queries) for layer in by_layer]
    with model.hooks(fwd_hooks=hooks):
        yield


# --------------------------------------------------------------------------------------------
# Circuit evaluation


class _Evaluator:
    """``F(X)``: the metric with every component outside ``X`` ablated, for many ``X``."""

    def __init__(self, model: Model, tokens, metric, keep_mlps, ablation, reference, template_ids,
                 reference_template_ids, seed):
        if not isinstance(tokens, Tensor) or tokens.ndim != 2:
            raise ValueError("tokens must be a token tensor [batch, pos].")
        self.model, self.tokens, self.metric = model, tokens, metric
        self.full = Circuit.full(model)  # every component that may be ablated
        if keep_mlps:
            self.full = Circuit(self.full.heads)
        self.ablator = _Ablator(model, ablation, self.full, reference, template_ids,
                                reference_template_ids, seed)
        if self.ablator.seq is not None and self.ablator.seq != tokens.shape[1]:
            raise ValueError(
                f"The reference batch has sequence length {self.ablator.seq} but tokens have "
                f"{tokens.shape[1]}; mean and resample ablation are per position."
            )
        if ablation != "zero" and self.ablator.template_ids is not None:
            self.ablator._input_ids(tokens.shape[0])  # checks length and coverage now
        self._memo: dict[Circuit, float] = {}

    @torch.no_grad()
    def __call__(self, kept: Circuit) -> float:
        if kept not in self._memo:
            with self.model.hooks(fwd_hooks=self.ablator.hooks(self.full - kept)):
                value = check_scalar(self.metric(self.model(self.tokens))).item()
            self._memo[kept] = value
        return self._memo[kept]


def _circuit(model: Model, circuit, *, allow_empty: bool, keep_mlps: bool) -> Circuit:
    c = Circuit.of(circuit).validate(model)
    if keep_mlps:
        c = Circuit(c.heads)
    if not c and not allow_empty:
        raise ValueError("The circuit is empty; give at least one head (layer, head) or MLP layer.")
    return c


@dataclass
class Faithfulness(Persistent):
    """``F(C)``, ``F(M)`` and ``F(empty)`` (everything ablated); ``faithfulness = F(C) / F(M)``."""

    circuit: Circuit
    circuit_value: float
    model_value: float
    empty_value: float

    @property
    def faithfulness(self) -> float:
        return self.circuit_value / self.model_value if self.model_value else float("nan")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{
            "circuit": repr(self.circuit), "n_components": len(self.circuit),
            "F(C)": self.circuit_value, "F(M)": self.model_value, "F(empty)": self.empty_value,
            "faithfulness": self.faithfulness,
        }])

    def plot(self, **kwargs):
        """Bars of ``F(empty)``, ``F(C)`` and ``F(M)``."""
        kwargs.setdefault("title", f"faithfulness {self.faithfulness:.3g} ({len(self.circuit)} components)")
        return render("bars", ["F(empty)", "F(C)", "F(M)"], [self.empty_value, self.circuit_value, self.model_value],
                      ylabel="metric", **kwargs)


def faithfulness(
    model: Model, tokens: Int[Tensor, "batch pos"], metric: Metric, circuit, *,
    reference: Int[Tensor, "batch pos"] | None = None, ablation: ComponentAblation = "mean",
    template_ids=None, reference_template_ids=None, seed: int = 0, keep_mlps: bool = False,
) -> Faithfulness:
    """The metric with everything outside ``circuit`` ablated, relative to the full model.

    ``circuit`` is a :class:`Circuit` or a list of heads and MLP ints; ``ablation``, ``reference``,
    ``template_ids``, ``reference_template_ids`` and ``seed`` are those of :func:`ablate`.
    MLPs are components like heads unless ``keep_mlps=True``: then no MLP is ever ablated and
    the circuit, its subsets ``K`` and its components ``v`` are heads only (the IOI paper's
    setting). The same holds for :func:`completeness` and :func:`minimality`.
    """
    c = _circuit(model, circuit, allow_empty=True, keep_mlps=keep_mlps)
    F = _Evaluator(model, tokens, metric, keep_mlps, ablation, reference, template_ids,
                   reference_template_ids, seed)
    return Faithfulness(c, F(c), F(F.full), F(Circuit()))


@dataclass
class Completeness(Persistent):
    """For each subset ``K``: ``F(C \\ K)`` and ``F(M \\ K)``; a complete circuit has them close."""

    circuit: Circuit
    subsets: list[Circuit]
    circuit_values: Tensor  # [k] F(C \ K)
    model_values: Tensor  # [k] F(M \ K)

    @property
    def incompleteness(self) -> Tensor:
        return (self.circuit_values - self.model_values).abs()

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "K": [", ".join(k.labels()) for k in self.subsets],
            "size": [len(k) for k in self.subsets],
            "F(C\\K)": self.circuit_values.numpy(),
            "F(M\\K)": self.model_values.numpy(),
            "incompleteness": self.incompleteness.numpy(),
        })

    def plot(self, **kwargs):
        """``F(M \\ K)`` against ``F(C \\ K)`` with the diagonal (see plot.completeness_scatter)."""

        return render("completeness_scatter", self, **kwargs)


def _inside(circuit: Circuit, ks: list[Circuit]) -> list[Circuit]:
    """``ks``, each checked to lie inside ``circuit``."""
    for k in ks:
        if k - circuit:
            raise ValueError(f"K = {k} has components outside the circuit: {k - circuit}.")
    return ks


def completeness(
    model: Model, tokens: Int[Tensor, "batch pos"], metric: Metric, circuit, *,
    reference: Int[Tensor, "batch pos"] | None = None, subsets: Sequence | None = None,
    n_draws: int = 10, p: float = 0.5, ablation: ComponentAblation = "mean", template_ids=None,
    reference_template_ids=None, seed: int = 0, keep_mlps: bool = False, progress: bool = False,
) -> Completeness:
    """Compare ``F(C \\ K)`` with ``F(M \\ K)`` for subsets ``K`` of the circuit.

    ``subsets``: the ``K`` to try (Circuits or lists of components, each inside the circuit);
    if None, ``n_draws`` random subsets, each component kept with probability ``p`` (seeded).
    """
    c = _circuit(model, circuit, allow_empty=False, keep_mlps=keep_mlps)
    if subsets is None:
        if not (isinstance(n_draws, int) and n_draws > 0 and 0 <= p <= 1):
            raise ValueError(f"Need n_draws > 0 and 0 <= p <= 1, got {n_draws}, {p}.")
        gen = torch.Generator().manual_seed(seed)
        comps = c.components()
        draws = torch.rand(n_draws, len(comps), generator=gen) < p
        ks = [Circuit.of([x for x, keep in zip(comps, row) if keep]) for row in draws.tolist()]
    else:
        ks = _inside(c, [Circuit.of(k) for k in subsets])
    F = _Evaluator(model, tokens, metric, keep_mlps, ablation, reference, template_ids,
                   reference_template_ids, seed)
    circ, full = [], []
    for k in tqdm(ks, desc="completeness", disable=not progress):
        circ.append(F(c - k))
        full.append(F(F.full - k))
    return Completeness(c, ks, torch.tensor(circ), torch.tensor(full))


@dataclass
class Minimality(Persistent):
    """For each circuit component ``v``: ``F(C \\ K_v)`` and ``F(C \\ (K_v ∪ {v}))``."""

    circuit: Circuit
    ks: list[Circuit]
    without_k: Tensor  # [component] F(C \ K)
    without_k_and_v: Tensor  # [component] F(C \ (K ∪ {v}))

    @property
    def scores(self) -> Result:
        """``|F(C \\ (K ∪ {v})) - F(C \\ K)|`` per component, labelled."""
        return Result(
            (self.without_k - self.without_k_and_v).abs(), ("component",),
            metric="|F(C\\(K+v)) - F(C\\K)|", labels={"component": self.circuit.labels()},
            meta=dict(method="minimality"),
        )

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "component": self.circuit.labels(),
            "K": [", ".join(k.labels()) for k in self.ks],
            "F(C\\K)": self.without_k.numpy(),
            "F(C\\(K+v))": self.without_k_and_v.numpy(),
            "score": self.scores.values.numpy(),
        })

    def plot(self, **kwargs):
        """Bars of :attr:`scores`, one per component."""
        return self.scores.plot(**kwargs)


def minimality(
    model: Model, tokens: Int[Tensor, "batch pos"], metric: Metric, circuit, *,
    reference: Int[Tensor, "batch pos"] | None = None, k: Sequence | Mapping | None = None,
    ablation: ComponentAblation = "mean", template_ids=None, reference_template_ids=None, seed: int = 0,
    keep_mlps: bool = False, progress: bool = False,
) -> Minimality:
    """How much each circuit component ``v`` matters once ``K`` is removed from the circuit.

    ``k``: None (``K`` empty for every ``v``), one set of components used for every ``v`` (``v``
    itself is dropped from it), or a mapping ``{v: K_v}`` (components missing from it get
    ``K`` empty). Every ``K`` must lie inside the circuit.
    """
    c = _circuit(model, circuit, allow_empty=False, keep_mlps=keep_mlps)
    if isinstance(k, Mapping):
        given = {(x if isinstance(x, int) else tuple(x)): Circuit.of(v) for x, v in k.items()}
        unknown = [x for x in given if x not in c]
        if unknown:
            raise ValueError(f"minimality k names components outside the circuit: {unknown}.")
        ks = [given.get(v, Circuit()) - [v] for v in c]
    else:
        shared = Circuit.of(k or [])
        ks = [shared - [v] for v in c]
    ks = _inside(c, ks)
    F = _Evaluator(model, tokens, metric, keep_mlps, ablation, reference, template_ids,
                   reference_template_ids, seed)
    base, removed = [], []
    for v, kv in tqdm(list(zip(c, ks)), desc="minimality", disable=not progress):
        base.append(F(c - kv))
        removed.append(F(c - kv - [v]))
    return Minimality(c, ks, torch.tensor(base), torch.tensor(removed))
