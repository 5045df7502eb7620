"""Loading the user's own model: checkpoint folders of many architectures, GGUF files, devices.

Tiny randomly initialised checkpoints (2 layers, d_model 64, a 96-token character vocabulary) are
built with ``transformers`` inside the tests, saved with ``save_pretrained`` and loaded by path:
no download. The slow tests use the offline SmolLM2 and Gemma-3 files.
"""

import json
import struct
from pathlib import Path

import pytest
import torch

from workbench import models
from workbench.models import CheckpointError, UnsupportedArchitectureError, sources

transformers = pytest.importorskip("transformers")

VOCAB = 96
PROMPTS = ["Hello world, this is a test.", "When Mary and John went to the store"]
COMMON = dict(
    vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=128, max_position_embeddings=128,
)
CONFIGS = {
    "llama": lambda T: T.LlamaConfig(**COMMON, num_key_value_heads=2, tie_word_embeddings=False),
    "mistral": lambda T: T.MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=None),
    "qwen2": lambda T: T.Qwen2Config(**COMMON, num_key_value_heads=2),
    "qwen3": lambda T: T.Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=16),
    "gpt2": lambda T: T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128),
    "gpt-neox": lambda T: T.GPTNeoXConfig(**COMMON),
    "olmo3": lambda T: T.Olmo3Config(**COMMON, num_key_value_heads=4),
}


