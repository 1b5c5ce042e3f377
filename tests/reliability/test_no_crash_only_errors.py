"""Items 7-10 of issue 19: what used to crash (an internal error, exit 3, a signal) is a one-line
error naming what to change: an unusable device, more models than open files, output names at the
file system's limit, plugins that misbehave."""

from __future__ import annotations

import collections
import os
import resource
from pathlib import Path

import pytest
import safetensors
import torch

import mecha_core as mc
from mecha_core.plugins import PluginWarning

from .conftest import error_line, recipe_file, run, save, snapshot, temp_files


def _devices() -> str:
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ", ".join(names)


# 7 -------------------------------------------------------------------------------------------------
MISSING = ["meta", "nonsense", "cuda:99", "cpu-ish"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:1"])


@pytest.mark.parametrize("device", MISSING)
def test_a_device_that_does_not_exist_is_one_line_wherever_it_is_given(folder, capsys, device):
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet", "--device", device)
    assert status == 1
    assert error_line(err) == f"mecha: error: device {device!r} is not available here; available devices: {_devices()}"
    config = folder / "config.toml"
    config.write_text(f'device = "{device}"\n')
    os.environ["MECHA_CONFIG"] = str(config)  # restored by the autouse fixture's monkeypatch
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet")
    assert status == 1
    assert error_line(err) == (f"mecha: error: config {config}: device {device!r} is not available here; "
                               f"available devices: {_devices()}")
    config.unlink()
    recipe_file(folder, f'model "a.safetensors"\nmodel "b.safetensors"\nmerge "weighted_sum" &0 &1 device="{device}"\n',
                "d.mecha")
    status, _, err = run(capsys, "merge", "d.mecha", "-o", "out.safetensors", "--quiet")
    assert status == 1
    assert error_line(err).startswith(f"mecha: error: d.mecha line 3: merge method 'weighted_sum': device {device!r} "
                                      f"is not available here; available devices: {_devices()}")
    assert not (folder / "out.safetensors").exists()


# 8 -------------------------------------------------------------------------------------------------
def test_more_models_than_open_files_merge_with_one_descriptor_each_at_most(folder, plugins):
    count = 160
    many = folder / "many"
    many.mkdir()
    for i in range(count):
        save({"w": torch.full((8,), float(i))}, many / f"m{i}.safetensors")
    most = [0]  # the most descriptors one model file had open at once, seen from inside the merge

    @mc.merge_method
    def mean_counting(*models: mc.Same) -> mc.Same:
        per_file = collections.Counter()
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(os.path.realpath(many)):
                per_file[target] += 1
        most[0] = max(most[0], *per_file.values(), 0)
        return sum(models) / len(models)

    class Plugin:
        @mc.hookimpl
        def mecha_merge_methods(self):
            return [mean_counting]

    plugins.register(Plugin(), "counting")
    lines = [f'model "many/m{i}.safetensors"' for i in range(count)]
    lines.append('merge "mean_counting" ' + " ".join(f"&{i}" for i in range(count)))
    recipe_file(folder, "\n".join(lines) + "\n", "many.mecha")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 40, hard))
    try:
        mc.merge(folder / "many.mecha", folder / "out.safetensors", save_dtype="float32", threads=2)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with safetensors.safe_open(str(folder / "out.safetensors"), "pt") as f:
        assert f.get_tensor("w").unique().tolist() == [sum(range(count)) / count]
    assert most[0] == 1


# 9 -------------------------------------------------------------------------------------------------
def _name_max(folder: Path) -> int:
    return os.pathconf(folder, "PC_NAME_MAX")


def test_an_output_name_at_the_limit_works_and_one_past_it_is_an_error(folder, capsys):
    limit = _name_max(folder)
    longest = "x" * (limit - 5 - len(".safetensors")) + ".safetensors"  # 250 bytes where the limit is 255
    status, _, err = run(capsys, "merge", "r.mecha", "-o", longest, "--quiet")
    assert status == 0, err
    assert (folder / longest).is_file() and temp_files(folder) == []
    composed = "y" * (limit - len(".mecha")) + ".mecha"  # exactly the limit
    status, _, err = run(capsys, "compose", "r.mecha", "-o", composed)
    assert status == 0, err
    assert (folder / composed).read_text() == mc.serialize(mc.deserialize(folder / "r.mecha"))
    too_long = "z" * (limit + 1 - len(".safetensors")) + ".safetensors"
    before = snapshot(folder)
    status, _, err = run(capsys, "merge", "r.mecha", "-o", too_long, "--quiet")
    assert status == 1
    assert error_line(err) == (f"mecha: error: output name {too_long[:40]!r}... is {limit + 1} bytes long; the file "
                               f"system of '.' allows at most {limit}")
    assert snapshot(folder) == before


