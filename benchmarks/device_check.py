"""Every technique on a GPU (or MPS) against the same technique on the CPU, side by side.

    python benchmarks/device_check.py                           # SmolLM2, cuda, float32
    python benchmarks/device_check.py --device cuda:1 --dtype bfloat16 --model ~/models/my-llama
    python benchmarks/device_check.py --n-devices 2             # the model split over two GPUs

For a machine that has a GPU: on one without, it says so and exits with status 2. For each
technique it prints the largest difference to the CPU float32 result, that result's scale, and
both times. Expected: float32 on a GPU within about 1e-4 of the scale (different kernels round
differently); bfloat16 within a few percent (the tolerance tests/test_precision.py states: 5%).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def techniques(model, ds):
    """name -> a callable running one technique and returning a float32 CPU tensor."""
    import workbench as wb
    from workbench import ablation, attribution, dla, heads, lens, patching, path_patching
    from workbench.core.metrics import normalise

    clean, corrupted = ds.clean_tokens, ds.corrupted_tokens
    metric = normalise(model, clean, corrupted, ds.logit_diff())
    layers = list(range(model.cfg.n_layers - 4, model.cfg.n_layers))
    targets = None

    def lens_logits():
        nonlocal targets
        targets = targets if targets is not None else model(clean).argmax(-1).cpu()
        return lens.logit_lens(model, clean, targets, top_k=1).logit.values

    def ablated():
        with ablation.ablate(model, heads=[(layers[0], 0), (layers[1], 1)], ablation="mean", reference=clean):
            return metric(model(clean))[None]

    return {
        "patch_heads": lambda: patching.patch_heads(model, clean, corrupted, metric, layers=layers,
                                                    progress=False).values,
        "attribute_heads": lambda: attribution.attribute_heads(model, clean, corrupted, metric).values,
        "path_patch_heads": lambda: path_patching.path_patch_heads(model, clean, corrupted, metric,
                                                                   progress=False).values,
        "ablate (mean)": ablated,
        "logit_lens": lens_logits,
        "direct_logit_attribution": lambda: dla.direct_logit_attribution(model, clean, ds.logit_diff()).values,
        "induction_scores": lambda: heads.induction_scores(model, seq_len=20, batch=2).values,
        "logits": lambda: model(wb.to_tokens(model, "When Mary and John went to the store, John gave a drink to")),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--n-devices", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args(argv)

    import workbench as wb
    from workbench.phenomena import ioi_dataset

    try:
        wb.models.resolve_device(args.device)
    except ValueError as e:
        print(f"device_check needs a GPU: {e} Nothing was run.", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    cpu = wb.load_model(args.model)
    gpu = wb.load_model(args.model, device=args.device, dtype=args.dtype, n_devices=args.n_devices)
    ds = ioi_dataset(cpu, n=args.prompts, seed=0, templates=[0])
    print(f"{'technique':<26} {'max diff':>10} {'scale':>10} {'rel':>8} {'cpu s':>7} {'gpu s':>7}")
    for (name, run_cpu), run_gpu in zip(techniques(cpu, ds).items(), techniques(gpu, ds).values()):
        t0 = time.perf_counter()
        a = run_cpu().detach().float().cpu()
        t1 = time.perf_counter()
        b = run_gpu().detach().float().cpu()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        scale = a.abs().nan_to_num().max().item()
        diff = (a - b).abs().nan_to_num().max().item()
        print(f"{name:<26} {diff:>10.3g} {scale:>10.3g} {diff / max(scale, 1e-12):>8.2%} "
              f"{t1 - t0:>7.2f} {t2 - t1:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
