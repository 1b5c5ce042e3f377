"""Properties every method of the library has: documented, any shape, any work dtype, no in-place
writes, honest `elementwise`, reproducible randomness, reachable through mecha.merge and the CLI."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
import torch

import mecha_core as mc
import mecha_methods
from mecha_core.cli import main
from mecha_core.spaces import MergeSpace
from mecha_core.testing import check_merge_method

from .conftest import randn

ALL = [m for family in mecha_methods.FAMILIES for m in family.METHODS]
NAMES = [m.name for m in ALL]

# hyperparameters that make each method do real work (defaults often leave a task vector whole)
EXERCISE: dict[str, dict[str, Any]] = {
    "ties_merge": {"density": 0.5}, "dare": {"density": 0.5}, "dare_ties": {"density": 0.5},
    "della": {"density": 0.5}, "della_linear": {"density": 0.5}, "breadcrumbs": {"density": 0.7, "gamma": 0.1},
    "breadcrumbs_ties": {"density": 0.7, "gamma": 0.1}, "sce": {"select_topk": 0.5},
    "rotate": {"alignment": 0.5, "alpha": 0.3}, "dropout": {"overlap": 0.3, "probability": 0.5},
    "ties_sum_with_dropout": {"probability": 0.5}, "ties_sum_extended": {"apply_stock": 1.0},
    "tensor_sum": {"width": 0.4, "offset": 0.2}, "top_k_tensor_sum": {"width": 0.5, "offset": 0.25},
    "crossover": {"alpha": 0.4, "tilt": 0.3}, "distribution_crossover": {"alpha": 0.4, "tilt": 0.3},
    "clamp": {"stiffness": 0.5},
}
RANDOM = {"dropout", "ties_sum_with_dropout", "dare", "dare_ties", "della", "della_linear"}
VARIADIC_COUNT = 3
SHAPES = {"mat.weight": (6, 5), "conv.weight": (3, 2, 3, 3), "vec.bias": (7,), "scalar": (), "empty.a": (0,),
          "empty.b": (0, 3), "empty.c": (3, 0)}


def input_spaces(method: mc.MergeMethod) -> list[Any]:
    spaces = []
    for spec in method.inputs:
        spaces.extend([spec.space] * (VARIADIC_COUNT if spec.variadic else 1))
    return spaces


def state_dict(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    out = {}
    for i, (name, shape) in enumerate(SHAPES.items()):
        out[name] = (randn(*shape, seed=seed * 100 + i) + 0.1).to(dtype)
    return out


def build(method: mc.MergeMethod, dtype: torch.dtype = torch.float32, **hypers: Any) -> Any:
    """The method applied to dict models: weight inputs as models, delta inputs as model - base."""
    base = state_dict(99, dtype)
    nodes = []
    for i, space in enumerate(input_spaces(method)):
        model = state_dict(i, dtype)
        nodes.append(mc.subtract(model, base) if space is MergeSpace.DELTA else model)
    return method(*nodes, **{**EXERCISE.get(method.name, {}), **hypers})


def direct_inputs(method: mc.MergeMethod, shape: tuple[int, ...]) -> list[torch.Tensor]:
    return [randn(*shape, seed=i) + 0.1 for i in range(len(input_spaces(method)))]


def direct_hypers(method: mc.MergeMethod, count: int) -> dict[str, Any]:
    """The method's defaults (with EXERCISE), per-model ones as tuples, as the scheduler passes them."""
    variadic = count - (len(method.inputs) - 1) if method.variadic else count
    hypers: dict[str, Any] = {}
    for spec in method.hypers:
        value = EXERCISE.get(method.name, {}).get(spec.name, spec.default)
        hypers[spec.name] = (value,) * variadic if spec.per_model else value
    return hypers


def test_every_method_is_registered_once_and_documented():
    assert len(NAMES) == len(set(NAMES)) >= 38
    for method in ALL:
        assert method.summary and len(method.summary) <= 110, method.name
        body = method.doc.split("\n", 1)[1] if "\n" in method.doc else ""
        assert body.strip(), f"{method.name}: document the formula and the hyperparameters"
        for spec in method.hypers:
            assert spec.name in body, f"{method.name}: document {spec.name}"


def test_the_library_lists_the_issue_s_methods(methods):
    wanted = """weighted_sum n_average slerp add_difference subtract perpendicular_component geometric_sum
        add_cosine_a add_cosine_b ties_sum ties_sum_extended ties_sum_with_dropout dropout tensor_sum
        top_k_tensor_sum train_difference add_opposite clamped_add_opposite select_max_delta multiply_quotient
        crossover distribution_crossover rotate clamp model_stock_for_tensor geometric_median task_arithmetic
        ties_merge dare dare_ties della breadcrumbs model_stock nuslerp karcher sce multislerp""".split()
    assert set(wanted) <= set(methods.merge_methods)


