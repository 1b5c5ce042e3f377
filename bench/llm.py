"""The LLM scenario: two random Llama models of TinyLlama's shapes (1.1 G parameters, fp16) merged from
one mergekit configuration by mecha (``mecha merge config.yml``) and by mergekit (``mergekit-yaml``,
CPU, default options).

mergekit pins its own dependencies, so it runs from its own venv, made once under the data folder
(``torch`` at this repository's pin and ``mergekit==0.1.5`` from the package registry).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MERGEKIT = "mergekit==0.1.5"
# TinyLlama-1.1B's shapes
LAYERS, HIDDEN, INTERMEDIATE, VOCAB, HEADS, KV_HEADS = 22, 2048, 5632, 32000, 32, 4

CONFIGS = {
    "ties": """models:
  - model: {b}
    parameters: {{weight: 1.0, density: 0.5}}
merge_method: ties
base_model: {a}
dtype: float16
""",
    "slerp": """models:
  - model: {a}
  - model: {b}
merge_method: slerp
base_model: {a}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float16
""",
}


def _specs() -> list:
    from mecha_core import KeySpec
    kv = HIDDEN * KV_HEADS // HEADS
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        prefix = f"model.layers.{i}."
        shapes.update({prefix + "input_layernorm.weight": (HIDDEN,),
                       prefix + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
                       prefix + "self_attn.k_proj.weight": (kv, HIDDEN),
                       prefix + "self_attn.v_proj.weight": (kv, HIDDEN),
                       prefix + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                       prefix + "post_attention_layernorm.weight": (HIDDEN,),
                       prefix + "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
                       prefix + "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
                       prefix + "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE)})
    shapes.update({"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)})
    return [KeySpec(name, shape) for name, shape in shapes.items()]


def ensure_llamas(folder: Path) -> list[Path]:
    """Two model folders (config.json, model.safetensors), 2.2 GB each."""
    import torch
    from mecha_core.random_models import write_random_model
    folders = [folder / f"llama-{i}" for i in range(2)]
    for seed, model in enumerate(folders):
        weights = model / "model.safetensors"
        if weights.exists():
            continue
        model.mkdir(parents=True, exist_ok=True)
        print(f"generating {weights}", file=sys.stderr)
        write_random_model(weights, _specs(), seed=seed, dtype=torch.float16)
        (model / "config.json").write_text(json.dumps({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "num_hidden_layers": LAYERS, "vocab_size": VOCAB, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float16", "hidden_act": "silu"}))
    return folders


def ensure_mergekit(folder: Path) -> Path:
    """The mergekit-yaml of a venv under `folder`, made on first use."""
    venv = folder / "mergekit-venv"
    script = venv / "bin" / "mergekit-yaml"
    if not script.exists():
        import torch
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pin = f"torch=={torch.__version__.split('+')[0]}"
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", pin, MERGEKIT], check=True)
    return script


def config_file(folder: Path, models: list[Path], method: str) -> Path:
    """The configuration both tools run, naming the model folders."""
    path = folder / f"llm-{method}.yml"
    path.write_text(CONFIGS[method].format(a=models[0], b=models[1]))
    return path
