"""``load_model``: any source to a ``HookedTransformer`` on any device, in any float dtype.

A source's kind comes from :func:`workbench.models.registry.resolve`. Every local source
(offline model, checkpoint folder, GGUF file, fetched hub repository) goes the same way: the
converted weights are read from the cache (:mod:`workbench.models.cache`) or, the first time,
converted by TransformerLens (:mod:`workbench.models.sources`) and written there; then
:func:`build_model` makes the model, on the device and in the dtype asked for. TransformerLens
names go to ``HookedTransformer.from_pretrained``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from workbench.core.types import Model
from workbench.models import cache, fast_attention, sources
from workbench.models.bridge import BACKENDS, Backend, boot_bridge
from workbench.models.devices import resolve_device, resolve_dtype
from workbench.models.errors import CacheCorruptedError, UnsupportedArchitectureError
from workbench.models.registry import Source, resolve
from workbench.models.zoo import DEFAULT_MODEL, OFFLINE_MODELS, offline_spec

__all__ = ["load_model", "prepare_cache", "build_model", "list_models", "model_label", "random_init_model"]

def build_model(cfg_dict: dict, state_dict, tokenizer, *, device: torch.device, dtype: torch.dtype,
                n_devices: int = 1):
    """The final step of every local load: a ``HookedTransformer`` from a config and weights.

    The weights are cast to ``dtype``; the model is put on ``device`` (spread over ``n_devices``
    GPUs by TransformerLens's own ``move_model_modules_to_device`` when ``n_devices > 1``), in
    eval mode with gradients off.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg_dict = dict(cfg_dict)
    cfg_dict.update(device=str(device), dtype=dtype, n_devices=n_devices, init_weights=False)
    cfg = HookedTransformerConfig.from_dict(cfg_dict)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    # Buffers (rotary tables, masks) are rebuilt by the constructor; every parameter must load.
    params = {k for k, _ in model.named_parameters()}
    missing_params = sorted(params & set(missing))
    if missing_params or unexpected:
        raise CacheCorruptedError(
            f"Converted weights do not fit the model: missing {missing_params[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}."
        )
    if device.type != "cpu" or n_devices > 1:
        model.move_model_modules_to_device()
    model.eval()
    model.requires_grad_(False)
    return model


def _convert(source: Source):
    _, _, load_hf = source.cache_entry()
    hf, tokenizer = load_hf()
    cfg = sources.tl_config(hf.config, model_name=source.model_name())
    state_dict = sources.convert_weights(hf, cfg)
    del hf
    return cfg, state_dict, tokenizer


def _cached_weights(source: Source, refresh: bool) -> tuple[tuple, str]:
    """(the cached ``(config, weights, tokenizer)`` of a local source, where they came from);
    converted and cached first if missing, damaged or ``refresh``."""
    key, record, _ = source.cache_entry()
    origin, loaded = "cache", None
    if not refresh and cache.entry_dir(key).exists():
        try:
            loaded = cache.read_entry(key)
        except CacheCorruptedError as e:
            # stacklevel=3: the frame that calls load_model.
            warnings.warn(f"Cached weights for {source.text!r} are damaged ({e}); rebuilding them.", stacklevel=3)
    if loaded is None:
        origin = "converted and cached"
        cfg, state_dict, tokenizer = _convert(source)
        record["architecture"] = cfg.original_architecture
        cache.write_entry(key, cfg, state_dict, tokenizer, source=record, replace=refresh)
        del state_dict
        loaded = cache.read_entry(key)  # the first load runs exactly as every later one
    return loaded, origin


def prepare_cache(source: str | Path = DEFAULT_MODEL) -> Path:
    """Convert and cache a local source's weights now if no conversion is cached (no model is built);
    the cache folder. Processes that start together (test workers, replication jobs) then read one
    finished conversion instead of each converting the same weights."""
    src = resolve(source)
    if not src.local:
        raise ValueError(f"{src.text!r} is not a local source (offline model, folder, GGUF): nothing to cache.")
    key, _, _ = src.cache_entry()
    try:
        cache.verify_entry(key)
    except CacheCorruptedError:
        _cached_weights(src, refresh=False)
    return cache.entry_dir(key)


def load_model(
    source: str | Path = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    n_devices: int = 1,
    refresh: bool = False,
    verbose: bool = True,
    backend: Backend = "auto",
    **kwargs,
):
    """Load a model as a TransformerLens ``HookedTransformer``, or as a ``TransformerBridge``.

    Args:
        source: an offline model (``"smollm2-135m"``, ``"gemma-3-270m"``), a local folder holding
            a Hugging Face checkpoint, a ``.gguf`` file, or a model name TransformerLens knows
            (``"gpt2"``, ...: ``HookedTransformer.from_pretrained(source, **kwargs)``, which needs
            the hub). A hub repository TransformerLens does not know (``"org/name"``) is fetched
            with ``huggingface_hub`` when a hub is reachable and loaded as a folder.
        device: ``"cpu"`` (the default), ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"auto"``
            (CUDA, else MPS, else CPU).
        dtype: ``float32`` (the default), ``bfloat16`` or ``float16``: a torch dtype or its name.
        n_devices: split the layers over this many GPUs (TransformerLens's own ``n_devices``;
            ``device`` must then be CUDA).
        refresh: convert again even if an intact cached conversion exists.
        verbose: print where the weights came from and how long it took.
        backend: ``"hooked"`` a ``HookedTransformer``; ``"bridge"`` a TL 3.9 ``TransformerBridge``
            in compatibility mode without weight processing (local sources only; see
            :mod:`workbench.models.bridge`); ``"auto"`` (the default) a ``HookedTransformer``,
            or a bridge when TransformerLens cannot map a local checkpoint to one.

    Returns:
        ``HookedTransformer`` in eval mode with gradients off. Local sources carry no weight
        processing (no folded norms, no centring): logits equal the Hugging Face model's.

    Raises:
        ModelNotAvailableError: unknown name, missing package, or a hub model with no hub.
        UnsupportedArchitectureError: an architecture TransformerLens cannot map (the message
            names the supported ones).
        CheckpointError: a folder that is not a checkpoint, a truncated weights file, a config
            and weights that disagree.
        ValueError: an unknown or unavailable device, or an unsupported dtype.
    """
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"n_devices must be a positive int, got {n_devices!r}.")
    if n_devices > 1 and dev.type != "cuda":
        raise ValueError(f"n_devices={n_devices} splits a model over GPUs; device must be CUDA.")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}.")
    src = resolve(source)  # the registered kind of source (workbench.models.registry)
    if backend == "bridge":
        return _bridge(src, dev, dt, n_devices, verbose=verbose)
    if not src.local:  # scaled-dot-product attention unless a hook reads the pattern
        return fast_attention.enable(src.load(device=str(dev), dtype=dt, n_devices=n_devices, **kwargs))
    if kwargs:
        raise TypeError(f"Model {src.text!r} is loaded from a local source and takes no extra "
                        f"options, got {sorted(kwargs)}")
    start = time.perf_counter()
    try:
        loaded, origin = _cached_weights(src, refresh)
    except UnsupportedArchitectureError as e:
        if backend != "auto":
            raise
        try:
            return _bridge(src, dev, dt, n_devices, verbose=verbose, why=" (a HookedTransformer cannot map it)")
        except UnsupportedArchitectureError:
            raise e from None
    model = build_model(*loaded, device=dev, dtype=dt, n_devices=n_devices)
    if verbose:
        where = f"{dev}" + (f" x{n_devices}" if n_devices > 1 else "")
        print(f"Loaded {model.cfg.model_name} ({origin}) on {where}, "
              f"{str(dt).removeprefix('torch.')}, in {time.perf_counter() - start:.1f} s")
    return fast_attention.enable(model)  # scaled-dot-product attention unless a hook reads the pattern