def test_mecha_methods_lists_and_shows_every_method(methods, capsys):
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    for method in ALL:
        assert f"{method.name}  " in listing and method.summary in listing
    assert main(["methods", "ties_merge", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["signature"] == ("ties_merge(base: Weight, *models: Weight, weight: tuple[float, ...] = 1.0, "
                                 "density: tuple[float, ...] = 1.0, normalize: bool = True, lambda_: float = 1.0) "
                                 "-> Weight")


def test_the_package_imports_without_torch_work():
    for family in mecha_methods.FAMILIES:
        assert "\nimport torch" not in inspect.getsource(family), family.__name__


@pytest.mark.parametrize("name", NAMES)
def test_any_shape_through_merge(methods, name):
    method = methods.merge_methods.get(name)
    out = mc.merge(build(method), save_dtype="fp32")
    for key, shape in SHAPES.items():
        assert tuple(out[key].shape) == shape, key
        assert bool(torch.isfinite(out[key]).all()), key


@pytest.mark.parametrize("stored", [torch.float16, torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_narrow_inputs_with_fp32_work_dtype_equal_fp32_inputs(methods, name, stored):
    """fp16 and fp8 inputs (FLUX.1 files are shared in fp8) are upcast to the work dtype per chunk."""
    method = methods.merge_methods.get(name)
    narrow = mc.merge(build(method, stored), work_dtype="fp32", save_dtype="fp32")
    reference = mc.merge(_rebuilt_from(method, stored), work_dtype="fp32", save_dtype="fp32")
    for key in SHAPES:
        assert narrow[key].dtype == torch.float32 and torch.equal(narrow[key], reference[key]), key


def _rebuilt_from(method: mc.MergeMethod, stored: torch.dtype) -> Any:
    """build() with fp32 models holding the values of its models stored in `stored`."""
    base = {k: v.to(stored).float() for k, v in state_dict(99).items()}
    nodes = []
    for i, space in enumerate(input_spaces(method)):
        model = {k: v.to(stored).float() for k, v in state_dict(i).items()}
        nodes.append(mc.subtract(model, base) if space is MergeSpace.DELTA else model)
    return method(*nodes, **EXERCISE.get(method.name, {}))


@pytest.mark.parametrize("work", ["fp16", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_half_work_dtypes_give_finite_results(methods, name, work):
    method = methods.merge_methods.get(name)
    out = mc.merge(build(method), work_dtype=work, save_dtype="fp32")
    for key, shape in SHAPES.items():
        assert tuple(out[key].shape) == shape and bool(torch.isfinite(out[key]).all()), key


@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_never_written_nor_returned(name):
    method = next(m for m in ALL if m.name == name)
    for shape in ((4, 5), (), (0,)):
        inputs = direct_inputs(method, shape)
        copies = [t.clone() for t in inputs]
        hypers = direct_hypers(method, len(inputs))
        result = method.function(*inputs, **hypers)
        assert all(torch.equal(t, c) for t, c in zip(inputs, copies)), shape
        if result.numel():
            assert all(result.data_ptr() != t.data_ptr() for t in inputs), shape


@pytest.mark.parametrize("name", [m.name for m in ALL if m.elementwise])
def test_elementwise_methods_agree_on_chunks(name):
    method = next(m for m in ALL if m.name == name)
    inputs = direct_inputs(method, (8, 9))
    hypers = direct_hypers(method, len(inputs))
    whole = method.function(*inputs, **hypers).reshape(-1)
    flat = [t.reshape(-1) for t in inputs]
    pieces = [method.function(*[t[i:i + 20] for t in flat], **hypers) for i in range(0, 72, 20)]
    torch.testing.assert_close(torch.cat(pieces), whole, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_random_methods_are_reproducible_and_depend_on_the_seed(methods, name):
    method = methods.merge_methods.get(name)
    first = mc.merge(build(method, seed=3), save_dtype="fp32", threads=2)
    again = mc.merge(build(method, seed=3), save_dtype="fp32", threads=1)
    other = mc.merge(build(method, seed=4), save_dtype="fp32")
    for key in ("mat.weight", "conv.weight"):
        assert torch.equal(first[key], again[key]), key
        assert not torch.equal(first[key], other[key]), key


def test_one_thousand_model_average(methods):
    models = [{"w": torch.full((3,), float(i)), "b": torch.tensor(float(i) * 2)} for i in range(1000)]
    out = mc.merge(mc.n_average(*models), save_dtype="fp32", work_dtype="fp64")
    assert out["w"].tolist() == [499.5] * 3 and out["b"].item() == 999.0


@pytest.mark.parametrize("method", [m for m in ALL if m.coefficients is not None], ids=lambda m: m.name)
@pytest.mark.parametrize("alpha", [1.0, 0.3, -2.5])
def test_methods_declaring_coefficients_compute_that_linear_combination(method, alpha):
    """The scheduler adds the inputs with the declared coefficients instead of calling the function."""
    hypers = {"alpha": alpha} if any(h.name == "alpha" for h in method.hypers) else {}
    check_merge_method(method, shape=(5, 4), seed=7, **hypers)
