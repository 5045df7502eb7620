"""The tuned lens: an unfit lens is the logit lens; fitting lowers every layer's KL to the final
distribution; the model is left as it was."""

import torch

from workbench import models
from workbench.techniques.lens import logit_lens
from workbench.techniques.tuned_lens import TunedLens, fit_tuned_lens, lens_kl


def _tokens(seed=0, batch=16, pos=12):
    return torch.randint(0, 100, (batch, pos), generator=torch.Generator().manual_seed(seed))


def test_an_unfit_tuned_lens_is_the_logit_lens():
    model = models.tiny_model()
    tokens = _tokens()[:2]
    unfit = fit_tuned_lens(model, tokens, steps=0)
    a, b = logit_lens(model, tokens), logit_lens(model, tokens, lens=unfit)
    assert torch.equal(a.logit.values, b.logit.values)
    assert b.logit.metric == "tuned lens: target logit" and b.logit.meta["lens"] == "tuned"


def test_fitting_lowers_the_kl_on_held_out_prompts_and_leaves_the_model_alone():
    model = models.tiny_model(n_layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = fit_tuned_lens(model, _tokens(0, batch=32), steps=150, lr=1e-2)
    held_out = _tokens(1, batch=16)
    plain = lens_kl(model, TunedLens(weight=torch.zeros(3, 64, 64), bias=torch.zeros(3, 64)), held_out)
    fitted = lens_kl(model, tuned, held_out)
    assert (fitted < plain).all(), (fitted, plain)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_fitted_lens_saves_and_loads(tmp_path):
    model = models.tiny_model()
    tuned = fit_tuned_lens(model, _tokens(), steps=5, lr=1e-2)
    back = TunedLens.load(tuned.save(tmp_path / "lens.pt"))
    assert torch.equal(back.weight, tuned.weight) and torch.equal(back.bias, tuned.bias)
    assert list(tuned.to_frame().columns) == ["layer", "weight_norm", "bias_norm"]
    assert tuned.plot() is not None