def _bridge(src: Source, dev, dt, n_devices: int, *, verbose: bool, why: str = ""):
    """The local source ``src`` as a ``TransformerBridge`` (see :mod:`workbench.models.bridge`)."""
    if not src.local:
        raise ValueError(f"backend='bridge' needs a local source (offline model, folder, GGUF), got {src.text!r}.")
    if n_devices > 1:
        raise ValueError("backend='bridge' runs on one device (n_devices=1).")
    start = time.perf_counter()
    _, _, load_hf = src.cache_entry()
    hf, tokenizer = load_hf()
    path = getattr(src, "path", None)
    if path is not None and Path(path).is_dir():
        name: str | Path = path
    elif src.text in OFFLINE_MODELS:
        name = offline_spec(src.text).tl_name
    else:
        name = src.text
    model = boot_bridge(name, hf, tokenizer, device=dev, dtype=dt)
    if verbose:
        print(f"Loaded {src.text} as a TransformerBridge{why} on {dev}, {str(dt).removeprefix('torch.')}, "
              f"in {time.perf_counter() - start:.1f} s")
    return model


def list_models() -> pd.DataFrame:
    """The offline models (shapes, installed, cached) and every other cached conversion."""
    entries = cache.cached_entries()
    rows = []
    for m in OFFLINE_MODELS.values():
        rows.append(dict(
            name=m.name, kind="offline", architecture=m.tl_name, layers=m.n_layers, heads=m.n_heads,
            kv_heads=m.n_kv_heads, d_model=m.d_model, d_vocab=m.d_vocab, installed=m.installed(),
            cached=(cache.entry_dir(m.name) / "manifest.json").exists(),
            packages=" ".join(m.packages), description=m.description,
        ))
    for key, e in entries.iterrows():
        if key in OFFLINE_MODELS:
            continue
        rows.append(dict(
            name=key, kind=e["kind"], architecture=e["architecture"], layers=e["layers"],
            heads=e["heads"], kv_heads=e["kv_heads"], d_model=e["d_model"], d_vocab=e["d_vocab"],
            installed=True, cached=bool(e["complete"]), packages="", description=e["source"],
        ))
    frame = pd.DataFrame(rows).set_index("name")
    for col in ("layers", "heads", "kv_heads", "d_model", "d_vocab"):
        frame[col] = frame[col].astype("Int64")
    return frame


