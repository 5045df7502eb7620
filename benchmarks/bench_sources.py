"""Load time (first: converted; then: from the cache) and logits against Hugging Face, by source.

    python benchmarks/bench_sources.py                 # tiny random folders of every architecture
    python benchmarks/bench_sources.py --real          # + SmolLM2 as a folder, both GGUF files by path

Uses a fresh temporary cache (``WORKBENCH_CACHE`` is set to it), so "first" is a real conversion.
Prints one markdown table row per source: architecture, max |logit - HF logit| (float32, over
two prompts), first load, cached load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PROMPTS = ["When Mary and John went to the store, John gave a drink to", "The capital of France is"]


def measure(source, hf) -> tuple[float, float, float]:
    from workbench import models

    t0 = time.perf_counter()
    models.load_model(source, verbose=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = models.load_model(source, verbose=False)
    cached = time.perf_counter() - t0
    worst = 0.0
    with torch.no_grad():
        for p in PROMPTS:
            tokens = models.to_tokens(model, p)
            worst = max(worst, (model(tokens) - hf(tokens).logits).abs().max().item())
    return worst, first, cached


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="also the real SmolLM2 and Gemma-3 checkpoints")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-sources-"))
    os.environ["WORKBENCH_CACHE"] = str(work / "cache")
    import test_sources as ts

    from workbench import models

    print("| source | architecture | max abs logit diff to HF | first load | cached load |")
    print("|---|---|---|---|---|")
    for arch in sorted(ts.CONFIGS):
        hf = ts.make_checkpoint(work / arch, arch)
        diff, first, cached = measure(work / arch, hf)
        print(f"| tiny {arch} folder | {type(hf).__name__} | {diff:.1e} | {first:.2f} s | {cached:.2f} s |")
    if args.real:
        hf, tok = models.load_hf_model("smollm2-135m")
        plain = type(hf)(hf.config)
        plain.load_state_dict(hf.state_dict())
        plain.save_pretrained(work / "SmolLM2-135M-Instruct")
        tok.save_pretrained(work / "SmolLM2-135M-Instruct")
        del plain
        rows = [("SmolLM2-135M folder (safetensors)", work / "SmolLM2-135M-Instruct", hf),
                ("SmolLM2-135M .gguf path (Q4_1)", models.OFFLINE_MODELS["smollm2-135m"].gguf(), hf)]
        for label, source, ref in rows:
            diff, first, cached = measure(source, ref)
            print(f"| {label} | LlamaForCausalLM | {diff:.1e} | {first:.1f} s | {cached:.1f} s |")
        del hf
        gemma_path = models.OFFLINE_MODELS["gemma-3-270m"].gguf()
        ref, _ = models.load_hf_model(gemma_path)
        diff, first, cached = measure(gemma_path, ref)
        print(f"| Gemma-3-270m .gguf path (Q4_K_M) | Gemma3ForCausalLM | {diff:.1e} | {first:.1f} s | {cached:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
