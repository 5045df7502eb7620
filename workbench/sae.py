"""SAE features on SAELens: train, load, read activations, attribute, ablate and steer.

SAELens is the engine: every SAE here is a ``sae_lens.SAE`` (saved with ``save_inference_model``,
loaded with ``SAE.load_from_disk``), and encoding / decoding always goes through its ``encode`` and
``decode``. This module adds what a circuit analysis needs around it: a corpus, a training loop
fed from a ``HookedTransformer``, feature tables, splicing with and without the error term,
attribution patching on latents with its exact reference, and steering.

Conventions
-----------
* An SAE reads one hook point, named in ``sae.cfg.metadata.hook_name``. Residual-stream hooks
  (``blocks.L.hook_resid_pre``), ``hook_attn_out``, ``hook_mlp_out`` and ``attn.hook_z`` are
  supported; ``hook_z`` activations ``[batch, pos, head, d_head]`` are flattened to
  ``head * d_head`` (SAELens's ``reshape_activations="hook_z"``).
* Position 0 is the BOS token (``workbench.models.to_tokens`` puts exactly one there). Its
  residual stream is an attention-sink outlier, so by default SAEs are trained without it and
  every intervention leaves position 0 untouched (``sae.cfg.metadata.skip_bos``). The same holds
  for the rare other "massive activation" tokens (SmolLM2 turns an occasional token right after
  BOS into a second sink, norm ~100x the median): tokens whose activation norm exceeds
  ``sae.cfg.metadata.max_norm`` (10x the median training norm) are neither trained on, nor
  counted in the metrics, nor spliced or edited.
* Interventions keep the SAE's **error term**: editing latents changes the activation by
  ``decode(new) - decode(old)``, and the rest (what the SAE fails to reconstruct) stays. Hooks are
  attached only inside ``with model.hooks(...)`` (the context managers :func:`spliced` and
  :func:`ablate_features` wrap it), so none survives a call, even one that raises.

Shipped SAE
-----------
``load_sae()`` loads ``data/sae/smollm2-135m-blocks.15.hook_resid_pre``: a TopK SAE (k=16) on
SmolLM2-135M's residual stream before block 15 (the middle of 30), trained by
``scripts/train_sae.py`` on the model's own generations (``data/corpus``); its held-out metrics
are in ``metrics.json`` next to it.

Example (tiny model, a few seconds)
-----------------------------------
>>> import torch
>>> from workbench import models, sae as wsae
>>> model = models.tiny_model()
>>> corpus = torch.randint(1, 100, (32, 16), generator=torch.Generator().manual_seed(0))
>>> sae = wsae.train_sae(model, "blocks.1.hook_resid_pre", corpus, d_sae=128, k=8,
...                      n_tokens=4096, batch_size=256, progress=False)
>>> sae.cfg.d_in, sae.cfg.d_sae
(64, 128)
>>> wsae.feature_activations(model, sae, corpus[:1], top_k=2).columns.tolist()
['prompt', 'pos', 'token', 'rank', 'feature', 'activation']
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import re
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from . import models
from .metrics import Metric, check_scalar
from .results import Result

__all__ = [
    "SHIPPED_SAES",
    "CORPUS_FILE",
    "load_corpus",
    "corpus_tokens",
    "collect_activations",
    "train_sae",
    "load_sae",
    "save_sae",
    "check_sae",
    "encode",
    "feature_direction",
    "feature_activations",
    "top_contexts",
    "word_at",
    "contexts_html",
    "LogitEffects",
    "feature_logit_effects",
    "Splice",
    "spliced",
    "spliced_logits",
    "splice",
    "evaluate_sae",
    "ablate_features",
    "attribute_features",
    "patch_features",
    "steer",
]

ROOT = Path(__file__).resolve().parents[1]
CORPUS_FILE = ROOT / "data" / "corpus" / "generations.jsonl"
#: Shipped SAEs by name -> folder in SAELens's format (cfg.json + sae_weights.safetensors).
SHIPPED_SAES = {
    "smollm2-135m": ROOT / "data" / "sae" / "smollm2-135m-blocks.15.hook_resid_pre",
    "gemma-3-270m": ROOT / "data" / "sae" / "gemma-3-270m-blocks.9.hook_resid_pre",
}

Corpus = Sequence[str] | Int[Tensor, "batch pos"]


# ============================================================================================
# Corpus and activations


def load_corpus(split: Literal["train", "heldout", "all"] = "train", *, path: Path | None = None) -> list[str]:
    """The documents of the shipped corpus (SmolLM2's own generations; see data/corpus/README.md).

    Every 8th document is held out (``split="heldout"``): the SAE never trained on it.
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}.")
    path = Path(path) if path is not None else CORPUS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No corpus at {path}. Rebuild it with: .venv/bin/python scripts/build_corpus.py"
        )
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r["text"] for r in rows if split == "all" or r["split"] == split]


