"""Batched activation patching vs TransformerLens, side by side in one run, on SmolLM2-135M + IOI.

    python benchmarks/bench_patching.py [--prompts N] [--tl-layers K] [--batch-size B] [--corruption flip]

Measures, with a normalised logit-difference metric (corrupted 0, clean 1):

* head outputs by position: TL ``get_act_patch_attn_head_out_by_pos`` vs ``patch_heads(by_pos=True)``.
  TL runs ``n_layers * pos * n_heads`` forward passes, so it is timed on ``--tl-layers`` evenly
  spaced layers (first and last included, so early and late layers are both represented) and our
  engine on the same layers; the ratio compares those two. Our full sweep is timed as well.
* head outputs over all positions: TL ``get_act_patch_attn_head_out_all_pos`` vs ``patch_heads``,
  all layers.
* attribution patching: Pearson r with exact patching, and its cost in forward-pass equivalents.

TL's times include its own clean ``run_with_cache``; ours include everything (both cached runs).

* head outputs by position, the way a user of the Hugging Face model (an nnsight-style loop) would
  do it: the ``transformers`` model with SDPA attention, a forward pre-hook on each layer's
  attention ``o_proj`` that writes the clean run's input slice of one head at one position, one
  forward pass per (layer, head, position), on the same ``--tl-layers`` layers (``--no-hf`` skips
  it). Its clean run (capturing every ``o_proj`` input) is included in its time.

The by-position ratio depends on the corruption: positions where every clean and corrupted prompt
hold the same tokens are no-op patches that the engine answers without a forward pass. The default
ABC corruption changes only S2 (11 of 16 positions shared); ``--corruption flip`` swaps the names
throughout (3 shared), the case closer to recomputing every position.
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


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8, help="IOI prompts (one template)")
    ap.add_argument("--tl-layers", type=int, default=3, help="layers on which TL by_pos is timed")
    ap.add_argument("--batch-size", type=int, default=64, help="patched indices per forward")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corruption", choices=["ABC", "flip"], default="ABC",
                    help="IOI corruption: ABC replaces S2 by a third name, flip swaps the names")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for both sides (on a CPU shared with other jobs, 1 avoids "
                         "thread oversubscription, which slows every forward pass many times over)")
    ap.add_argument("--no-hf", action="store_true",
                    help="skip the per-index loop over the Hugging Face model")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = models.load_model(args.model)
    ds = ioi_dataset(model, n=args.prompts, seed=0, templates=[0], corruption=args.corruption)
    clean, corrupted = ds.clean_tokens, ds.corrupted_tokens
    metric = normalise(model, clean, corrupted, ds.logit_diff())
    n_layers, n_heads, seq = model.cfg.n_layers, model.cfg.n_heads, clean.shape[1]
    tl_layers = sorted({round(i * (n_layers - 1) / max(args.tl_layers - 1, 1)) for i in range(args.tl_layers)})
    print(f"model {args.model}: {n_layers} layers x {n_heads} heads; {args.prompts} IOI prompts of "
          f"{seq} tokens; torch threads {torch.get_num_threads()}; batch_size {args.batch_size}")
    print(f"corruption {args.corruption}: the first {patching.shared_prefix(clean, corrupted)} of {seq} "
          f"positions are the same in every clean and corrupted prompt")
    print(f"metric {metric}", flush=True)

    def tl_cache():
        with torch.no_grad():
            return model.run_with_cache(clean)[1]

    def forward():
        with torch.no_grad():
            model(corrupted)

    forward()
    _, t_fwd = timed(lambda: [forward() for _ in range(3)])
    t_fwd /= 3
    rows = []

    # --- by position, on a subset of layers (TL is n_layers * seq * n_heads forwards) -------
    def tl_by_pos():
        cache = tl_cache()
        index = tlp.make_df_from_ranges([n_layers, seq, n_heads], ["layer", "pos", "head"])
        index = index[index.layer.isin(tl_layers)]
        flat = tlp.generic_activation_patch(
            model, corrupted, cache, metric, patch_setter=tlp.layer_pos_head_vector_patch_setter,
            activation_name="z", index_df=index,
        )
        return flat.reshape(len(tl_layers), seq, n_heads)

    kw = dict(batch_size=args.batch_size, progress=False)
    ours_sub, t_ours_sub = timed(lambda: patching.patch_heads(model, clean, corrupted, metric,
                                                              by_pos=True, layers=tl_layers, **kw))
    tl_sub, t_tl_sub = timed(tl_by_pos)
    rows.append(("head out by pos", f"layers {tl_layers}", t_tl_sub, t_ours_sub,
                 (ours_sub.values - tl_sub).abs().max().item()))
    print(f"  by pos on {tl_layers}: TL {t_tl_sub:.1f} s, ours {t_ours_sub:.1f} s", flush=True)

    # --- by position, a per-index loop over the Hugging Face model (nnsight-style) -----------
    if not args.no_hf:
        hf, _ = models.load_hf_model(args.model)
        hf.set_attn_implementation("sdpa")
        hf_sub, t_hf_sub = timed(lambda: hf_by_pos(hf, clean, corrupted, metric, tl_layers,
                                                   n_heads, model.cfg.d_head))
        rows.append(("head out by pos, HF", f"layers {tl_layers}", t_hf_sub, t_ours_sub,
                     (ours_sub.values - hf_sub).abs().max().item()))
        print(f"  by pos on {tl_layers}: HF per-index loop {t_hf_sub:.1f} s", flush=True)
        del hf

    # --- all positions, all layers ---------------------------------------------------------
    ours_all, t_ours_all = timed(lambda: patching.patch_heads(model, clean, corrupted, metric, **kw))
    tl_all, t_tl_all = timed(lambda: tlp.get_act_patch_attn_head_out_all_pos(model, corrupted,
                                                                              tl_cache(), metric))
    rows.append(("head out all pos", f"all {n_layers}", t_tl_all, t_ours_all,
                 (ours_all.values - tl_all).abs().max().item()))
    print(f"  all pos: TL {t_tl_all:.1f} s, ours {t_ours_all:.1f} s", flush=True)

    # --- our full by-position sweep (TL's time extrapolated from the subset, marked ~) ------
    ours_bp, t_ours_bp = timed(lambda: patching.patch_heads(model, clean, corrupted, metric,
                                                            by_pos=True, **kw))
    sub_diff = (ours_bp.values[tl_layers] - tl_sub).abs().max().item()

    # --- attribution patching ---------------------------------------------------------------
    attr, t_attr = timed(lambda: attribution.attribute(model, clean, corrupted, metric, sites=("z",)))
    r_all = pearson(attr.heads.values, ours_all.values)
    r_bp = pearson(attr.heads_by_pos.values, ours_bp.values)

    print()
    print(f"{'sweep':<22} {'layers':<16} {'ref s':>9} {'ours s':>9} {'speed-up':>9} {'max |diff|':>11}")
    for name, layers, t_tl, t_ours, diff in rows:
        print(f"{name:<22} {layers:<16} {t_tl:>9.2f} {t_ours:>9.2f} {t_tl / t_ours:>8.1f}x {diff:>11.2e}")
    t_tl_full = t_tl_sub * n_layers / len(tl_layers)
    print(f"{'head out by pos':<22} {f'all {n_layers}':<16} {f'~{t_tl_full:.0f}':>9} {t_ours_bp:>9.2f} "
          f"{f'~{t_tl_full / t_ours_bp:.0f}x':>9} {sub_diff:>11.2e}   (TL extrapolated from the subset)")
    print("(ref: TransformerLens's patching, or the HF per-index loop on the row marked HF)")
    print()
    print(f"one forward pass of the corrupted batch: {t_fwd:.3f} s")
    print(f"attribution patching (clean fwd + corrupted fwd + bwd): {t_attr:.2f} s = "
          f"{t_attr / t_fwd:.1f} forward-pass equivalents; exact all-pos = {n_layers * n_heads} "
          f"forwards in TL, by-pos = {n_layers * n_heads * seq}")
    print(f"attribution vs exact, Pearson r: heads all pos {r_all:.3f}, heads by pos {r_bp:.3f}")
    print()
    by_name = {r[0]: r for r in rows}
    goals = [
        ("by pos >= 10x", by_name["head out by pos"][2] / by_name["head out by pos"][3] >= 10),
        ("all pos >= 4x", by_name["head out all pos"][2] / by_name["head out all pos"][3] >= 4),
        ("max |diff| < 1e-4", max(r[4] for r in rows) < 1e-4 and sub_diff < 1e-4),
        ("attribution r >= 0.9 (all pos)", r_all >= 0.9),
    ]
    print("goals: " + ", ".join(f"{g}: {'met' if ok else 'NOT met'}" for g, ok in goals))


if __name__ == "__main__":
    main()
