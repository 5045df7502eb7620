"""The negative control: on SmolLM2's architecture with random weights no finding replicates.

Each notebook with a scorecard runs end to end through ``workbench run --random-init`` (the
trained model's configuration and tokenizer, TransformerLens's seeded random initialisation, full
depth) and must finish (a missing phenomenon is a verdict, not an error) with no `replicated`
verdict in its findings.json. Slow: each notebook takes about as long as on the trained model.
"""

import json

import pytest

from workbench import cli
from workbench.models import model_label, random_init_model

# 03, 05 and 07 pass the same check through `workbench run <n> --random-init` (05 with
# --param SAE_PATH=train; checked by hand). Run here before the fix, 02-04 and 07 failed one
# assertion of this test: their findings.json named the trained model (now every scorecard is
# labelled through model_label; tests/test_findings.py checks it). 02 and 04 have passed here since;
# the other three join once re-run here.
NOTEBOOKS = ("01_ioi_circuit", "02_retrieval_heads", "04_arithmetic_heads", "06_head_atlas")


@pytest.mark.slow
def test_random_init_model_keeps_the_architecture_and_tokenizer(smollm2):
    control = random_init_model("smollm2-135m", seed=0)
    assert control.cfg.n_layers == smollm2.cfg.n_layers and control.cfg.n_heads == smollm2.cfg.n_heads
    assert control.cfg.n_key_value_heads == smollm2.cfg.n_key_value_heads
    assert control.tokenizer.get_vocab() == smollm2.tokenizer.get_vocab()
    assert not (control.W_Q - smollm2.W_Q).abs().max() < 1e-3  # different weights
    assert (random_init_model("smollm2-135m", seed=0).W_Q == control.W_Q).all()  # seeded
    assert model_label(control, "smollm2-135m") == "smollm2-135m-random-init"
    assert model_label(smollm2, "smollm2-135m") == "smollm2-135m"


@pytest.mark.slow
@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_no_finding_replicates_on_draws_weights(stem, tmp_path):
    params = {"OUT": str(tmp_path / "atlas")} if stem == "06_head_atlas" else {}
    report = cli.run_notebook(cli.find_notebook(stem), "smollm2-135m", params, tmp_path, random_init=True)
    assert report.name == "smollm2-135m-random-init"
    payload = json.loads((report / f"{stem}.findings.json").read_text())
    assert payload["model"] == "smollm2-135m-random-init"
    verdicts = {f["name"]: f["verdict"] for f in payload["findings"]}
    assert verdicts and "replicated" not in verdicts.values(), verdicts