def _bos_id(model) -> int:
    return int(models.to_tokens(model, "")[0, 0])  # the workbench rule: exactly one BOS first


def corpus_tokens(model, corpus: Corpus, *, context: int = 128) -> Int[Tensor, "batch pos"]:
    """Token rows of ``context`` tokens, each starting with BOS, cut from the concatenated corpus.

    ``corpus`` is a list of documents (joined with a blank line between them, then cut into rows
    of ``context - 1`` tokens with BOS in front) or an int tensor ``[batch, pos]`` already laid out
    this way (returned as it is, after checks). The last partial row is dropped.
    """
    if isinstance(corpus, Tensor):
        if corpus.ndim != 2 or corpus.numel() == 0 or corpus.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"A token corpus must be a non-empty int tensor [batch, pos], got dtype "
                f"{corpus.dtype} and shape {tuple(corpus.shape)}."
            )
        if corpus.shape[1] < 2:
            raise ValueError("Token rows need at least 2 positions (BOS and one token).")
        return corpus.long()
    if isinstance(corpus, str):
        raise TypeError("corpus must be a list of documents (strings), not one string: wrap it in [...].")
    docs = [d for d in corpus if d and d.strip()]
    if not docs:
        raise ValueError("The corpus is empty (no non-blank documents). Pass some text, e.g. load_corpus().")
    if context < 2:
        raise ValueError(f"context must be at least 2 tokens, got {context}.")
    sep = models.to_tokens(model, "\n\n", prepend_bos=False)[0].tolist()
    stream: list[int] = []
    for doc in docs:
        stream += models.to_tokens(model, doc, prepend_bos=False)[0].tolist() + sep
    width = context - 1
    rows = len(stream) // width
    if rows == 0:
        raise ValueError(
            f"The corpus has {len(stream)} tokens, fewer than one row of context={context}; "
            "pass more text or a smaller context."
        )
    body = torch.tensor(stream[: rows * width], dtype=torch.long).view(rows, width)
    return torch.cat([torch.full((rows, 1), _bos_id(model), dtype=torch.long), body], dim=1)


def _stop_layer(model, hook_name: str) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", hook_name)
    return None if m is None else min(int(m.group(1)) + 1, model.cfg.n_layers)


def _check_hook(model, hook_name: str) -> None:
    if hook_name not in model.hook_dict:
        examples = ["blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.0.attn.hook_z"]
        raise ValueError(
            f"The model has no hook point {hook_name!r}. Use a name from model.hook_dict, "
            f"e.g. {examples}."
        )
    if "pattern" in hook_name or "attn_scores" in hook_name:
        raise ValueError(
            f"{hook_name!r} holds attention patterns [batch, head, query, key], not activations per "
            "token; SAEs here read residual, attention-output, MLP or hook_z activations."
        )


def _flat(act: Tensor) -> Tensor:
    """``[batch, pos, head, d_head]`` (hook_z) -> ``[batch, pos, head * d_head]``; others unchanged."""
    return act.flatten(-2) if act.ndim == 4 else act


@torch.no_grad()
def _hook_acts(model, hook_name: str, tokens: Tensor) -> Tensor:
    _, cache = model.run_with_cache(
        tokens, names_filter=hook_name, stop_at_layer=_stop_layer(model, hook_name)
    )
    return cache[hook_name]


