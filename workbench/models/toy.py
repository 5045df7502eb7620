"""A small transformer trained in the repository on modular addition, with a tokenizer-free API.

The task: ``a b =`` -> ``c`` with ``c = (a + b) mod p`` (``p = 53``). Tokens ``0..p-1`` are the
numbers and token ``p`` is ``"="``; the model reads three tokens and is scored at the last one
(position 2), whose unembedding has ``p`` outputs (one per residue). A seeded split puts
``train_frac`` of the ``p * p`` pairs in the training set and the rest in the test set, so test
accuracy measures generalisation, not memory.

The model is a TransformerLens ``HookedTransformer`` built from a config (1 layer, 4 heads,
``d_model`` 128, attention + ReLU MLP, no LayerNorm), trained from scratch with AdamW and strong
weight decay on the full training set. Weights ship in ``data/toy/`` (safetensors + config JSON +
metrics JSON); :func:`load_toy_model` reads them and, if they are missing, trains and caches them
with the same function that ``scripts/train_toy.py`` runs.

The clean teaching case: heads that attend from ``"="`` (position 2) to the operands (positions
0 and 1). :func:`toy_problems` gives batches in the same shape as the text datasets
(``clean_tokens``, ``corrupted_tokens``, ``answer_ids``, ``counterfactual_ids``, ``pos``,
``logit_diff()``), so the same patching and ablation code applies.

>>> from workbench.models.toy import load_toy_model, toy_problems
>>> model = load_toy_model()
>>> ds = toy_problems(model, n=8, corrupt="a", seed=0)
>>> ds.clean_tokens.shape, ds.pos["A"][0].item(), ds.pos["END"][0].item()
(torch.Size([8, 3]), 0, 2)
>>> bool((model(ds.clean_tokens)[:, -1].argmax(-1) == ds.answer_ids).float().mean() > 0.9)
True
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench.core.metrics import LogitDiff
from workbench.core.resources import data_path
from workbench.core.subsets import subset_items
from workbench.core.types import Model

__all__ = [
    "TOY_DIR",
    "ToyConfig",
    "ToyProblems",
    "toy_split",
    "build_toy_model",
    "train_toy",
    "save_toy",
    "load_toy_model",
    "load_weights",
    "save_weights",
    "toy_accuracy",
    "toy_problems",
]

#: Where the shipped weights live.
TOY_DIR = data_path("toy")


@dataclass(frozen=True)
class ToyConfig:
    """Everything that decides the toy model: task, architecture, split and training.

    Two runs with the same config give the same weights (on the same torch build).
    """

    p: int = 53
    n_layers: int = 1
    n_heads: int = 4
    d_model: int = 128
    d_mlp: int = 512
    train_frac: float = 0.7
    seed: int = 0  # model init and the train/test split
    lr: float = 3e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    steps: int = 500  # full-batch steps; fixed, so the held-out set never steers training
    warmup_steps: int = 10
    eval_every: int = 50  # steps between the held-out accuracies logged in the history

    def __post_init__(self) -> None:
        if self.p < 3:
            raise ValueError(f"p must be at least 3, got {self.p}.")
        if not 0 < self.train_frac < 1:
            raise ValueError(f"train_frac must be in (0, 1), got {self.train_frac}.")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}.")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})."
            )

    @property
    def eq_token(self) -> int:
        """The id of ``"="``."""
        return self.p

    def to_json(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ToyConfig":
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Data


def _all_pairs(p: int) -> Int[Tensor, "batch 2"]:
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return torch.stack([a, b], dim=1)


def toy_split(config: ToyConfig) -> dict[str, Int[Tensor, "batch 2"]]:
    """The seeded train/test split of all ``p * p`` operand pairs: ``{"train", "test"}`` -> [n, 2]."""
    pairs = _all_pairs(config.p)
    gen = torch.Generator().manual_seed(config.seed)
    perm = torch.randperm(len(pairs), generator=gen)
    n_train = int(round(config.train_frac * len(pairs)))
    return {"train": pairs[perm[:n_train]], "test": pairs[perm[n_train:]]}


def _tokens(pairs: Tensor, p: int) -> Int[Tensor, "batch pos"]:
    eq = torch.full((len(pairs), 1), p, dtype=torch.long)
    return torch.cat([pairs, eq], dim=1)


# --------------------------------------------------------------------------------------------
# Model, training, saving, loading


def build_toy_model(config: ToyConfig = ToyConfig()):
    """A freshly initialised (seeded) ``HookedTransformer`` for ``config``."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=config.n_layers,
        d_model=config.d_model,
        d_head=config.d_model // config.n_heads,
        n_heads=config.n_heads,
        d_mlp=config.d_mlp,
        d_vocab=config.p + 1,
        d_vocab_out=config.p,
        n_ctx=3,
        act_fn="relu",
        normalization_type=None,
        seed=config.seed,
        device="cpu",
        model_name=f"toy-modadd-p{config.p}",
    )
    model = HookedTransformer(cfg, move_to_device=False)
    # torch types Module.__setattr__ for tensors and modules only; any value may be set
    model.toy_config = config  # type: ignore[assignment]
    return model


