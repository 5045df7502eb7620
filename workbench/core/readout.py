"""One readout of a loaded model: residual stream -> logits, as the model's own forward does it.

:class:`ModelReadout` (get one with :func:`readout_of`) holds what every technique needs to turn a
final residual into logits, and nothing else:

- the final norm of its kind (:attr:`~ModelReadout.norm_kind`: ``"LN"``, ``"RMS"``, their
  ``...Pre`` forms left by weight processing, or ``"none"``), with or without its bias;
- the unembedding, in full (:meth:`~ModelReadout.logits`) or only the answer columns a metric
  reads (:meth:`~ModelReadout.read`);
- the output soft cap (Gemma-2 style ``output_logits_soft_cap``);
- the key/value head count, which honours ``ungroup_grouped_query_attention`` (an ungrouped model
  has one key/value head per query head in every hook).

It works on a ``HookedTransformer`` and on a ``TransformerBridge`` in compatibility mode alike,
through the attributes both expose (``ln_final``, ``unembed``, ``W_U``, ``b_U``, ``cfg``).

>>> import torch
>>> from workbench import models
>>> from workbench.core.readout import readout_of
>>> model = models.tiny_model()
>>> r = readout_of(model)
>>> r.norm_kind, r.n_kv_heads, r.softcap_value
('LN', 4, 0.0)
>>> resid = torch.zeros(1, 3, model.cfg.d_model)
>>> r.logits(resid).shape
torch.Size([1, 3, 100])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.core.types import Model

__all__ = ["NormKind", "ModelReadout", "readout_of", "final_norm_kind", "n_kv_heads"]

NormKind = Literal["LN", "LNPre", "RMS", "RMSPre", "none"]


def final_norm_kind(model: Model) -> NormKind:
    """The kind of ``model.ln_final``, read from ``model.cfg`` (``"none"`` when there is none).

    ``"LN"``/``"RMS"`` carry a weight ``ln_final.w`` (and ``"LN"`` a bias ``ln_final.b``); the
    ``...Pre`` kinds are what weight processing leaves: normalisation only.
    """
    cfg = model.cfg
    kind = cfg.normalization_type
    if kind is None:
        return "none"
    if kind not in ("LN", "LNPre", "RMS", "RMSPre"):
        raise ValueError(f"Unsupported normalization_type {kind!r} in model.cfg.")
    if getattr(cfg, "final_rms", False) and kind in ("LN", "LNPre"):
        kind = "RMS" if kind == "LN" else "RMSPre"
    return cast(NormKind, kind)


def n_kv_heads(model: Model) -> int:
    """Key/value heads per layer as the hooks see them: ``n_key_value_heads`` on a grouped-query
    model, unless ``ungroup_grouped_query_attention`` repeats them per query head; else ``n_heads``."""
    cfg = model.cfg
    n_kv = getattr(cfg, "n_key_value_heads", None)
    if not n_kv or getattr(cfg, "ungroup_grouped_query_attention", False):
        return cfg.n_heads
    return n_kv


@dataclass(frozen=True)
class ModelReadout:
    """The final norm, unembedding and soft cap of ``model``, and its key/value head count."""

    model: Model

    @property
    def norm_kind(self) -> NormKind:
        return final_norm_kind(self.model)

    @property
    def softcap_value(self) -> float:
        """The output logit soft cap, 0.0 when the model has none."""
        cap = getattr(self.model.cfg, "output_logits_soft_cap", None)
        return float(cap) if cap is not None and cap > 0 else 0.0

    @property
    def n_kv_heads(self) -> int:
        return n_kv_heads(self.model)

    @property
    def kv_group(self) -> int:
        """Query heads per key/value head (query head ``h`` reads key/value head ``h // kv_group``)."""
        return self.model.cfg.n_heads // self.n_kv_heads

    def softcap(self, logits: Tensor) -> Tensor:
        """``cap * tanh(logits / cap)`` when the model soft-caps its logits, else ``logits`` unchanged."""
        cap = self.softcap_value
        return cap * torch.tanh(logits / cap) if cap else logits

    def norm(self, resid: Float[Tensor, "... pos d_model"]) -> Float[Tensor, "... pos d_model"]:
        """The final norm (``ln_final``), or ``resid`` unchanged when the model has none."""
        return self.model.ln_final(resid) if self.model.cfg.normalization_type is not None else resid

    def norm_without_bias(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The final norm without its bias (the same for every input, so no part of a linear map),
        applied to vectors of any leading shape."""
        shape = x.shape
        y = self.norm(x.reshape(-1, 1, shape[-1])).reshape(shape)
        b = getattr(getattr(self.model, "ln_final", None), "b", None)
        return y - b if b is not None else y

    def logits(self, resid: Float[Tensor, "... pos d_model"], *, cap: bool = True) -> Float[Tensor, "... pos d_vocab"]:
        """Full logits of final-residual vectors: norm, unembedding, and (``cap=True``) soft cap."""
        out = self.model.unembed(self.norm(resid))
        return self.softcap(out) if cap else out

    def read(self, final_resid: Float[Tensor, "k batch d_model"],
             tokens: Int[Tensor, "batch target"]) -> Float[Tensor, "k batch target"]:
        """Logits of only ``tokens`` (per prompt) from final residuals, as the model computes them;
        in float32 whatever the model's dtype (they are few, and metrics reduce in float32)."""
        m = self.model
        x = self.norm(final_resid)
        w = m.W_U[:, tokens.to(m.W_U.device)].float()  # [d_model, batch, target]
        bias = m.b_U[tokens.to(m.b_U.device)].float()
        return self.softcap(torch.einsum("kbd,dbt->kbt", x.float(), w) + bias)

    def answer_direction(self, answers: Tensor, wrong: Tensor) -> tuple[Tensor, Tensor]:
        """``(W_U[:, answer] - W_U[:, wrong]`` per prompt ``[batch, d_model]``, the matching
        ``b_U`` difference ``[batch]``), both in float32: what a logit difference reads."""
        m = self.model
        direction = (m.W_U[:, answers].T - m.W_U[:, wrong].T).float()
        return direction, (m.b_U[answers] - m.b_U[wrong]).float()


def readout_of(model: Model) -> ModelReadout:
    """The :class:`ModelReadout` of ``model``."""
    return ModelReadout(model)
