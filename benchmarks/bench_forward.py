"""One forward pass: the workbench model vs the Hugging Face model it wraps, side by side in one run.

    python benchmarks/bench_forward.py [--model smollm2-135m gemma-3-270m] [--tokens 200 2000]
                                       [--repeats 3] [--threads 2] [--no-eager]

For each model and prompt length, on the same weights (both dequantized from the same GGUF file),
float32, the same number of torch threads, and the same random token ids (BOS first):

* ``HF sdpa``: the ``transformers`` model with ``attn_implementation="sdpa"`` (the floor);
* ``HF eager``: the same model with explicit attention (what a run that needs the pattern costs
  there; skip it with ``--no-eager``);
* ``ours``: ``workbench.load_model`` (fast attention path, no hook);
* ``ours + pattern hook``: the same with a hook reading ``hook_pattern`` on every layer, which makes
  every layer take the explicit path (exact pattern).

Each configuration is timed ``--repeats`` times, round-robin (so a slow spell on a shared machine
hits all of them), and the best time is kept. Ratios are ours / HF sdpa (goal: at most 1.3 with no
pattern hook). The largest absolute logit difference to HF sdpa is printed for both of ours.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from workbench import fast_attention, models

GOAL = 1.3


def _tokens(model, n: int) -> torch.Tensor:
    tok = model.tokenizer
    gen = torch.Generator().manual_seed(n)
    ids = torch.randint(1000, min(tok.vocab_size, 30000), (1, n), generator=gen)
    ids[0, 0] = tok.bos_token_id
    return ids


def _pattern_hooks(model):
    """A hook on every layer's pattern that reads it (a per-head attention sum, kept)."""
    seen = []

    def read(pattern, hook):
        seen.append(pattern[:, :, -1].sum().item())

    return [(f"blocks.{layer}.attn.hook_pattern", read) for layer in range(model.cfg.n_layers)]


def bench_model(name: str, lengths: list[int], repeats: int, eager: bool) -> list[dict]:
    model = models.load_model(name, verbose=False)
    assert fast_attention.is_enabled(model)
    hf, _ = models.load_hf_model(name)  # loads with eager attention
    rows = []
    for n in lengths:
        tokens = _tokens(model, n)

        def hf_run(impl: str, hf=hf, tokens=tokens):
            hf.set_attn_implementation(impl)
            return hf(tokens).logits

        def ours(model=model, tokens=tokens):
            return model(tokens)

        def ours_hooked(model=model, tokens=tokens):
            with model.hooks(fwd_hooks=_pattern_hooks(model)):
                return model(tokens)

        runs = {"HF sdpa": lambda: hf_run("sdpa"), "ours": ours, "ours + pattern hook": ours_hooked}
        if eager:
            runs["HF eager"] = lambda: hf_run("eager")
        best = dict.fromkeys(runs, float("inf"))
        with torch.no_grad():
            ref = hf_run("sdpa")
            diff = {"ours": (ours() - ref).abs().max().item(),
                    "ours + pattern hook": (ours_hooked() - ref).abs().max().item()}
            del ref
            for _ in range(repeats):
                for key, fn in runs.items():
                    start = time.perf_counter()
                    fn()
                    best[key] = min(best[key], time.perf_counter() - start)
        row = {"model": name, "tokens": n, **best, **{f"diff {k}": v for k, v in diff.items()}}
        rows.append(row)
        print(f"  {name} {n} tokens: " + ", ".join(f"{k} {v:.3f} s" for k, v in best.items()),
              flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["smollm2-135m", "gemma-3-270m"],
                    choices=list(models.OFFLINE_MODELS))
    ap.add_argument("--tokens", nargs="+", type=int, default=[200, 2000])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best is kept")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, the same for both sides")
    ap.add_argument("--no-eager", action="store_true", help="skip the HF eager-attention runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}, "
          f"float32", flush=True)

    rows = []
    for name in args.model:
        rows += bench_model(name, args.tokens, args.repeats, eager=not args.no_eager)

    eager = not args.no_eager
    print()
    head = f"{'model':<14} {'tokens':>6} {'HF sdpa s':>10} {'ours s':>8} {'ratio':>6} " \
           f"{'+pattern s':>10} {'ratio':>6}"
    head += f" {'HF eager s':>10} {'vs eager':>8}" if eager else ""
    head += f" {'max|ours-HF|':>12} {'max|+pattern-HF|':>16}"
    print(head)
    ok = True
    for r in rows:
        base = r["HF sdpa"]
        line = (f"{r['model']:<14} {r['tokens']:>6} {base:>10.3f} {r['ours']:>8.3f} "
                f"{r['ours'] / base:>6.2f} {r['ours + pattern hook']:>10.3f} "
                f"{r['ours + pattern hook'] / base:>6.2f}")
        if eager:
            line += f" {r['HF eager']:>10.3f} {r['ours + pattern hook'] / r['HF eager']:>8.2f}"
        line += f" {r['diff ours']:>12.2e} {r['diff ours + pattern hook']:>16.2e}"
        print(line)
        ok &= r["ours"] / base <= GOAL
    print("(ratio: ours / HF sdpa; vs eager: ours with the pattern hook / HF eager)")
    print(f"goal: ours / HF sdpa <= {GOAL} with no pattern hook: {'met' if ok else 'NOT met'}")
    exact = all(r["diff ours"] < 1e-4 and r["diff ours + pattern hook"] < 1e-4 for r in rows)
    print(f"goal: max |logit - HF| < 1e-4, with and without the hook: {'met' if exact else 'NOT met'}")


if __name__ == "__main__":
    main()
