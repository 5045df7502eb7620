"""Batched activation patching vs TransformerLens and vs the Hugging Face model, in one run.

    python benchmarks/bench_patching.py [--prompts N] [--tl-layers K] [--variants-per-pass V]
                                        [--corruptions flip ABC] [--threads T] [--no-hf]

On SmolLM2-135M and IOI prompts (one template), with a normalised logit-difference metric
(corrupted 0, clean 1), for each corruption:

* ``flip``: both names replaced (IO and S swapped; 3 positions differ, the first 3 are shared);
* ``ABC``: one name replaced (S2 by a third name; 1 position differs, the first 11 are shared);

it times head-output patching

* over all positions, all layers: TL ``get_act_patch_attn_head_out_all_pos`` vs ``patch_heads``;
* by position, on ``--tl-layers`` layers (default the middle one; TL runs ``n_layers * pos *
  n_heads`` forward passes, so the full sweep is not timed): TL's ``generic_activation_patch``
  with ``layer_pos_head_vector_patch_setter`` vs ``patch_heads(by_pos=True, layers=...)``;
* the same two sweeps on those layers as a per-index loop over the Hugging Face model (SDPA
  attention, a forward pre-hook on each layer's ``o_proj`` writing the clean input slice of one
  head, one forward pass per index; its clean run is included in its time),

and prints the largest absolute difference of each pair (exactness). Times include every side's
own clean (and corrupted) runs. On a CPU shared with other jobs, run with ``--threads 1`` and
``OMP_NUM_THREADS=1`` (and ``--clock cpu`` to time this process's CPU seconds, which other jobs
hardly change).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens's own bars would flood the output
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import transformer_lens.patching as tlp  # noqa: E402

from workbench import attribution, models, patching  # noqa: E402
from workbench.core.metrics import normalise  # noqa: E402
from workbench.phenomena.ioi.dataset import ioi_dataset  # noqa: E402

CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["wall"]


def timed(fn):
    """``(fn(), seconds)`` on the clock chosen with ``--clock``."""
    start = clock()
    out = fn()
    return out, clock() - start


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([x.flatten().double(), y.flatten().double()]))[0, 1].item()


def hf_by_pos(hf, clean, corrupted, metric, layers, n_heads, d_head) -> torch.Tensor:
    """Clean-into-corrupted patching of each head's output at each position, one forward pass per
    (layer, head, position), on a Hugging Face model: a forward pre-hook on the attention's
    ``o_proj`` (whose input is the heads' outputs side by side) writes the clean slice."""
    attn = [hf.model.layers[layer].self_attn.o_proj for layer in layers]
    clean_in = {}

    def keep(i):
        def hook(module, args):
            clean_in[i] = args[0].detach().clone()
        return hook

    with torch.no_grad():
        handles = [m.register_forward_pre_hook(keep(i)) for i, m in enumerate(attn)]
        try:
            hf(clean)
        finally:
            for h in handles:
                h.remove()
        out = torch.zeros(len(layers), clean.shape[1], n_heads)
        for i, module in enumerate(attn):
            for pos in range(clean.shape[1]):
                for head in range(n_heads):
                    cols = slice(head * d_head, (head + 1) * d_head)

                    def patch(module, args, pos=pos, cols=cols, i=i):
                        x = args[0].clone()
                        x[:, pos, cols] = clean_in[i][:, pos, cols]
                        return (x,)

                    handle = module.register_forward_pre_hook(patch)
                    try:
                        out[i, pos, head] = metric(hf(corrupted).logits)
                    finally:
                        handle.remove()
    return out


def hf_all_pos(hf, clean, corrupted, metric, layers, n_heads, d_head) -> torch.Tensor:
    """Like :func:`hf_by_pos`, each head's output patched at every position at once."""
    attn = [hf.model.layers[layer].self_attn.o_proj for layer in layers]
    clean_in: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        handles = [m.register_forward_pre_hook(lambda mod, a, i=i: clean_in.__setitem__(i, a[0].clone()))
                   for i, m in enumerate(attn)]
        try:
            hf(clean)
        finally:
            for h in handles:
                h.remove()
        out = torch.zeros(len(layers), n_heads)
        for i, module in enumerate(attn):
            for head in range(n_heads):
                cols = slice(head * d_head, (head + 1) * d_head)

                def patch(module, args, cols=cols, i=i):
                    x = args[0].clone()
                    x[:, :, cols] = clean_in[i][:, :, cols]
                    return (x,)

                handle = module.register_forward_pre_hook(patch)
                try:
                    out[i, head] = metric(hf(corrupted).logits)
                finally:
                    handle.remove()
    return out


def tl_by_pos(model, clean, corrupted, metric, layers) -> torch.Tensor:
    """TransformerLens's per-index loop over head outputs by position, on ``layers`` only."""
    n_layers, seq, n_heads = model.cfg.n_layers, clean.shape[1], model.cfg.n_heads
    with torch.no_grad():
        cache = model.run_with_cache(clean)[1]
    index = tlp.make_df_from_ranges([n_layers, seq, n_heads], ["layer", "pos", "head"])
    index = index[index.layer.isin(layers)]
    flat = tlp.generic_activation_patch(
        model, corrupted, cache, metric, patch_setter=tlp.layer_pos_head_vector_patch_setter,
        activation_name="z", index_df=index,
    )
    return flat.reshape(len(layers), seq, n_heads)


def tl_all_pos(model, clean, corrupted, metric) -> torch.Tensor:
    with torch.no_grad():
        cache = model.run_with_cache(clean)[1]
    return tlp.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)


