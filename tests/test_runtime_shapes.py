"""The documented shapes hold at run time: every technique runs on the tiny model with jaxtyping's
import hook and beartype checking each annotated argument and return value, and a tensor of the
wrong rank for a documented shape fails at the call. (A process of its own, so the hook sees the
package's first import.)"""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    from jaxtyping import install_import_hook
    with install_import_hook("workbench", "beartype.beartype"):
        import workbench as wb
        from workbench import edges
        from workbench.core.components import head_set_mean
        from workbench.techniques import ablation, attribution, dla, heads, lens, patching, path_patching
    import torch
    from jaxtyping import TypeCheckError
    from workbench.core.metrics import LogitDiff

    model = wb.tiny_model(n_kv_heads=2, normalization="RMS", positional="rotary")
    clean = torch.randint(0, 100, (3, 6), generator=torch.Generator().manual_seed(0))
    corrupted = torch.randint(0, 100, (3, 6), generator=torch.Generator().manual_seed(1))
    metric = LogitDiff(answers=[1, 2, 3], wrong=[4, 5, 6])
    ran = {
        "patch_heads": patching.patch_heads(model, clean, corrupted, metric, by_pos=True).shape,
        "patch_resid": patching.patch_resid(model, clean, corrupted, metric).shape,
        "logit_lens": lens.logit_lens(model, clean).rank.shape,
        "induction": heads.induction_scores(model, seq_len=8).shape,
        "attribution": attribution.attribute_heads(model, clean, corrupted, metric).shape,
        "dla": dla.direct_logit_attribution(model, clean, metric).shape,
        "path_patch": path_patching.path_patch_heads(model, clean, corrupted, metric).shape,
        "faithfulness": ablation.faithfulness(model, clean, metric, [(0, 1)], reference=corrupted).circuit,
        "edges": edges.attribute_edges(model, clean, corrupted, metric, method="eap").n_edges,
        "head_set_mean": head_set_mean(torch.zeros(3, 2, 4), [(0, 1)]).shape,
    }
    try:
        head_set_mean(torch.zeros(4, 2), [(0, 1)])  # documented: Float[Tensor, "batch layer head"]
    except TypeCheckError:
        print("wrong shape refused")
    print(sorted(ran))
''')


def test_techniques_run_with_their_shapes_checked():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrong shape refused" in done.stdout
    assert "patch_heads" in done.stdout and "edges" in done.stdout
