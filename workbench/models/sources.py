"""Where a model comes from: checkpoint folders, GGUF files, hub names; the architecture mapping.

A source is one of

- an offline model name (:data:`workbench.models.OFFLINE_MODELS`);
- a local folder holding a Hugging Face checkpoint: ``config.json``, weights
  (``*.safetensors`` or ``pytorch_model*.bin``, sharded or not) and the tokenizer files, as
  ``save_pretrained`` writes them;
- a ``.gguf`` file (the tokenizer and config come from the file; quantized weights are
  dequantized to float32 by Hugging Face ``transformers``);
- a model name TransformerLens knows (``"gpt2"``, ``"pythia-70m"``, ...), fetched from the hub
  by ``HookedTransformer.from_pretrained``, or another hub repository (``"org/name"``) whose
  files are fetched with ``huggingface_hub`` and then loaded as a folder.

The checkpoint's architecture (``config.architectures[0]``, else its ``model_type``) selects
TransformerLens's own config mapping (``convert_hf_model_config``) and weight conversion
(``get_pretrained_state_dict`` with the Hugging Face model in hand); the workbench writes no
weight conversion of its own. TransformerLens 3.9 maps most architectures from the config
(:data:`CONFIG_MAPPED`); the Gemma families only by official model name, so a Gemma checkpoint
is matched to the official model of the same shape (any fine-tune of an official size loads;
another size gets an error that says so). Anything else raises
:class:`UnsupportedArchitectureError` naming the supported architectures.
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from workbench.models.errors import (
    CheckpointError,
    ModelNotAvailableError,
    UnsupportedArchitectureError,
)

__all__ = [
    "CONFIG_MAPPED",
    "NAME_MAPPED",
    "supported_architectures",
    "is_local_source",
    "checkpoint_files",
    "check_checkpoint",
    "load_hf_folder",
    "load_hf_gguf",
    "architecture_of",
    "tl_config",
    "convert_weights",
    "load_from_hub",
]

#: Architectures whose TransformerLens config comes from the checkpoint's config.json.
CONFIG_MAPPED = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "MixtralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GPT2LMHeadModel",
    "GPTNeoForCausalLM",
    "GPTNeoXForCausalLM",
    "GPTJForCausalLM",
    "OPTForCausalLM",
    "BloomForCausalLM",
    "PhiForCausalLM",
    "Phi3ForCausalLM",
    "Olmo3ForCausalLM",
    "OlmoeForCausalLM",
    "GptOssForCausalLM",
    "ApertusForCausalLM",
)
#: Architectures TransformerLens 3.9 maps only by official name: matched by shape.
NAME_MAPPED = (
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
)

_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
_SOURCE_SUFFIXES = {".json", ".safetensors", ".bin", ".model", ".txt", ".tiktoken", ".jinja"}
_NOT_CHECKPOINT = ("optimizer", "scheduler", "rng_state", "training_args", "trainer_state")


def supported_architectures() -> tuple[str, ...]:
    return CONFIG_MAPPED + NAME_MAPPED


def is_local_source(source: str | Path) -> bool:
    """True for an existing path, or a string that is plainly meant as one (a .gguf name, ./x)."""
    s = str(source)
    return (
        Path(s).expanduser().exists()
        or s.endswith(".gguf")
        or s.startswith(("/", "./", "../", "~"))
    )


# --------------------------------------------------------------------------------------------
# Checkpoint folders


def checkpoint_files(folder: Path) -> list[Path]:
    """The files of a checkpoint folder that its conversion depends on (the content key)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix in _SOURCE_SUFFIXES
        and not p.name.startswith((".", *_NOT_CHECKPOINT))
    )


def _weight_files(folder: Path) -> list[Path]:
    return sorted({p for pat in _WEIGHT_PATTERNS for p in folder.glob(pat)})