def one_corruption(model, hf, corruption: str, args, sub: list[int]) -> list[tuple]:
    """Rows ``(sweep, layers, reference, ref s, ours s, max |diff|)`` for one corruption."""
    ds = ioi_dataset(model, n=args.prompts, seed=0, templates=[0], corruption=corruption)
    clean, corrupted = ds.clean_tokens, ds.corrupted_tokens
    metric = normalise(model, clean, corrupted, ds.logit_diff())
    n_layers, n_heads, seq = model.cfg.n_layers, model.cfg.n_heads, clean.shape[1]
    differ = (clean != corrupted).any(0).nonzero().flatten().tolist()
    print(f"\ncorruption {corruption}: positions {differ} of {seq} differ; the first "
          f"{patching.shared_prefix(clean, corrupted)} are the same in every prompt", flush=True)
    kw = dict(variants_per_pass=args.variants_per_pass, progress=False)
    rows = []
    ours_all, t_ours_all = timed(lambda: patching.patch_heads(model, clean, corrupted, metric, **kw))
    tl_all, t_tl_all = timed(lambda: tl_all_pos(model, clean, corrupted, metric))
    rows.append(("all pos", f"all {n_layers}", "TL", t_tl_all, t_ours_all, (ours_all.values - tl_all).abs().max().item()))
    print(f"  all pos: TL {t_tl_all:.1f} s, ours {t_ours_all:.1f} s", flush=True)
    ours_sub_all, t_ours_sub_all = timed(lambda: patching.patch_heads(model, clean, corrupted, metric,
                                                                      layers=sub, **kw))
    ours_sub, t_ours_sub = timed(lambda: patching.patch_heads(model, clean, corrupted, metric, by_pos=True,
                                                              layers=sub, **kw))
    tl_sub, t_tl_sub = timed(lambda: tl_by_pos(model, clean, corrupted, metric, sub))
    rows.append(("by pos", f"{sub}", "TL", t_tl_sub, t_ours_sub, (ours_sub.values - tl_sub).abs().max().item()))
    print(f"  by pos on {sub}: TL {t_tl_sub:.1f} s, ours {t_ours_sub:.1f} s", flush=True)
    if hf is not None:
        d_head = model.cfg.d_head
        hf_all, t_hf_all = timed(lambda: hf_all_pos(hf, clean, corrupted, metric, sub, n_heads, d_head))
        rows.append(("all pos", f"{sub}", "HF loop", t_hf_all, t_ours_sub_all,
                     (ours_sub_all.values - hf_all).abs().max().item()))
        hf_sub, t_hf_sub = timed(lambda: hf_by_pos(hf, clean, corrupted, metric, sub, n_heads, d_head))
        rows.append(("by pos", f"{sub}", "HF loop", t_hf_sub, t_ours_sub, (ours_sub.values - hf_sub).abs().max().item()))
        print(f"  HF per-index loop on {sub}: all pos {t_hf_all:.1f} s, by pos {t_hf_sub:.1f} s", flush=True)
    if corruption == args.corruptions[0]:
        attr, t_attr = timed(lambda: attribution.attribute(model, clean, corrupted, metric, sites=("z",)))
        print(f"  attribution patching: {t_attr:.2f} s; Pearson r with exact all-pos head patching "
              f"{pearson(attr.heads.values, ours_all.values):.3f}", flush=True)
    return [(corruption, *r) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8, help="IOI prompts (one template)")
    ap.add_argument("--tl-layers", type=int, default=1,
                    help="layers on which the per-index loops are timed by position (1: the middle layer)")
    ap.add_argument("--variants-per-pass", type=int, default=64, help="patched indices per forward")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corruptions", nargs="+", choices=["flip", "ABC"], default=["flip", "ABC"],
                    help="flip: both names replaced (IO and S swapped); ABC: one name (S2) replaced")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for every side (on a CPU shared with other jobs, 1 avoids "
                         "thread oversubscription, which slows every forward pass many times over)")
    ap.add_argument("--no-hf", action="store_true", help="skip the per-index loops over the Hugging Face model")
    ap.add_argument("--clock", choices=list(CLOCK), default="wall",
                    help="wall time, or this process's CPU time (with --threads 1, robust to other jobs)")
    args = ap.parse_args()
    global clock
    clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    model = models.load_model(args.model)
    n_layers, k = model.cfg.n_layers, args.tl_layers
    sub = [n_layers // 2] if k == 1 else sorted({round(i * (n_layers - 1) / (k - 1)) for i in range(k)})
    print(f"model {args.model}: {n_layers} layers x {model.cfg.n_heads} heads; {args.prompts} IOI prompts; "
          f"torch threads {torch.get_num_threads()}; variants_per_pass {args.variants_per_pass}; "
          f"{args.clock} clock", flush=True)
    hf = None
    if not args.no_hf:
        hf, _ = models.load_hf_model(args.model)
        hf.set_attn_implementation("sdpa")
    rows = [r for c in args.corruptions for r in one_corruption(model, hf, c, args, sub)]
    print()
    print(f"{'corruption':<10} {'sweep':<8} {'layers':<8} {'reference':<9} {'ref s':>8} {'ours s':>8} "
          f"{'speed-up':>9} {'max |diff|':>11}")
    for corruption, sweep, layers, ref, t_ref, t_ours, diff in rows:
        print(f"{corruption:<10} {sweep:<8} {layers:<8} {ref:<9} {t_ref:>8.2f} {t_ours:>8.2f} "
              f"{t_ref / t_ours:>8.1f}x {diff:>11.2e}")
    main_row = next(r for r in rows if r[:2] == ("flip", "all pos") and r[4] == "TL") if "flip" in args.corruptions else None
    if main_row is not None:
        ok = main_row[5] / main_row[6] >= 4 and main_row[7] < 1e-4
        print(f"goal (flip, all pos, vs TL: >= 4x and exact to 1e-4): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
