"""Each mergekit method, run by mecha from the same configuration as by mergekit itself on the same
tiny models: the outputs agree within float32 rounding.

Random methods (dare_*, della*) cannot draw mergekit's random numbers, and rescale differently (per
entry by 1/p, mergekit the whole tensor to its L1 norm); they are compared at density 1, where
nothing is dropped, and their drop rates are tested in test_random.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mecha_core.cli import main

from .conftest import mecha_config, merged_tensors, mergekit_config, read_tensors, run_mergekit

GRADIENT_T = """
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.4"""

CASES = {
    "linear": """
models:
  - model: @a
    parameters: {weight: 0.3}
  - model: @b
    parameters:
      weight: [0.5, 1.0, 2.0]
merge_method: linear
dtype: float32
""",
    "slerp": f"""
models:
  - model: @base
  - model: @a
merge_method: slerp
base_model: @base
parameters:{GRADIENT_T}
dtype: float32
""",
    "nuslerp": """
models:
  - model: @a
    parameters: {weight: 0.3}
  - model: @b
    parameters: {weight: 0.6}
merge_method: nuslerp
base_model: @base
dtype: float32
""",
    "nuslerp_rows": """
models:
  - model: @a
    parameters: {weight: 1.0}
  - model: @b
    parameters: {weight: [0.2, 0.9]}
merge_method: nuslerp
parameters: {nuslerp_flatten: false, nuslerp_row_wise: true}
dtype: float32
""",
    "task_arithmetic": """
models:
  - model: @a
    parameters: {weight: 0.5}
  - model: @b
    parameters:
      weight:
        - filter: mlp
          value: 0.9
        - value: 0.3
merge_method: task_arithmetic
base_model: @base
parameters: {lambda: 0.8}
dtype: float32
""",
    "ties": """
models:
  - model: @base
  - model: @a
    parameters: {weight: 1.0, density: 0.5}
  - model: @b
    parameters:
      weight: [0.2, 0.8]
      density: 0.7
merge_method: ties
base_model: @base
parameters: {lambda: 0.9, int8_mask: true}
dtype: float32
""",
    "breadcrumbs": """
models:
  - model: @a
    parameters: {weight: 0.6, density: 0.8, gamma: 0.05}
  - model: @b
    parameters: {weight: 0.7, density: 0.6}
merge_method: breadcrumbs
base_model: @base
dtype: float32
""",
    "breadcrumbs_ties": """
models:
  - model: @a
    parameters: {weight: 0.6, density: 0.8, gamma: 0.05}
  - model: @b
    parameters: {weight: 0.7, density: 0.6}
merge_method: breadcrumbs_ties
base_model: @base
parameters: {normalize: true}
dtype: float32
""",
    "dare_ties": """
models:
  - model: @a
    parameters: {weight: 0.6}
  - model: @b
    parameters: {weight: 0.7, density: 1.0}
merge_method: dare_ties
base_model: @base
dtype: float32
""",
    "dare_linear": """
models:
  - model: @a
    parameters: {weight: 0.6}
  - model: @b
    parameters: {weight: 0.7}
merge_method: dare_linear
base_model: @base
parameters: {normalize: true}
dtype: float32
""",
    "della": """
models:
  - model: @a
    parameters: {weight: 0.6}
  - model: @b
    parameters: {weight: 0.7}
merge_method: della
base_model: @base
parameters: {density: 1.0, epsilon: 0.1}
dtype: float32
""",
    "della_linear": """
models:
  - model: @a
    parameters: {weight: 0.6}
  - model: @b
    parameters: {weight: 0.7}
merge_method: della_linear
base_model: @base
dtype: float32
""",
    "model_stock": """
models:
  - model: @a
  - model: @b
  - model: @c
merge_method: model_stock
base_model: @base
dtype: float32
""",
    "model_stock_filter_wise": """
models:
  - model: @a
  - model: @b
merge_method: model_stock
base_model: @base
parameters: {filter_wise: true}
dtype: float32
""",
    "karcher": """
models:
  - model: @a
  - model: @b
  - model: @c
merge_method: karcher
parameters: {max_iter: 20}
dtype: float32
""",
    "sce": """
models:
  - model: @a
  - model: @b
  - model: @c
merge_method: sce
base_model: @base
parameters: {select_topk: 0.5}
dtype: float32
""",
    "multislerp": """
models:
  - model: @a
    parameters: {weight: 0.2}
  - model: @b
    parameters: {weight: 0.5}
  - model: @c
    parameters: {weight: 0.3}
merge_method: multislerp
base_model: @base
dtype: float32
""",
    "multislerp_no_base": """
models:
  - model: @a
    parameters: {weight: 1.0}
  - model: @b
    parameters: {weight: 2.0}
merge_method: multislerp
dtype: float32
""",
    "passthrough": """
slices:
  - sources:
      - model: @base
        layer_range: [0, 3]
  - sources:
      - model: @deep
        layer_range: [2, 6]
  - sources:
      - model: @base
        layer_range: [1, 2]
merge_method: passthrough
dtype: float32
""",
    "slices_slerp": f"""
slices:
  - sources:
      - model: @base
        layer_range: [0, 2]
      - model: @a
        layer_range: [0, 2]
  - sources:
      - model: @base
        layer_range: [1, 4]
      - model: @b
        layer_range: [1, 4]
    parameters:
      t: [0.9, 0.1]
merge_method: slerp
base_model: @base
parameters:{GRADIENT_T}
dtype: float32
""",
}


@pytest.fixture(scope="session")
def expected(llamas, mergekit_python, tmp_path_factory) -> dict[str, Path]:
    """mergekit's output folder for every case (one mergekit process for all)."""
    folder = tmp_path_factory.mktemp("mergekit")
    jobs = [(mergekit_config(text, llamas, folder, f"{case}.yml"), folder / case) for case, text in CASES.items()]
    run_mergekit(mergekit_python, jobs)
    return {case: out for case, (_, out) in zip(CASES, jobs)}


def run_mecha(text: str, llamas: dict[str, Path], tmp_path: Path) -> dict[str, torch.Tensor]:
    config = mecha_config(text, llamas, tmp_path)
    out = tmp_path / "mecha.safetensors"
    assert main(["merge", str(config), "-o", str(out), "--quiet"]) == 0
    return read_tensors(out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_result_as_mergekit(case, plugins, llamas, tmp_path, expected):
    reference = merged_tensors(expected[case])
    merged = run_mecha(CASES[case], llamas, tmp_path)
    assert sorted(merged) == sorted(reference)
    for key, value in reference.items():
        assert merged[key].dtype == value.dtype, key
        torch.testing.assert_close(merged[key], value, rtol=2e-5, atol=2e-6, msg=lambda m: f"{case}, {key}: {m}")

