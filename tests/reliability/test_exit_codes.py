"""Exit codes: 0 success, 1 a user error (one line ``mecha: error: ...``), 2 a usage error; anything
else is a bug, and says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mecha_core.cli import info_commands

from .conftest import error_line, recipe_file, run, save


@pytest.fixture
def folder(plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    save({"w": torch.ones(2)}, tmp_path / "a.safetensors")
    save({"w": torch.zeros(2)}, tmp_path / "b.safetensors")
    recipe_file(tmp_path, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "weighted_sum" &0 &1\n')
    return tmp_path


def test_success_is_0(folder, capsys):
    assert run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet")[0] == 0
    assert run(capsys, "--help")[0] == 0
    assert run(capsys, "--version")[0] == 0


@pytest.mark.parametrize("args, message", [
    (["merge", "nope.mecha"], "nope.mecha: no such recipe file"),
    (["merge", "r.mecha", "--threads", "0"], "threads must be a whole number >= 1, got 0"),
    (["merge", "r.mecha", "--work-dtype", "int8"], "unknown work dtype 'int8'; available work dtypes: "),
    (["merge", "r.mecha", "--save-dtype", "fp7"], "unknown save dtype 'fp7'; did you mean 'fp8'?"),
    (["inspect", "nope.safetensors"], "nope.safetensors: no such file"),
    (["methods", "weighted_summ"], "unknown merge method 'weighted_summ'; did you mean 'weighted_sum'"),
    (["info", "sd99"], "unknown architecture 'sd99'; no architectures are available"),
])
def test_a_user_error_is_1_with_one_line(folder, capsys, args, message):
    status, out, err = run(capsys, *args)
    assert status == 1 and out == ""
    assert error_line(err).startswith(f"mecha: error: {message}")


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: COMMAND"),
    (["mrege"], "argument COMMAND: invalid choice: 'mrege'"),
    (["merge"], "the following arguments are required: recipe"),
    (["merge", "r.mecha", "--threads", "many"], "argument -j/--threads: invalid int value: 'many'"),
    (["merge", "r.mecha", "--memory-budget", "nan"], "argument --memory-budget: expected a positive number of "
                                                     "megabytes, got 'nan'"),
    (["merge", "r.mecha", "--memory-budget", "-3"], "argument --memory-budget: expected a positive number of "
                                                    "megabytes, got '-3'"),
    (["merge", "r.mecha", "--nonfinite", "maybe"], "argument --nonfinite: invalid choice: 'maybe'"),
    (["merge", "r.mecha", "--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_a_usage_error_is_2(folder, capsys, args, message):
    status, _, err = run(capsys, *args)
    assert status == 2 and message in err.strip().splitlines()[-1]
    assert not (folder / "out.safetensors").exists() and not (folder / "r.safetensors").exists()


def test_a_bug_is_another_code_and_says_so(folder, capsys, monkeypatch):
    def broken(args):
        raise AttributeError("'NoneType' object has no attribute 'name'\nsecond line")

    monkeypatch.setattr(info_commands, "run_methods", broken)
    status, _, err = run(capsys, "methods")
    assert status not in (0, 1, 2)
    assert error_line(err) == ("mecha: internal error: AttributeError: 'NoneType' object has no attribute 'name' second "
                               "line (this is a bug; --debug shows the traceback)")
    status, _, err = run(capsys, "methods", "--debug")
    assert status not in (0, 1, 2) and "Traceback (most recent call last)" in err


def test_debug_adds_the_traceback_to_a_user_error(folder, capsys):
    status, _, err = run(capsys, "merge", "nope.mecha", "--debug")
    lines = err.strip().splitlines()
    assert status == 1 and lines[0] == "mecha: error: nope.mecha: no such recipe file"
    assert lines[1] == "Traceback (most recent call last):"
