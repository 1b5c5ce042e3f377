"""Real-size synthetic checkpoints for the benchmarks, written key by key (never whole in memory).

Key names and shapes come from the installed architecture plugins (mecha-sd1, mecha-sdxl, mecha-flux),
values from mecha-sd1's random generator; the LoRAs of the SDXL scenario from mecha-lora's generator.
"""

from __future__ import annotations

import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without numpy: harmless

import torch  # noqa: E402

from mecha_core import get_plugins


def _write(arch_name: str, path: Path, seed: int) -> Path:
    from mecha_core.random_models import write_random_model
    from mecha_sd_blocks import PRUNED_COMPONENTS
    print(f"generating {path}")
    specs = get_plugins().architectures.get(arch_name).key_specs.values()
    return write_random_model(path, specs, seed=seed, dtype=torch.float16, pruned=PRUNED_COMPONENTS)


def ensure_sd1(folder: Path, count: int) -> list[Path]:
    """`count` pruned SD1.5 fp16 checkpoints (1131 keys, 1.07 G parameters, 2.13 GB each)."""
    paths = [folder / f"sd1-{i}.safetensors" for i in range(count)]
    for seed, path in enumerate(paths):
        if not path.exists():
            _write("sd1", path, seed)
    return paths


def ensure_sdxl(folder: Path) -> Path:
    """A pruned SDXL fp16 checkpoint (6.9 GB)."""
    path = folder / "sdxl.safetensors"
    return path if path.exists() else _write("sdxl", path, 100)


def ensure_lora(folder: Path, *, conv: bool, algo: str = "lora") -> Path:
    """A rank-32 kohya LoRA of SDXL: of its linear layers (``conv=False``, kohya's default), or also of
    its 3x3 convolutions (a LoCon, 94% of the UNet's parameters); `algo` ``"loha"``/``"lokr"``: a LyCORIS
    LoHa or LoKr of the same layers instead."""
    stem = "sdxl-locon" if conv else "sdxl-lora"
    path = folder / (f"{stem}.safetensors" if algo == "lora" else f"{stem}-{algo}.safetensors")
    if not path.exists():
        print(f"generating {path}")
        from mecha_lora.generation import write_random_lora
        write_random_lora(path, get_plugins().architectures.get("sdxl"), rank=32, seed=101, conv=conv, algo=algo)
    return path


def ensure_flux(folder: Path, count: int) -> list[Path]:
    """`count` FLUX.1 transformer-only fp8 (e4m3fn) files as most are shared: 780 keys without the
    ``model.diffusion_model.`` prefix, 11.9 G parameters, 11.9 GB each."""
    import dataclasses
    from mecha_core.random_models import write_random_model
    specs = [dataclasses.replace(spec, name=spec.aliases[0])
             for spec in get_plugins().architectures.get("flux").key_specs.values() if spec.component == "unet"]
    paths = [folder / f"flux-{i}.safetensors" for i in range(count)]
    for seed, path in enumerate(paths):
        if not path.exists():
            print(f"generating {path}")
            write_random_model(path, specs, seed=seed, dtype=torch.float8_e4m3fn)
    return paths
