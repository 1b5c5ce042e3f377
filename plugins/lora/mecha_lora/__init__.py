"""mecha-lora: LoRA files as a model type (delta space), registered through ``mecha_model_types()``.

A LoRA is read as the deltas it adds to the checkpoint keys it targets, so recipes bake it
(``add_difference(model, lora, alpha=0.8)``) and mix it with other deltas like any model. It is also a
save format: ``mecha merge ... --as-lora RANK`` writes a delta-space result as a kohya LoRA. Modules:
:mod:`~mecha_lora.networks` (the networks an architecture holds), :mod:`~mecha_lora.naming` (LoRA names),
:mod:`~mecha_lora.placement` (detection), :mod:`~mecha_lora.source` (composing deltas),
:mod:`~mecha_lora.encoder` (SVD) and :mod:`~mecha_lora.generation` (random LoRAs for tests and benchmarks).
"""

from __future__ import annotations

from mecha_core import MergeSpace, ModelType, hookimpl

from .encoder import LoraEncoder, extras_usage
from .placement import detect
from .source import LoraSource

LORA = ModelType(
    name="lora",
    space=MergeSpace.DELTA,
    open=LoraSource,
    summary="a LoRA, LoCon, LoHa, LoKr, full or DoRA (kohya, LyCORIS, diffusers/PEFT names) read as what it adds "
            "to a checkpoint; --as-lora RANK saves one",
    detect=detect,
    encoder=LoraEncoder,
    save_option="rank",
    save_extras=(("format", "kohya (default) or peft: the names written"),
                 ("algo", "lora (default) or lokr: the modules written"),
                 ("factor", "LoKr's factor, -1 (default: the most balanced split) or a positive number; "
                            "with --lora-algo lokr")),
    save_extras_usage=extras_usage,
)


@hookimpl
def mecha_model_types() -> list[ModelType]:
    return [LORA]
