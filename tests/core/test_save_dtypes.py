"""Every float dtype safetensors stores is a save dtype: through files and dicts, fp8 clamped to its
finite range (counted in a note, never NaN), fp64 kept in a dict, copied keys converted only when asked."""

from __future__ import annotations

import pytest
import torch

import mecha_core as mc
from mecha_core.merge import merge_with_report
from mecha_core import open_tensor_file

from .conftest import toy_model

SPELLINGS = {  # as users write them -> (torch dtype, safetensors code)
    "fp64": (torch.float64, "F64"), "fp32": (torch.float32, "F32"), "bf16": (torch.bfloat16, "BF16"),
    "fp16": (torch.float16, "F16"), "fp8": (torch.float8_e4m3fn, "F8_E4M3"),
    "fp8_e4m3fn": (torch.float8_e4m3fn, "F8_E4M3"), "F8_E4M3": (torch.float8_e4m3fn, "F8_E4M3"),
    "fp8_e5m2": (torch.float8_e5m2, "F8_E5M2"), "float8_e5m2": (torch.float8_e5m2, "F8_E5M2"),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_float_save_dtype_round_trips_through_a_file_and_a_dict(plugins, tmp_path, spelling):
    dtype, code = SPELLINGS[spelling]
    a, b = toy_model(seed=1, dtype=torch.float64), toy_model(seed=2, dtype=torch.float64)
    key = "layers.0.weight"
    expected = (a[key] * 0.75 + b[key] * 0.25).to(dtype)  # fp64 work: the cast is the only rounding
    recipe = mc.weighted_sum(a, b, alpha=0.25)
    as_dict = mc.merge(recipe, None, work_dtype="fp64", save_dtype=spelling)
    assert as_dict[key].dtype == dtype and as_dict[key].view(torch.uint8).equal(expected.view(torch.uint8))
    path = mc.merge(recipe, tmp_path / "out.safetensors", work_dtype="fp64", save_dtype=spelling)
    with open_tensor_file(path) as file:
        assert file.tensors[key].dtype == code
        assert file.read(key).view(torch.uint8).equal(expected.view(torch.uint8))
    assert mc.merge(recipe, None, work_dtype="fp64", save_dtype=dtype)[key].dtype == dtype  # a torch dtype too


@pytest.mark.parametrize("spelling, largest", [("fp8", 448.0), ("fp8_e5m2", 57344.0)])
def test_saving_to_fp8_clamps_to_the_largest_finite_value_and_counts(plugins, spelling, largest):
    a = toy_model(fill=1.0)
    a["layers.0.weight"] = torch.tensor([[1024.0, -1e6, 2.0, 448.0]] * 4)
    merged, report = merge_with_report(mc.weighted_sum(a, toy_model(fill=1.0), alpha=0.0), None, save_dtype=spelling)
    out = merged["layers.0.weight"].float()
    assert out[0].tolist() == [min(1024.0, largest), -largest, 2.0, 448.0]
    clamped = 8 if largest == 448.0 else 4  # 1024 fits e5m2; -1e6 fits neither
    assert any(note.startswith(f"{clamped} values in 1 keys exceeded the ") and f"+-{largest:g}" in note
               for note in report.notes), report.notes


def test_nan_is_not_clamped_and_stays_reported(plugins):
    a = toy_model(fill=1.0)
    a["layers.0.weight"] = torch.full((4, 4), float("nan"))
    merged, report = merge_with_report(mc.weighted_sum(a, toy_model(fill=1.0)), None, save_dtype="fp8")
    assert merged["layers.0.weight"].float().isnan().all()
    assert any("NaN or inf" in note for note in report.notes)


def test_copied_keys_keep_their_stored_dtype_unless_save_dtype_all(plugins):
    a, b = toy_model(seed=1, dtype=torch.bfloat16), toy_model(seed=2, dtype=torch.bfloat16)
    kept = mc.merge(mc.weighted_sum(a, b), None, save_dtype="fp8")
    assert kept["decoder.weight"].dtype == torch.bfloat16 and kept["decoder.weight"].equal(a["decoder.weight"])
    converted = mc.merge(mc.weighted_sum(a, b), None, save_dtype="fp8", save_dtype_all=True)
    assert converted["decoder.weight"].dtype == torch.float8_e4m3fn
    assert converted["decoder.weight"].float().equal(a["decoder.weight"].to(torch.float8_e4m3fn).float())
    assert converted["step"].dtype == torch.int64  # integers are never converted
    assert converted["layers.0.weight"].dtype == torch.float8_e4m3fn


def test_fp8_inputs_are_read_per_chunk(plugins, tmp_path):
    """A chunked merge of fp8 files equals the merge of their values upcast whole."""
    a = {k: v.to(torch.float8_e4m3fn) if v.is_floating_point() else v for k, v in toy_model(seed=1).items()}
    b = {k: v.to(torch.float8_e4m3fn) if v.is_floating_point() else v for k, v in toy_model(seed=2).items()}
    pa, pb = mc.save_tensors(a, tmp_path / "a.safetensors"), mc.save_tensors(b, tmp_path / "b.safetensors")
    merged = mc.merge(mc.weighted_sum(pa, pb, alpha=0.3), None, save_dtype="fp32", memory_budget=64)
    key = "embed.weight"
    torch.testing.assert_close(merged[key], a[key].float() * 0.7 + b[key].float() * 0.3, rtol=0, atol=1e-6)


def test_the_cli_takes_the_names_users_write(plugins, tmp_path, mecha_cli):
    a, b = mc.save_tensors(toy_model(seed=1), tmp_path / "a.safetensors"), mc.save_tensors(toy_model(seed=2), tmp_path / "b.safetensors")
    recipe = tmp_path / "r.mecha"
    recipe.write_text(mc.serialize(mc.weighted_sum(a, b)))
    result = mecha_cli("merge", recipe, "-o", tmp_path / "o.safetensors", "--save-dtype", "fp8", "--save-dtype-all", "--quiet")
    assert result.status == 0, result.err
    with open_tensor_file(tmp_path / "o.safetensors") as file:
        assert {info.dtype for name, info in file.tensors.items() if name != "step"} == {"F8_E4M3"}


@pytest.mark.parametrize("float8", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("wide", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_float8_is_widened_by_table_to_torchs_own_values(float8, wide):
    """Every one of the 256 bit patterns, NaN and inf included, against torch's element-wise conversion."""
    from mecha_core import dtypes
    every = torch.arange(256, dtype=torch.uint8).view(float8)
    ours, theirs = dtypes.widen(every.reshape(16, 16), wide), every.to(wide).reshape(16, 16)
    assert ours.dtype == wide and ours.shape == (16, 16)
    assert torch.equal(ours.isnan(), theirs.isnan())
    assert torch.equal(ours.nan_to_num(), theirs.nan_to_num())


@pytest.mark.parametrize("float8", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_finiteness_is_read_from_the_bits(float8):
    from mecha_core import dtypes
    every = torch.arange(256, dtype=torch.uint8).view(float8)
    finite = every.to(torch.float32).isfinite()
    assert int((~finite).sum()) == (2 if float8 == torch.float8_e4m3fn else 8)  # e5m2: +-inf and 6 NaN
    for byte in range(256):
        assert dtypes.float8_all_finite(every[byte:byte + 1]) == bool(finite[byte])
    assert dtypes.float8_all_finite(every[finite]) and not dtypes.float8_all_finite(every)
    assert dtypes.float8_all_finite(every[:0])
