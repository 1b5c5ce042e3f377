"""NaN and inf, in an input or in a result, are reported with the key and the file; ``--nonfinite``
chooses between a warning (the default) and a refusal."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import safetensors
import torch

import mecha_core as mc

from .conftest import error_line, recipe_file, run, save, snapshot

OLD = b"the previous output"


@pytest.fixture
def folder(plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """a and b, finite except b's key 'bad' (a NaN and an inf); a recipe averaging them."""
    monkeypatch.chdir(tmp_path)
    save({"good": torch.full((4,), 1.0), "bad": torch.full((4,), 1.0)}, tmp_path / "a.safetensors")
    save({"good": torch.full((4,), 3.0), "bad": torch.tensor([1.0, math.nan, math.inf, 2.0])},
         tmp_path / "b.safetensors")
    recipe_file(tmp_path, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "weighted_sum" &0 &1 alpha=0.5\n')
    (tmp_path / "out.safetensors").write_bytes(OLD)
    return tmp_path


def merge(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    return run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet", "--save-dtype", "fp32", *extra)


@pytest.mark.parametrize("flag", [[], ["--nonfinite", "warn"]])
def test_warn_reports_the_key_and_the_file_and_still_writes(folder, capsys, flag):
    status, _, err = merge(capsys, *flag)
    assert status == 0
    assert err.strip().splitlines() == ["mecha: note: key 'bad' holds NaN or inf values (inputs with NaN/inf at this "
                                        "key: b.safetensors)"]
    with safetensors.safe_open(str(folder / "out.safetensors"), "pt") as f:
        bad = f.get_tensor("bad")
        assert bad[0].item() == 1.0 and bad[3].item() == 1.5
        assert not math.isfinite(bad[1].item()) and not math.isfinite(bad[2].item())
        assert f.get_tensor("good").tolist() == [2.0] * 4


def test_fail_refuses_and_leaves_the_old_output(folder, capsys):
    before = snapshot(folder)
    status, _, err = merge(capsys, "--nonfinite", "fail")
    assert status == 1
    assert error_line(err) == ("mecha: error: key 'bad': the result holds NaN or inf values (inputs with NaN/inf at "
                               "this key: b.safetensors)")
    assert snapshot(folder) == before


def test_fail_in_chunks_and_threads_leaves_the_old_output(plugins, tmp_path, capsys, monkeypatch):
    """A NaN deep inside a large key, merged in chunks on several threads."""
    monkeypatch.chdir(tmp_path)
    big = torch.zeros(1 << 20)
    big[777_777] = math.nan
    save({"big": torch.zeros(1 << 20), "x": torch.ones(8)}, tmp_path / "a.safetensors")
    save({"big": big, "x": torch.ones(8)}, tmp_path / "b.safetensors")
    recipe_file(tmp_path, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "weighted_sum" &0 &1\n')
    (tmp_path / "out.safetensors").write_bytes(OLD)
    before = snapshot(tmp_path)
    status, _, err = merge(capsys, "--nonfinite", "fail", "--threads", "2", "--memory-budget", "0.5")
    assert status == 1 and "key 'big': the result holds NaN or inf values" in error_line(err)
    assert snapshot(tmp_path) == before


def test_a_result_made_non_finite_by_the_save_dtype_is_reported(plugins, tmp_path, capsys, monkeypatch):
    """Finite fp32 inputs whose average does not fit fp16 (max 65504)."""
    monkeypatch.chdir(tmp_path)
    save({"w": torch.full((2,), 1e5)}, tmp_path / "a.safetensors")
    save({"w": torch.full((2,), 2e5)}, tmp_path / "b.safetensors")
    recipe_file(tmp_path, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "weighted_sum" &0 &1\n')
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet", "--save-dtype", "fp16",
                         "--nonfinite", "fail")
    assert status == 1
    assert error_line(err) == ("mecha: error: key 'w': the result holds NaN or inf values (the inputs are finite: the "
                               "merge method or the cast to the save dtype produced them)")
    assert not (tmp_path / "out.safetensors").exists()


def test_ignore_writes_silently(folder, capsys):
    status, _, err = merge(capsys, "--nonfinite", "ignore")
    assert status == 0 and err == ""


def test_the_python_api_option(folder):
    with pytest.raises(mc.MergeError, match=r"key 'bad': the result holds NaN or inf values"):
        mc.merge(mc.deserialize(folder / "r.mecha"), nonfinite="fail")
    with pytest.raises(mc.MechaError, match=r"nonfinite must be one of warn, fail, .*got 'maybe'"):
        mc.merge(mc.deserialize(folder / "r.mecha"), nonfinite="maybe")


def test_an_unknown_mode_is_a_usage_error(folder, capsys):
    status, _, err = merge(capsys, "--nonfinite", "maybe")
    assert status == 2 and "argument --nonfinite: invalid choice: 'maybe'" in err


def test_a_non_finite_key_copied_from_the_fallback_is_reported(folder, capsys):
    save({"good": torch.ones(4), "bad": torch.ones(4)}, folder / "b.safetensors")  # the recipe's inputs: finite
    save({"vae": torch.tensor([math.nan, 1.0])}, folder / "c.safetensors")
    status, _, err = merge(capsys, "--fallback", "c.safetensors", "--nonfinite", "fail")
    assert status == 1 and "key 'vae'" in err and "c.safetensors" in err


def test_a_non_finite_float8_input_is_reported(plugins, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save({"w": torch.tensor([1.0, math.nan]).to(torch.float8_e4m3fn)}, tmp_path / "a.safetensors")
    save({"w": torch.tensor([1.0, 1.0]).to(torch.float8_e4m3fn)}, tmp_path / "b.safetensors")
    recipe_file(tmp_path, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "weighted_sum" &0 &1\n')
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet")
    assert status == 0 and "key 'w' holds NaN or inf values (inputs with NaN/inf at this key: a.safetensors)" in err
