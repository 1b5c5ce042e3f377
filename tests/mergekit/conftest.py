"""Tiny random Llama models (real key names, shrunk sizes), the plugins, and mergekit as an oracle.

mergekit pins its own dependencies (transformers, pydantic, ...), so it lives in its own venv, made
once under the user cache folder (``MECHA_MERGEKIT_VENV`` points elsewhere) and run as a
subprocess; the tests that need it skip when it cannot be installed (no registry reachable).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from mecha_core import save_tensors

MERGEKIT = "mergekit==0.1.5"
HIDDEN, INTERMEDIATE, VOCAB, HEADS, KV_HEADS = 16, 24, 32, 4, 2
PROJECTIONS = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN // 2, HIDDEN),
               "self_attn.v_proj": (HIDDEN // 2, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
               "mlp.gate_proj": (INTERMEDIATE, HIDDEN), "mlp.up_proj": (INTERMEDIATE, HIDDEN),
               "mlp.down_proj": (HIDDEN, INTERMEDIATE)}


@pytest.fixture
def plugins(mecha_plugins):
    import mecha_mergekit
    import mecha_methods
    mecha_plugins.register(mecha_methods, "methods")
    mecha_plugins.register(mecha_mergekit, "mergekit")
    return mecha_plugins


def llama_tensors(layers: int, seed: int, base: dict[str, torch.Tensor] | None = None,
                  dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A random Llama state dict; with `base`, a fine-tune of it (base + noise)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        shapes[f"model.layers.{i}.input_layernorm.weight"] = (HIDDEN,)
        shapes.update({f"model.layers.{i}.{name}.weight": shape for name, shape in PROJECTIONS.items()})
        shapes[f"model.layers.{i}.post_attention_layernorm.weight"] = (HIDDEN,)
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    tensors = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=generator) * 0.05
        if base is not None:
            value = base[name] + noise
        elif name.endswith("layernorm.weight") or name == "model.norm.weight":
            value = 1 + 4 * noise
        else:
            value = noise * 4
        tensors[name] = value.to(dtype).contiguous()
    return tensors


def write_llama(folder: Path, tensors: dict[str, torch.Tensor], layers: int) -> Path:
    """A model folder as mergekit reads it: config.json and model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, folder / "model.safetensors")
    dtype = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[
        next(iter(tensors.values())).dtype]
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": layers, "vocab_size": VOCAB, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False, "torch_dtype": dtype, "hidden_act": "silu"}))
    return folder


@pytest.fixture(scope="session")
def llamas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base and three fine-tunes of it (4 layers, fp32), and an unrelated model with 6 layers."""
    folder = tmp_path_factory.mktemp("llamas")
    base = llama_tensors(4, seed=0)
    folders = {"base": write_llama(folder / "base", base, 4)}
    for i, name in enumerate(("a", "b", "c"), start=1):
        folders[name] = write_llama(folder / name, llama_tensors(4, seed=i, base=base), 4)
    folders["deep"] = write_llama(folder / "deep", llama_tensors(6, seed=9), 6)
    return folders


def mecha_config(text: str, folders: dict[str, Path], tmp_path: Path, name: str = "mecha.yml") -> Path:
    """A configuration file; `@a` is the folder of model `a` (mecha and mergekit read the same file)."""
    path = tmp_path / name
    path.write_text(_fill(text, folders))
    return path


def mergekit_config(text: str, folders: dict[str, Path], tmp_path: Path, name: str = "mergekit.yml") -> Path:
    path = tmp_path / name
    path.write_text(_fill(text, folders))
    return path


def _fill(text: str, paths: dict[str, Path]) -> str:
    """`@name` replaced by the path of model `name` (longest names first)."""
    for name in sorted(paths, key=len, reverse=True):
        text = text.replace(f"@{name}", str(paths[name]))
    return text


def _venv() -> Path:
    given = os.environ.get("MECHA_MERGEKIT_VENV")
    if given:
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "mecha-tests" / MERGEKIT.replace("==", "-")


@pytest.fixture(scope="session")
def mergekit_python() -> Path:
    """The Python of a venv holding mergekit (made once; skips when it cannot be installed)."""
    venv = _venv()
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import mergekit.scripts.run_yaml"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True)
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    if made.returncode == 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", torch_pin, MERGEKIT], capture_output=True,
                       timeout=1800)
    if subprocess.run(check, capture_output=True).returncode != 0:
        pytest.skip(f"{MERGEKIT} could not be installed in {venv}")
    return python


_RUN_ALL = """
import sys
import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions

for config, out in zip(sys.argv[1::2], sys.argv[2::2]):
    with open(config) as file:
        run_merge(MergeConfiguration.model_validate(yaml.safe_load(file)), out,
                  MergeOptions(quiet=True, write_model_card=False))
"""


def run_mergekit(python: Path, jobs: list[tuple[Path, Path]]) -> None:
    """mergekit (its run_merge, what mergekit-yaml calls) on the CPU, every (config, output folder) in
    one process: importing mergekit costs more than merging tiny models."""
    arguments = [str(part) for job in jobs for part in job]
    result = subprocess.run([str(python), "-c", _RUN_ALL, *arguments], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]


def merged_tensors(out: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, Any] = {}
    for shard in sorted(out.glob("*.safetensors")):
        tensors.update(read_tensors(shard))
    return tensors


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as file:
        return {name: file.get_tensor(name) for name in file.keys()}
