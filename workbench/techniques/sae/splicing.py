"""Splicing an SAE into the forward pass, with and without its error term, and its evaluation."""


from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench.core.persist import Persistent
from workbench.core.results import render
from workbench.core.types import Model
from workbench.techniques.sae.core import (
    Corpus,
    check_sae,
    corpus_tokens,
    decode_flat,
    encode_flat,
    flat_acts,
    skip_bos,
    token_mask,
)

# ============================================================================================
# Splicing


def _replace_hook(act: Tensor, hook, *, sae, with_error: bool) -> Tensor:
    x = flat_acts(act)
    recon = decode_flat(sae, encode_flat(sae, x)).to(act.dtype)
    new = recon + (x - recon).detach() if with_error else recon
    new = torch.where(token_mask(sae, x)[..., None], new, x)
    return new.reshape(act.shape)


def _zero_hook(act: Tensor, hook, *, sae) -> Tensor:
    x = flat_acts(act)
    return torch.where(token_mask(sae, x)[..., None], torch.zeros_like(x), x).reshape(act.shape)


@contextlib.contextmanager
def spliced(model: Model, sae, *, with_error: bool = False):
    """Inside this block the model runs with the SAE's reconstruction in place of its activation.

    ``with_error=True`` adds back the SAE's error ``x - reconstruction``, so the forward values
    equal the clean model's while gradients flow through the latents. Position 0 (BOS) and
    massive-activation tokens are left as they are (see the module notes).

    >>> # with spliced(model, sae): logits = model(tokens)
    """
    hook_name = check_sae(model, sae)
    fn = partial(_replace_hook, sae=sae, with_error=with_error)
    with model.hooks(fwd_hooks=[(hook_name, fn)]):
        yield model


