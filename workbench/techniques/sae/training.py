"""Training a TopK SAE with SAELens's trainer on activations from a HookedTransformer."""


from __future__ import annotations

import contextlib
import tempfile
import time
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from workbench.core.types import Model
from workbench.techniques.sae.core import (
    Corpus,
    check_hook,
    collect_activations,
    corpus_tokens,
    load_dir,
    shuffled_batches,
)

# ============================================================================================
# Training, saving, loading


def train_sae(
    model: Model,
    hook_name: str,
    corpus: Corpus,
    *,
    d_sae: int,
    k: int,
    n_tokens: int,
    batch_size: int = 1024,
    context: int = 128,
    lr: float = 1e-3,
    lr_end: float | None = None,
    max_corpus_tokens: int | None = None,
    dead_feature_window: int = 50,
    skip_bos: bool = True,
    outlier_factor: float | None = 10.0,
    b_dec_init: Literal["zeros", "mean"] = "zeros",
    seed: int = 0,
    activations: Tensor | None = None,
    progress: bool = False,
):
    """Train a TopK SAE on ``hook_name`` with SAELens's ``SAETrainer``; return the inference SAE.

    The activations of the corpus (cut into rows of ``context`` tokens, BOS excluded unless
    ``skip_bos=False``) are computed once and kept in memory; the trainer draws shuffled batches of
    ``batch_size`` rows from them until it has seen ``n_tokens`` activations (several epochs if
    ``n_tokens`` exceeds the corpus). Activations are scaled to norm sqrt(d_in) during training and
    the scale is folded into the weights at the end (SAELens ``expected_average_only_in``).

    Args:
        d_sae: number of latents; k: latents active per token.
        n_tokens: activations the trainer sees in total (``total_training_samples``).
        lr, lr_end: Adam learning rate, cosine-annealed to ``lr_end`` (default ``lr / 10``).
        max_corpus_tokens: use only the first rows of the corpus, up to this many tokens.
        dead_feature_window: steps without firing after which a latent counts as dead and gets
            the TopK auxiliary loss.
        outlier_factor: tokens whose activation norm exceeds this many times the median are
            left out (massive-activation sinks); recorded as ``metadata.max_norm``. None: keep all.
        b_dec_init: "zeros" (SAELens's default) or "mean": start the decoder bias at the mean
            activation, which the SAE subtracts before encoding. For residual streams with a large
            offset shared by every token (Gemma-3), "zeros" leaves the latents to learn the offset
            and most of them die.
        activations: precomputed ``[n, d_in]`` activations (skips the model; for scripts that
            already have them).

    Returns:
        A ``sae_lens`` ``TopKSAE`` (inference class, as ``SAE.load_from_disk`` gives it) whose
        ``cfg.metadata`` records the model, hook, context, ``skip_bos`` and training settings.
    """
    # SAELens is imported first (the helpers below use it): a missing package fails before any
    # work, and importing it cannot draw from the random state seeded below.
    import sae_lens.config  # noqa: F401
    import sae_lens.saes.sae  # noqa: F401

    _check_sizes(model, hook_name, d_sae=d_sae, k=k, n_tokens=n_tokens, batch_size=batch_size)
    start = time.perf_counter()
    activations, max_norm, n_outliers = _training_activations(
        model, hook_name, corpus, activations, context=context, max_corpus_tokens=max_corpus_tokens,
        skip_bos=skip_bos, outlier_factor=outlier_factor, batch_size=batch_size, progress=progress,
    )
    seconds_activations = time.perf_counter() - start

    torch.manual_seed(seed)
    training_sae = _training_sae(model, hook_name, activations, d_sae=d_sae, k=k, context=context,
                                 skip_bos=skip_bos, max_norm=max_norm, b_dec_init=b_dec_init)
    steps = n_tokens // batch_size
    trained = _fit(training_sae, activations, steps=steps, batch_size=batch_size, lr=lr, lr_end=lr_end,
                   dead_feature_window=dead_feature_window, seed=seed, progress=progress)
    trained.cfg.metadata.workbench_training = dict(
        n_tokens=steps * batch_size, steps=steps, batch_size=batch_size, lr=lr, b_dec_init=b_dec_init,
        corpus_activations=len(activations), outliers_left_out=n_outliers,
        epochs=round(steps * batch_size / len(activations), 2), seed=seed,
        seconds_activations=round(seconds_activations, 1),
        seconds_training=round(time.perf_counter() - start - seconds_activations, 1),
    )
    with tempfile.TemporaryDirectory() as tmp:
        trained.save_inference_model(tmp)
        return load_dir(tmp)


