"""Train the shipped SAE: TopK on SmolLM2-135M's residual stream before block 15, with SAELens.

Reads the corpus in data/corpus (SmolLM2's own generations; rebuild with
scripts/build_corpus.py), trains on its train split through ``workbench.techniques.sae.train_sae`` (SAELens
``TopKTrainingSAE`` + ``SAETrainer``), saves the inference SAE in SAELens's format with float16
weights (``cfg.json`` says float32, so ``SAE.load_from_disk`` loads float32), reloads it from disk
and measures it on the held-out split. The measurements go to ``metrics.json`` in the SAE folder.

Usage::

    .venv/bin/python scripts/train_sae.py                  # the shipped SAE (3-9 minutes)
    .venv/bin/python scripts/train_sae.py --n-tokens 20000 --out /tmp/sae   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench import models  # noqa: E402
from workbench import sae as wsae  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--hook", default="blocks.15.hook_resid_pre")
    p.add_argument("--d-sae", type=int, default=1536)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--n-tokens", type=int, default=160_000, help="activations seen in training")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--b-dec-init", choices=("zeros", "mean"), default="mean",
                   help="decoder bias start: 'mean' (the shipped SAEs: residual streams have a large "
                        "shared offset; from zeros, SmolLM2's SAE kept 71%% of its latents dead, from "
                        "the mean 10%%) or 'zeros'")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    # The checkout's data/ (where pyproject.toml maps the package data from), written in place.
    p.add_argument("--out", type=Path,
                   default=ROOT / "data" / "sae" / "smollm2-135m-blocks.15.hook_resid_pre")
    p.add_argument("--full-precision", action="store_true", help="store float32 weights")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model = models.load_model(args.model, verbose=False)
    train_docs, heldout_docs = wsae.load_corpus("train"), wsae.load_corpus("heldout")
    sae = wsae.train_sae(
        model, args.hook, train_docs, d_sae=args.d_sae, k=args.k, n_tokens=args.n_tokens,
        batch_size=args.batch_size, lr=args.lr, context=args.context, seed=args.seed,
        b_dec_init=args.b_dec_init, progress=True,
    )
    training = dict(sae.cfg.metadata.workbench_training)
    wsae.save_sae(sae, args.out, half=not args.full_precision)
    shipped = wsae.load_sae(args.out, model=model)  # measure exactly what is on disk
    heldout = wsae.evaluate_sae(model, shipped, heldout_docs, context=args.context)
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.name != "metrics.json")
    metrics = dict(
        model=args.model,
        hook_name=args.hook,
        architecture="topk",
        d_in=sae.cfg.d_in,
        d_sae=args.d_sae,
        k=args.k,
        weights_on_disk="float16" if not args.full_precision else "float32",
        size_bytes=size,
        training=training,
        heldout=heldout,
        heldout_note="held-out split of data/corpus (every 8th document), BOS and massive-activation tokens "
        "(norm > cfg metadata max_norm) excluded; "
        "explained_variance = 1 - sum|x - x_hat|^2 / sum|x - mean x|^2 pooled over tokens; "
        "dead = never active on the held-out tokens; losses are mean next-token cross-entropy "
        "(spliced: SAE reconstruction in place of the activation at every non-BOS position; "
        "zero: the activation zeroed at the same positions)",
        total_seconds=round(time.perf_counter() - start, 1),
        torch_threads=args.threads,
        command="scripts/train_sae.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics, indent=1))
    return metrics


if __name__ == "__main__":
    main()