def spliced_logits(model: Model, sae, tokens: Int[Tensor, "batch pos"], *, with_error: bool = False) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits with the SAE spliced in (see :func:`spliced`)."""
    with torch.no_grad(), spliced(model, sae, with_error=with_error):
        return model(tokens)


def _token_losses(logits: Tensor, tokens: Tensor) -> Tensor:
    logp = logits[:, :-1].log_softmax(-1)
    return -logp.gather(-1, tokens[:, 1:, None])[..., 0]


@dataclass
class Splice(Persistent):
    """Next-token loss of the clean model, with the SAE spliced in, and with the layer zeroed.

    ``recovered = (zero - spliced) / (zero - clean)``: 1 when splicing costs nothing, 0 when it is
    as bad as zeroing the activation.
    """

    clean_loss: float
    spliced_loss: float
    zero_loss: float
    with_error: bool = False
    n_tokens: int = 0

    @property
    def ce_increase(self) -> float:
        return self.spliced_loss - self.clean_loss

    @property
    def recovered(self) -> float:
        gap = self.zero_loss - self.clean_loss
        return float("nan") if gap == 0 else (self.zero_loss - self.spliced_loss) / gap

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"run": ["clean", "spliced", "zero-ablated"],
                             "loss": [self.clean_loss, self.spliced_loss, self.zero_loss]})

    def plot(self, **kwargs):
        """Bars of the three losses."""
        kwargs.setdefault("title", f"SAE spliced in: {self.recovered:.1%} of the loss recovered")
        return render("bars", ["clean", "spliced", "zero-ablated"], [self.clean_loss, self.spliced_loss, self.zero_loss],
                      ylabel="next-token loss", **kwargs)


@torch.no_grad()
def splice(model: Model, sae, tokens: Int[Tensor, "batch pos"], *, with_error: bool = False) -> Splice:
    """Mean next-token cross-entropy: clean vs SAE spliced in vs the hooked activation zeroed.

    The zeroed run zeroes the same positions that are spliced (all but BOS when the SAE skips it).
    With ``with_error=True`` the spliced loss equals the clean loss (a check of the wiring).
    """
    hook_name = check_sae(model, sae)
    tokens = corpus_tokens(model, tokens)
    clean = _token_losses(model(tokens), tokens).mean()
    spliced_ = _token_losses(spliced_logits(model, sae, tokens, with_error=with_error), tokens).mean()
    with model.hooks(fwd_hooks=[(hook_name, partial(_zero_hook, sae=sae))]):
        zero = _token_losses(model(tokens), tokens).mean()
    return Splice(float(clean), float(spliced_), float(zero), with_error, int(tokens[:, 1:].numel()))


@torch.no_grad()
def evaluate_sae(
    model: Model,
    sae,
    corpus: Corpus,
    *,
    context: int = 128,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = False,
) -> dict:
    """Held-out quality of an SAE: explained variance, L0, dead latents and the loss when spliced.

    Over every token of the corpus rows but BOS and massive-activation tokens (which the SAE skips;
    their count is ``n_outliers_left_out``); the losses count every prediction:

    * ``explained_variance = 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2`` (pooled over tokens);
    * ``l0``: mean number of active latents per token;
    * ``dead_fraction``: share of latents that never fire on these tokens;
    * ``clean_loss``, ``spliced_loss``, ``zero_loss``, ``ce_increase``, ``loss_recovered`` as in
      :func:`splice`.
    """
    hook_name = check_sae(model, sae)
    tokens = corpus_tokens(model, corpus, context=context)
    if max_tokens is not None:
        tokens = tokens[: max(1, max_tokens // tokens.shape[1])]
    n = n_excluded = 0
    sum_x = torch.zeros((), dtype=torch.float64)  # becomes the per-dimension sum [d]
    sum_x2 = sum_err2 = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    losses = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_pred = 0
    zero_fn = partial(_zero_hook, sae=sae)
    for b in tqdm(range(0, len(tokens), batch_size), desc="evaluating", disable=not progress):
        batch = tokens[b : b + batch_size]
        store: dict = {}

        def keep(act, hook, store=store):
            mask = token_mask(sae, act)
            store["x"] = flat_acts(act)[mask].double()
            store["excluded"] = int((~mask[:, 1:]).sum()) if skip_bos(sae) else int((~mask).sum())

        with model.hooks(fwd_hooks=[(hook_name, keep)]):
            logits = model(batch)
        losses["clean"] += float(_token_losses(logits, batch).sum())
        x = store["x"]
        latents = encode_flat(sae, x.float())
        recon = decode_flat(sae, latents).double()
        n += len(x)
        n_excluded += store["excluded"]
        sum_x = sum_x + x.sum(0)
        sum_x2 += float((x**2).sum())
        sum_err2 += float(((x - recon) ** 2).sum())
        l0 += float((latents > 0).sum())
        fired |= (latents > 0).any(0)
        losses["spliced"] += float(_token_losses(spliced_logits(model, sae, batch), batch).sum())
        with model.hooks(fwd_hooks=[(hook_name, zero_fn)]):
            losses["zero"] += float(_token_losses(model(batch), batch).sum())
        n_pred += batch[:, 1:].numel()
        del logits
    total_var = sum_x2 - float((sum_x**2).sum()) / n
    out = dict(
        explained_variance=1 - sum_err2 / total_var,
        mse_per_token=sum_err2 / n,
        l0=l0 / n,
        dead_fraction=float((~fired).float().mean()),
        n_dead=int((~fired).sum()),
        clean_loss=losses["clean"] / n_pred,
        spliced_loss=losses["spliced"] / n_pred,
        zero_loss=losses["zero"] / n_pred,
        n_tokens=n,
        n_outliers_left_out=n_excluded,
    )
    out["ce_increase"] = out["spliced_loss"] - out["clean_loss"]
    gap = out["zero_loss"] - out["clean_loss"]
    out["loss_recovered"] = (out["zero_loss"] - out["spliced_loss"]) / gap if gap else float("nan")
    return out