@torch.no_grad()
def toy_accuracy(model: Model, pairs: Int[Tensor, "batch 2"]) -> float:
    """Share of operand pairs ``[n, 2]`` for which the model's top output is ``(a + b) mod p``."""
    p = model.cfg.d_vocab_out
    logits = model(_tokens(pairs, p))[:, -1]
    return (logits.argmax(-1) == pairs.sum(1) % p).float().mean().item()


def train_toy(config: ToyConfig = ToyConfig(), *, progress: bool = False):
    """Train the toy model from scratch, full batch; returns ``(model, metrics)``.

    ``metrics`` holds train/test accuracy and loss, the number of steps, the wall-clock and CPU
    time of training in seconds, the torch thread count and version, and a history of
    ``(step, train loss, test accuracy)`` every ``eval_every`` steps. The held-out accuracy is
    only logged: the number of steps is fixed in the config.
    """
    model = build_toy_model(config)
    split = toy_split(config)
    x_train = _tokens(split["train"], config.p)
    y_train = split["train"].sum(1) % config.p
    opt = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=config.betas
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / config.warmup_steps)
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    history = []
    bar = tqdm(range(config.steps), disable=not progress, desc="toy training")
    for step in bar:
        model.train()
        logits = model(x_train)[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % config.eval_every == 0 or step == config.steps - 1:
            model.eval()
            test_acc = toy_accuracy(model, split["test"])
            history.append((step, round(loss.item(), 5), round(test_acc, 4)))
            bar.set_postfix(loss=f"{loss.item():.3f}", test_acc=f"{test_acc:.3f}")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    model.requires_grad_(False)
    metrics = _evaluate(model, config)
    metrics.update(steps=config.steps, train_seconds=round(seconds, 1),
                   train_cpu_seconds=round(cpu_seconds, 1), torch_threads=torch.get_num_threads(),
                   torch_version=torch.__version__, history=history)
    return model, metrics


@torch.no_grad()
def _evaluate(model: Model, config: ToyConfig) -> dict:
    split = toy_split(config)
    out = {}
    for name, pairs in split.items():
        logits = model(_tokens(pairs, config.p))[:, -1]
        target = pairs.sum(1) % config.p
        out[f"{name}_accuracy"] = round((logits.argmax(-1) == target).float().mean().item(), 4)
        out[f"{name}_loss"] = round(torch.nn.functional.cross_entropy(logits, target).item(), 5)
        out[f"n_{name}"] = len(pairs)
    return out


def save_weights(model: Model, config_json: dict, metrics: dict, folder: str | Path) -> Path:
    """Write a toy model's files to ``folder``: ``weights.safetensors``, ``config.json``, ``metrics.json``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not k.endswith(("IGNORE", "mask"))}
    save_file(state, str(folder / "weights.safetensors"))
    (folder / "config.json").write_text(json.dumps(config_json, indent=1) + "\n")
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return folder


def load_weights(model: Model, folder: str | Path) -> Model:
    """Load ``folder``'s ``weights.safetensors`` into ``model`` (every parameter must be there, nothing
    else), then eval mode, gradients off, and ``model.toy_metrics`` from ``metrics.json``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    weights = folder / "weights.safetensors"
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    params = {k for k, _ in model.named_parameters()}
    if (params & set(missing)) or unexpected:
        raise RuntimeError(
            f"{weights} does not fit the config in {folder}: missing "
            f"{sorted(params & set(missing))[:5]}, unexpected {sorted(unexpected)[:5]}."
        )
    model.eval()
    model.requires_grad_(False)
    metrics_file = folder / "metrics.json"
    model.toy_metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return model


def save_toy(model: Model, metrics: dict, folder: str | Path = TOY_DIR) -> Path:
    """Write ``weights.safetensors``, ``config.json`` and ``metrics.json`` to ``folder``."""
    config: ToyConfig = model.toy_config  # type: ignore[assignment]  # set by build_toy_model
    return save_weights(model, config.to_json(), metrics, folder)


def load_toy_model(folder: str | Path = TOY_DIR, *, train_if_missing: bool = True,
                   progress: bool = False):
    """The trained toy model from ``folder`` (eval mode, gradients off).

    If the weights are missing and ``train_if_missing``, train with the config in ``folder``
    (or the default config), save, then load. The model carries its :class:`ToyConfig` as
    ``model.toy_config`` and its saved metrics as ``model.toy_metrics``.
    """
    folder = Path(folder)
    weights = folder / "weights.safetensors"
    if not weights.exists():
        if not train_if_missing:
            raise FileNotFoundError(
                f"No toy weights at {weights}. Run `python scripts/train_toy.py` or call "
                "load_toy_model(train_if_missing=True)."
            )
        cfg_file = folder / "config.json"
        config = ToyConfig.from_json(json.loads(cfg_file.read_text())) if cfg_file.exists() \
            else ToyConfig()
        model, metrics = train_toy(config, progress=progress)
        save_toy(model, metrics, folder)
    config = ToyConfig.from_json(json.loads((folder / "config.json").read_text()))
    return load_weights(build_toy_model(config), folder)


