"""The negative control: on SmolLM2's architecture with random weights no finding replicates.

Every registered phenomenon's experiment (``run()``, the steps its notebook narrates) runs on the
trained model's configuration and tokenizer with TransformerLens's seeded random initialisation at
full depth, and must finish (a missing behaviour is `not measured`, not an error) with no
`replicated` verdict. Each takes about as long as the phenomenon on the trained model, so these
run under ``make controls`` and not under ``make test`` (``workbench replicate --controls
random-init`` puts the same control beside each model in a replication report).
"""

import pytest

from workbench.models import model_label, random_init_model
from workbench.phenomena.registry import PHENOMENA


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


@pytest.mark.controls
@pytest.mark.parametrize("name", [n for n, p in PHENOMENA.items() if p.run is not None])
def test_no_claim_replicates_on_random_weights(name):
    """Each phenomenon's whole experiment on the control: a behaviour the model lacks is `not
    measured`, what can still be measured is, and nothing is `replicated`."""
    control = random_init_model("smollm2-135m", seed=0)
    card = PHENOMENA[name].run(control, seed=0, label=model_label(control, "smollm2-135m"))
    assert card.model == "smollm2-135m-random-init"
    verdicts = {f.claim.name: f.verdict for f in card.findings}
    assert verdicts and "replicated" not in verdicts.values(), card.summary()