@torch.no_grad()
def collect_activations(
    model,
    hook_name: str,
    tokens: Int[Tensor, "batch pos"],
    *,
    batch_size: int = 8,
    skip_bos: bool = True,
    max_norm: float | None = None,
    progress: bool = True,
) -> Float[Tensor, "batch d_model"]:
    """The activations at ``hook_name`` of every token, one row per token (BOS left out by default).

    Returns ``[n_tokens, d_in]`` float32 (``d_in`` is d_model, or head*d_head for ``hook_z``).
    Rows with norm above ``max_norm`` are dropped. The forward pass stops after the hook's block.
    """
    _check_hook(model, hook_name)
    tokens = corpus_tokens(model, tokens)
    out = []
    for b in tqdm(range(0, len(tokens), batch_size), desc="activations", disable=not progress):
        act = _flat(_hook_acts(model, hook_name, tokens[b : b + batch_size]))
        if skip_bos:
            act = act[:, 1:]
        rows = act.reshape(-1, act.shape[-1]).float()
        if max_norm is not None:
            rows = rows[rows.norm(dim=-1) <= max_norm]
        out.append(rows)
    return torch.cat(out)


def _shuffled_batches(acts: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless batches of rows of ``acts``, reshuffled (seeded) every epoch."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(acts), generator=gen)
        for i in range(0, len(acts) - batch_size + 1, batch_size):
            yield acts[perm[i : i + batch_size]]


# ============================================================================================
# Training, saving, loading


def train_sae(
    model,
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
    progress: bool = True,
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
    from sae_lens import LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata

    _check_hook(model, hook_name)
    for name, value in dict(d_sae=d_sae, k=k, n_tokens=n_tokens, batch_size=batch_size).items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if k > d_sae:
        raise ValueError(f"k={k} latents per token cannot exceed d_sae={d_sae}.")
    start = time.perf_counter()
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
    d_in = activations.shape[-1]
    seconds_activations = time.perf_counter() - start

    torch.manual_seed(seed)
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
    steps = n_tokens // batch_size
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
    trainer = SAETrainer(trainer_cfg, training_sae, _shuffled_batches(activations, batch_size, seed))
    with _quiet_pbar(progress):
        trained = trainer.fit()
    trained.cfg.metadata.workbench_training = dict(
        n_tokens=steps * batch_size,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        b_dec_init=b_dec_init,
        corpus_activations=len(activations),
        outliers_left_out=n_outliers,
        epochs=round(steps * batch_size / len(activations), 2),
        seed=seed,
        seconds_activations=round(seconds_activations, 1),
        seconds_training=round(time.perf_counter() - start - seconds_activations, 1),
    )
    with tempfile.TemporaryDirectory() as tmp:
        trained.save_inference_model(tmp)
        return _load_dir(tmp)


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


def _load_dir(path: Path | str):
    from sae_lens import SAE

    return SAE.load_from_disk(str(path), device="cpu", dtype="float32")


def save_sae(sae, path: Path | str, *, half: bool = False) -> Path:
    """Save an SAE in SAELens's format (``cfg.json`` + ``sae_weights.safetensors``).

    ``half=True`` stores the weights as float16 (half the size) while ``cfg.json`` keeps
    ``dtype: float32``, so ``SAE.load_from_disk`` casts them back to float32 on load.
    """
    from safetensors.torch import load_file, save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sae.save_model(str(path))
    if half:
        weights = path / "sae_weights.safetensors"
        state = {k: v.to(torch.float16).contiguous() for k, v in load_file(str(weights)).items()}
        save_file(state, str(weights))
    return path


def load_sae(path_or_name: str | Path = "smollm2-135m", *, model=None):
    """Load an SAE with ``sae_lens.SAE.load_from_disk``; with ``model``, check that it fits.

    ``path_or_name`` is a shipped name (see :data:`SHIPPED_SAES`; default: the SmolLM2 one) or a
    folder holding ``cfg.json`` and ``sae_weights.safetensors``. Weights load as float32.
    """
    path = SHIPPED_SAES.get(str(path_or_name), Path(path_or_name))
    if not (path / "cfg.json").is_file():
        raise FileNotFoundError(
            f"No SAE at {path} (expected cfg.json and sae_weights.safetensors). Shipped names: "
            f"{sorted(SHIPPED_SAES)}; train one with scripts/train_sae.py."
        )
    sae = _load_dir(path)
    if model is not None:
        check_sae(model, sae)
    return sae


_WIDTHS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _width(model, hook_name: str) -> int:
    """The activation width at a hook, measured once per model with a 2-token forward pass."""
    cache = _WIDTHS.setdefault(model, {})
    if hook_name not in cache:
        cache[hook_name] = _flat(_hook_acts(model, hook_name, torch.zeros(1, 2, dtype=torch.long))).shape[-1]
    return cache[hook_name]


def check_sae(model, sae) -> str:
    """Raise ``ValueError`` unless the SAE reads a hook of this model with the right width.

    Returns the hook name. Checked: the SAE is a ``sae_lens.SAE``; its metadata names a hook
    point the model has; its ``d_in`` equals the activation width there; and, when both are
    known, the model name it was trained on.
    """
    from sae_lens import SAE

    if not isinstance(sae, SAE):
        raise TypeError(f"Expected a sae_lens SAE, got {type(sae).__name__}. Load one with load_sae().")
    hook_name = sae.cfg.metadata.hook_name
    if not hook_name:
        raise ValueError(
            "The SAE's metadata names no hook point; set sae.cfg.metadata.hook_name "
            "(e.g. 'blocks.15.hook_resid_pre')."
        )
    if hook_name not in model.hook_dict:
        raise ValueError(
            f"The SAE reads hook {hook_name!r}, which model {model.cfg.model_name!r} does not have "
            f"(it has {model.cfg.n_layers} layers). An SAE only fits the model it was trained on."
        )
    _check_hook(model, hook_name)
    width = _width(model, hook_name)
    if sae.cfg.d_in != width:
        raise ValueError(
            f"The SAE's d_in={sae.cfg.d_in} does not match the model's activation width {width} at "
            f"{hook_name!r} (model {model.cfg.model_name!r}). This SAE was trained on another "
            f"model{' (' + repr(sae.cfg.metadata.model_name) + ')' if sae.cfg.metadata.model_name else ''}."
        )
    trained_on = sae.cfg.metadata.model_name
    if trained_on and trained_on != model.cfg.model_name:
        raise ValueError(
            f"The SAE was trained on {trained_on!r}, but the model is {model.cfg.model_name!r}. "
            "Load the SAE trained for this model (or train one with train_sae)."
        )
    return hook_name


def _skip_bos(sae) -> bool:
    value = sae.cfg.metadata.skip_bos
    return True if value is None else bool(value)


def _check_feature(sae, feature) -> int:
    if isinstance(feature, Tensor):
        feature = feature.item()
    if not isinstance(feature, int) or isinstance(feature, bool):
        raise TypeError(f"feature must be an int index, got {type(feature).__name__}.")
    if not 0 <= feature < sae.cfg.d_sae:
        raise ValueError(f"Feature index {feature} is out of range: this SAE has d_sae={sae.cfg.d_sae} latents (0..{sae.cfg.d_sae - 1}).")
    return feature


def _check_features(sae, features) -> list[int]:
    if isinstance(features, (int, Tensor)) and not (isinstance(features, Tensor) and features.ndim):
        features = [features]
    features = [_check_feature(sae, int(f) if isinstance(f, Tensor) else f) for f in features]
    if not features:
        raise ValueError("No features given.")
    return features


# ============================================================================================
# Encoding and decoding through SAELens (flattened activations)


@contextlib.contextmanager
def _flat_mode(sae):
    """Run SAELens's encode/decode on flattened ``[..., d_in]`` activations, also for hook_z SAEs."""
    was_on = getattr(sae, "hook_z_reshaping_mode", False)
    if was_on:
        sae.turn_off_forward_pass_hook_z_reshaping()
    try:
        yield
    finally:
        if was_on:
            sae.turn_on_forward_pass_hook_z_reshaping()


def _encode_flat(sae, x: Tensor) -> Tensor:
    with _flat_mode(sae):
        return sae.encode(x.to(sae.dtype))


def _decode_flat(sae, latents: Tensor) -> Tensor:
    with _flat_mode(sae):
        return sae.decode(latents)


def encode(model, sae, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos feature"]:
    """The SAE's latents at every position (position 0 included; it is BOS)."""
    hook_name = check_sae(model, sae)
    with torch.no_grad():
        return _encode_flat(sae, _flat(_hook_acts(model, hook_name, tokens)))


def feature_direction(sae, feature: int) -> Float[Tensor, "d_model"]:
    """What one unit of the feature's activation adds to the activation: ``decode(e_f) - decode(0)``.

    (The decoder row, divided by its norm when the SAE rescales activations by decoder norm.)
    """
    feature = _check_feature(sae, feature)
    with torch.no_grad():
        one = torch.zeros(2, sae.cfg.d_sae, dtype=sae.dtype)
        one[0, feature] = 1.0
        out = _decode_flat(sae, one)
    return (out[0] - out[1]).float()


def _token_mask(sae, x: Tensor) -> Tensor:
    """``[batch, pos]`` bool: where the SAE applies (not BOS if skipped, norm <= ``max_norm``)."""
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    if _skip_bos(sae):
        mask[:, 0] = False
    max_norm = sae.cfg.metadata.max_norm
    if max_norm is not None:
        mask &= _flat(x).norm(dim=-1) <= max_norm
    return mask


def _masked(sae, x: Tensor, latents: Tensor) -> Tensor:
    """Latents with zeros wherever the SAE does not apply (see :func:`_token_mask`)."""
    return latents * _token_mask(sae, x)[..., None].to(latents.dtype)


# ============================================================================================
# Reading features


def _as_token_rows(model, prompts_or_tokens) -> list[Tensor]:
    """A list of ``[1, pos]`` token rows: one per prompt (no padding), or the rows of a tensor."""
    if isinstance(prompts_or_tokens, Tensor):
        t = prompts_or_tokens
        if t.ndim == 1:
            t = t[None]
        if t.ndim != 2 or t.numel() == 0:
            raise ValueError(f"tokens must be [batch, pos] and non-empty, got shape {tuple(t.shape)}.")
        return [t]
    prompts = [prompts_or_tokens] if isinstance(prompts_or_tokens, str) else list(prompts_or_tokens)
    if not prompts:
        raise ValueError("No prompts given.")
    return [models.to_tokens(model, p) for p in prompts]


def _str_tokens(model, ids: Sequence[int]) -> list[str]:
    if getattr(model, "tokenizer", None) is None:
        return [str(int(i)) for i in ids]
    return models.to_str_tokens(model, [int(i) for i in ids])


def feature_activations(model, sae, prompts_or_tokens, *, top_k: int = 5) -> pd.DataFrame:
    """The strongest latents at every token: one row per (prompt, position, active feature).

    Columns: ``prompt`` (index), ``pos``, ``token`` (string), ``rank`` (0 = strongest),
    ``feature``, ``activation``. Only active latents (> 0) among the ``top_k`` strongest are
    listed; position 0 (BOS) and massive-activation tokens are left out (see the module notes).
    """
    check_sae(model, sae)
    rows = []
    index = 0
    for tokens in _as_token_rows(model, prompts_or_tokens):
        x = _flat(_hook_acts(model, sae.cfg.metadata.hook_name, tokens))
        latents = _encode_flat(sae, x).detach()  # a table of numbers: no graph (SAEs in training have one)
        mask = _token_mask(sae, x)
        values, feats = latents.topk(min(top_k, sae.cfg.d_sae), dim=-1)
        for b in range(tokens.shape[0]):
            strs = _str_tokens(model, tokens[b])
            for p in mask[b].nonzero()[:, 0].tolist():
                for r in range(values.shape[-1]):
                    if values[b, p, r] > 0:
                        rows.append((index + b, p, strs[p], r, int(feats[b, p, r]), float(values[b, p, r])))
        index += tokens.shape[0]
    return pd.DataFrame(rows, columns=["prompt", "pos", "token", "rank", "feature", "activation"])


@torch.no_grad()
def top_contexts(
    model,
    sae,
    feature: int,
    corpus: Corpus,
    *,
    k: int = 10,
    window: int = 8,
    context: int = 64,
    batch_size: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """The ``k`` corpus tokens where ``feature`` fires most, each with ``window`` tokens either side.

    Columns: ``rank``, ``row``/``pos`` (in :func:`corpus_tokens` layout), ``activation``,
    ``token``, ``word`` (the whole word the max token is part of, see :func:`word_at`) and
    ``context`` (the window as text with the max token in «guillemets»), plus ``tokens`` and
    ``activations`` (lists over the window, for :func:`contexts_html`) and ``center`` (the max
    token's index in them).
    """
    hook_name = check_sae(model, sae)
    feature = _check_feature(sae, feature)
    tokens = corpus_tokens(model, corpus, context=context)
    acts = torch.empty(tokens.shape)
    for b in tqdm(range(0, len(tokens), batch_size), desc="top contexts", disable=not progress):
        x = _flat(_hook_acts(model, hook_name, tokens[b : b + batch_size]))
        acts[b : b + batch_size] = _masked(sae, x, _encode_flat(sae, x))[..., feature].float()
    flat = acts.flatten()
    order = flat.argsort(descending=True, stable=True)[:k]
    rows = []
    for rank, i in enumerate(order.tolist()):
        if flat[i] <= 0:
            break
        r, p = divmod(i, tokens.shape[1])
        lo, hi = max(0, p - window), min(tokens.shape[1], p + window + 1)
        strs = _str_tokens(model, tokens[r, lo:hi])
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
class LogitEffects:
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
        from . import plot

        return plot.logit_effects(self, **kwargs)


def feature_logit_effects(model, sae, feature: int, k: int = 10) -> LogitEffects:
    """Which tokens the feature's decoder direction promotes and suppresses, read off directly.

    The direction ``d`` (:func:`feature_direction`) goes through the final norm's linear part and
    the unembedding: ``(centre(d) * ln_final.w) @ W_U`` (centring only for LayerNorm; no weight
    on a processed model, where it is folded into ``W_U``). This is the usual linear readout: it
    ignores the norm's scale, so compare tokens within a feature, not magnitudes across layers.
    """
    check_sae(model, sae)
    feature = _check_feature(sae, feature)
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
    labels = _str_tokens(model, range(model.cfg.d_vocab))
    result = Result(values, ("d_vocab",), f"logit effect of feature {feature} (per unit activation)",
                    {"d_vocab": labels}, {"feature": feature, "hook_name": sae.cfg.metadata.hook_name})
    return LogitEffects(result, k)


# ============================================================================================
# Splicing


def _replace_hook(act: Tensor, hook, *, sae, with_error: bool) -> Tensor:
    x = _flat(act)
    recon = _decode_flat(sae, _encode_flat(sae, x)).to(act.dtype)
    new = recon + (x - recon).detach() if with_error else recon
    new = torch.where(_token_mask(sae, x)[..., None], new, x)
    return new.reshape(act.shape)


def _zero_hook(act: Tensor, hook, *, sae) -> Tensor:
    x = _flat(act)
    return torch.where(_token_mask(sae, x)[..., None], torch.zeros_like(x), x).reshape(act.shape)


@contextlib.contextmanager
def spliced(model, sae, *, with_error: bool = False):
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


def spliced_logits(model, sae, tokens: Int[Tensor, "batch pos"], *, with_error: bool = False) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits with the SAE spliced in (see :func:`spliced`)."""
    with torch.no_grad(), spliced(model, sae, with_error=with_error):
        return model(tokens)


def _token_losses(logits: Tensor, tokens: Tensor) -> Tensor:
    logp = logits[:, :-1].log_softmax(-1)
    return -logp.gather(-1, tokens[:, 1:, None])[..., 0]


@dataclass
class Splice:
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


@torch.no_grad()
def splice(model, sae, tokens: Int[Tensor, "batch pos"], *, with_error: bool = False) -> Splice:
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
    model,
    sae,
    corpus: Corpus,
    *,
    context: int = 128,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = True,
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
    sum_x = sum_x2 = sum_err2 = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    losses = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_pred = 0
    zero_fn = partial(_zero_hook, sae=sae)
    for b in tqdm(range(0, len(tokens), batch_size), desc="evaluating", disable=not progress):
        batch = tokens[b : b + batch_size]
        store: dict = {}

        def keep(act, hook):
            mask = _token_mask(sae, act)
            store["x"] = _flat(act)[mask].double()
            store["excluded"] = int((~mask[:, 1:]).sum()) if _skip_bos(sae) else int((~mask).sum())

        with model.hooks(fwd_hooks=[(hook_name, keep)]):
            logits = model(batch)
        losses["clean"] += float(_token_losses(logits, batch).sum())
        x = store["x"]
        latents = _encode_flat(sae, x.float())
        recon = _decode_flat(sae, latents).double()
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


# ============================================================================================
# Interventions on latents (error term kept)


def _edit_hook(act: Tensor, hook, *, sae, edit: Callable[[Tensor], Tensor]) -> Tensor:
    """Change the latents with ``edit`` and add the decoded difference to the activation."""
    x = _flat(act)
    latents = _encode_flat(sae, x)
    new = edit(latents)
    delta = _decode_flat(sae, new) - _decode_flat(sae, latents)
    delta = delta * _token_mask(sae, x)[..., None].to(delta.dtype)
    return (x + delta.to(act.dtype)).reshape(act.shape)


def _position_mask(sae, seq: int, positions) -> Tensor:
    mask = torch.zeros(seq, dtype=torch.bool)
    if positions is None:
        mask[:] = True
    else:
        pos = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        if ((pos < -seq) | (pos >= seq)).any():
            raise ValueError(f"positions {pos.tolist()} are out of range for sequences of {seq} tokens.")
        mask[pos % seq] = True
    if _skip_bos(sae):
        mask[0] = False
    return mask


def _set_latents(latents: Tensor, *, features: list[int], values: Tensor | float, positions) -> Tensor:
    out = latents.clone()
    mask = positions(latents.shape[1]) if callable(positions) else positions
    idx = torch.tensor(features)
    src = values if isinstance(values, Tensor) else torch.full_like(latents, float(values))
    chosen = out[:, :, idx]
    chosen[:, mask] = src[:, :, idx][:, mask].to(out.dtype)
    out[:, :, idx] = chosen
    return out


@contextlib.contextmanager
def ablate_features(model, sae, features, *, positions=None, value: float = 0.0):
    """Inside this block the given features are set to ``value`` (default 0), error term kept.

    The activation becomes ``x + decode(edited latents) - decode(latents)``: only the ablated
    features' contributions change. ``positions``: an int or list (default: every position but
    BOS).

    >>> # with ablate_features(model, sae, [12, 40]): logits = model(tokens)
    """
    hook_name = check_sae(model, sae)
    features = _check_features(sae, features)
    masker = partial(_position_mask, sae, positions=positions)
    edit = partial(_set_latents, features=features, values=value, positions=masker)
    with model.hooks(fwd_hooks=[(hook_name, partial(_edit_hook, sae=sae, edit=edit))]):
        yield model


def _metric_name(metric) -> str:
    return getattr(metric, "name", None) or type(metric).__name__


def _check_pair(clean: Tensor, corrupted: Tensor) -> None:
    if not isinstance(clean, Tensor) or not isinstance(corrupted, Tensor):
        raise TypeError("clean and corrupted must be token tensors [batch, pos] (use workbench.to_tokens).")
    if clean.shape != corrupted.shape or clean.ndim != 2:
        raise ValueError(
            f"clean and corrupted tokens must have the same [batch, pos] shape, got "
            f"{tuple(clean.shape)} and {tuple(corrupted.shape)}."
        )


def attribute_features(
    model,
    sae,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    by_pos: bool = False,
) -> Result:
    """Attribution patching on SAE latents: one forward/backward on the corrupted run.

    Estimates, for every feature, ``metric(corrupted run with that feature set to its clean
    value)`` as ``metric(corrupted) + grad · (clean latents - corrupted latents)``, the gradient
    taken at the corrupted run with the SAE spliced in *with* its error term (so the forward pass
    is the corrupted model's exactly). Laid out like :func:`patch_features` (its exact reference)
    and like :mod:`workbench.attribution`: ``meta["corrupted"]`` holds the baseline.

    Returns ``Result`` with dims ``("feature",)`` (feature patched at every position but BOS) or
    ``("pos", "feature")`` with ``by_pos=True``.
    """
    hook_name = check_sae(model, sae)
    _check_pair(clean, corrupted)
    with torch.no_grad():
        x_clean = _flat(_hook_acts(model, hook_name, clean))
        clean_latents = _masked(sae, x_clean, _encode_flat(sae, x_clean))
    store: dict = {}

    def leaf_hook(act, hook):
        x = _flat(act)
        latents = _encode_flat(sae, x.detach()).detach().requires_grad_(True)
        store["latents"], store["x"] = latents, x.detach()
        recon = _decode_flat(sae, latents)
        return (x + (recon - recon.detach()).to(act.dtype)).reshape(act.shape)

    with torch.enable_grad(), model.hooks(fwd_hooks=[(hook_name, leaf_hook)]):
        value = check_scalar(metric(model(corrupted)), "metric on the corrupted run")
        (grad,) = torch.autograd.grad(value, store["latents"])
    corrupted_latents = _masked(sae, store["x"], store["latents"].detach())
    delta = (grad * (clean_latents - corrupted_latents)).sum(0)  # [pos, feature]
    values = value.detach() + (delta if by_pos else delta.sum(0))
    dims = ("pos", "feature") if by_pos else ("feature",)
    return Result(values.float(), dims, f"{_metric_name(metric)} (attribution estimate)", {},
                  {"corrupted": value.item(), "hook_name": hook_name, "method": "attribution"})


@torch.no_grad()
def patch_features(
    model,
    sae,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    metric: Metric,
    features: Sequence[int],
    *,
    by_pos: bool = False,
    progress: bool = True,
) -> Result:
    """Exact patching of SAE latents: the corrupted run with one feature set to its clean value.

    One forward pass per feature (and per position with ``by_pos=True``); error term kept. The
    reference for :func:`attribute_features`. Returns ``Result`` with dims ``("feature",)`` or
    ``("pos", "feature")`` over the given ``features`` (labelled by their indices).
    """
    hook_name = check_sae(model, sae)
    _check_pair(clean, corrupted)
    features = _check_features(sae, features)
    clean_latents = _encode_flat(sae, _flat(_hook_acts(model, hook_name, clean)))
    baseline = float(check_scalar(metric(model(corrupted)), "metric on the corrupted run"))
    seq = clean.shape[1]
    pos_sets = [[p] for p in range(seq)] if by_pos else [None]
    values = torch.full((len(pos_sets), len(features)), float("nan"))
    jobs = [(i, j) for i in range(len(pos_sets)) for j in range(len(features))]
    for i, j in tqdm(jobs, desc="patching features", disable=not progress):
        mask = _position_mask(sae, seq, pos_sets[i])
        if not mask.any():  # BOS alone, left untouched: the patch is a no-op
            values[i, j] = baseline
            continue
        edit = partial(_set_latents, features=[features[j]], values=clean_latents, positions=mask)
        with model.hooks(fwd_hooks=[(hook_name, partial(_edit_hook, sae=sae, edit=edit))]):
            values[i, j] = float(check_scalar(metric(model(corrupted))))
    if not by_pos:
        values = values[0]
    dims = ("pos", "feature") if by_pos else ("feature",)
    return Result(values, dims, f"{_metric_name(metric)} (exact patching)", {"feature": features},
                  {"corrupted": baseline, "hook_name": hook_name, "method": "exact"})


# ============================================================================================
# Steering


def _add_hook(act: Tensor, hook, *, direction: Tensor, mask: Tensor) -> Tensor:
    x = _flat(act)
    x = x + mask[None, :, None].to(x.dtype) * direction.to(x.dtype)
    return x.reshape(act.shape)


@torch.no_grad()
def steer(
    model,
    sae,
    feature: int,
    prompts,
    scales: Sequence[float],
    metric: Metric,
    *,
    positions=None,
    progress: bool = True,
) -> Result:
    """Dose-response of adding ``scale`` units of a feature's direction at the SAE's hook.

    ``scale`` is in units of the feature's own activation (compare with :func:`top_contexts`);
    the direction is :func:`feature_direction`. It is added at ``positions`` (default: every
    position but BOS). ``prompts``: strings of equal token length, or tokens ``[batch, pos]``.

    Returns ``Result`` with dims ``("scale",)``: ``metric`` of the steered logits at each scale.
    """
    hook_name = check_sae(model, sae)
    feature = _check_feature(sae, feature)
    tokens = prompts if isinstance(prompts, Tensor) else models.to_tokens(model, prompts)
    if tokens.ndim != 2 or tokens.numel() == 0:
        raise ValueError(f"prompts must give tokens [batch, pos], got shape {tuple(tokens.shape)}.")
    scales = [float(s) for s in scales]
    if not scales:
        raise ValueError("No scales given.")
    direction = feature_direction(sae, feature)
    mask = _position_mask(sae, tokens.shape[1], positions)
    values = []
    for s in tqdm(scales, desc="steering", disable=not progress):
        fn = partial(_add_hook, direction=s * direction, mask=mask)
        with model.hooks(fwd_hooks=[(hook_name, fn)]):
            values.append(float(check_scalar(metric(model(tokens)))))
    return Result(torch.tensor(values), ("scale",), _metric_name(metric), {"scale": scales},
                  {"feature": feature, "hook_name": hook_name, "method": "steering"})
