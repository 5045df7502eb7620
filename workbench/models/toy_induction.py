"""A two-layer attention-only transformer trained in the repository to copy repeated segments.

The positive control of the induction and retrieval finders (Olsson et al. 2022's setting): a
model trained on sequences in which a random segment of random length reappears at a random
offset learns, in a minute or two on a CPU, a previous-token head in layer 0 and an induction head
in layer 1 that reads it (K-composition). Because the segment's length and offsets vary, no
positional shortcut predicts the copy; only induction does.

Token 0 is BOS and is never drawn; tokens ``1..vocab-1`` are ordinary. Weights ship in
``data/toy_induction/`` (safetensors + config JSON + metrics JSON, with the heads the training
produced); :func:`load_induction_toy` reads them and, if they are missing, trains and caches them
with the same function that ``scripts/train_toy.py --task induction`` runs.

>>> from workbench.models.toy_induction import load_induction_toy
>>> model = load_induction_toy()
>>> model.cfg.n_layers, model.cfg.attn_only, model.toy_metrics["copy_accuracy"] > 0.9
(2, True, True)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from workbench.core.resources import data_path
from workbench.core.types import Model
from workbench.models.toy import load_weights, save_weights

__all__ = [
    "INDUCTION_TOY_DIR",
    "InductionToyConfig",
    "build_induction_toy",
    "copy_sequences",
    "load_induction_toy",
    "save_induction_toy",
    "train_induction_toy",
]

#: Where the shipped weights live.
INDUCTION_TOY_DIR = data_path("toy_induction")


@dataclass(frozen=True)
class InductionToyConfig:
    """Task, architecture and training of the induction toy; the same config gives the same weights."""

    vocab: int = 64
    n_ctx: int = 64
    min_segment: int = 4
    max_segment: int = 24
    n_layers: int = 2
    n_heads: int = 2
    d_model: int = 64
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch: int = 64
    steps: int = 2500

    def __post_init__(self) -> None:
        if not 2 <= self.min_segment <= self.max_segment:
            raise ValueError(f"Need 2 <= min_segment <= max_segment, got {self.min_segment}, {self.max_segment}.")
        if 1 + 2 * self.max_segment > self.n_ctx:
            raise ValueError(f"Two copies of a {self.max_segment}-token segment and a BOS exceed n_ctx={self.n_ctx}.")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads}).")


def copy_sequences(
    config: InductionToyConfig, n: int, *, seed: int
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """``n`` training sequences and a mask of the positions whose next token is a copy.

    Each row is ``[BOS]`` then random tokens, with a segment of random length ``L`` written at a
    random start ``a`` and again at a later start ``b >= a + L``. ``copy[i, t]`` is true where the
    token at ``t + 1`` is predictable by induction (inside the second copy, after its first token).
    """
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, config.vocab, (n, config.n_ctx), generator=gen)
    tokens[:, 0] = 0
    copy = torch.zeros(n, config.n_ctx, dtype=torch.bool)
    lengths = torch.randint(config.min_segment, config.max_segment + 1, (n,), generator=gen).tolist()
    for i, length in enumerate(lengths):
        room = config.n_ctx - 1 - 2 * length  # free positions around the two copies
        gaps = torch.randint(0, room + 1, (2,), generator=gen).sort().values.tolist()
        a = 1 + gaps[0]
        b = a + length + (gaps[1] - gaps[0])
        tokens[i, b : b + length] = tokens[i, a : a + length]
        copy[i, b : b + length - 1] = True
    return tokens, copy


def build_induction_toy(config: InductionToyConfig = InductionToyConfig()):
    """A freshly initialised (seeded) attention-only ``HookedTransformer`` for ``config``."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=config.n_layers, d_model=config.d_model, d_head=config.d_model // config.n_heads,
        n_heads=config.n_heads, d_vocab=config.vocab, n_ctx=config.n_ctx, attn_only=True,
        normalization_type="LN", positional_embedding_type="standard", seed=config.seed, device="cpu",
        model_name=f"toy-induction-{config.n_layers}l",
    )
    model = HookedTransformer(cfg, move_to_device=False)
    model.toy_config = config  # type: ignore[assignment]
    return model


@torch.no_grad()
def copy_accuracy(model: Model, config: InductionToyConfig, *, n: int = 256, seed: int = 10_000) -> dict:
    """Next-token accuracy and loss at copy positions and at random positions, on held-out sequences
    (a seed the training never draws)."""
    tokens, copy = copy_sequences(config, n, seed=seed)
    logits = model(tokens)[:, :-1]
    target, mask = tokens[:, 1:], copy[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    right = logits.argmax(-1) == target
    free = ~mask
    free[:, 0] = False  # the token after BOS
    return {"copy_accuracy": round(right[mask].float().mean().item(), 4),
            "copy_loss": round(loss[mask].mean().item(), 4),
            "random_loss": round(loss[free].mean().item(), 4)}


def train_induction_toy(config: InductionToyConfig = InductionToyConfig(), *, progress: bool = False):
    """Train from scratch on fresh copy sequences each step; returns ``(model, metrics)``."""
    from tqdm.auto import tqdm

    model = build_induction_toy(config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start = time.perf_counter()
    for step in tqdm(range(config.steps), disable=not progress, desc="induction toy"):
        tokens, _ = copy_sequences(config, config.batch, seed=config.seed * 1_000_003 + step)
        loss = model(tokens, return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.requires_grad_(False)
    metrics = copy_accuracy(model, config)
    metrics.update(steps=config.steps, train_seconds=round(time.perf_counter() - start, 1),
                   torch_threads=torch.get_num_threads(), torch_version=torch.__version__)
    return model, metrics


def save_induction_toy(model: Model, metrics: dict, folder: str | Path = INDUCTION_TOY_DIR) -> Path:
    """Write ``weights.safetensors``, ``config.json`` and ``metrics.json`` to ``folder``."""
    config: InductionToyConfig = model.toy_config  # type: ignore[assignment]  # set by build_induction_toy
    return save_weights(model, asdict(config), metrics, folder)


def load_induction_toy(folder: str | Path = INDUCTION_TOY_DIR, *, train_if_missing: bool = True):
    """The trained induction toy from ``folder`` (eval mode, gradients off), with ``toy_config`` and
    ``toy_metrics``; trained and saved first when the weights are missing and ``train_if_missing``."""
    folder = Path(folder)
    if not (folder / "weights.safetensors").exists():
        if not train_if_missing:
            raise FileNotFoundError(f"No induction toy weights at {folder / 'weights.safetensors'}: run "
                                    "`python scripts/train_toy.py --task induction`.")
        cfg_file = folder / "config.json"
        config = (InductionToyConfig(**json.loads(cfg_file.read_text())) if cfg_file.exists()
                  else InductionToyConfig())
        trained, metrics = train_induction_toy(config)
        save_induction_toy(trained, metrics, folder)
    config = InductionToyConfig(**json.loads((folder / "config.json").read_text()))
    return load_weights(build_induction_toy(config), folder)
