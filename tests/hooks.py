"""The one check every technique's tests share: no hook outlives a call, even one that raises."""


def assert_no_hooks(model) -> None:
    """No TransformerLens hook on any hook point, and no torch hook on any module of ``model``."""
    for name, hp in model.hook_dict.items():
        assert not hp.fwd_hooks and not hp.bwd_hooks, f"hook left on {name}"
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._backward_hooks, f"torch hook left on {name or 'model'}"
        assert not module._forward_pre_hooks, f"torch pre-hook left on {name or 'model'}"
