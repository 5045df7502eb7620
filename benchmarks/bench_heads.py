"""Every head score on the offline models: the top heads of each and the time each took.

    python benchmarks/bench_heads.py [--models smollm2-135m gemma-3-270m] [--top 5]

Scores (``workbench.techniques.heads``), with the settings the notebooks use:

* previous-token, duplicate-token and induction scores: one forward pass on ``[BOS] r r``
  (50 seeded random tokens repeated, batch 4); the three share that pass and its time;
* copy score (OV circuit, ``method="top_k"``, 100 sampled tokens, top 5);
* attention to BOS (the sink) from every position of a few IOI prompts;
* attention to the needle from the last position, and the retrieval score of Wu et al. (2024), on
  9 seeded haystacks (300, 1000 and 2000 tokens; needle depths 0.1, 0.5, 0.9).

Printed per model: each score's top heads as ``L.H=value`` and its wall time; then how many heads
score above 0.1 on the retrieval score.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from workbench import heads, models  # noqa: E402
from workbench.core.results import Result  # noqa: E402
from workbench.phenomena import ioi_dataset, needle_haystacks  # noqa: E402


def top(result, n: int) -> str:
    frame = result.to_frame().dropna(subset=["value"]).sort_values("value", ascending=False).head(n)
    return ", ".join(f"L{int(r.layer)}.H{int(r.head)}={r.value:.2f}" for r in frame.itertuples())


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench(name: str, n_top: int) -> list[tuple[str, str, float]]:
    model = models.load_model(name, verbose=False)
    rows = []
    rep, t = timed(lambda: heads.repeated_token_scores(model, seq_len=50, batch=4, seed=0))
    for key in ("previous_token", "duplicate_token", "induction"):
        rows.append((key, top(rep[key], n_top), t))
    copy, t = timed(lambda: heads.copy_scores(model, n_tokens=100, k=5, progress=False))
    rows.append(("copy (OV top-5)", top(copy, n_top), t))
    ioi = ioi_dataset(model, n=8, seed=0, templates=[0])
    bos, t = timed(lambda: heads.bos_attention(model, ioi.clean_tokens))
    rows.append(("attention to BOS", top(bos, n_top), t))
    stacks = needle_haystacks(model, context_lengths=(300, 1000, 2000), depths=(0.1, 0.5, 0.9), n_per=1)

    def needle_attention():
        parts = [heads.attention_to(model, h.tokens, range(*h.needle_span)).values for h in stacks]
        return Result(torch.stack(parts).mean(0), ("layer", "head"), metric="attention to the needle")

    att, t = timed(needle_attention)
    rows.append(("attention to needle", top(att, n_top), t))
    ret, t = timed(lambda: heads.retrieval_scores(model, stacks, progress=False))
    rows.append((f"retrieval ({ret.meta['n_answered']}/{ret.meta['n_total']} answered)", top(ret, n_top), t))
    n_above = int((ret.values > 0.1).sum())
    n = model.cfg.n_layers * model.cfg.n_heads
    rows.append(("retrieval > 0.1", f"{n_above} of {n} heads ({100 * n_above / n:.1f}%)", 0.0))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma-3-270m"])
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}")
    for name in args.models:
        print(f"\n== {name}")
        for score, heads_text, seconds in bench(name, args.top):
            when = f"{seconds:6.1f} s" if seconds else " " * 8
            print(f"{score:<30} {when}  {heads_text}", flush=True)


if __name__ == "__main__":
    main()
