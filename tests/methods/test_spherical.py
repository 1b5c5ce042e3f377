"""slerp, nuslerp, multislerp and karcher, against closed-form great-circle arithmetic."""

from __future__ import annotations

import math

import mecha_core as mc
from mecha_methods import spherical, tensor_ops

from .conftest import close, merge_tensors, randn, t


def great_circle(u: list[float], v: list[float], alpha: float) -> list[float]:
    """The point at fraction alpha of the arc from unit vector u to unit vector v."""
    omega = math.acos(sum(x * y for x, y in zip(u, v)))
    return [(math.sin((1 - alpha) * omega) * x + math.sin(alpha * omega) * y) / math.sin(omega) for x, y in zip(u, v)]


def test_slerp_moves_along_the_arc_and_lerps_the_norm(methods):
    a, b = t(1.0, 0.0), t(0.0, 2.0)
    close(spherical.slerp.function(a, b, alpha=0.5), [1.5 * math.sqrt(0.5)] * 2)
    close(merge_tensors(mc.slerp, a, b, alpha=0.25),
          [1.25 * x for x in great_circle([1, 0], [0, 1], 0.25)], atol=1e-6)
    x, y = randn(3, 4, seed=1), randn(3, 4, seed=2)
    close(spherical.slerp.function(x, y, alpha=0.0), x)
    close(spherical.slerp.function(x, y, alpha=1.0), y)


def test_slerp_falls_back_to_weighted_sum_when_degenerate():
    a = t(1.0, 2.0)
    close(spherical.slerp.function(a, 3 * a, alpha=0.5), 2 * a)  # parallel
    close(spherical.slerp.function(a * 0, a, alpha=0.25), 0.25 * a)  # zero


def test_nuslerp_interpolates_the_tensors_themselves():
    a, b = t(2.0, 0.0), t(0.0, 1.0)  # 90 degrees; weights 1, 3 give t = 0.75
    s = math.sin(math.pi / 2)
    expected = [math.sin(0.25 * math.pi / 2) / s * 2.0, math.sin(0.75 * math.pi / 2) / s * 1.0]
    close(spherical.nuslerp.function(a, b, weight=(1.0, 3.0)), expected)
    close(spherical.nuslerp.function(a, b, weight=(1.0, -1.0)), [2 * math.sqrt(0.5), math.sqrt(0.5)])  # t = 0.5
    close(spherical.nuslerp.function(a, 2 * a, weight=(1.0, 1.0)), 1.5 * a)  # parallel: lerp


def test_nuslerp_per_row_and_per_column(methods):
    a = t([[1.0, 0.0], [0.0, 3.0]])
    b = t([[0.0, 1.0], [0.0, 5.0]])
    rows = spherical.nuslerp.function(a, b, weight=(1.0, 1.0), nuslerp_flatten=False)
    close(rows[0], [math.sqrt(0.5), math.sqrt(0.5)])  # orthogonal rows: the arc
    close(rows[1], [0.0, 4.0])  # parallel rows: the mean
    columns = spherical.nuslerp.function(a, b, weight=(1.0, 1.0), nuslerp_flatten=False, nuslerp_row_wise=True)
    flipped = spherical.nuslerp.function(a.T.contiguous(), b.T.contiguous(), weight=(1.0, 1.0), nuslerp_flatten=False)
    close(columns, flipped.T)
    close(merge_tensors(mc.nuslerp, a, b, weight=[1.0, 1.0], nuslerp_flatten=False), rows, atol=1e-6)


def test_multislerp_of_two_models_is_slerp_not_nlerp():
    a, b = t(3.0, 0.0), t(0.0, 1.0)
    result = spherical.multislerp.function(a, b, weight=(0.8, 0.2))
    expected = [(0.8 * 3 + 0.2 * 1) * x for x in great_circle([1, 0], [0, 1], 0.2)]
    close(result, expected, atol=1e-6)
    nlerp_direction = [0.8 / math.hypot(0.8, 0.2), 0.2 / math.hypot(0.8, 0.2)]
    assert abs(result[0].item() / 2.6 - nlerp_direction[0]) > 1e-3  # mergekit's single step would give this


def test_multislerp_symmetric_and_degenerate_cases(methods):
    e = [t(1.0, 0.0, 0.0), t(0.0, 2.0, 0.0), t(0.0, 0.0, 3.0)]
    close(spherical.multislerp.function(*e), [2 / math.sqrt(3)] * 3, atol=1e-6)  # mean norm 2, centre
    close(merge_tensors(mc.multislerp, *e, weight=1.0), [2 / math.sqrt(3)] * 3, atol=1e-6)
    close(spherical.multislerp.function(t(1.0, 1.0), t(-1.0, -1.0)), [0.0, 0.0])  # cancel: the linear mean
    close(spherical.multislerp.function(t(2.0, 0.0), t(0.0, 2.0), weight=(1.0, 1.0), normalize_weights=False),
          [2 * math.sqrt(2), 2 * math.sqrt(2)], atol=1e-6)  # weights kept: norm sum(w_i |x_i|) = 4


def test_karcher_equal_weights_and_zero_inputs(methods):
    close(spherical.karcher.function(t(1.0, 0.0, 0.0), t(0.0, 2.0, 0.0), t(0.0, 0.0, 3.0)),
          [2 / math.sqrt(3)] * 3, atol=1e-5)
    a, b = t(2.0, 0.0), t(2 * math.cos(1.0), 2 * math.sin(1.0))
    close(merge_tensors(mc.karcher, a, b), [2 * math.cos(0.5), 2 * math.sin(0.5)], atol=1e-5)
    # a zero input has no direction but counts in the mean norm
    close(spherical.karcher.function(t(2.0, 0.0), t(0.0, 2.0), t(0.0, 0.0)),
          [4 / 3 * math.sqrt(0.5)] * 2, atol=1e-5)


def test_nuslerp_of_model_files_reads_them_in_chunks_and_keeps_the_formula(methods, tmp_path, monkeypatch):
    """A key several of the method's chunks long, read from fp16 files range by range."""
    import torch

    from mecha_core.tensor_files import SafetensorsFile
    from mecha_core.testing import write_model

    a, b = randn(700, 1000, seed=1).half(), randn(700, 1000, seed=2).half()
    paths = [write_model({"w": x}, tmp_path / f"{i}.safetensors") for i, x in enumerate((a, b))]
    reads: list[int] = []
    original = SafetensorsFile.read_flat
    monkeypatch.setattr(SafetensorsFile, "read_flat", lambda self, name, start, stop: (
        reads.append(stop - start), original(self, name, start, stop))[1])
    out = mc.merge(mc.nuslerp(*paths, weight=[0.7, 0.3]), save_dtype="fp32")["w"].double()
    x, y = a.double().reshape(-1), b.double().reshape(-1)
    omega = math.acos(float(x @ y) / float(x.norm() * y.norm()))
    expected = (math.sin(0.7 * omega) * x + math.sin(0.3 * omega) * y) / math.sin(omega)
    torch.testing.assert_close(out.reshape(-1), expected, rtol=1e-5, atol=1e-6)
    assert max(reads) <= tensor_ops.CHUNK < 700 * 1000 and sum(reads) == 4 * 700 * 1000  # two passes
