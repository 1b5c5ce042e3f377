"""mecha-llm: decoder-only transformer LLMs as Hugging Face ``transformers`` saves them, registered
through ``mecha_architectures()`` as the family ``llm``.

The family is specialized per model (:mod:`mecha_llm.family`): its layer count comes from the
``config.json`` beside the weights, its keys and shapes from the weights' own header, so one plugin
covers every size of Llama, Mistral, Qwen2/3, Gemma 2/3 and Phi-3 without a table of sizes.
"""

from __future__ import annotations

from mecha_core import Architecture, hookimpl


@hookimpl
def mecha_architectures() -> list[Architecture]:
    from .family import LLM
    return [LLM]