def random_init_model(name: str = "smollm2-135m", *, seed: int = 0, n_layers: int | None = None):
    """The negative control: ``name``'s architecture and real tokenizer, randomly initialised weights.

    The configuration (width, heads, key/value heads, norms, rotary embedding, vocabulary) is the
    trained model's, so every notebook runs on it unchanged; the weights come from
    TransformerLens's seeded initialisation, so no head has learnt anything and no finding may be
    ``replicated`` on it. ``n_layers`` builds a shallower version of the same architecture (for a
    faster control); the default keeps the full depth.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    trained = load_model(name, verbose=False)
    cfg_dict = trained.cfg.to_dict()
    tokenizer = trained.tokenizer
    del trained
    if n_layers is not None:
        if not (isinstance(n_layers, int) and 1 <= n_layers):
            raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
        cfg_dict["n_layers"] = n_layers
    cfg_dict.update(init_weights=True, seed=seed, model_name=f"{cfg_dict['model_name']}-random-init")
    for key in ("n_params",):  # derived by the config itself
        cfg_dict.pop(key, None)
    cfg = HookedTransformerConfig.from_dict(cfg_dict)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.eval()
    model.requires_grad_(False)
    return model


def model_label(model: Model, name: str) -> str:
    """``name``, marked ``-random-init`` when ``model`` is the negative control of :func:`random_init_model`.

    Notebooks label their scorecard and files with it, so a control run never passes for the model.
    """
    return name + ("-random-init" if str(model.cfg.model_name).endswith("-random-init") else "")
