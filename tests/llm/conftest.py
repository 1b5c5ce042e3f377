"""The LLM family and the method library, registered in a clean plugin set; tiny models by hand."""

from __future__ import annotations

import pytest


@pytest.fixture
def plugins(mecha_plugins):
    import mecha_llm
    import mecha_methods
    mecha_plugins.register(mecha_methods, "methods")
    mecha_plugins.register(mecha_llm, "llm")
    return mecha_plugins


LLAMA_MODULES = {  # module path -> shape, for hidden 8, 2 heads of 4 with 1 key/value head, MLP 16
    "self_attn.q_proj.weight": (8, 8), "self_attn.k_proj.weight": (4, 8), "self_attn.v_proj.weight": (4, 8),
    "self_attn.o_proj.weight": (8, 8), "mlp.gate_proj.weight": (16, 8), "mlp.up_proj.weight": (16, 8),
    "mlp.down_proj.weight": (8, 16), "input_layernorm.weight": (8,), "post_attention_layernorm.weight": (8,),
}


def llama_state_dict(layers: int = 3, *, tied: bool = False, seed: int = 0, vocab: int = 32) -> dict:
    """A Llama-layout state dict with shrunk dimensions, by hand (no transformers needed)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (vocab, 8)}
    for index in range(layers):
        shapes.update({f"model.layers.{index}.{path}": shape for path, shape in LLAMA_MODULES.items()})
    shapes["model.norm.weight"] = (8,)
    if not tied:
        shapes["lm_head.weight"] = (vocab, 8)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
