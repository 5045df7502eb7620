"""Tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned
Lens"): before the final norm and unembedding, each layer's residual goes through a learnt affine
translator ``h + A_l h + b_l``, fit so that the decoded distribution matches the model's final one
(KL divergence, final || lens). ``A_l`` and ``b_l`` start at zero, so an unfit tuned lens is the
logit lens exactly.

>>> from workbench import models, lens
>>> model, ids = models.tiny_model(), __import__("torch").arange(96).reshape(8, 12)
>>> tuned = fit_tuned_lens(model, ids, steps=20)
>>> lens.logit_lens(model, ids[:2], lens=tuned).rank.metric
'tuned lens: target rank'
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.core import checks
from workbench.core.persist import Persistent
from workbench.core.readout import readout_of
from workbench.core.results import render
from workbench.core.types import Model
from workbench.techniques.lens import Lens

__all__ = ["TunedLens", "fit_tuned_lens", "lens_kl"]


@dataclass(frozen=True, eq=False)
class TunedLens(Lens, Persistent):
    """Per-layer translators ``weight [layer, d_model, d_model]`` and ``bias [layer, d_model]``
    (identity at the final layer). Pass it as ``logit_lens(model, tokens, lens=tuned)``; it saves
    and loads like every result (``tuned.save("lens.pt")``, ``TunedLens.load("lens.pt")``)."""

    name: str = "tuned"
    title: str = "tuned lens"
    weight: Tensor = field(default_factory=lambda: torch.zeros(0, 0, 0))
    bias: Tensor = field(default_factory=lambda: torch.zeros(0, 0))

    def transform(self, model: Model, layer: int, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        if layer >= self.weight.shape[0]:
            return resid  # the final residual is read as it is
        w, b = self.weight[layer].to(resid), self.bias[layer].to(resid)
        return resid + resid @ w + b

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: the Frobenius norm of its translator's matrix and of its bias."""
        return pd.DataFrame({
            "layer": range(self.weight.shape[0]),
            "weight_norm": self.weight.flatten(1).norm(dim=1).tolist(),
            "bias_norm": self.bias.norm(dim=1).tolist(),
        })

    def plot(self, **kwargs):
        """The size of each layer's translator: how far the tuned lens moves from the logit lens."""
        frame = self.to_frame()
        return render("bars", [f"L{l}" for l in frame["layer"]], frame["weight_norm"],
                      ylabel="|A_l| (Frobenius)", title="tuned lens: translator sizes", **kwargs)


def _residuals(model: Model, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Every layer's ``resid_pre`` ``[layer, rows, d_model]`` and the final log-probabilities."""
    n = model.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    assert isinstance(logits, Tensor)
    resid = torch.stack([cache[name].reshape(-1, model.cfg.d_model) for name in names]).float()
    return resid, logits.reshape(-1, logits.shape[-1]).float().log_softmax(-1)


def lens_kl(model: Model, lens: Lens, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, " layer"]:
    """Mean KL(final || lens) per layer, over every position of ``tokens``."""
    tokens = checks.tokens(model, tokens)
    resid, final = _residuals(model, tokens)
    out = []
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            logp = readout_of(model).logits(lens.transform(model, layer, resid[layer])[None])[0].float().log_softmax(-1)
            out.append((final.exp() * (final - logp)).sum(-1).mean())
    return torch.stack(out)


def fit_tuned_lens(
    model: Model, tokens: Int[Tensor, "batch pos"], *, steps: int = 200, lr: float = 1e-3, seed: int = 0,
) -> TunedLens:
    """Fit the translators on ``tokens`` (every position) with Adam, minimising the summed KL
    divergence of every layer's decoded distribution from the final one. The model is not changed."""
    tokens = checks.tokens(model, tokens)
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}.")
    resid, final = _residuals(model, tokens)
    n, d = model.cfg.n_layers, model.cfg.d_model
    torch.manual_seed(seed)
    weight = torch.zeros(n, d, d, requires_grad=True)
    bias = torch.zeros(n, d, requires_grad=True)
    optimiser = torch.optim.Adam([weight, bias], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        moved = resid + torch.einsum("lrd,lde->lre", resid, weight) + bias[:, None]
        logp = readout_of(model).logits(moved).float().log_softmax(-1)  # [layer, rows, d_vocab]
        loss = (final.exp() * (final - logp)).sum(-1).mean(-1).sum()
        loss.backward()
        optimiser.step()
    return TunedLens(weight=weight.detach(), bias=bias.detach())
