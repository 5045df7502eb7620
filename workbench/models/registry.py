"""Model sources: each kind is one class registered once, and every caller resolves through it.

``load_model``, ``workbench run --model``, ``workbench atlas --model`` and the report names all call
:func:`resolve`, which tries the registered kinds in order and returns the first that claims the
text. A kind knows how to check itself cheaply (before a notebook kernel starts), how to name its
report folder, and either where its converted weights are cached and how to convert them
(``local``) or how to load itself another way (the hub).

=================  ==========================================================================
kind               claims
=================  ==========================================================================
``offline``        a name of the offline zoo (``smollm2-135m``, ``gemma-3-270m``)
``gguf``           a path to a ``.gguf`` file
``folder``         a path to a checkpoint folder (``save_pretrained`` output)
``transformerlens``  a model name TransformerLens knows (``gpt2``, ...): needs the hub
``hub``            ``org/name`` of another hub repository: fetched, then loaded as a folder
=================  ==========================================================================

Adding a kind: a subclass of :class:`Source` decorated with :func:`register_source` (placed before
the kinds it should win over with ``first=True``).

>>> resolve("smollm2-135m").kind, resolve("./missing.gguf").kind
('offline', 'gguf')
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable, ClassVar

from workbench.models import cache, sources
from workbench.models.errors import ModelNotAvailableError
from workbench.models.zoo import OFFLINE_MODELS, load_hf_model, offline_spec

__all__ = ["SOURCES", "Source", "register_source", "resolve"]

#: ``(cache key, manifest record, loader of the Hugging Face model and tokenizer)``.
CacheEntry = tuple[str, dict, Callable[[], Any]]


class Source:
    """A model source given as text. Subclasses set ``kind`` and ``description`` and implement
    :meth:`claims`; local kinds implement :meth:`cache_entry`, others :meth:`load`."""

    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""
    local: ClassVar[bool] = True

    def __init_subclass__(cls, *, kind: str = "", description: str = "", local: bool | None = None, **kw):
        super().__init_subclass__(**kw)
        cls.kind = kind or cls.kind
        cls.description = description or cls.description
        cls.local = cls.local if local is None else local

    def __init__(self, text: str):
        self.text = str(text)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.text!r})"

    @classmethod
    def claims(cls, text: str) -> bool:
        raise NotImplementedError

    def check(self) -> str:
        """Fail at once on a source nothing could load; return the text to pass on (a path made
        absolute). Cheap: no weights are read."""
        return self.text

    def report_name(self) -> str:
        """A folder-safe name for reports: the name, ``/`` made ``--``."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.text.replace("/", "--")).strip("-") or "model"

    def model_name(self) -> str:
        """The name the converted model carries (``cfg.model_name``)."""
        return self.text

    def cache_entry(self) -> CacheEntry:
        raise NotImplementedError(f"{self.kind} sources are not cached")

    def load(self, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{self.kind} sources load through the cache")


#: The registered kinds, tried in this order by :func:`resolve`.
SOURCES: list[type[Source]] = []


def register_source(cls: type[Source] | None = None, *, first: bool = False):
    """Register a :class:`Source` subclass (``first=True``: try it before the others)."""

    def add(kind: type[Source]) -> type[Source]:
        if any(k.kind == kind.kind for k in SOURCES):
            raise ValueError(f"A model source of kind {kind.kind!r} is already registered.")
        SOURCES.insert(0, kind) if first else SOURCES.append(kind)
        return kind

    return add if cls is None else add(cls)


def resolve(text: str | Path) -> Source:
    """The source ``text`` names: the first registered kind that claims it."""
    text = str(text)
    for kind in SOURCES:
        if kind.claims(text):
            return kind(text)
    raise ModelNotAvailableError(
        f"Unknown model {text!r}: not an offline model ({', '.join(OFFLINE_MODELS)}), not an existing "
        "folder or .gguf file, and not a name TransformerLens knows. Kinds of source: "
        + "; ".join(f"{k.kind} ({k.description})" for k in SOURCES) + ". See workbench.list_models()."
    )


def _path_report_name(path: Path) -> str:
    return f"{cache.readable_name(path)}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


@register_source
class Offline(Source, kind="offline", description="a model of the offline zoo"):

    @classmethod
    def claims(cls, text: str) -> bool:
        return text in OFFLINE_MODELS

    def cache_entry(self) -> CacheEntry:
        offline_spec(self.text)  # a clear error before any work if a package is missing
        return self.text, {"kind": "offline", "path": self.text}, lambda: load_hf_model(self.text)


class _LocalPath(Source):
    """A file or folder on this machine."""

    @property
    def path(self) -> Path:
        return Path(self.text).expanduser().resolve()

    def check(self) -> str:
        if not self.path.exists():
            raise ModelNotAvailableError(f"{self.text!r}: no such file or folder.")
        return str(self.path)

    def report_name(self) -> str:
        return _path_report_name(self.path)

    def model_name(self) -> str:
        return cache.readable_name(self.path)

    def _files(self) -> list[Path]:
        raise NotImplementedError

    def cache_entry(self) -> CacheEntry:
        self.check()
        path = self.path
        digest = cache.content_digest(self._files())
        record = {"kind": self.kind, "path": str(path), "digest": digest}
        return f"{cache.readable_name(path)}-{digest[:12]}", record, lambda: load_hf_model(path)


@register_source
class GGUFFile(_LocalPath, kind="gguf", description="a .gguf file, dequantized to float32"):

    @classmethod
    def claims(cls, text: str) -> bool:
        return text.endswith(".gguf")

    def _files(self) -> list[Path]:
        return [self.path]


@register_source
class Folder(_LocalPath, kind="folder", description="a checkpoint folder written by save_pretrained"):

    @classmethod
    def claims(cls, text: str) -> bool:
        return sources.is_local_source(text)

    def check(self) -> str:
        path = super().check()
        sources.check_checkpoint(self.path)
        return path

    def _files(self) -> list[Path]:
        sources.check_checkpoint(self.path)
        return sources.checkpoint_files(self.path)


@register_source
class TransformerLensName(Source, kind="transformerlens", local=False,
                          description="a model name TransformerLens knows, loaded from the hub"):

    @classmethod
    def claims(cls, text: str) -> bool:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        try:
            get_official_model_name(text)
        except ValueError:
            return False
        return True

    def load(self, **kwargs: Any) -> Any:
        return sources.load_from_hub(self.text, offline_names=list(OFFLINE_MODELS), **kwargs)


@register_source
class HubRepository(Folder, kind="hub",
                    description="org/name of another hub repository, fetched and loaded as a folder"):

    @classmethod
    def claims(cls, text: str) -> bool:
        return "/" in text and not sources.is_local_source(text)

    @property
    def path(self) -> Path:
        if not hasattr(self, "_folder"):
            self._folder = sources.download_folder(self.text, offline_names=list(OFFLINE_MODELS))
        return self._folder

    def check(self) -> str:
        return self.text  # the hub is reached when the model loads, not before

    def report_name(self) -> str:
        return Source.report_name(self)

