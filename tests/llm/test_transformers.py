"""transformers as the oracle: tiny random models of each family, saved sharded by transformers itself,
merged by mecha into a folder that transformers' ``from_pretrained`` loads with the expected weights."""

from __future__ import annotations

import json

import pytest
import torch

import mecha_core as mc
from mecha_core.planning import detect_model

transformers = pytest.importorskip("transformers")

DIMS = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=64, max_position_embeddings=64)
FAMILIES = {  # model_type -> extra config
    "llama": {}, "mistral": {}, "qwen2": {}, "qwen3": {"head_dim": 4}, "gemma2": {"head_dim": 4},
    "gemma3_text": {"head_dim": 4}, "phi3": {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 1},
}


def save_random(folder, model_type, seed, **extra):
    """A random model built from its config and saved by transformers in several shards; its state dict."""
    config = transformers.AutoConfig.for_model(model_type, **{**DIMS, **FAMILIES[model_type], **extra})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder, max_shard_size="8KB")
    return model.state_dict()


def load(folder, **options):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, **options)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_a_merged_folder_loads_in_transformers_with_the_merged_weights(plugins, tmp_path, model_type):
    a = save_random(tmp_path / "a", model_type, seed=1)
    b = save_random(tmp_path / "b", model_type, seed=2)
    assert len(list((tmp_path / "a").glob("model-*.safetensors"))) > 2
    with mc.open_tensor_file(tmp_path / "a") as file:
        assert detect_model(file, plugins)[1] == "llm"
        arch = plugins.architectures.get("llm").for_file(file)
        assert arch.component("layers").blocks == ("layer0", "layer1", "layer2")
    recipe = mc.weighted_sum(str(tmp_path / "a"), str(tmp_path / "b"), alpha=0.25)
    mc.merge(recipe, f"{tmp_path / 'out'}/", save_dtype="fp32", max_shard_size="6KB")
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    merged = load(tmp_path / "out").state_dict()
    assert merged.keys() == a.keys()
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, 0.75 * a[name] + 0.25 * b[name], msg=name)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config == json.loads((tmp_path / "a" / "config.json").read_text())  # already float32


def test_tied_embeddings_stay_tied(plugins, tmp_path):
    a = save_random(tmp_path / "a", "qwen2", seed=1, tie_word_embeddings=True)
    save_random(tmp_path / "b", "qwen2", seed=2, tie_word_embeddings=True)
    with mc.open_tensor_file(tmp_path / "a") as file:
        assert "lm_head.weight" not in file.tensors
        assert plugins.architectures.get("llm").for_file(file).classes["lm_head"] == ("norm",)
    mc.merge(mc.weighted_sum(str(tmp_path / "a"), str(tmp_path / "b"), alpha=0.0), f"{tmp_path / 'out'}/",
             save_dtype="fp32")
    model = load(tmp_path / "out")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(model.lm_head.weight, a["model.embed_tokens.weight"])


def test_a_half_precision_merge_says_so_in_its_config_and_keeps_the_tokenizer(plugins, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {word: i for i, word in enumerate(["<unk>", "hello", "world", "merge"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    save_random(tmp_path / "a", "llama", seed=1)
    tokenizer.save_pretrained(tmp_path / "a")
    save_random(tmp_path / "b", "llama", seed=2)
    mc.merge(mc.weighted_sum(str(tmp_path / "a"), str(tmp_path / "b")), str(tmp_path / "out"), max_shard_size="1GB")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float16"
    model = load(tmp_path / "out", dtype="auto")
    assert model.dtype == torch.float16
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert loaded("hello merge world")["input_ids"] == [1, 3, 2]
    ids = torch.tensor([[1, 3, 2]])
    assert torch.isfinite(model(ids).logits).all()


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_layers_of_models_of_different_depths_stack_into_a_folder_transformers_loads(plugins, tmp_path, model_type):
    """Layers 0-3 of a 4-layer model, then 3-5 of a 6-layer one: a 7-layer model whose config.json says
    so, with each layer's attention type (Gemma 3 lists them: five sliding layers, then a full one)."""
    a = save_random(tmp_path / "a", model_type, seed=1, num_hidden_layers=4)
    b = save_random(tmp_path / "b", model_type, seed=2, num_hidden_layers=6)
    recipe = mc.deserialize(f'''version 1
model "{tmp_path / 'a'}" rename="model.embed_tokens, model.layers.{{0..3}}.>model.layers.{{0..3}}."
model "{tmp_path / 'b'}" rename="model.layers.{{3..5}}.>model.layers.{{4..6}}., model.norm, lm_head"
merge "linear" &0 &1
''')
    mc.merge(recipe, f"{tmp_path / 'out'}/", save_dtype="fp32")
    model = load(tmp_path / "out")
    assert model.config.num_hidden_layers == 7 and len(model.model.layers) == 7
    config_a = json.loads((tmp_path / "a" / "config.json").read_text())
    config_b = json.loads((tmp_path / "b" / "config.json").read_text())
    if "layer_types" in config_b:
        assert config_b["layer_types"][5] != config_b["layer_types"][4]
        assert model.config.layer_types == config_a["layer_types"][:4] + config_b["layer_types"][3:]
    merged = model.state_dict()
    for name, tensor in a.items():
        if name.startswith("model.layers.") or name == "model.embed_tokens.weight":
            torch.testing.assert_close(merged[name], tensor, rtol=0, atol=0, msg=name)
    for j in range(3, 6):
        for name in (n for n in b if n.startswith(f"model.layers.{j}.")):
            torch.testing.assert_close(merged[name.replace(f"layers.{j}.", f"layers.{j + 1}.")], b[name], rtol=0, atol=0)
    torch.testing.assert_close(merged["model.norm.weight"], b["model.norm.weight"], rtol=0, atol=0)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
