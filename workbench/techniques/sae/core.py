"""Corpus, activations, loading and checking SAEs, and the encode/decode helpers the other parts share."""


from __future__ import annotations

import contextlib
import json
import re
import weakref
from pathlib import Path
from typing import Iterator, Literal, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench import models
from workbench.core.resources import data_path
from workbench.core.types import Model

CORPUS_FILE = data_path("corpus", "generations.jsonl")
#: Shipped SAEs by name -> folder in SAELens's format (cfg.json + sae_weights.safetensors).
SHIPPED_SAES = {
    "smollm2-135m": data_path("sae", "smollm2-135m-blocks.15.hook_resid_pre"),
    "gemma-3-270m": data_path("sae", "gemma-3-270m-blocks.9.hook_resid_pre"),
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


def corpus_tokens(model: Model, corpus: Corpus, *, context: int = 128) -> Int[Tensor, "batch pos"]:
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
    return torch.cat([torch.full((rows, 1), models.bos_id(model), dtype=torch.long), body], dim=1)


def _stop_layer(model: Model, hook_name: str) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", hook_name)
    return None if m is None else min(int(m.group(1)) + 1, model.cfg.n_layers)


def check_hook(model: Model, hook_name: str) -> None:
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


def flat_acts(act: Tensor) -> Tensor:
    """``[batch, pos, head, d_head]`` (hook_z) -> ``[batch, pos, head * d_head]``; others unchanged."""
    return act.flatten(-2) if act.ndim == 4 else act


@torch.no_grad()
def hook_acts(model: Model, hook_name: str, tokens: Tensor) -> Tensor:
    _, cache = model.run_with_cache(
        tokens, names_filter=hook_name, stop_at_layer=_stop_layer(model, hook_name)
    )
    return cache[hook_name]


@torch.no_grad()
def collect_activations(
    model: Model,
    hook_name: str,
    tokens: Int[Tensor, "batch pos"],
    *,
    batch_size: int = 8,
    skip_bos: bool = True,
    max_norm: float | None = None,
    progress: bool = False,
) -> Float[Tensor, "batch d_model"]:
    """The activations at ``hook_name`` of every token, one row per token (BOS left out by default).

    Returns ``[n_tokens, d_in]`` float32 (``d_in`` is d_model, or head*d_head for ``hook_z``).
    Rows with norm above ``max_norm`` are dropped. The forward pass stops after the hook's block.
    """
    check_hook(model, hook_name)
    tokens = corpus_tokens(model, tokens)
    out = []
    for b in tqdm(range(0, len(tokens), batch_size), desc="activations", disable=not progress):
        act = flat_acts(hook_acts(model, hook_name, tokens[b : b + batch_size]))
        if skip_bos:
            act = act[:, 1:]
        rows = act.reshape(-1, act.shape[-1]).float()
        if max_norm is not None:
            rows = rows[rows.norm(dim=-1) <= max_norm]
        out.append(rows)
    return torch.cat(out)


def shuffled_batches(acts: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless batches of rows of ``acts``, reshuffled (seeded) every epoch."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(acts), generator=gen)
        for i in range(0, len(acts) - batch_size + 1, batch_size):
            yield acts[perm[i : i + batch_size]]



def load_dir(path: Path | str):
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


def load_sae(path_or_name: str | Path = "smollm2-135m", *, model: Model | None = None):
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
    sae = load_dir(path)
    if model is not None:
        check_sae(model, sae)
    return sae


_WIDTHS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def hook_width(model: Model, hook_name: str) -> int:
    """The activation width at a hook, measured once per model with a 2-token forward pass."""
    cache = _WIDTHS.setdefault(model, {})
    if hook_name not in cache:
        cache[hook_name] = flat_acts(hook_acts(model, hook_name, torch.zeros(1, 2, dtype=torch.long))).shape[-1]
    return cache[hook_name]


def check_sae(model: Model, sae) -> str:
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
    check_hook(model, hook_name)
    width = hook_width(model, hook_name)
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


def skip_bos(sae) -> bool:
    value = sae.cfg.metadata.skip_bos
    return True if value is None else bool(value)


def check_feature(sae, feature) -> int:
    if isinstance(feature, Tensor):
        feature = feature.item()
    if not isinstance(feature, int) or isinstance(feature, bool):
        raise TypeError(f"feature must be an int index, got {type(feature).__name__}.")
    if not 0 <= feature < sae.cfg.d_sae:
        raise ValueError(f"Feature index {feature} is out of range: this SAE has d_sae={sae.cfg.d_sae} latents (0..{sae.cfg.d_sae - 1}).")
    return feature


def check_features(sae, features) -> list[int]:
    if isinstance(features, (int, Tensor)) and not (isinstance(features, Tensor) and features.ndim):
        features = [features]
    features = [check_feature(sae, int(f) if isinstance(f, Tensor) else f) for f in features]
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


def encode_flat(sae, x: Tensor) -> Tensor:
    with _flat_mode(sae):
        return sae.encode(x.to(sae.dtype))


def decode_flat(sae, latents: Tensor) -> Tensor:
    with _flat_mode(sae):
        return sae.decode(latents)


def encode(model: Model, sae, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos feature"]:
    """The SAE's latents at every position (position 0 included; it is BOS)."""
    hook_name = check_sae(model, sae)
    with torch.no_grad():
        return encode_flat(sae, flat_acts(hook_acts(model, hook_name, tokens)))


def feature_direction(sae, feature: int) -> Float[Tensor, "d_model"]:
    """What one unit of the feature's activation adds to the activation: ``decode(e_f) - decode(0)``.

    (The decoder row, divided by its norm when the SAE rescales activations by decoder norm.)
    """
    feature = check_feature(sae, feature)
    with torch.no_grad():
        one = torch.zeros(2, sae.cfg.d_sae, dtype=sae.dtype)
        one[0, feature] = 1.0
        out = decode_flat(sae, one)
    return (out[0] - out[1]).float()


def token_mask(sae, x: Tensor) -> Tensor:
    """``[batch, pos]`` bool: where the SAE applies (not BOS if skipped, norm <= ``max_norm``)."""
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    if skip_bos(sae):
        mask[:, 0] = False
    max_norm = sae.cfg.metadata.max_norm
    if max_norm is not None:
        mask &= flat_acts(x).norm(dim=-1) <= max_norm
    return mask


def masked(sae, x: Tensor, latents: Tensor) -> Tensor:
    """Latents with zeros wherever the SAE does not apply (see :func:`token_mask`)."""
    return latents * token_mask(sae, x)[..., None].to(latents.dtype)


# ============================================================================================
# Reading features


def as_token_rows(model: Model, prompts_or_tokens) -> list[Tensor]:
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


def str_tokens(model: Model, ids: Sequence[int] | Tensor) -> list[str]:
    if getattr(model, "tokenizer", None) is None:
        return [str(int(i)) for i in ids]
    return models.to_str_tokens(model, [int(i) for i in ids])