def _check_safetensors(path: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then the data: check sizes."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"Weights file {path} is truncated ({size} bytes).")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(f"Weights file {path} is truncated: its header alone is {n} bytes.")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"Weights file {path} has an unreadable header ({e}).") from e
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise CheckpointError(
            f"Weights file {path} is truncated: {size} bytes, its header describes {expected}. "
            "Copy or download it again."
        )


def check_checkpoint(folder: Path) -> None:
    """Raise :class:`CheckpointError` if ``folder`` is not a complete Hugging Face checkpoint."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder or a .gguf file.")
    present = sorted(p.name for p in folder.iterdir())[:12]
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{folder} is not a Hugging Face checkpoint: it has no config.json (it holds "
            f"{present or 'nothing'}). A checkpoint folder is what save_pretrained writes: "
            "config.json, *.safetensors (or pytorch_model*.bin) and the tokenizer files."
        )
    weights = _weight_files(folder)
    if not weights:
        raise CheckpointError(
            f"{folder} has a config.json but no weights (*.safetensors or pytorch_model*.bin); "
            f"it holds {present}."
        )
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise CheckpointError(
            f"{folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); save the tokenizer "
            "next to the model (tokenizer.save_pretrained(folder))."
        )
    for w in weights:
        if w.suffix == ".safetensors":
            _check_safetensors(w)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise CheckpointError(f"{folder} misses weight shards listed in its index: {missing}")


def _quiet_hf():
    from transformers.utils import logging as hf_logging

    class _Quiet:
        def __enter__(self):
            self.previous = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()

        def __exit__(self, *exc):
            hf_logging.set_verbosity(self.previous)

    return _Quiet()


_HARMLESS_UNEXPECTED = ("attn.bias", "attn.masked_bias", "rotary_emb.inv_freq")


def _load_error(path, what: str, e: Exception, *, hint: str, more: bool = False,
                separator: str = ".") -> CheckpointError:
    """Hugging Face's failure to read ``path``, with the first line of its message and a hint."""
    text = str(e).strip().splitlines()
    first = (text[0] if text else "") + (" ..." if more and len(text) > 1 else "")
    return CheckpointError(f"{path}: Hugging Face could not {what} ({type(e).__name__}: {first}){separator} {hint}")


def load_hf_folder(folder: str | Path):
    """The Hugging Face model (float32, CPU, eager attention) and tokenizer of a checkpoint folder.

    Raises :class:`CheckpointError` on a folder that is not a checkpoint, a truncated weights
    file, or weights that do not fit the config (missing, unexpected or mis-shaped tensors:
    Hugging Face would otherwise fill missing ones with random values and only warn).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    folder = Path(folder).expanduser().resolve()
    check_checkpoint(folder)
    try:
        with _quiet_hf():
            tokenizer = AutoTokenizer.from_pretrained(folder)
            # output_loading_info=True returns (model, info); transformers types the return as the model alone
            loaded: tuple[PreTrainedModel, dict[str, list[str]]] = AutoModelForCausalLM.from_pretrained(  # type: ignore[assignment]
                folder, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
            )
            hf, info = loaded
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        raise _load_error(folder, "load this checkpoint", e, more=True,
                          hint="If the config and the weights disagree (sizes, layer count), they "
                               "come from different models.") from e
    missing = list(info.get("missing_keys", []))
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.endswith(_HARMLESS_UNEXPECTED)]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{folder}: the config and the weights disagree: missing {sorted(missing)[:4]}, "
            f"unexpected {sorted(unexpected)[:4]}, wrong shape {mismatched[:4]} "
            f"({len(missing)}, {len(unexpected)}, {len(mismatched)} tensors)."
        )
    hf.eval()
    return hf, tokenizer


def load_hf_gguf(path: str | Path):
    """The Hugging Face model (dequantized to float32) and tokenizer of a GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise CheckpointError(f"GGUF file {path} does not exist.")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise CheckpointError(f"{path} is not a GGUF file (no GGUF magic bytes).")
    try:
        with _quiet_hf():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            hf = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
            )
    except (RuntimeError, ValueError, OSError, KeyError, EOFError) as e:
        raise _load_error(path, "read this GGUF file", e, separator=";",
                          hint="it may be truncated, or of an architecture transformers cannot dequantize.") from e
    if not hf.config.architectures:  # a GGUF config leaves it empty
        hf.config.architectures = [type(hf).__name__]
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config  # the weights are dequantized floats now
    hf.eval()
    return hf, tokenizer


# --------------------------------------------------------------------------------------------
# Architecture -> TransformerLens config and weights


def architecture_of(hf_config) -> str:
    archs = getattr(hf_config, "architectures", None) or []
    if archs:
        return archs[0]
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(hf_config, "model_type", ""), "unknown")


def _unsupported(arch: str, detail: str = "") -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"TransformerLens cannot map the architecture {arch!r} to a HookedTransformer{detail}. "
        f"Supported from a checkpoint: {', '.join(CONFIG_MAPPED)}; and {', '.join(NAME_MAPPED)} "
        "in their official sizes."
    )


_SHAPE = ("d_model", "n_layers", "n_heads", "d_head", "d_mlp", "n_key_value_heads")


def _official_match(arch: str, hf_config):
    """The official TransformerLens name of the same architecture and shape, or None."""
    from transformer_lens.loading_from_pretrained import (
        OFFICIAL_MODEL_NAMES,
        convert_hf_model_config,
    )

    family = {
        "GemmaForCausalLM": "google/gemma-",
        "Gemma2ForCausalLM": "google/gemma-2-",
        "Gemma3ForCausalLM": "google/gemma-3-",
    }[arch]
    c = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    want = dict(
        d_model=c.hidden_size,
        n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads,
        d_head=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        d_mlp=c.intermediate_size,
    )
    kv = getattr(c, "num_key_value_heads", None)
    for name in OFFICIAL_MODEL_NAMES:
        if not name.startswith(family):
            continue
        try:
            d = convert_hf_model_config(name)
        except Exception:  # noqa: BLE001, S112 - a name that needs the hub is not a candidate
            continue
        got_kv = d.get("n_key_value_heads") or d.get("n_heads")
        if d.get("original_architecture") == arch and all(d.get(k) == v for k, v in want.items()) and (
            kv is None or got_kv == kv
        ):
            return name
    return None


