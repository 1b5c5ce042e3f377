"""The executor hook: ``local`` built in, choosing one by name, and the parts an executor hands out
(run here one after the other) giving the same bytes as the local executor, for any split."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
from typing import Any

import pytest
import torch

import mecha_core as mc
from mecha_core import Same, executors

from .conftest import TOY_KEYS, toy_model
from .parts_executor import InProcessParts
from .sharding import write_sharded

NAMES = list(TOY_KEYS)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@mc.merge_method
def random_mix(a: Same, b: Same, *, seed: int = 0, generator: Any = None) -> Same:
    """Each entry from `a` or `b` at random: a random method of the tests' own (the core is tested alone)."""
    return torch.where(torch.rand(a.shape, generator=generator) < 0.5, a, b)


class RandomPlugin:
    @mc.hookimpl
    def mecha_merge_methods(self):
        return [random_mix]


@pytest.fixture
def models(tmp_path):
    a, b, c = (toy_model(seed=s) for s in (1, 2, 3))
    for name, tensors in (("a", a), ("b", b), ("c", c)):
        mc.save_tensors(tensors, tmp_path / f"{name}.safetensors")
    return tmp_path


@pytest.fixture
def plugins(plugins):
    plugins.register(RandomPlugin(), "random")
    return plugins


def recipe(folder):
    return random_mix(mc.model(str(folder / "a.safetensors")),
                      mc.weighted_sum(mc.model(str(folder / "b.safetensors")), mc.model(str(folder / "c.safetensors"))),
                      seed=42)


def test_local_is_the_core_executor_and_the_plugins_command_lists_it(plugins, mecha_cli):
    assert list(plugins.executors) == ["local"]
    assert plugins.provider("executors", "local").name == "core"
    assert "  executors: local" in mecha_cli("plugins").out


def test_an_unknown_executor_names_the_nearest_and_ray_names_its_package(plugins, models):
    with pytest.raises(mc.PluginError, match="unknown executor 'locl'.*local"):
        mc.merge(recipe(models), models / "out.safetensors", executor="locl")
    with pytest.raises(mc.MechaError, match="pip install mecha-ray"):
        mc.merge(recipe(models), models / "out.safetensors", executor="ray")
    assert not (models / "out.safetensors").exists()


def test_the_cli_takes_an_executor_and_the_config_file_one(plugins, models, mecha_cli, monkeypatch, tmp_path):
    (models / "r.mecha").write_text(mc.serialize(recipe(models)))
    result = mecha_cli("merge", models / "r.mecha", "-o", models / "out.safetensors", "--executor", "ray")
    assert result.status == 1 and "pip install mecha-ray" in result.err and "Traceback" not in result.err
    result = mecha_cli("merge", models / "r.mecha", "-o", models / "out.safetensors", "--ray-address", "auto")
    assert result.status == 1 and "pip install mecha-ray" in result.err
    result = mecha_cli("merge", models / "r.mecha", "-o", models / "out.safetensors", "--ray-address", "auto",
                       "--executor", "local")
    assert result.status == 2 and "--ray-address runs on ray" in result.err
    config = tmp_path / "config.toml"
    config.write_text('executor = "ray"\n')
    monkeypatch.setenv("MECHA_CONFIG", str(config))
    with pytest.raises(mc.MechaError, match="pip install mecha-ray"):
        mc.merge(recipe(models), models / "out.safetensors")


@pytest.mark.parametrize("count", [1, 2, 3, 100])
def test_parts_of_a_single_file_give_the_local_bytes_with_a_random_method(plugins, models, count):
    mc.merge(recipe(models), models / "local.safetensors")
    executor = InProcessParts(count)
    plugins.register(executor, "parts")
    mc.merge(recipe(models), models / "parts.safetensors", executor="parts", save_dtype="float32")
    mc.merge(recipe(models), models / "local32.safetensors", save_dtype="float32")
    mc.merge(recipe(models), models / "parts16.safetensors", executor="parts")
    assert (models / "parts.safetensors").read_bytes() == (models / "local32.safetensors").read_bytes()
    assert (models / "parts16.safetensors").read_bytes() == (models / "local.safetensors").read_bytes()
    parts = executors.split(executor.jobs[0], count)
    assert len(parts) == min(count, len(NAMES))
    assert sum(part.data_size for part in parts) == executor.jobs[0].parts[0].data_size
    assert sorted(p.name for p in models.iterdir()) == ["a.safetensors", "b.safetensors", "c.safetensors",
                                                         "local.safetensors", "local32.safetensors",
                                                         "parts.safetensors", "parts16.safetensors"]


def test_a_job_is_small_picklable_data_naming_models_by_absolute_path(plugins, models, monkeypatch):
    executor = InProcessParts(2)
    plugins.register(executor, "parts")
    monkeypatch.chdir(models)
    relative = mc.weighted_sum("a.safetensors", "b", alpha=0.25)
    mc.merge(relative, "out.safetensors", executor="parts", executor_options={"address": "x"},
             fallback_model="c")
    job = pickle.loads(pickle.dumps(executor.jobs[0]))
    assert str(models / "a.safetensors") in job.recipe and str(models / "b.safetensors") in job.recipe
    assert str(models / "c.safetensors") in job.fallback
    assert job.executor_options == {"address": "x"} and job.output == str(models / "out.safetensors")
    assert len(pickle.dumps(job)) < 4000


def test_shards_of_a_folder_are_written_by_parts_and_match_the_local_folder(plugins, tmp_path):
    write_sharded(tmp_path / "a", toy_model(seed=1), [NAMES[:3], NAMES[3:]])
    write_sharded(tmp_path / "b", toy_model(seed=2), [NAMES])
    node = random_mix(mc.model(str(tmp_path / "a")), mc.model(str(tmp_path / "b")), seed=7)
    mc.merge(node, tmp_path / "local/", max_shard_size=64)
    plugins.register(InProcessParts(1), "parts")
    mc.merge(node, tmp_path / "parts/", max_shard_size=64, executor="parts")
    local = snapshot(tmp_path / "local")
    assert len(local) > 3 and snapshot(tmp_path / "parts") == local


def test_a_part_that_does_not_match_its_report_is_refused_and_nothing_is_written(plugins, models, monkeypatch):
    real = executors.run_part

    def corrupted(job, part, folder, **kwargs):
        result = real(job, part, folder, **kwargs)
        with open(result.path, "r+b") as handle:
            handle.seek(-1, 2)
            handle.write(b"\x7f")
        return result

    monkeypatch.setattr(executors, "run_part", corrupted)
    plugins.register(InProcessParts(2), "parts")
    (models / "out.safetensors").write_bytes(b"previous")
    with pytest.raises(mc.MechaError, match="SHA-256"):
        mc.merge(recipe(models), models / "out.safetensors", executor="parts")
    assert (models / "out.safetensors").read_bytes() == b"previous"


def test_a_killed_drivers_parts_folder_goes_with_the_next_write_there_and_a_live_ones_stays(plugins, models):
    script = ("import os, signal\nfrom mecha_core import executors\n"
              "folder = executors.make_parts_folder('out.safetensors')\n"
              "(folder / 'part-00001.safetensors').write_bytes(b'half a part')\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", script], cwd=models, check=False)
    assert killed.returncode == -signal.SIGKILL
    left = [p for p in models.iterdir() if p.name.endswith(".mecha-parts")]
    assert len(left) == 1 and left[0].name.startswith(".out.safetensors.")
    live = executors.make_parts_folder(models / "other.safetensors")  # this process's: still in use
    mc.merge(recipe(models), models / "out.safetensors")
    assert not left[0].exists() and live.is_dir()
