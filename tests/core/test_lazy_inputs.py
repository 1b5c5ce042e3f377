"""Methods declaring ``lazy_inputs``: models are read range by range when the method asks, never whole."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_core.tensor_files import SafetensorsFile
from mecha_core.testing import check_merge_method, write_model

from .conftest import toy_model

STEP = 5  # elements the test method reads at a time


@mc.merge_method(lazy_inputs=True)
def rescaled(a: mc.Same, b: mc.Same) -> mc.Same:
    """a scaled to b's norm: whole-tensor statistics first, then the result a range at a time."""
    a, b = mc.LazyInput.of(a), mc.LazyInput.of(b)
    count = a.numel()
    squares_a = squares_b = 0.0
    for start in range(0, count, STEP):
        stop = min(start + STEP, count)
        squares_a += float(a.flat(start, stop).double().square().sum())
        squares_b += float(b.flat(start, stop).double().square().sum())
    scale = (squares_b / squares_a) ** 0.5 if squares_a else 0.0
    out = torch.empty(count, dtype=a.dtype, device=a.device)
    for start in range(0, count, STEP):
        stop = min(start + STEP, count)
        out[start:stop] = a.flat(start, stop) * scale
    return out.reshape(a.shape)


@pytest.fixture
def reads(monkeypatch):
    """Every range read from a model file: (key, elements)."""
    seen: list[tuple[str, int]] = []
    original = SafetensorsFile.read_flat

    def spy(self, name, start, stop):
        seen.append((name, stop - start))
        return original(self, name, start, stop)

    monkeypatch.setattr(SafetensorsFile, "read_flat", spy)
    return seen


def test_models_are_read_range_by_range_and_the_values_are_the_formula(plugins, tmp_path, reads):
    a, b = toy_model(seed=1), toy_model(seed=2)
    paths = [write_model(m, tmp_path / f"{i}.safetensors") for i, m in enumerate((a, b))]
    out = mc.merge(rescaled(*paths), save_dtype="fp32")
    for key in ("embed.weight", "layers.0.weight", "head.weight"):
        expected = a[key].double() * b[key].double().norm() / a[key].double().norm()
        torch.testing.assert_close(out[key].double(), expected, rtol=1e-6, atol=1e-6)
    merged = [(name, count) for name, count in reads if name == "embed.weight"]  # 24 elements
    assert merged and max(count for _, count in merged) == STEP
    assert sum(count for _, count in merged) == 3 * 24  # a twice (statistics, result), b once


def test_a_computed_input_comes_wrapped_and_the_work_dtype_is_kept(plugins, tmp_path):
    a, b, c = toy_model(seed=1), toy_model(seed=2), toy_model(seed=3)
    paths = [write_model(m, tmp_path / f"{i}.safetensors") for i, m in enumerate((a, b, c))]
    got = []

    @mc.merge_method(lazy_inputs=True)
    def first(x: mc.Same, y: mc.Same) -> mc.Same:
        got.append((type(x), type(y), x.dtype, y.dtype, x.device, y.device))
        return x.whole().clone()

    out = mc.merge(first(mc.weighted_sum(paths[0], paths[1], alpha=0.5), paths[2]), save_dtype="fp64",
                   work_dtype="fp64")
    key = "layers.1.weight"
    torch.testing.assert_close(out[key], (a[key].double() + b[key].double()) / 2, rtol=0, atol=1e-12)
    cpu = torch.device("cpu")
    assert set(got) == {(mc.LazyInput, mc.LazyInput, torch.float64, torch.float64, cpu, cpu)}


def test_a_range_outside_the_input_is_refused():
    lazy = mc.LazyInput.of(torch.arange(6.0).reshape(2, 3))
    assert lazy.shape == (2, 3) and lazy.numel() == 6 and lazy.flat(2, 5).tolist() == [2.0, 3.0, 4.0]
    assert mc.LazyInput.of(lazy) is lazy
    with pytest.raises(IndexError, match=r"range \[4, 7\) outside an input of 6 elements"):
        lazy.flat(4, 7)


@pytest.mark.parametrize("options, message", [
    ({"elementwise": True}, "an elementwise method is already fed chunks.*drop elementwise=True"),
    ({"stored_inputs": True}, "lazy inputs come in the work dtype.*drop stored_inputs=True"),
])
def test_lazy_inputs_exclude_chunks_and_stored_dtypes(options, message):
    def lazy(a: mc.Same, b: mc.Same, *, dtype=None) -> mc.Same:
        return a

    with pytest.raises(TypeError, match=message):
        mc.merge_method(lazy, lazy_inputs=True, **options)


def test_the_kit_calls_lazy_methods_with_lazy_inputs_and_compares_direct_calls():
    assert check_merge_method(rescaled).shape == (6, 7)

    @mc.merge_method(lazy_inputs=True)
    def inconsistent(a: mc.Same, b: mc.Same) -> mc.Same:
        return a.whole() * 2 if isinstance(a, mc.LazyInput) else a * 3

    with pytest.raises(AssertionError, match="declares lazy_inputs but gives other values when called on tensors"):
        check_merge_method(inconsistent)



def test_mecha_methods_shows_lazy_inputs():
    from mecha_core.cli.info_commands import method_json
    assert method_json(rescaled, "tests")["lazy_inputs"] is True
    assert method_json(mc.merge_method(lambda a, b: a, name="plain"), "tests")["lazy_inputs"] is False