def tl_config(hf_config, *, model_name: str):
    """The ``HookedTransformerConfig`` (float32, CPU) TransformerLens builds for this config."""
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    arch = architecture_of(hf_config)
    hf_dict = hf_config.to_dict()
    hf_dict.pop("quantization_config", None)
    if arch in NAME_MAPPED:
        official = _official_match(arch, hf_config)
        if official is None:
            raise _unsupported(
                arch,
                " at this size: TransformerLens 3.9 maps Gemma checkpoints only in the shapes of "
                "the official models",
            )
        cfg = get_pretrained_model_config(official, hf_cfg=hf_dict, device="cpu", dtype=torch.float32)
    elif arch in CONFIG_MAPPED:
        # TransformerLens reads the config from a folder, but also looks for "llama" and "gemma"
        # in the folder's name to pick hard-coded configs: give it the config in a neutral folder.
        with tempfile.TemporaryDirectory(prefix="wb-") as tmp:
            neutral = Path(tmp) / "checkpoint"
            neutral.mkdir()
            config = hf_config.__class__.from_dict(hf_dict)
            config.architectures = [arch]
            if arch == "GPT2LMHeadModel" and not hasattr(config, "n_ctx"):
                # TransformerLens reads n_ctx, which transformers 5 no longer writes for GPT-2.
                config.n_ctx = config.n_positions
            config.save_pretrained(neutral)
            cfg = get_pretrained_model_config(
                str(neutral), hf_cfg=hf_dict, device="cpu", dtype=torch.float32
            )
    else:
        raise _unsupported(arch)
    cfg.model_name = model_name
    cfg.tokenizer_name = None  # the tokenizer is passed in, never fetched by name
    return cfg


def convert_weights(hf, cfg) -> dict[str, Tensor]:
    """TransformerLens's conversion of a loaded Hugging Face model to its state dict (float32)."""
    from transformer_lens.loading_from_pretrained import (
        OFFICIAL_MODEL_NAMES,
        get_pretrained_state_dict,
    )

    if cfg.original_architecture in NAME_MAPPED:
        name = next(n for n in OFFICIAL_MODEL_NAMES if n.startswith("google/gemma"))
    else:
        name = tempfile.gettempdir()  # an existing path: TransformerLens then skips its name lookup
    sd = get_pretrained_state_dict(name, cfg, hf_model=hf, dtype=torch.float32)
    sd = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in sd.items()}
    _check_fit(cfg, sd)
    return sd


def _check_fit(cfg, state_dict: dict[str, Tensor]) -> None:
    """TransformerLens's conversion must fill every parameter of its own model, in shape."""
    from transformer_lens import HookedTransformer

    with torch.device("meta"):
        shell = HookedTransformer(cfg.__class__.from_dict({**cfg.to_dict(), "device": "meta"}),
                                  move_to_device=False)
    want = {k: tuple(p.shape) for k, p in shell.named_parameters()}
    for k in set(want) - set(state_dict):
        if k.rsplit(".", 1)[-1].startswith("b_"):  # as TransformerLens's fill_missing_keys: a
            state_dict[k] = torch.zeros(want[k])   # bias the checkpoint lacks is zero
    missing = sorted(set(want) - set(state_dict))
    wrong = sorted(k for k in set(want) & set(state_dict) if tuple(state_dict[k].shape) != want[k])
    unexpected = sorted(k for k in set(state_dict) - set(want) if k not in dict(shell.named_buffers()))
    if missing or wrong or unexpected:
        raise UnsupportedArchitectureError(
            f"TransformerLens's conversion of {cfg.original_architecture} does not fit the model "
            f"its own config describes (missing {missing[:4]}, wrong shape {wrong[:4]}, unexpected "
            f"{unexpected[:4]}): this checkpoint's variant of the architecture is not supported."
        )


# --------------------------------------------------------------------------------------------
# The hub


def load_from_hub(name: str, *, offline_names: list[str], **kwargs):
    """A TransformerLens name through ``HookedTransformer.from_pretrained(name, **kwargs)``."""
    from transformer_lens import HookedTransformer

    try:
        return HookedTransformer.from_pretrained(name, **kwargs).eval()
    except Exception as e:  # re-raised with the reason attached
        raise ModelNotAvailableError(
            f"Could not load {name!r} through TransformerLens ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Without a model hub only the offline "
            f"models ({', '.join(offline_names)}), checkpoint folders and .gguf files load. "
            "See workbench.list_models()."
        ) from e


def download_folder(repo: str, *, offline_names: list[str]) -> Path:
    """The local folder of a hub repository (fetched by ``huggingface_hub`` when reachable)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo, allow_patterns=["*.json", "*.safetensors", "pytorch_model*.bin", "*.model", "*.txt",
                                      "*.jinja"]
            )
        )
    except Exception as e:
        raise ModelNotAvailableError(
            f"{repo!r} is not a name TransformerLens knows, and its files could not be fetched "
            f"from the hub ({type(e).__name__}). Without a model hub only the offline models "
            f"({', '.join(offline_names)}), checkpoint folders and .gguf files load."
        ) from e