def char_tokenizer(*, bos: bool = True):
    """A character-level tokenizer built with the ``tokenizers`` library (no download)."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tm

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for c in range(32, 32 + VOCAB - 3):
        vocab[chr(c)] = len(vocab)
    tk = Tokenizer(tm.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    extra = {"bos_token": "<s>"} if bos else {}
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", eos_token="</s>", **extra
    )


def make_checkpoint(folder: Path, arch: str, *, seed: int = 0, bos: bool = True, config=None):
    """A tiny random checkpoint of ``arch`` in ``folder``; returns the Hugging Face model."""
    torch.manual_seed(seed)
    cfg = config or CONFIGS[arch](transformers)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # norms and biases away from their 1 / 0 initialisation
        for p in hf.parameters():
            p.add_(0.02 * torch.randn_like(p))
    hf.save_pretrained(folder)
    char_tokenizer(bos=bos).save_pretrained(folder)
    return hf


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))


def max_diff_to_hf(model, hf) -> float:
    worst = 0.0
    with torch.no_grad():
        for prompt in PROMPTS:
            tokens = models.to_tokens(model, prompt)
            worst = max(worst, (model(tokens) - hf(tokens).logits).abs().max().item())
    return worst


# ----------------------------------------------------------------------------- architectures
@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_folder_of_each_architecture_loads_with_hugging_face_logits(tmp_path, arch):
    hf = make_checkpoint(tmp_path / arch, arch)
    model = models.load_model(tmp_path / arch, verbose=False)
    assert model.cfg.original_architecture == type(hf).__name__
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (2, 64, VOCAB)
    assert max_diff_to_hf(model, hf) < 1e-4
    tokens = models.to_tokens(model, PROMPTS[0])
    assert tokens[0, 0] == model.tokenizer.bos_token_id == 1 and (tokens[0, 1:] != 1).all()


def test_a_tokenizer_without_bos_gets_its_eos_first(tmp_path):
    hf = make_checkpoint(tmp_path / "q", "qwen2", bos=False)
    model = models.load_model(tmp_path / "q", verbose=False)
    eos = model.tokenizer.eos_token_id
    assert eos == 2 and models.bos_token_id(model.tokenizer) == eos
    tokens = models.to_tokens(model, ["Hi there", "Ho there"])
    assert (tokens[:, 0] == eos).all() and (tokens[:, 1:] != eos).all()
    assert max_diff_to_hf(model, hf) < 1e-4
    no_tokens = char_tokenizer(bos=False)
    no_tokens.eos_token = None
    with pytest.raises(ValueError, match="neither a BOS nor an EOS"):
        models.bos_token_id(no_tokens)


def test_gemma_at_an_unofficial_size_names_what_is_supported(tmp_path):
    cfg = transformers.Gemma3TextConfig(**COMMON, num_key_value_heads=1, head_dim=16)
    make_checkpoint(tmp_path / "g", "gemma3", config=cfg)
    with pytest.raises(UnsupportedArchitectureError, match="official.*LlamaForCausalLM.*Qwen2ForCausalLM"):
        models.load_model(tmp_path / "g", verbose=False, backend="hooked")


def test_unmapped_architecture_names_the_supported_ones(tmp_path):
    cfg = transformers.FalconConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    make_checkpoint(tmp_path / "f", "falcon", config=cfg)
    with pytest.raises(UnsupportedArchitectureError, match="'FalconForCausalLM'.*GPT2LMHeadModel.*GPTNeoXForCausalLM"):
        models.load_model(tmp_path / "f", verbose=False, backend="hooked")


def test_supported_architectures_are_the_ones_transformer_lens_maps():
    import inspect

    from transformer_lens import loading_from_pretrained as lfp

    config_src = inspect.getsource(lfp.convert_hf_model_config)
    weights_src = inspect.getsource(lfp.get_pretrained_state_dict)
    for arch in models.supported_architectures():
        assert f'"{arch}"' in weights_src, arch
    for arch in sources.CONFIG_MAPPED:
        assert f'architecture == "{arch}"' in config_src, arch


# ----------------------------------------------------------------------------- cache by content
def test_changed_checkpoint_is_converted_again_never_stale(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "m"
    hf = make_checkpoint(folder, "llama")
    first = models.load_model(folder)
    again = models.load_model(folder)
    out = capsys.readouterr().out
    assert "converted and cached" in out.splitlines()[0] and "(cache)" in out.splitlines()[1]
    tokens = models.to_tokens(first, PROMPTS[0])
    assert torch.equal(first(tokens), again(tokens))

    weights = folder / "model.safetensors"
    sd = load_file(str(weights))
    key = next(k for k in sd if "layers.1.mlp.down_proj" in k)
    sd[key] = sd[key] * 3.0
    save_file(sd, str(weights), metadata={"format": "pt"})
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    changed = models.load_model(folder)
    assert "converted and cached" in capsys.readouterr().out
    assert not torch.allclose(changed(tokens), first(tokens))
    assert max_diff_to_hf(changed, hf2) < 1e-4 and max_diff_to_hf(first, hf) < 1e-4
    listed = models.list_models()
    mine = listed[listed["kind"] == "folder"]
    assert len(mine) == 2 and set(mine["architecture"]) == {"LlamaForCausalLM"}
    assert (mine["layers"] == 2).all() and mine.index.str.startswith("m-").all()


# ----------------------------------------------------------------------------- errors
def test_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="no config.json.*readme.txt"):
        models.load_model(tmp_path / "notes", verbose=False)
    make_checkpoint(tmp_path / "noweights", "llama")
    (tmp_path / "noweights" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        models.load_model(tmp_path / "noweights", verbose=False)
    with pytest.raises(models.ModelNotAvailableError, match="no such file"):
        models.load_model(tmp_path / "missing", verbose=False)


def test_truncated_weights_file(tmp_path):
    make_checkpoint(tmp_path / "t", "qwen2")
    weights = tmp_path / "t" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        models.load_model(tmp_path / "t", verbose=False)
    weights.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(CheckpointError, match="truncated"):
        models.load_model(tmp_path / "t", verbose=False)


@pytest.mark.parametrize("change", [{"num_hidden_layers": 3}, {"intermediate_size": 96}])
def test_config_and_weights_that_disagree(tmp_path, change):
    make_checkpoint(tmp_path / "d", "llama")
    cfg_file = tmp_path / "d" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **change}))
    with pytest.raises(CheckpointError, match="disagree"):
        models.load_model(tmp_path / "d", verbose=False)


def test_not_a_gguf_file(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"nope" * 10)
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        models.load_model(fake, verbose=False)


# ----------------------------------------------------------------------------- devices, dtypes
def test_dtype_and_device_options_are_checked():
    assert models.resolve_dtype(None) == torch.float32
    assert models.resolve_dtype("bf16") == models.resolve_dtype(torch.bfloat16) == torch.bfloat16
    assert models.resolve_dtype("float16") == torch.float16
    with pytest.raises(ValueError, match="int8.*float32, bfloat16, float16"):
        models.resolve_dtype("int8")
    assert models.resolve_device(None) == torch.device("cpu")
    assert models.resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="'tpu'"):
        models.resolve_device("tpu")
    with pytest.raises(ValueError, match="n_devices"):
        models.load_model("smollm2-135m", n_devices=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine with no GPU")
def test_cuda_on_a_machine_without_one_says_so():
    with pytest.raises(ValueError, match="CUDA is not available"):
        models.load_model("smollm2-135m", device="cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, "float16"])
def test_half_precision_load_is_close_to_float32(tmp_path, dtype):
    hf = make_checkpoint(tmp_path / "h", "llama")
    full = models.load_model(tmp_path / "h", verbose=False)
    half = models.load_model(tmp_path / "h", dtype=dtype, verbose=False)
    want = models.resolve_dtype(dtype)
    assert half.cfg.dtype == want and all(p.dtype == want for p in half.parameters())
    tokens = models.to_tokens(full, PROMPTS[0])
    logits = half(tokens)
    assert logits.dtype == want
    assert (logits.float() - full(tokens)).abs().max() < 0.05
    assert max_diff_to_hf(full, hf) < 1e-4


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_model_matches_the_cpu_model(tmp_path, dtype):
    make_checkpoint(tmp_path / "c", "llama")
    cpu = models.load_model(tmp_path / "c", verbose=False)
    gpu = models.load_model(tmp_path / "c", device="cuda", dtype=dtype, verbose=False)
    assert next(gpu.parameters()).device.type == "cuda"
    tokens = models.to_tokens(cpu, PROMPTS[0])
    tol = 1e-4 if dtype == "float32" else 0.05
    assert (gpu(tokens.cuda()).float().cpu() - cpu(tokens)).abs().max() < tol


@cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_model_split_over_two_gpus_matches_the_cpu_model(tmp_path):
    make_checkpoint(tmp_path / "c", "llama")
    cpu = models.load_model(tmp_path / "c", verbose=False)
    split = models.load_model(tmp_path / "c", device="cuda", n_devices=2, verbose=False)
    tokens = models.to_tokens(cpu, PROMPTS[0])
    assert (split(tokens.cuda()).cpu() - cpu(tokens)).abs().max() < 1e-4


# ----------------------------------------------------------------------------- real checkpoints
@pytest.mark.slow
def test_smollm2_saved_as_a_folder_gives_the_offline_models_logits(tmp_path, smollm2):
    hf, tok = models.load_hf_model("smollm2-135m")
    plain = type(hf)(hf.config)  # the same weights in a model that is not marked as from GGUF
    plain.load_state_dict(hf.state_dict())
    plain.save_pretrained(tmp_path / "SmolLM2 copy")
    tok.save_pretrained(tmp_path / "SmolLM2 copy")
    del hf, plain
    model = models.load_model(tmp_path / "SmolLM2 copy", verbose=False)
    for prompt in PROMPTS:
        tokens = models.to_tokens(smollm2, prompt)
        assert torch.equal(models.to_tokens(model, prompt), tokens)
        assert (model(tokens) - smollm2(tokens)).abs().max() < 1e-4


@pytest.mark.slow
def test_offline_gguf_file_loads_by_its_path(smollm2):
    path = models.OFFLINE_MODELS["smollm2-135m"].gguf()
    model = models.load_model(str(path), verbose=False)
    assert model.cfg.original_architecture == "LlamaForCausalLM"
    tokens = models.to_tokens(smollm2, PROMPTS[1])
    assert torch.equal(model(tokens), smollm2(tokens))