# --------------------------------------------------------------------------------------------
# Problems in the shape of the text datasets


@dataclass
class ToyProblems:
    """A batch of toy problems ``a b =`` and their counterfactuals.

    Attributes (n problems, 3 positions):
        pairs, corrupted_pairs: LongTensor [batch, 2], the operands.
        clean_tokens, corrupted_tokens: LongTensor [batch, pos] = ``[a, b, "="]``.
        answer_ids, counterfactual_ids: LongTensor [batch], ``(a + b) mod p`` for each.
        pos: {"A": 0, "B": 1, "END": 2}, each a LongTensor [batch].
        corrupt: which operand the corrupted problems change ("a", "b" or "both").
        split: "train", "test" or "all".
    """

    pairs: Tensor
    corrupted_pairs: Tensor
    clean_tokens: Tensor
    corrupted_tokens: Tensor
    answer_ids: Tensor
    counterfactual_ids: Tensor
    pos: dict[str, Tensor]
    corrupt: str
    split: str
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pairs)

    def logit_diff(self, *, per_prompt: bool = False) -> LogitDiff:
        """``logit[answer] - logit[counterfactual answer]`` at ``"="``, averaged over problems."""
        return LogitDiff(self.answer_ids, self.counterfactual_ids, pos=self.pos["END"],
                         per_prompt=per_prompt)

    def subset(self, index: Sequence[int] | Tensor) -> "ToyProblems":
        return subset_items(self, index)


def toy_problems(
    model: Model,
    *,
    n: int | None = None,
    split: Literal["test", "train", "all"] = "test",
    corrupt: Literal["a", "b", "both"] = "a",
    seed: int = 0,
) -> ToyProblems:
    """Seeded problems for a toy model from :func:`load_toy_model` or :func:`train_toy`.

    Args:
        n: how many (default: every pair of the split, in a seeded order).
        split: draw operand pairs from the held-out ``"test"`` set, the ``"train"`` set or both.
        corrupt: the counterfactual problem changes operand ``"a"``, ``"b"`` or both to other
            random residues; its answer always differs from the clean answer.
        seed: the order of the problems and the choice of counterfactual operands.
    """
    config = getattr(model, "toy_config", None)
    if not isinstance(config, ToyConfig):
        raise TypeError(
            "toy_problems needs a toy model (from workbench.models.toy.load_toy_model or train_toy), "
            "which carries its ToyConfig as model.toy_config."
        )
    if split not in ("test", "train", "all"):
        raise ValueError(f"split must be 'test', 'train' or 'all', got {split!r}.")
    if corrupt not in ("a", "b", "both"):
        raise ValueError(f"corrupt must be 'a', 'b' or 'both', got {corrupt!r}.")
    parts = toy_split(config)
    pairs = _all_pairs(config.p) if split == "all" else parts[split]
    if n is not None and not 1 <= n <= len(pairs):
        raise ValueError(f"n must be between 1 and {len(pairs)} for split {split!r}, got {n}.")
    gen = torch.Generator().manual_seed(seed)
    pairs = pairs[torch.randperm(len(pairs), generator=gen)][: n or len(pairs)]
    p = config.p
    # A nonzero shift of a (or b, or both) always changes (a + b) mod p when only one changes;
    # for "both", shifts that cancel are redrawn.
    shift_a = torch.randint(1, p, (len(pairs),), generator=gen)
    shift_b = torch.randint(1, p, (len(pairs),), generator=gen)
    if corrupt == "a":
        shift_b = torch.zeros_like(shift_b)
    elif corrupt == "b":
        shift_a = torch.zeros_like(shift_a)
    else:
        cancel = (shift_a + shift_b) % p == 0
        shift_b = torch.where(cancel, shift_b % (p - 1) + 1, shift_b)  # still in 1..p-1
    corrupted = torch.stack([(pairs[:, 0] + shift_a) % p, (pairs[:, 1] + shift_b) % p], dim=1)
    answers = pairs.sum(1) % p
    counter = corrupted.sum(1) % p
    assert bool((answers != counter).all()), "counterfactual answers must differ"
    batch = len(pairs)
    return ToyProblems(
        pairs=pairs, corrupted_pairs=corrupted, clean_tokens=_tokens(pairs, p),
        corrupted_tokens=_tokens(corrupted, p), answer_ids=answers, counterfactual_ids=counter,
        pos={k: torch.full((batch,), v, dtype=torch.long) for k, v in
             (("A", 0), ("B", 1), ("END", 2))},
        corrupt=corrupt,
        split=split,
        meta={"model": model.cfg.model_name, "seed": seed},
    )
