"""The converted-weight cache: one folder per converted checkpoint, verified before every load.

Layout, under :func:`cache_dir` (``$WORKBENCH_CACHE``, else ``~/.cache/workbench``)::

    <key>-v1/weights.safetensors     the TransformerLens state dict, float32
    <key>-v1/config.json             the HookedTransformerConfig (JSON-able fields)
    <key>-v1/tokenizer/              the tokenizer, saved by Hugging Face
    <key>-v1/manifest.json           SHA-256 of every file above and the source; written last
    digests.json                     content digests of source files, by path, size and mtime

The key of an offline model is its name (its weights are fixed by the package version). The key
of a folder or GGUF file is ``<readable name>-<first 12 hex digits of its content digest>``: the
SHA-256 of every checkpoint file's name and bytes. A changed checkpoint therefore has another key
and is converted again, never served stale. Hashing gigabytes takes seconds, so a file's digest
is remembered in ``digests.json`` with its size and modification time (as ``git`` does for its
index) and computed again whenever either changes.

A folder is written under a temporary name, the manifest last, then renamed: an interrupted
conversion leaves no folder that looks complete. A folder whose manifest is missing or whose
digests do not match raises :class:`CacheCorruptedError` and is rebuilt by the loader.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from workbench.models.errors import CacheCorruptedError

__all__ = [
    "CACHE_FORMAT",
    "cache_dir",
    "entry_dir",
    "write_entry",
    "verify_entry",
    "read_entry",
    "cached_entries",
    "content_digest",
    "readable_name",
    "sha256_file",
]

CACHE_FORMAT = 1  # bump when the cached layout changes; old caches are then rebuilt


def cache_dir() -> Path:
    """Where converted weights live: ``$WORKBENCH_CACHE``, else ``~/.cache/workbench``."""
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench"))


def entry_dir(key: str) -> Path:
    """The cache folder of one converted checkpoint."""
    return cache_dir() / f"{key}-v{CACHE_FORMAT}"


def readable_name(path: Path) -> str:
    """A file-system-safe short name for a checkpoint path: its folder or file name, cleaned."""
    stem = path.stem if path.suffix == ".gguf" else path.name
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"
    return clean[:40]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _digest_index() -> Path:
    return cache_dir() / "digests.json"


def content_digest(files: list[Path]) -> str:
    """SHA-256 over the names and contents of ``files`` (memoised by path, size and mtime)."""
    index_path = _digest_index()
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError):
        index = {}
    changed = False
    total = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.name):
        st = f.stat()
        key = str(f.resolve())
        stamp = [st.st_size, st.st_mtime_ns]
        entry = index.get(key)
        if not (isinstance(entry, list) and entry[:2] == stamp and len(entry) == 3):
            entry = [*stamp, sha256_file(f)]
            index[key] = entry
            changed = True
        total.update(f.name.encode() + b"\0" + entry[2].encode() + b"\n")
    if changed:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        # a temporary name of its own per writer (threads of one process too), then one atomic move
        fd, tmp = tempfile.mkstemp(dir=index_path.parent, prefix=".digests-", suffix=".json")
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(index))
        os.replace(tmp, index_path)
    return total.hexdigest()


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


def write_entry(key: str, cfg, state_dict: dict[str, Tensor], tokenizer, source: dict | None = None, *,
                replace: bool = False) -> Path:
    """Write a converted model atomically: a temporary folder, the manifest last, then rename.

    An intact entry that another process finished meanwhile is kept (it may be reading it) unless
    ``replace``; a damaged one is replaced."""
    from safetensors.torch import save_file

    final = entry_dir(key)
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state_dict, str(tmp / "weights.safetensors"))
    (tmp / "config.json").write_text(json.dumps(_config_to_json(cfg), indent=1))
    tokenizer.save_pretrained(tmp / "tokenizer")
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest = {
        "format": CACHE_FORMAT,
        "model": key,
        "source": source or {},
        "files": {str(p.relative_to(tmp)): sha256_file(p) for p in files},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if final.exists() and not replace:
        try:  # another process finished the same conversion first: keep its folder (it may be reading it)
            verify_entry(key)
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        except CacheCorruptedError:
            pass
    shutil.rmtree(final, ignore_errors=True)
    try:
        tmp.rename(final)
    except OSError:  # renamed into place by another process between the check and here
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def verify_entry(key: str) -> Path:
    """The cache folder if it is complete and intact; :class:`CacheCorruptedError` if not."""
    folder = entry_dir(key)
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
        if not p.is_file() or sha256_file(p) != digest:
            raise CacheCorruptedError(f"{p} is missing or does not match its SHA-256 digest")
    return folder


def read_entry(key: str) -> tuple[dict, dict[str, Tensor], object]:
    """The verified config (a dict for ``HookedTransformerConfig.from_dict``), float32 state
    dict (CPU) and tokenizer of one cache entry."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    folder = verify_entry(key)
    cfg_dict = json.loads((folder / "config.json").read_text())
    tok_dir = folder / "tokenizer"
    tok_cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    # add_bos_token=True is what TransformerLens would otherwise reload the tokenizer to get (it
    # cannot be set on a tokenizer with no BOS token); workbench.to_tokens adds BOS itself, once.
    extra = {"add_bos_token": True} if tok_cfg.get("bos_token") else {}
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, **extra)
    # Right padding, as workbench.to_tokens pads. Gemma's tokenizer pads on the left by default,
    # which makes TransformerLens build an attention mask from pad tokens on every forward pass,
    # a mask that runs starting mid-model (start_at_layer) cannot carry.
    tokenizer.padding_side = "right"
    state_dict = load_file(str(folder / "weights.safetensors"))
    return cfg_dict, state_dict, tokenizer


def cached_entries() -> pd.DataFrame:
    """Every converted checkpoint in the cache: key, source, architecture, size, intact or not."""
    rows = []
    root = cache_dir()
    for folder in sorted(root.glob(f"*-v{CACHE_FORMAT}")) if root.is_dir() else []:
        manifest_file = folder / "manifest.json"
        try:
            manifest = json.loads(manifest_file.read_text())
        except (OSError, json.JSONDecodeError):
            manifest = {}
        source = manifest.get("source") or {}
        try:
            c = json.loads((folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            c = {}
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        rows.append(
            dict(
                key=folder.name.removesuffix(f"-v{CACHE_FORMAT}"),
                kind=source.get("kind", "offline"),
                source=source.get("path", manifest.get("model", "")),
                architecture=source.get("architecture", c.get("original_architecture", "")),
                layers=c.get("n_layers"),
                heads=c.get("n_heads"),
                kv_heads=c.get("n_key_value_heads") or c.get("n_heads"),
                d_model=c.get("d_model"),
                d_vocab=c.get("d_vocab"),
                size_mb=round(size / 2**20, 1),
                complete=bool(manifest),
                folder=str(folder),
            )
        )
    columns = ["key", "kind", "source", "architecture", "layers", "heads", "kv_heads", "d_model",
               "d_vocab", "size_mb", "complete", "folder"]
    frame = pd.DataFrame(rows, columns=columns).set_index("key")
    for col in ("layers", "heads", "kv_heads", "d_model", "d_vocab"):
        frame[col] = frame[col].astype("Int64")
    return frame