def _check_sizes(model: Model, hook_name: str, *, d_sae, k, n_tokens, batch_size) -> None:
    check_hook(model, hook_name)
    for name, value in dict(d_sae=d_sae, k=k, n_tokens=n_tokens, batch_size=batch_size).items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if k > d_sae:
        raise ValueError(f"k={k} latents per token cannot exceed d_sae={d_sae}.")


def _training_activations(model: Model, hook_name: str, corpus: Corpus, activations: Tensor | None, *,
                          context: int, max_corpus_tokens: int | None, skip_bos: bool,
                          outlier_factor: float | None, batch_size: int,
                          progress: bool) -> tuple[Tensor, float | None, int]:
    """(activations to train on, the outlier norm cut-off or None, how many were left out)."""
    if activations is None:
        tokens = corpus_tokens(model, corpus, context=context)
        if max_corpus_tokens is not None:
            tokens = tokens[: max(1, max_corpus_tokens // tokens.shape[1])]
        activations = collect_activations(model, hook_name, tokens, skip_bos=skip_bos, progress=progress)
    max_norm = None
    n_outliers = 0
    if outlier_factor is not None and len(activations):
        norms = activations.norm(dim=-1)
        max_norm = float(outlier_factor * norms.median())
        n_outliers = int((norms > max_norm).sum())
        activations = activations[norms <= max_norm]
    if len(activations) < batch_size:
        raise ValueError(
            f"The corpus gives {len(activations)} activations, fewer than one batch of {batch_size}; "
            "pass more text or a smaller batch_size."
        )
    return activations, max_norm, n_outliers


def _training_sae(model: Model, hook_name: str, activations: Tensor, *, d_sae: int, k: int, context: int,
                  skip_bos: bool, max_norm: float | None, b_dec_init: str):
    """A fresh SAELens ``TopKTrainingSAE`` (drawing from the global seed), its decoder bias set."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in = activations.shape[-1]
    metadata = SAEMetadata(
        model_name=model.cfg.model_name,
        hook_name=hook_name,
        context_size=context,
        prepend_bos=True,
        skip_bos=skip_bos,
        max_norm=max_norm,
        d_model=model.cfg.d_model,
    )
    cfg = TopKTrainingSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        normalize_activations="expected_average_only_in",
        reshape_activations="hook_z" if hook_name.endswith("hook_z") else "none",
        metadata=metadata,
    )
    training_sae = TopKTrainingSAE(cfg)
    if b_dec_init == "mean":
        # In the trainer's normalised space (norm sqrt(d_in) on average); SAELens folds the scale
        # back out of b_dec at the end, leaving the raw mean as the starting point.
        scale = d_in**0.5 / activations.norm(dim=-1).mean()
        training_sae.b_dec.data = (activations.mean(0) * scale).to(training_sae.b_dec.dtype)
    elif b_dec_init != "zeros":
        raise ValueError(f"b_dec_init must be 'zeros' or 'mean', got {b_dec_init!r}.")
    return training_sae


def _fit(training_sae, activations: Tensor, *, steps: int, batch_size: int, lr: float,
         lr_end: float | None, dead_feature_window: int, seed: int, progress: bool):
    """Train with SAELens's ``SAETrainer`` for ``steps`` shuffled batches; the trained SAE."""
    from sae_lens import LoggingConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig

    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr / 10 if lr_end is None else lr_end,
        lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=min(50, steps // 10),
        dead_feature_window=dead_feature_window,
        n_batches_for_norm_estimate=min(20, max(1, len(activations) // batch_size)),
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(trainer_cfg, training_sae, shuffled_batches(activations, batch_size, seed))
    with _quiet_pbar(progress), torch.enable_grad():  # trains under a caller's no_grad too (e.g. a notebook's)
        return trainer.fit()


@contextlib.contextmanager
def _quiet_pbar(progress: bool):
    """SAELens's trainer draws its own tqdm bar; hide it when ``progress=False``."""
    if progress:
        yield
        return
    import sae_lens.training.sae_trainer as trainer_module

    original = trainer_module.tqdm
    trainer_module.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        trainer_module.tqdm = original