# 10 ------------------------------------------------------------------------------------------------
def _plugin(plugins, name, **hooks):
    plugin = type(name, (), {hook: staticmethod(mc.hookimpl(function)) for hook, function in hooks.items()})()
    plugins.register(plugin, name)


def test_a_method_returning_a_meta_tensor_is_its_plugins_error(folder, capsys, plugins):
    @mc.merge_method
    def ghost(a: mc.Same, b: mc.Same) -> mc.Same:
        return torch.empty(a.shape, device="meta")

    _plugin(plugins, "ghostly", mecha_merge_methods=lambda: [ghost])
    recipe_file(folder, 'model "a.safetensors"\nmodel "b.safetensors"\nmerge "ghost" &0 &1\n')
    before = snapshot(folder)
    status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet")
    assert status == 1
    assert error_line(err) == ("mecha: error: merge method 'ghost' from plugin 'ghostly' returned a meta tensor (no "
                               "data) for key 'w', expected a dense tensor with data")
    assert snapshot(folder) == before


def _failing(file, architectures):
    raise ValueError("no idea")


@pytest.mark.parametrize("detect, what", [
    (lambda file, architectures: True, "answered True, not None or the name of an architecture"),
    (lambda file, architectures: 5, "answered 5, not None or the name of an architecture"),
    (lambda file, architectures: "sd99", "answered 'sd99', not None or the name of an architecture"),
    (_failing, "failed (ValueError: no idea)"),
])
def test_a_broken_model_type_is_skipped_with_a_warning_naming_its_plugin(folder, capsys, plugins, monkeypatch,
                                                                         detect, what):
    monkeypatch.setattr(plugins, "strict", False)
    broken = mc.ModelType("broken", mc.MergeSpace.WEIGHT, open=lambda file, arch: None, detect=detect)
    _plugin(plugins, "breaking", mecha_model_types=lambda: [broken])
    with pytest.warns(PluginWarning) as caught:
        status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet", "--save-dtype", "fp32")
    assert status == 0, err
    assert (f"model type 'broken' from plugin 'breaking' {what} on a.safetensors; it is skipped"
            in [str(w.message) for w in caught])
    with safetensors.safe_open(str(folder / "out.safetensors"), "pt") as f:
        assert f.get_tensor("w").unique().tolist() == [2.0]


@pytest.mark.parametrize("returned", ["done", 256, -1, 1.5, True])
def test_a_plugin_command_returning_no_exit_status_is_its_plugins_error(capsys, plugins, returned):
    command = mc.CliCommand("odd", "returns what is not an exit status", lambda args: returned)
    _plugin(plugins, "oddity", mecha_cli_commands=lambda: [command])
    status, _, err = run(capsys, "odd")
    assert status == 1
    assert error_line(err) == (f"mecha: error: command 'odd' from plugin 'oddity' returned {returned!r}; a command "
                               f"returns None or an exit status from 0 to 255")


def test_a_plugin_command_calling_sys_exit_is_its_plugins_error(capsys, plugins):
    command = mc.CliCommand("quit", "exits", lambda args: exit(0))
    _plugin(plugins, "quitter", mecha_cli_commands=lambda: [command])
    status, _, err = run(capsys, "quit")
    assert status == 1 and error_line(err) == "mecha: error: command 'quit' from plugin 'quitter' failed: SystemExit: 0"


def test_a_hook_raising_keyboard_interrupt_at_load_is_reported_naming_the_plugin(folder, capsys, plugins, monkeypatch):
    monkeypatch.setattr(plugins, "strict", False)

    def interrupt():
        raise KeyboardInterrupt

    _plugin(plugins, "jumpy", mecha_merge_methods=interrupt)
    with pytest.warns(PluginWarning) as caught:
        status, _, err = run(capsys, "merge", "r.mecha", "-o", "out.safetensors", "--quiet")
    assert status == 0, err
    assert "plugin 'jumpy' failed: mecha_merge_methods() raised KeyboardInterrupt: " in [str(w.message) for w in caught]
