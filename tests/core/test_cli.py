"""The mecha command line, the config file and the atomic output, run in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import safetensors
import torch

import mecha_core as mc
from mecha_core.cli import main
from mecha_core.testing import write_model

from .conftest import toy_model


@pytest.fixture
def models(plugins, tmp_path):
    write_model(toy_model(fill=1), tmp_path / "one.safetensors")
    write_model(toy_model(fill=3), tmp_path / "three.safetensors")
    return tmp_path


def run(capsys, *args):
    status = main(list(map(str, args)))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_merge_a_recipe_file(models, capsys):
    recipe = models / "r.mecha"
    recipe.write_text('model "one"\nmodel "three"\nmerge "weighted_sum" &0 &1 alpha=0.25\n')
    status, out, err = run(capsys, "merge", recipe, "-o", models / "out.safetensors", "--models-dir", models,
                           "--save-dtype", "fp32", "--threads", "2")
    assert status == 0, err
    assert "6 keys merged, 2 copied" in out
    with safetensors.safe_open(str(models / "out.safetensors"), "pt") as f:
        assert f.get_tensor("head.weight").unique().tolist() == [1.5]
        assert f.get_tensor("head.weight").dtype == torch.float32


def test_models_dir_from_env_and_config(models, capsys, monkeypatch, tmp_path_factory):
    recipe = models / "r.mecha"
    recipe.write_text('model "one"\nmodel "three"\nmerge "n_average" &0 &1\n')
    config = tmp_path_factory.mktemp("cfg") / "config.toml"
    config.write_text(f'models_dirs = ["{models}"]\nsave_dtype = "fp32"\nthreads = 1\n')
    monkeypatch.setenv("MECHA_CONFIG", str(config))
    status, _, err = run(capsys, "merge", recipe, "-o", models / "a.safetensors", "--quiet")
    assert status == 0, err
    with safetensors.safe_open(str(models / "a.safetensors"), "pt") as f:
        assert f.get_tensor("head.weight").dtype == torch.float32  # from the config
    monkeypatch.setenv("MECHA_MODELS_DIR", str(models / "nowhere"))  # env beats the config
    status, _, err = run(capsys, "merge", recipe, "-o", models / "b.safetensors", "--quiet")
    assert status == 1 and "model 'one' not found" in err and "nowhere" in err
    status, _, err = run(capsys, "merge", recipe, "-o", models / "b.safetensors", "--quiet",
                         "--models-dir", models, "--save-dtype", "bf16")  # flags beat both
    assert status == 0, err
    with safetensors.safe_open(str(models / "b.safetensors"), "pt") as f:
        assert f.get_tensor("head.weight").dtype == torch.bfloat16


def test_bad_config_is_one_clear_line(models, capsys, monkeypatch, tmp_path_factory):
    config = tmp_path_factory.mktemp("cfg") / "config.toml"
    config.write_text('model_dirs = ["x"]\n')
    monkeypatch.setenv("MECHA_CONFIG", str(config))
    (models / "r.mecha").write_text('model "one"\n')
    status, _, err = run(capsys, "merge", models / "r.mecha")
    assert status == 1
    assert err.strip().splitlines() == [f"mecha: error: config {config}: unknown setting 'model_dirs'; "
                                        f"did you mean 'models_dirs'?"]


def test_errors_are_one_line_and_debug_adds_the_traceback(models, capsys):
    recipe = models / "r.mecha"
    recipe.write_text('model "one"\nmodel "three"\nmerge "weigted_sum" &0 &1\n')
    status, _, err = run(capsys, "merge", recipe)
    assert status == 1
    [line] = err.strip().splitlines()
    assert line.startswith(f"mecha: error: {recipe} line 3: unknown merge method 'weigted_sum'; "
                           f"did you mean 'weighted_sum'")
    assert line.endswith('(in: merge "weigted_sum" &0 &1)')
    status, _, err = run(capsys, "merge", recipe, "--debug")
    assert status == 1 and "Traceback" in err


def test_usage_errors_exit_2(plugins, capsys):
    status, _, err = run(capsys, "merge")
    assert status == 2 and "the following arguments are required: recipe" in err
    assert run(capsys, "--version")[0] == 0


def test_compose_fills_parameters(models, capsys):
    template = models / "t.mecha"
    template.write_text('parameter "a" "BASE"\nparameter "b"\nmerge "weighted_sum" &0 &1 alpha=0.5\n')
    inner = models / "inner.mecha"
    inner.write_text('model "one"\nmodel "three"\nmerge "n_average" &0 &1\n')
    status, out, err = run(capsys, "compose", template, "-p", "a", "one", "-p", "b", inner)
    assert status == 0, err
    assert mc.deserialize(out) == mc.weighted_sum("one", mc.n_average("one", "three"), alpha=0.5)
    status, _, err = run(capsys, "compose", template, "-p", "c", "one")
    assert status == 1 and "unknown recipe parameter 'c'" in err
    status, _, err = run(capsys, "compose", template, "-p", "a", "one", "-o", models / "c.mecha")
    assert status == 0 and (models / "c.mecha").read_text().startswith("version 1\nmodel \"one\"")


def test_methods_plugins_info_inspect(models, capsys):
    status, out, _ = run(capsys, "methods")
    assert status == 0 and "weighted_sum    (1 - alpha) a + alpha b." in out
    status, out, _ = run(capsys, "methods", "add_difference", "--json")
    data = json.loads(out)
    assert data["signature"] == "add_difference(a: Same, b: Delta, *, alpha: float = 1.0) -> Same"
    assert data["plugin"] == "'methods'" and data["elementwise"] is True and data["lazy_inputs"] is False
    status, out, _ = run(capsys, "plugins", "--json")
    rows = {row["name"]: row for row in json.loads(out)["plugins"]}
    assert rows["toy"]["provides"] == {"architectures": ["toy"]} and rows["core"]["status"] == "active"
    status, out, _ = run(capsys, "info", "toy", "--json")
    data = json.loads(out)
    assert data["components"]["body"] == {"blocks": ["b0", "b1"], "classes": ["embed", "linear", "norm"]}
    assert data["keys"]["layers.1.norm.weight"]["blocks"] == ["b1"]
    assert data["keys"]["decoder.weight"]["merged"] is False
    status, out, _ = run(capsys, "info", "toy", "-v")
    assert 'Component "body":' in out and "    - layers.1.weight" in out
    status, out, _ = run(capsys, "inspect", models / "one.safetensors", "--json")
    data = json.loads(out)
    assert (data["architecture"], data["model_type"], data["keys"]) == ("toy", "base", 8)


def test_inspect_shows_the_recipe_of_a_merged_file(models, capsys):
    out_path = mc.merge(mc.weighted_sum(str(models / "one.safetensors"), str(models / "three.safetensors")),
                        models / "m.safetensors")
    status, out, _ = run(capsys, "inspect", out_path)
    assert status == 0 and 'merge "weighted_sum" &0 &1 alpha=0.5' in out


def test_demo_with_only_the_core_and_methods(plugins, capsys):
    status, out, err = run(capsys, "demo")
    assert status == 0, err
    assert "two toy MLPs (no architecture plugin installed" in out
    assert "checked all" in out


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "mecha_core", "--version"], capture_output=True, text=True,
                            env={**os.environ, "MECHA_LOAD_PLUGINS": ""})
    assert result.returncode == 0 and result.stdout.startswith("mecha ")


def test_output_over_an_input_is_refused_and_failures_leave_nothing(models, capsys):
    one = models / "one.safetensors"
    before = one.read_bytes()
    recipe = models / "r.mecha"
    recipe.write_text(f'model "{one}"\nmodel "three"\nmerge "weighted_sum" &0 &1\n')
    status, _, err = run(capsys, "merge", recipe, "-o", one, "--models-dir", models)
    assert status == 1 and "refusing to write the output over the input" in err
    assert one.read_bytes() == before
    status, _, err = run(capsys, "merge", recipe, "-o", models / "missing" / "x.safetensors", "--models-dir", models)
    assert status == 1 and "does not exist" in err
    assert not list(models.glob("*.mecha-tmp")) and not list(models.glob(".*.mecha-tmp"))


def test_a_failed_merge_keeps_the_existing_output(plugins, tmp_path):
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"previous output")

    @mc.merge_method
    def fails_late(a: mc.Same, *, key: str) -> mc.Same:
        if key == "layers.1.weight":
            raise RuntimeError("late failure")
        return a

    with pytest.raises(mc.MergeError, match="late failure"):
        mc.merge(fails_late(toy_model(1)), target)
    assert target.read_bytes() == b"previous output"
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]
