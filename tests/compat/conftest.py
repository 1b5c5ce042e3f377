"""sd-mecha 0.0.x users' material on mecha: the plugins registered, a models folder of tiny SD files, and
sd-mecha 0.0.25 itself as the oracle where it is installed (tests needing it skip without it)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from mecha_core.testing import write_model

SD1_MODELS = {"ghost": 0, "dream": 1, "pure": 2}


@pytest.fixture
def plugins(mecha_plugins):
    import mecha_lora
    import mecha_methods
    import mecha_sd1
    import mecha_sdxl
    for module, name in ((mecha_sd1, "sd1"), (mecha_sdxl, "sdxl"), (mecha_methods, "methods"), (mecha_lora, "lora")):
        mecha_plugins.register(module, name)
    return mecha_plugins


@pytest.fixture(scope="session")
def models_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.0.x-style models folder, made once: ``Stable-diffusion/{ghost,dream,pure}.safetensors`` (tiny
    SD1) and ``Lora/detail.safetensors`` (a tiny kohya LoRA for them). Tests that write outputs copy it."""
    from mecha_lora.generation import write_random_lora
    from mecha_sd1.sd1 import SD1
    root = tmp_path_factory.mktemp("compat") / "models"
    (root / "Stable-diffusion").mkdir(parents=True)
    (root / "Lora").mkdir()
    for name, seed in SD1_MODELS.items():
        write_model(SD1.generate(seed=seed, dtype=torch.float32, tiny=True),
                    root / "Stable-diffusion" / f"{name}.safetensors")
    write_random_lora(root / "Lora" / "detail.safetensors", SD1, rank=4, seed=5, tiny=True)
    return root


@pytest.fixture
def models(plugins, models_folder: Path) -> Path:
    """The shared models folder, read-only by convention, with the plugins registered."""
    return models_folder


@pytest.fixture
def own_models(plugins, models_folder: Path, tmp_path: Path) -> Path:
    """A copy of the models folder that a test may write into."""
    return Path(shutil.copytree(models_folder, tmp_path / "models"))


@pytest.fixture
def sd_mecha() -> Any:
    """sd-mecha 0.0.25 from the package registry (requirements-dev.txt), or a skip."""
    module = pytest.importorskip("sd_mecha")
    from importlib.metadata import version
    if version("sd-mecha") != "0.0.25":
        pytest.skip(f"the oracle is sd-mecha 0.0.25, found {version('sd-mecha')}")
    return module


def load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(path))


def metadata(path: Path) -> dict[str, str]:
    """A safetensors file's ``__metadata__``, read from its header by hand."""
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(size)).get("__metadata__", {})


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float) -> None:
    """Every float key of `expected` is in `actual` with values within `atol`."""
    floats = [k for k, v in expected.items() if v.is_floating_point()]
    assert floats and set(floats) <= set(actual)
    for key in floats:
        torch.testing.assert_close(actual[key].double(), expected[key].double(), rtol=0, atol=atol, msg=key)
