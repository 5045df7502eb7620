"""Train a toy model from scratch: modular addition (data/toy/) or induction (data/toy_induction/).

    python scripts/train_toy.py                 # modular addition, default config, 1 torch thread
    python scripts/train_toy.py --threads 2 --out /tmp/toy
    python scripts/train_toy.py --task induction  # the 2-layer attention-only induction toy

Writes weights.safetensors, config.json and metrics.json (train/test accuracy, training time).
``workbench.models.toy.load_toy_model()`` calls the same training function when the weights are missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.models.toy import ToyConfig, save_toy, train_toy  # noqa: E402
from workbench.models.toy_induction import (  # noqa: E402
    InductionToyConfig,
    save_induction_toy,
    train_induction_toy,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["modadd", "induction"], default="modadd")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: the checkout's data/toy or data/toy_induction)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the task's config)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    if args.task == "induction":
        ind = InductionToyConfig(seed=args.seed, **({"steps": args.steps} if args.steps else {}))
        model, metrics = train_induction_toy(ind, progress=not args.no_progress)
        folder = save_induction_toy(model, metrics, args.out or ROOT / "data" / "toy_induction")
    else:
        config = ToyConfig(seed=args.seed, **({"steps": args.steps} if args.steps else {}))
        model, metrics = train_toy(config, progress=not args.no_progress)
        folder = save_toy(model, metrics, args.out or ROOT / "data" / "toy")
    summary = {k: v for k, v in metrics.items() if k != "history"}
    print(json.dumps(summary, indent=1))
    print(f"saved to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
