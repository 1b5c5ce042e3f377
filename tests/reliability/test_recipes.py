"""Bad recipes are refused in one line naming the file, the line number, the offending text and what
was expected, before any model is opened or any output written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mecha_core as mc
from mecha_core.plugins import Plugins

from .conftest import error_line, recipe_file, run, save, snapshot

HEAD = 'model "a.safetensors"\nmodel "b.safetensors"\n'

# name -> (recipe text, expected message after "mecha: error: {recipe} ")
CASES: dict[str, tuple[str, str]] = {
    "unknown method": (HEAD + 'merge "weigted_sum" &0 &1\n',
                       "line 3: unknown merge method 'weigted_sum'; did you mean 'weighted_sum'? "
                       "(in: merge \"weigted_sum\" &0 &1)"),
    "unknown hyperparameter": (HEAD + 'merge "weighted_sum" &0 &1 alpah=0.5\n',
                               "line 3: unknown hyperparameter 'alpah' for merge method 'weighted_sum'; did you mean "
                               "'alpha'? (in: merge \"weighted_sum\" &0 &1 alpah=0.5)"),
    "too few models": (HEAD + 'merge "weighted_sum" &0\n',
                       "line 3: merge method 'weighted_sum' takes 2 models, got 1: {weighted_sum} "
                       "(in: merge \"weighted_sum\" &0)"),
    "too many models": (HEAD + 'model "c.safetensors"\nmerge "weighted_sum" &0 &1 &2\n',
                        "line 4: merge method 'weighted_sum' takes 2 models, got 3: {weighted_sum} "
                        "(in: merge \"weighted_sum\" &0 &1 &2)"),
    "wrong merge space": (HEAD + 'merge "subtract" &0 &1\nmerge "subtract" &2 &0\n',
                          "line 4: merge method 'subtract': input 'a' must be in weight space, but it is in delta "
                          "space (in: merge \"subtract\" &2 &0)"),
    "wrong merge space of a typed model": (HEAD + 'model "c.safetensors" type="base"\n'
                                                  'merge "add_difference" &0 &2\n',
                                           "line 4: merge method 'add_difference': input 'b' must be in delta space, "
                                           "but it is in weight space (c.safetensors) "
                                           "(in: merge \"add_difference\" &0 &2)"),
    "reference to a later line": (HEAD + 'merge "weighted_sum" &0 &3\nmodel "c.safetensors"\n'
                                         'merge "weighted_sum" &2 &3\n',
                                  "line 3: reference &3 points to a later or missing instruction (available here: "
                                  "&0..&1) (in: merge \"weighted_sum\" &0 &3)"),
    "reference to a missing line": (HEAD + 'merge "weighted_sum" &0 &99\n',
                                    "line 3: reference &99 points to a later or missing instruction (available here: "
                                    "&0..&1) (in: merge \"weighted_sum\" &0 &99)"),
    "reference before any instruction": ('merge "weighted_sum" &0 &0\n',
                                         "line 1: reference &0 points to a later or missing instruction (available "
                                         "here: none yet) (in: merge \"weighted_sum\" &0 &0)"),
    "bad reference": (HEAD + 'merge "weighted_sum" &0 &x\n',
                      "line 3: bad reference '&x': expected & followed by an instruction number, like &0 "
                      "(in: merge \"weighted_sum\" &0 &x)"),
    "unterminated quote": ('model "a.safetensors\n',
                           "line 1: unterminated string: a double quote is missing (in: model \"a.safetensors)"),
    "unterminated list": (HEAD + 'merge "weighted_sum" &0 &1 alpha=[0.5\n',
                          "line 3: unterminated list: a ']' is missing (in: merge \"weighted_sum\" &0 &1 alpha=[0.5)"),
    "nested list": (HEAD + 'merge "weighted_sum" &0 &1 alpha=[[0.5]]\n',
                    "line 3: lists cannot be nested; expected [value, value, ...] with one value per model "
                    "(in: merge \"weighted_sum\" &0 &1 alpha=[[0.5]])"),
    "unknown command": ('# a comment\n\nmodle "a.safetensors"\n',
                        "line 3: unknown command 'modle'; did you mean 'model'? (in: modle \"a.safetensors\")"),
    "unquoted method name": (HEAD + 'merge weighted_sum &0 &1\n',
                             "line 3: unexpected 'weighted_sum'; expected a value (number, \"string\", &N, true, "
                             "false, [list]) (in: merge weighted_sum &0 &1)"),
    "hyperparameter of the wrong type": (HEAD + 'merge "weighted_sum" &0 &1 alpha="half"\n',
                                         "line 3: merge method 'weighted_sum', hyperparameter 'alpha': expected a "
                                         "number or a block/class dict, got str 'half' "
                                         "(in: merge \"weighted_sum\" &0 &1 alpha=\"half\")"),
    "number out of range": (HEAD + 'merge "weighted_sum" &0 &1 alpha=1e999\n',
                            "line 3: number 1e999 is out of range; expected a finite number "
                            "(in: merge \"weighted_sum\" &0 &1 alpha=1e999)"),
    "integer too long": (HEAD + 'merge "weighted_sum" &0 &1 alpha=' + "9" * 50 + "\n",
                         "line 3: number " + "9" * 37 + "... is too large; expected at most 30 digits "
                         "(in: merge \"weighted_sum\" &0 &1 alpha=" + "9" * 50 + ")"),
    "dtype not a string": (HEAD + 'merge "weighted_sum" &0 &1 dtype=16\n',
                           "line 3: dtype must be a \"string\", not 16 (in: merge \"weighted_sum\" &0 &1 dtype=16)"),
    "unknown work dtype": (HEAD + 'merge "weighted_sum" &0 &1 dtype="fp8"\n',
                           "line 3: unknown work dtype 'fp8'; available work dtypes: bf16, bfloat16, double, f16, "
                           "f32, f64, float, float16, float32, float64, fp16, fp32, ... "
                           "(in: merge \"weighted_sum\" &0 &1 dtype=\"fp8\")"),
    "parameter space not a string": ('parameter "a" 5\n',
                                     "line 1: the space of a parameter is \"weight\" or \"delta\", not 5 "
                                     "(in: parameter \"a\" 5)"),
    "input that is not a model": (HEAD + 'dict x=1\nmerge "weighted_sum" &0 &2\n',
                                  "line 4: input 2 of 'weighted_sum' must be a reference to a model or merge (&N), got "
                                  "{'x': 1} (in: merge \"weighted_sum\" &0 &2)"),
    "a dict last": (HEAD + 'dict x=1\n', "line 3: the last instruction must be a model, a parameter or a merge, not "
                                         "a dict (in: dict x=1)"),
    "a newer format version": ('version 2\n' + HEAD,
                               "line 1: recipe format version 2 is not supported; expected version 1, sd-mecha 1.x's "
                               "version 0.1.0, or sd-mecha 0.0.x recipes (which have no version line) (in: version 2)"),
    "version not first": (HEAD + 'version 1\n', "line 3: 'version' may only be the first instruction (in: version 1)"),
    "garbage text": ("{{{ hello }}}\n", "line 1: unexpected text '{{{'; an instruction starts with a command "
                                         "(model, parameter, merge, dict) (in: {{{ hello }}})"),
    "control characters": (HEAD + 'merge "weighted_sum" &0 &1 \x1b[31m\n',
                           "line 3: unexpected text '\\x1b'; expected a value (number, \"string\", &N, true, false, "
                           "[list]) (in: merge \"weighted_sum\" &0 &1 \\x1b[31m)"),
    "empty file": ("", ": the recipe is empty: it has no instruction"),
    "only comments": ("# nothing\n\n   \n# here\n", ": the recipe is empty: it has no instruction"),
}


class ThreeMethods:
    """Only weighted_sum, subtract and add_difference, so that suggestions do not change as the library grows."""

    @mc.hookimpl
    def mecha_merge_methods(self) -> list[mc.MergeMethod]:
        import mecha_methods
        return [m for m in mecha_methods.mecha_merge_methods() if m.name in KEPT]


KEPT = ("weighted_sum", "subtract", "add_difference")


@pytest.fixture
def plugins(mecha_plugins: Plugins) -> Plugins:
    mecha_plugins.register(ThreeMethods(), "three")
    return mecha_plugins


@pytest.fixture
def folder(plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the recipe's relative model paths, and a merge without -o, land here
    save({"w": torch.ones(2)}, tmp_path / "a.safetensors")
    save({"w": torch.zeros(2)}, tmp_path / "b.safetensors")
    save({"w": torch.zeros(2)}, tmp_path / "c.safetensors")
    (tmp_path / "out.safetensors").write_bytes(b"an earlier output")
    return tmp_path


@pytest.mark.parametrize("case", CASES)
def test_a_bad_recipe_is_one_line_with_its_line_number(plugins, folder, capsys, case):
    text, message = CASES[case]
    recipe = recipe_file(folder, text)
    signature = plugins.merge_methods.get("weighted_sum").signature()
    before = snapshot(folder)
    status, out, err = run(capsys, "merge", recipe, "-o", "out.safetensors")
    assert status == 1 and out == ""
    separator = "" if message.startswith(":") else " "
    assert error_line(err) == f"mecha: error: {recipe}{separator}{message.replace('{weighted_sum}', signature)}"
    assert snapshot(folder) == before


def test_control_characters_cannot_forge_output_lines(plugins, folder, capsys):
    """A line separator inside a recipe line is shown escaped: the error stays one line."""
    recipe = recipe_file(folder, HEAD + 'merge "weighted_sum" &0 &1 alpha="x\u2028mecha: ok"\n')
    status, _, err = run(capsys, "merge", recipe, "-o", "out.safetensors")
    assert status == 1
    line = error_line(err)
    assert "\u2028" not in err and line.endswith('(in: merge "weighted_sum" &0 &1 alpha="x\\u2028mecha: ok")')


def test_a_long_line_is_shown_shortened(plugins, folder, capsys):
    recipe = recipe_file(folder, HEAD + 'merge "weighted_sum" &0 &1 alpha=[' + "0.5, " * 10_000 + "\n")
    status, _, err = run(capsys, "merge", recipe, "-o", "out.safetensors")
    assert status == 1
    line = error_line(err)
    assert line.endswith("...)") and len(line) < 400


def test_a_binary_file_is_not_a_recipe(plugins, folder, capsys):
    recipe = folder / "r.mecha"
    recipe.write_bytes(b"\x00\xff\xfe binary")
    status, _, err = run(capsys, "merge", recipe, "-o", "out.safetensors")
    assert status == 1 and error_line(err) == f"mecha: error: {recipe}: not a text file (expected a .mecha recipe)"


def test_a_missing_recipe_file(plugins, folder, capsys):
    status, _, err = run(capsys, "merge", folder / "nope.mecha", "-o", "out.safetensors")
    assert status == 1 and error_line(err) == f"mecha: error: {folder / 'nope.mecha'}: no such recipe file"


def test_a_space_mismatch_found_when_models_are_opened(plugins, folder, capsys):
    """Without type=, a model's space is known only once its file is opened: still refused before writing,
    naming the recipe line."""
    recipe = recipe_file(folder, HEAD + 'merge "add_difference" &0 &1\n')
    before = snapshot(folder)
    status, _, err = run(capsys, "merge", recipe, "-o", "out.safetensors")
    assert status == 1
    assert error_line(err) == (f"mecha: error: {recipe} line 3: merge method 'add_difference': input 'b' must be in "
                               f"delta space, but it is in weight space (b.safetensors) (in: merge \"add_difference\" "
                               f"&0 &1)")
    assert snapshot(folder) == before


def test_an_unfilled_parameter(plugins, folder, capsys):
    recipe = recipe_file(folder, 'model "a.safetensors"\nparameter "b"\nmerge "weighted_sum" &0 &1\n')
    status, _, err = run(capsys, "merge", recipe, "-o", "out.safetensors")
    assert status == 1
    assert error_line(err) == ("mecha: error: the recipe still has parameters to fill: b; fill them with compose() or "
                               "`mecha compose`")


def test_the_python_api_raises_the_same_errors(plugins, folder):
    with pytest.raises(mc.RecipeSyntaxError) as caught:
        mc.deserialize(HEAD + 'merge "weigted_sum" &0 &1\n')
    assert caught.value.line_number == 3
    assert str(caught.value).startswith("recipe line 3: unknown merge method 'weigted_sum'")
    with pytest.raises(mc.RecipeError, match=r"'alpha': expected a finite number, got nan"):
        mc.weighted_sum("a.safetensors", "b.safetensors", alpha=float("nan"))
    with pytest.raises(mc.MechaError, match=r"unknown work dtype 'cat'"):
        mc.weighted_sum("a.safetensors", "b.safetensors", dtype="cat")
    with pytest.raises(mc.RecipeError, match=r"the space is 'weight' or 'delta', not 5"):
        mc.parameter("p", 5)  # type: ignore[arg-type]


def test_a_long_chain_of_merges_runs(plugins, folder, capsys):
    lines = ['model "a.safetensors"', 'model "b.safetensors"', 'merge "weighted_sum" &0 &1']
    lines += [f'merge "weighted_sum" &{i + 1} &1' for i in range(1, 400)]
    recipe = recipe_file(folder, "\n".join(lines) + "\n")
    status, _, err = run(capsys, "merge", recipe, "-o", "deep.safetensors", "--quiet")
    assert status == 0, err
